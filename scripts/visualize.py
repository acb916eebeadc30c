#!/usr/bin/env python
"""Pictures of what GIFT / LoFiT adapters learned, from saved adapter directories (see docs/interpretability.md).

    python scripts/visualize.py --adapter RUN/adapter [--adapter RUN2/adapter ...] [--base-model ID_OR_PATH] --out DIR
        [--images a.png b.jpg | --cifar10 N] [--image-size S] [--layer NAME ...] [--channels 0 1 2 ...]
        [--text "a prompt" ...] [--top-k 10] [--k K]
    python scripts/visualize.py --smoke --out DIR        # tiny random models, all outputs, a few seconds

Per adapter (its type is read from adapter_config.json):
  GIFT on a vision model   gift_maps_<layer>.png     per-channel cluster heat maps over the patches of each image
  GIFT on a text model     gift_tokens_<layer>.png/.html  which tokens score highest on each channel (--text)
                           gift_decode.md            columns of C = W·φ read through final norm + LM head (LMs)
  LoFiT scale (stage 1)    lofit_head_map.png        layers × heads ‖A_h‖₂; marked: the heads of a LoFiT bias
                                                     adapter given too, else the top --k
  LoFiT bias (stage 2)     lofit_decode.md           tokens each head's W_o[:, head]·v_h promotes (LMs)
and summary.json listing what was written. The base model defaults to adapter_config.json's
base_model_name_or_path; peft_gift asset names (dinov2-s14, smollm2-135m, ...) resolve to their local copies.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import peft_gift  # noqa: E402 - registers GIFT/LoFiT with PEFT
from peft_gift import interpret  # noqa: E402
from peft_gift.recipes import render  # noqa: E402

DEFAULT_TEXTS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Question: Which gas do plants absorb from the air? Answer: carbon dioxide",
]


# ------------------------------------------------------------------------------------------------ loading
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _adapter_info(adapter_dir: Path) -> tuple[dict, dict[str, tuple]]:
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise SystemExit(f"error: {adapter_dir} has no adapter_config.json (not a saved PEFT adapter directory)")
    try:
        config = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SystemExit(f"error: {cfg_file} is not valid JSON ({err}); re-save the adapter with save_pretrained") from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise SystemExit(f"error: {cfg_file} is not a PEFT adapter config (a JSON object with a 'peft_type'); "
                         f"re-save the adapter with save_pretrained")
    shapes: dict[str, tuple] = {}
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return config, shapes


def _resolve_base(name: str) -> str:
    """A base model asset name, local directory or Hub id → something ``from_pretrained`` loads, or a one-line exit."""
    from peft_gift.recipes.config import ConfigError
    from peft_gift.recipes.data import resolve_model

    if not isinstance(name, str) or not name.strip():
        raise SystemExit(f"error: base model {name!r} is not a model name or path; pass --base-model")
    try:
        return resolve_model(name)
    except ConfigError as err:
        raise SystemExit(f"error: --base-model / base_model_name_or_path: {err}") from None


def _head_labels(shapes: dict[str, tuple]) -> int | None:
    for key, shape in shapes.items():
        if re.search(r"(classifier|score)\.weight$", key) and len(shape) == 2:
            return shape[0]
    return None


def load_adapted(adapter_dir: Path, base: str | None):
    """(peft model, tokenizer or None, adapter config dict, base path) for a saved adapter directory."""
    from peft import PeftModel
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    config, shapes = _adapter_info(adapter_dir)
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise SystemExit(f"error: {adapter_dir}/adapter_config.json names no base model; pass --base-model")
    path = _resolve_base(base)
    try:
        model_config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: base model {base!r} has no loadable config ({str(err).splitlines()[0][:160]}); "
                         f"pass --base-model with an asset name, a save_pretrained() directory or a Hub id") from None
    num_labels = _head_labels(shapes)
    task = config.get("task_type")
    kw = {"num_labels": num_labels} if num_labels else {}
    if getattr(model_config, "patch_size", None) is not None:
        cls = AutoModelForImageClassification if num_labels else AutoModel
    elif task == "SEQ_CLS" or (num_labels and task != "CAUSAL_LM"):
        cls = AutoModelForSequenceClassification
    elif task == "CAUSAL_LM" or any(a.endswith("ForCausalLM") for a in model_config.architectures or []):
        cls = AutoModelForCausalLM
    else:
        cls = AutoModel
    try:
        model = cls.from_pretrained(path, **kw).eval()
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: could not load base model {path!r} as {cls.__name__} "
                         f"({str(err).splitlines()[0][:160]}); pass the adapter's base model with --base-model") from None
    try:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise SystemExit(f"error: {adapter_dir} does not load onto {path!r} ({str(err).splitlines()[0][:200]}); "
                         f"check --base-model") from None
    tokenizer = None
    if getattr(model_config, "patch_size", None) is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as err:  # noqa: BLE001 - decoding then shows token ids
            print(f"note: no tokenizer at {path} ({type(err).__name__}); showing token ids")
    return model, tokenizer, config, path


# ------------------------------------------------------------------------------------------------ images
def _normalisation(base_path: str) -> tuple[list[float], list[float]]:
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    proc = Path(base_path) / "preprocessor_config.json"
    if proc.is_file():
        pc = json.loads(proc.read_text())
        mean, std = pc.get("image_mean", mean), pc.get("image_std", std)
    return mean, std


def _run_config(adapter_dir: Path) -> dict | None:
    results = adapter_dir.parent / "results.json"
    if results.is_file():
        return json.loads(results.read_text()).get("config")
    return None


def _cifar10_images(n: int, adapter_dir: Path):
    """n CIFAR-10 images (PIL) with class names; when the adapter came from scripts/train.py, taken from its held-out
    evaluation split so that none was trained on."""
    from peft_gift.recipes import assets

    run_cfg = _run_config(adapter_dir)
    ds = assets.load_dataset_asset("cifar10")
    source = "cifar10 test split (first images)"
    if run_cfg and str(run_cfg.get("data", {}).get("dataset")).lower() in ("cifar10", "cifar-10"):
        from peft_gift.recipes.data import split_dataset

        _, ds = split_dataset(ds, "cifar10", run_cfg["data"])
        source = "held-out evaluation split of the training run"
    else:
        ds = ds[next(iter(ds))]
    names = ds.features["label"].names if hasattr(ds.features["label"], "names") else None
    picked, labels, seen = [], [], set()
    for row in ds:  # one image per class first, for variety
        label = int(row["label"])
        if label in seen and len(seen) < min(n, len(names or [])):
            continue
        seen.add(label)
        picked.append(row["image"].convert("RGB"))
        labels.append(names[label] if names else str(label))
        if len(picked) == n:
            break
    return picked, labels, source


def _pixel_values(images, size: int, mean, std) -> torch.Tensor:
    from PIL import Image

    out = []
    for im in images:
        im = im.convert("RGB").resize((size, size), Image.BICUBIC)
        t = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))
    return torch.stack(out)


def _image_size(args, adapter_dir: Path, model) -> int:
    if args.image_size:
        return args.image_size
    run_cfg = _run_config(adapter_dir)
    if run_cfg and run_cfg.get("data", {}).get("image_size"):
        return int(run_cfg["data"]["image_size"])
    size = interpret._hf_model(model).config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


# ------------------------------------------------------------------------------------------------ per method
def _write_decode_md(path: Path, title: str, rows: dict, note: str) -> None:
    lines = [f"# {title}", "", note, "", "| | top tokens (logit) |", "|---|---|"]
    for key, tokens in rows.items():
        cells = ", ".join(f"`{str(t).replace('|', '¦')}` ({v:.2f})" for t, v in tokens)
        lines.append(f"| {key} | {cells} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def gift_outputs(model, tokenizer, base_path: str, adapter_dir: Path, args, out: Path) -> list[str]:
    written = []
    layers = interpret.gift_layer_names(model)
    chosen = layers if not args.layer else [interpret._resolve_names(
        layers, [name], (n for n, _ in model.named_modules()), "a GIFT adapter")[0] for name in args.layer]
    hf = interpret._hf_model(model)
    if getattr(hf.config, "patch_size", None) is not None:
        if args.images:
            from PIL import Image

            images = [Image.open(p).convert("RGB") for p in args.images]
            labels, source = [Path(p).stem for p in args.images], "files given with --images"
        elif getattr(args, "_smoke_images", None) is not None:
            images, labels, source = args._smoke_images
        else:
            images, labels, source = _cifar10_images(args.cifar10, adapter_dir)
        size = _image_size(args, adapter_dir, model)
        pixel_values = _pixel_values(images, size, *_normalisation(base_path))
        display = [np.asarray(im.resize((size, size)), dtype=np.float32) / 255.0 for im in images]
        for layer in chosen:
            path = out / f"gift_maps_{_safe(layer)}.png"
            render.save_cluster_maps(
                model, pixel_values, path, layer=layer, images=display, channels=args.channels, labels=labels,
                cell_inches=args.cell_inches, dpi=args.dpi,
            )
            written.append(str(path))
        print(f"GIFT cluster maps of {len(chosen)} layers on {len(images)} images ({source}, {size}px)")
        return written
    texts = args.text or DEFAULT_TEXTS
    if tokenizer is not None:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        tokens = [tokenizer.convert_ids_to_tokens(row) for row in enc["input_ids"].tolist()]
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    else:
        ids = [[int(t) for t in text.split()] for text in texts]
        width = max(map(len, ids))
        input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        tokens = [[str(t) for t in row] for row in input_ids.tolist()]
    scores = interpret.channel_scores(model, inputs, chosen)
    for layer, s in scores.items():
        for ext in (".png", ".html"):
            path = out / f"gift_tokens_{_safe(layer)}{ext}"
            render.save_text_channel_view(s, tokens, path, k=args.top_k, attention_mask=inputs["attention_mask"],
                                             title=f"GIFT channels of {layer}", dpi=args.dpi)
            written.append(str(path))
    try:
        decoded = interpret.decode_gift_channels(model, None, tokenizer, args.top_k)
    except ValueError as err:
        print(f"note: no GIFT decoding ({err})")
    else:
        rows = {f"{layer} ch {j}": toks for layer, chans in decoded.items() for j, toks in enumerate(chans)}
        path = out / "gift_decode.md"
        _write_decode_md(path, "GIFT cluster vectors through the LM head", rows,
                         "Column j of C = W·φ, through the final norm and the LM head (direct path only).")
        written.append(str(path))
    return written


def lofit_outputs(model, tokenizer, config: dict, selected, args, out: Path) -> list[str]:
    written = []
    if config.get("mode") == "scale":
        path = out / "lofit_head_map.png"
        k = None if selected is not None else args.k
        if selected is None and k is None:
            total = int(np.isfinite(interpret.lofit_head_score_grid(model)).sum())
            k = max(1, round(0.03 * total))
        grid = render.save_lofit_head_map(model, path, selected=selected, k=k, dpi=args.dpi)
        np.save(out / "lofit_head_scores.npy", grid)
        written += [str(path), str(out / "lofit_head_scores.npy")]
        return written
    try:
        decoded = interpret.decode_lofit_offsets(model, tokenizer, args.top_k)
    except ValueError as err:
        print(f"note: no LoFiT decoding ({err})")
        return written
    path = out / "lofit_decode.md"
    _write_decode_md(path, "LoFiT offsets through the LM head", {f"layer {l}, head {h}": t for (l, h), t in
                                                                  decoded.items()},
                     "W_o[:, head]·v_h (what the head adds to the residual stream), through the final norm and the "
                     "LM head (direct path only).")
    written.append(str(path))
    return written


def _palette_png(path: Path) -> None:
    """Re-save a PNG with an adaptive 256-colour palette (about 3-4x smaller, for committing pictures)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def visualize(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adapters = [Path(a) for a in args.adapter]
    infos = {a: _adapter_info(a)[0] for a in adapters}
    bias_heads = None
    for cfg in infos.values():
        if cfg.get("peft_type") == "LOFIT" and cfg.get("mode") == "bias" and cfg.get("heads"):
            bias_heads = [tuple(h) for h in cfg["heads"]]
    summary = {"adapters": {}, "files": []}
    for a in adapters:
        t0 = time.time()
        model, tokenizer, config, base_path = load_adapted(a, args.base_model)
        kind = config.get("peft_type")
        sub = out if len(adapters) == 1 else out / _safe(a.name if a.name != "adapter" else a.parent.name + "_" + a.name)
        sub.mkdir(parents=True, exist_ok=True)
        if kind == "GIFT":
            files = gift_outputs(model, tokenizer, base_path, a, args, sub)
        elif kind == "LOFIT":
            files = lofit_outputs(model, tokenizer, config, bias_heads, args, sub)
        else:
            raise SystemExit(f"error: {a} holds a {kind} adapter; visualize.py handles GIFT and LOFIT adapters")
        if args.palette:
            for f in files:
                if f.endswith(".png"):
                    _palette_png(Path(f))
        summary["adapters"][str(a)] = {"type": kind, "base_model": base_path, "files": files,
                                       "seconds": round(time.time() - t0, 1)}
        summary["files"] += files
        for f in files:
            print(f"wrote {f}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ------------------------------------------------------------------------------------------------ smoke
def _tiny_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def _randomise(model, names: tuple[str, ...], std: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(f".{n}." in name for n in names):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def build_smoke(root: Path) -> tuple[list[str], object]:
    """Tiny random base models and adapters under ``root``; returns (adapter dirs, display images + labels)."""
    from peft import get_peft_model
    from PIL import Image
    from transformers import Dinov2Config, Dinov2ForImageClassification, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vit = Dinov2ForImageClassification(Dinov2Config(
        image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3)).eval()
    vit.save_pretrained(root / "vit")
    vit = Dinov2ForImageClassification.from_pretrained(root / "vit").eval()  # records name_or_path for the adapter
    gift = get_peft_model(vit, peft_gift.GiftConfig(r=4, target_modules=["o_proj"], modules_to_save=["classifier"]))
    _randomise(gift, ("gift_phi", "gift_psi"), 0.3, 1)
    gift.save_pretrained(root / "gift_vit")

    llama_cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(llama_cfg).save_pretrained(root / "llama")
    _tiny_tokenizer(96).save_pretrained(root / "llama")
    base = lambda: LlamaForCausalLM.from_pretrained(root / "llama").eval()  # noqa: E731
    gift_lm = get_peft_model(base(), peft_gift.GiftConfig(r=3, target_modules=["q_proj", "o_proj"],
                                                          task_type="CAUSAL_LM"))
    _randomise(gift_lm, ("gift_phi", "gift_psi"), 0.3, 2)
    gift_lm.save_pretrained(root / "gift_llama")
    scale = get_peft_model(base(), peft_gift.LofitConfig(mode="scale", init_std=0.2, task_type="CAUSAL_LM"))
    scale.save_pretrained(root / "lofit_scale")
    heads = peft_gift.select_heads(scale, k=3)
    offsets = get_peft_model(base(), peft_gift.lofit_stage2_config(scale, heads, init_std=0.5))
    offsets.save_pretrained(root / "lofit_bias")

    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    images = []
    for _ in range(2):  # smooth synthetic pictures: a coloured disc on a gradient
        cy, cx = torch.randint(8, 24, (2,), generator=g).tolist()
        disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < 40).float()
        rgb = torch.stack([xx / 31.0, yy / 31.0, disc], -1) * 255
        images.append(Image.fromarray(rgb.to(torch.uint8).numpy()))
    return [str(root / d) for d in ("gift_vit", "gift_llama", "lofit_scale", "lofit_bias")], (
        images, ["disc 0", "disc 1"], "synthetic smoke images")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", action="append", default=[], help="saved adapter directory (repeatable)")
    p.add_argument("--base-model", help="base model id/path/asset (default: from adapter_config.json)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--smoke", action="store_true", help="tiny random models + adapters in a temp dir, all outputs")
    p.add_argument("--images", nargs="+", help="image files for GIFT vision maps")
    p.add_argument("--cifar10", type=int, default=4, help="else: this many CIFAR-10 images (default 4)")
    p.add_argument("--image-size", type=int, help="model input size (default: the training run's, else the model's)")
    p.add_argument("--layer", action="append", help="GIFT layer(s) to draw (default: every adapted layer)")
    p.add_argument("--channels", type=int, nargs="+", help="GIFT channels to draw (default: all r)")
    p.add_argument("--text", action="append", help="prompt(s) for GIFT token views of text models (repeatable)")
    p.add_argument("--top-k", type=int, default=8, help="tokens listed per channel/head")
    p.add_argument("--k", type=int, help="LoFiT heads to mark when no bias adapter is given (default: 3%%)")
    p.add_argument("--dpi", type=int, default=80)
    p.add_argument("--palette", action="store_true", help="save PNGs with a 256-colour palette (small files)")
    p.add_argument("--cell-inches", type=float, default=1.1, help="size of one heat-map panel")
    args = p.parse_args(argv)
    if args.smoke == bool(args.adapter):
        p.error("pass --adapter DIR (one or more) or --smoke")
    t0 = time.time()
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="peft_gift_smoke_") as tmp:
            args.adapter, args._smoke_images = build_smoke(Path(tmp))
            args.text = args.text or ["w5 w17 w33 w2 w60 w61 w9", "w40 w41 w42 w7 w8"]
            summary = visualize(args)
    else:
        args._smoke_images = None
        summary = visualize(args)
    print(f"{len(summary['files'])} files in {args.out} ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
