#!/usr/bin/env python
"""Train a tiny GIFT / LoFiT Llama with the HF Trainer under DeepSpeed ZeRO-2 / ZeRO-3 and dump the trained tensors
(methods, launch modes and outputs: peft_gift/bench/deepspeed_check.py).

    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 scripts/deepspeed_check.py --zero 3 --out /tmp/ds
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 scripts/deepspeed_check.py --zero 3 --zero-init --out /tmp/ds
    python scripts/deepspeed_check.py --out /tmp/ds                 # the single-process reference
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.bench.deepspeed_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
