#!/usr/bin/env python
"""Speed / memory / size benchmark of GIFT, LoFiT and PEFT baselines (logic and method: peft_gift/bench/speed.py).

    python scripts/bench_speed.py                  # SmolLM2-135M shapes + MiniLM shapes, batch 8x128, CPU
    python scripts/bench_speed.py --quick          # tiny random models, seconds (smoke test)
    python scripts/bench_speed.py --models lm --reps 7
"""

import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.bench.speed import main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
