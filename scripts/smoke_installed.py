#!/usr/bin/env python
"""Smoke test of an *installed* peft-gift (a wheel in a fresh venv, not the checkout): GIFT and LoFiT on a tiny
random Llama — create, save, reload in the same process, merge, and export as LoRA. Run it from outside the
repository (``.ci/run`` does) so that ``import peft_gift`` cannot pick up the source tree."""

from __future__ import annotations

import os
import sys
import tempfile

import torch
from peft import PeftModel, get_peft_model

import peft_gift
from peft_gift.bench.tiny import tiny_causal_lm  # from the wheel too (it ships peft_gift*)


def tiny_llama():
    return tiny_causal_lm("llama", seed=0).eval()


def main() -> int:
    where = os.path.dirname(peft_gift.__file__)
    if "site-packages" not in where:
        raise SystemExit(f"peft_gift imported from {where}, not from an installed package")
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    for config in (peft_gift.GiftConfig(r=4), peft_gift.LofitConfig(mode="bias", heads=[(0, 1), (1, 2)], init_std=0.1)):
        model = get_peft_model(tiny_llama(), config).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.1)
            expected = model(ids).logits
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            loaded = PeftModel.from_pretrained(tiny_llama(), tmp).eval()
            peft_gift.export_lora(model, os.path.join(tmp, "lora"))
            lora = PeftModel.from_pretrained(tiny_llama(), os.path.join(tmp, "lora")).eval()
        with torch.no_grad():
            merged = loaded.merge_and_unload()(ids).logits
            checks = {"reloaded and merged": merged, "LoRA export": lora(ids).logits}
        for what, logits in checks.items():
            diff = float((logits - expected).abs().max())
            if diff > 1e-4:
                raise SystemExit(f"{type(config).__name__}: {what} differs by {diff}")
        print(f"{type(config).__name__}: save/load, merge, LoRA export OK")
    print(f"peft_gift {peft_gift.__version__} from {where}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
