"""The training CLI (``scripts/train.py``, ``python -m peft_gift.recipes``): arguments in, one-line errors out."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .pipeline import PushError, run
from .report import console_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="train.py", description="Fine-tune a model with GIFT / LoFiT / LoRA / ... "
                                "from a YAML config and write the adapter and results.json.")
    p.add_argument("config", help="YAML config, e.g. configs/gift_minilm_sst2.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set training.num_train_epochs=3 --set method.r=32")
    p.add_argument("--output-dir", default=None, help="where to write (default: outputs/<config name>)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="push the adapter (peft_gift.push_to_hub for GIFT/LoFiT, else PEFT's push_to_hub)")
    p.add_argument("--export-lora", action="store_true",
                   help="gift / lofit: also write OUT/lora_export/, the adapter as an equal plain PEFT LoRA adapter "
                        "that any LoRA server can run (peft_gift.export_lora)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run in the output folder (results.json, adapter/, model/, "
                        "lora_export/, ...: removed before training); without it such a folder is refused")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        with console_logging(sys.stdout):
            run(cfg, output_dir=args.output_dir, push_to_hub=args.push_to_hub, export_lora=args.export_lora,
                overwrite=args.overwrite)
    except ConfigError as e:  # nothing was run
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PushError as e:  # the run finished and wrote its outputs; only the upload failed
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
