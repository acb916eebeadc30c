#!/usr/bin/env python
"""One command that checks peft-gift on a GPU: speed and memory of a training step, and correctness on CUDA (the
checks, their tolerances and outputs: peft_gift/bench/gpu_check.py).

    python scripts/gpu_check.py --out /tmp/gpu_check                       # CUDA, ~1B Llama shapes (≤ 8 min, one H100/H200)
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/gpu_check   # tiny Llama on CPU (seconds; the test suite)
    python scripts/gpu_check.py --checks merge,compile --out /tmp/gpu_check

Writes <out>/gpu_check.json and <out>/gpu_check.md; the exit status is 1 if any check failed.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.bench.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
