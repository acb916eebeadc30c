#!/usr/bin/env python
"""Seconds per multiple-choice test question and per training step (logic and method: peft_gift/bench/eval_speed.py).

    python scripts/bench_eval_speed.py             # SmolLM2-135M on BoolQ, 64 questions, 3 interleaved rounds
    python scripts/bench_eval_speed.py --quick     # a tiny random Llama, seconds (smoke test)
"""

import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.bench.eval_speed import main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
