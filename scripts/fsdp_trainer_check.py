#!/usr/bin/env python
"""Train a tiny GIFT / LoFiT-stage-1 Llama with the HF Trainer under FSDP2 (accelerate's plugin) on CPU and compare
(launch modes and outputs: peft_gift/bench/fsdp_trainer_check.py).

    accelerate launch --config_file configs/accelerate/fsdp2_cpu.yaml scripts/fsdp_trainer_check.py --cpu-fsdp --out /tmp/f
    torchrun --nproc_per_node 2 scripts/fsdp_trainer_check.py --fsdp --cpu-fsdp --out /tmp/f
    python scripts/fsdp_trainer_check.py --out /tmp/f                 # the single-process reference
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.bench.fsdp_trainer_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
