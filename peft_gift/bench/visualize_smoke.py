"""The visualiser's ``--smoke`` inputs: tiny random base models with trained-looking GIFT / LoFiT adapters, saved."""

from __future__ import annotations

from pathlib import Path

import torch

import peft_gift

from .tiny import word_tokenizer

SMOKE_TEXTS = ["w5 w17 w33 w12 w60 w61 w9", "w40 w41 w42 w7 w8"]


def _randomise(model, names: tuple[str, ...], std: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(f".{n}." in name for n in names):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _vision(root: Path) -> None:
    from peft import get_peft_model
    from transformers import Dinov2Config, Dinov2ForImageClassification

    torch.manual_seed(0)
    vit = Dinov2ForImageClassification(Dinov2Config(
        image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3)).eval()
    vit.save_pretrained(root / "vit")
    vit = Dinov2ForImageClassification.from_pretrained(root / "vit").eval()  # records name_or_path for the adapter
    gift = get_peft_model(vit, peft_gift.GiftConfig(r=4, target_modules=["o_proj"], modules_to_save=["classifier"]))
    _randomise(gift, ("gift_phi", "gift_psi"), 0.3, 1)
    gift.save_pretrained(root / "gift_vit")


def _language(root: Path) -> None:
    from peft import get_peft_model
    from transformers import LlamaForCausalLM

    from .tiny import tiny_causal_lm

    tiny_causal_lm("llama", seed=0, vocab_size=96, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=3).save_pretrained(root / "llama")
    word_tokenizer(96).save_pretrained(root / "llama")

    def base():
        return LlamaForCausalLM.from_pretrained(root / "llama").eval()

    gift_lm = get_peft_model(base(), peft_gift.GiftConfig(r=3, target_modules=["q_proj", "o_proj"],
                                                          task_type="CAUSAL_LM"))
    _randomise(gift_lm, ("gift_phi", "gift_psi"), 0.3, 2)
    gift_lm.save_pretrained(root / "gift_llama")
    scale = get_peft_model(base(), peft_gift.LofitConfig(mode="scale", init_std=0.2, task_type="CAUSAL_LM"))
    scale.save_pretrained(root / "lofit_scale")
    heads = peft_gift.select_heads(scale, k=3)
    offsets = get_peft_model(base(), peft_gift.lofit_stage2_config(scale, heads, init_std=0.5))
    offsets.save_pretrained(root / "lofit_bias")


def _images():
    """Two smooth synthetic pictures: a coloured disc on a gradient."""
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    images = []
    for _ in range(2):
        cy, cx = torch.randint(8, 24, (2,), generator=g).tolist()
        disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < 40).float()
        rgb = torch.stack([xx / 31.0, yy / 31.0, disc], -1) * 255
        images.append(Image.fromarray(rgb.to(torch.uint8).numpy()))
    return images, ["disc 0", "disc 1"], "synthetic smoke images"


def build_smoke(root: Path) -> tuple[list[str], tuple]:
    """Tiny random base models and adapters under ``root``; returns (adapter dirs, (images, labels, source))."""
    _vision(root)
    _language(root)
    return [str(root / d) for d in ("gift_vit", "gift_llama", "lofit_scale", "lofit_bias")], _images()
