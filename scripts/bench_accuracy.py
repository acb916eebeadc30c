#!/usr/bin/env python
"""Accuracy per trainable parameter, controlled: ``python scripts/bench_accuracy.py --help``; the protocol, the
logic and usage examples are in peft_gift/bench/accuracy.py, the commands that produced the study in docs/results.md.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.bench.accuracy import main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[bench_accuracy %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    sys.exit(main())
