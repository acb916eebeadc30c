#!/usr/bin/env python
"""Pictures of what GIFT / LoFiT adapters learned, from saved adapter directories (see docs/interpretability.md).

    python scripts/visualize.py --adapter RUN/adapter [--adapter RUN2/adapter ...] [--base-model ID_OR_PATH] --out DIR
        [--images a.png b.jpg | --cifar10 N] [--image-size S] [--layer NAME ...] [--channels 0 1 2 ...]
        [--text "a prompt" ...] [--top-k 10] [--k K]
    python scripts/visualize.py --smoke --out DIR        # tiny random models, all outputs, a few seconds

The outputs per adapter type are listed in peft_gift/bench/visualize.py.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.bench.visualize import main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
