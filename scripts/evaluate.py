#!/usr/bin/env python
"""Re-evaluate what train.py saved, on its job's evaluation split (thin CLI over peft_gift.recipes.reevaluate).

    python scripts/evaluate.py outputs/gift_minilm_sst2/adapter            # the job config in its results.json
    python scripts/evaluate.py outputs/gift_minilm_sst2/adapter CONFIG.yaml  # another job config
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.recipes.reevaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
