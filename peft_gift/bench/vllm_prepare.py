"""The ``prepare`` step of :mod:`.vllm_compare` (run by the project's interpreter): the base model link, a GIFT adapter
with random Θ, its ``peft_gift.export_lora`` export, the prompts as token ids, and PEFT's greedy outputs per dtype."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import peft_gift
from peft_gift.recipes.assets import resolve_model

from . import vllm_compare
from .vllm_compare import PROMPTS, versions, write_json

logger = logging.getLogger(__name__)


def prepare(args) -> None:
    """Write DIR/base, DIR/gift, DIR/lora, DIR/prompts.json and DIR/peft_<dtype>.json (``args`` as parsed by
    :func:`.vllm_compare.main`)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_dir = Path(resolve_model(args.base)).resolve()
    link = out / "base"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(base_dir)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                       return_dict=False) for p in PROMPTS[: args.n]]
    prompts = [list(map(int, p["input_ids"] if isinstance(p, dict) else p)) for p in prompts]
    write_json(out / "prompts.json", {"texts": PROMPTS[: args.n], "token_ids": prompts})

    # the GIFT adapter: random Θ (seeded) so that its generations differ visibly from the base model's
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = get_peft_model(model, peft_gift.GiftConfig(r=args.r)).eval()
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "gift_phi" in name or "gift_psi" in name:
                p.copy_(args.std * torch.randn(p.shape, generator=g))
    model.save_pretrained(str(out / "gift"))
    lora_config = peft_gift.export_lora(model, str(out / "lora"))
    # vLLM reads these folders; its LoRA loader needs no base_model_name_or_path, but a local path is the honest one
    cfg_path = out / "lora" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    write_json(cfg_path, cfg)
    del model
    logger.info("[prepare] GIFT r=%d exported as LoRA r=%d alpha=%s on %d modules", args.r, lora_config.r,
                lora_config.lora_alpha, len(lora_config.target_modules))

    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        results = {}
        for kind in ("base", "gift", "lora_peft"):
            t0 = time.time()
            model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
            if kind == "gift":
                model = PeftModel.from_pretrained(model, str(out / "gift"))
            elif kind == "lora_peft":
                model = PeftModel.from_pretrained(model, str(out / "lora"))
            model = model.to(dtype).eval()  # Θ in the same dtype as the base (PEFT keeps adapters in fp32 otherwise)
            results[kind] = [hf_greedy(model, ids, args.max_new_tokens) for ids in prompts]
            logger.info("[prepare] transformers %s %s: %.0f s", dtype_name, kind, time.time() - t0)
            del model
        write_json(out / f"peft_{dtype_name}.json", {
            "engine": "transformers+peft", "dtype": dtype_name, "max_new_tokens": args.max_new_tokens,
            "versions": versions("torch", "transformers", "peft"), "outputs": results,
            "texts": {k: [tok.decode(t) for t in v] for k, v in results.items()}})


def hf_greedy(model, ids, max_new_tokens):
    """The ``max_new_tokens`` greedy token ids after ``ids`` (EOS does not stop generation)."""
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=False, eos_token_id=None,
                             pad_token_id=0, temperature=None, top_p=None, top_k=None)
    return out[0, len(ids):].tolist()


def main(argv=None) -> int:
    """Every step of :mod:`.vllm_compare` (``prepare`` included) where peft_gift is installed."""
    return vllm_compare.main(argv, prepare=prepare)
