#!/usr/bin/env python
"""Fine-tune a model from a YAML config (thin CLI over peft_gift.recipes).

    python scripts/train.py configs/gift_minilm_sst2.yaml [--set key.sub=value ...] [--output-dir D] [--push-to-hub REPO]
        [--export-lora]
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.recipes.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
