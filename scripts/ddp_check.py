#!/usr/bin/env python
"""Train a tiny GIFT / LoFiT Llama for a few steps data-parallel on CPU (gloo) and dump the adapter tensors
(launch modes and outputs: peft_gift/bench/ddp_check.py).

    python scripts/ddp_check.py --method gift --out /tmp/dist                                  # the reference
    python scripts/ddp_check.py --method gift --strategy ddp --spawn 2 --out /tmp/dist         # or fsdp2
    torchrun --nproc_per_node 2 scripts/ddp_check.py --method lofit --strategy ddp --out /tmp/dist
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml scripts/ddp_check.py --strategy accelerate --out /tmp/dist
"""

import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from peft_gift.bench.ddp_check import main  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
