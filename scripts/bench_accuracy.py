#!/usr/bin/env python
"""Accuracy per trainable parameter, controlled (protocol and logic: peft_gift/bench/accuracy.py).

    python scripts/bench_accuracy.py --parts glue --tasks sst2           # the study in docs/results.md (resumable)
    python scripts/bench_accuracy.py --parts glue --methods ia3,full     # add methods to the same study
    python scripts/bench_accuracy.py --parts lm                          # Commonsense-8 with SmolLM2-135M
    python scripts/bench_accuracy.py --parts vision                      # DINOv2-S/14 on CIFAR-10
    python scripts/bench_accuracy.py --report-only                       # rebuild accuracy.json/.md/.png
    python scripts/bench_accuracy.py --reproduce --parts glue,lm,vision  # re-run one stored run per row, compare
    python scripts/bench_accuracy.py --quick --out /tmp/b                # tiny random models, synthetic data
    python scripts/bench_accuracy.py --protocol released --tasks boolq   # LoFiT at its released settings (issue 23)
"""

import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.bench.accuracy import main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[bench_accuracy %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    sys.exit(main())
