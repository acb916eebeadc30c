#!/usr/bin/env python
"""Memory of a 4-bit (bitsandbytes NF4) vs an fp32 base for QGIFT, measured on this machine (what is measured and how:
peft_gift/bench/quant_memory.py).

    python scripts/quant_memory.py --model smollm2-135m --out results/quant_memory
        # writes quant_memory.json and quant_memory.md (a markdown table)
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.bench.quant_memory import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
