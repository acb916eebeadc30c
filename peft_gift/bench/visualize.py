"""The adapter visualiser behind ``scripts/visualize.py``: pictures of what saved GIFT / LoFiT adapters learned.

Per adapter (its type is read from adapter_config.json):
  GIFT on a vision model   gift_maps_<layer>.png     per-channel cluster heat maps over the patches of each image
  GIFT on a text model     gift_tokens_<layer>.png/.html  which tokens score highest on each channel (--text)
                           gift_decode.md            columns of C = W·φ read through final norm + LM head (LMs)
  LoFiT scale (stage 1)    lofit_head_map.png        layers × heads ‖A_h‖₂; marked: the heads of a LoFiT bias
                                                     adapter given too, else the top --k
  LoFiT bias (stage 2)     lofit_decode.md           tokens each head's W_o[:, head]·v_h promotes (LMs)
and summary.json listing what was written. The base model defaults to adapter_config.json's
base_model_name_or_path; peft_gift asset names (dinov2-s14, smollm2-135m, ...) resolve to their local copies.
A GIFT adapter still at its initialisation (φψ = 0) is drawn with a warning in the log and in every title.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import interpret
from ..interpret import figures
from ..interpret._common import _resolve_names
from . import visualize_inputs as inputs
from .visualize_inputs import adapter_info, load_adapted

logger = logging.getLogger(__name__)

DEFAULT_TEXTS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Question: Which gas do plants absorb from the air? Answer: carbon dioxide",
]
UNTRAINED_NOTE = "untrained adapter, φψ = 0: the random initialisation, nothing learned"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _write_decode_md(path: Path, title: str, rows: dict, note: str) -> None:
    lines = [f"# {title}", "", note, "", "| | top tokens (logit) |", "|---|---|"]
    for key, tokens in rows.items():
        cells = ", ".join(f"`{str(t).replace('|', '¦')}` ({v:.2f})" for t, v in tokens)
        lines.append(f"| {key} | {cells} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _gift_vision(model, base_path: str, adapter_dir: Path, args, out: Path, chosen: list[str], note) -> list[str]:
    if args.images:
        images, labels, source = inputs.image_files(args.images)
    elif getattr(args, "_smoke_images", None) is not None:
        images, labels, source = args._smoke_images
    else:
        images, labels, source = inputs.cifar10_images(args.cifar10, adapter_dir)
    size = inputs.image_size(args.image_size, adapter_dir, model)
    pixel_values = inputs.pixel_values(images, size, *inputs.normalisation(base_path))
    display = [np.asarray(im.resize((size, size)), dtype=np.float32) / 255.0 for im in images]
    written = []
    for layer in chosen:
        path = out / f"gift_maps_{_safe(layer)}.png"
        figures.save_cluster_maps(model, pixel_values, path, layer=layer, images=display, channels=args.channels,
                                  labels=labels, cell_inches=args.cell_inches, dpi=args.dpi, note=note)
        written.append(str(path))
    logger.info("GIFT cluster maps of %d layers on %d images (%s, %dpx)", len(chosen), len(images), source, size)
    return written


def _gift_text(model, tokenizer, args, out: Path, chosen: list[str], note) -> list[str]:
    texts = args.text or DEFAULT_TEXTS
    batch, tokens = inputs.text_batch(texts, tokenizer)
    written = []
    for layer, s in interpret.channel_scores(model, batch, chosen).items():
        for ext in (".png", ".html"):
            path = out / f"gift_tokens_{_safe(layer)}{ext}"
            figures.save_text_channel_view(s, tokens, path, k=args.top_k, attention_mask=batch["attention_mask"],
                                           title=f"GIFT channels of {layer}", dpi=args.dpi, note=note)
            written.append(str(path))
    try:
        decoded = interpret.decode_gift_channels(model, None, tokenizer, args.top_k)
    except ValueError as err:
        logger.info("note: no GIFT decoding (%s)", err)
        return written
    rows = {f"{layer} ch {j}": toks for layer, chans in decoded.items() for j, toks in enumerate(chans)}
    path = out / "gift_decode.md"
    _write_decode_md(path, "GIFT cluster vectors through the LM head", rows,
                     "Column j of C = W·φ, through the final norm and the LM head (direct path only)."
                     + (f" **{UNTRAINED_NOTE}.**" if note else ""))
    return [*written, str(path)]


def gift_outputs(model, tokenizer, base_path: str, adapter_dir: Path, args, out: Path) -> list[str]:
    """The pictures of a GIFT adapter: cluster maps (vision) or token views and LM-head decoding (text)."""
    layers = interpret.gift_layer_names(model)
    chosen = layers if not args.layer else [
        _resolve_names(layers, [name], (n for n, _ in model.named_modules()), "a GIFT adapter")[0]
        for name in args.layer]
    note = None
    if figures.gift_is_untrained(model):
        note = UNTRAINED_NOTE
        logger.warning("%s is an untrained GIFT adapter (φψ = 0, as initialised): its pictures show the random "
                       "initial factor, not anything learned", adapter_dir)
    if getattr(model.get_base_model().config, "patch_size", None) is not None:
        return _gift_vision(model, base_path, adapter_dir, args, out, chosen, note)
    return _gift_text(model, tokenizer, args, out, chosen, note)


def lofit_outputs(model, tokenizer, config: dict, selected, args, out: Path) -> list[str]:
    """A scale adapter's head map (heads marked: ``selected``, else the top ``--k``), a bias adapter's decoding."""
    if config.get("mode") == "scale":
        path = out / "lofit_head_map.png"
        k = None if selected is not None else args.k
        if selected is None and k is None:
            total = int(np.isfinite(interpret.lofit_head_score_grid(model)).sum())
            k = max(1, round(0.03 * total))
        grid = figures.save_lofit_head_map(model, path, selected=selected, k=k, dpi=args.dpi)
        np.save(out / "lofit_head_scores.npy", grid)
        return [str(path), str(out / "lofit_head_scores.npy")]
    try:
        decoded = interpret.decode_lofit_offsets(model, tokenizer, args.top_k)
    except ValueError as err:
        logger.info("note: no LoFiT decoding (%s)", err)
        return []
    path = out / "lofit_decode.md"
    _write_decode_md(path, "LoFiT offsets through the LM head",
                     {f"layer {l}, head {h}": t for (l, h), t in decoded.items()},
                     "W_o[:, head]·v_h (what the head adds to the residual stream), through the final norm and the "
                     "LM head (direct path only).")
    return [str(path)]


def _palette_png(path: Path) -> None:
    """Re-save a PNG with an adaptive 256-colour palette (about 3-4x smaller, for committing pictures)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def _bias_heads(adapters: list[Path]):
    """The heads of the (last) LoFiT bias adapter among ``adapters``: the ones to mark on a scale adapter's map."""
    heads = None
    for a in adapters:
        cfg = adapter_info(a)[0]
        if cfg.get("peft_type") == "LOFIT" and cfg.get("mode") == "bias" and cfg.get("heads"):
            heads = [tuple(h) for h in cfg["heads"]]
    return heads


def _one_adapter(a: Path, args, out: Path, bias_heads) -> dict:
    t0 = time.time()
    model, tokenizer, config, base_path = load_adapted(a, args.base_model)
    kind = config.get("peft_type")
    out.mkdir(parents=True, exist_ok=True)
    if kind == "GIFT":
        files = gift_outputs(model, tokenizer, base_path, a, args, out)
    elif kind == "LOFIT":
        files = lofit_outputs(model, tokenizer, config, bias_heads, args, out)
    else:
        raise SystemExit(f"error: {a} holds a {kind} adapter; visualize.py handles GIFT and LOFIT adapters")
    if args.palette:
        for f in files:
            if f.endswith(".png"):
                _palette_png(Path(f))
    for f in files:
        logger.info("wrote %s", f)
    entry = {"type": kind, "base_model": base_path, "files": files, "seconds": round(time.time() - t0, 1)}
    if kind == "GIFT":
        entry["untrained"] = figures.gift_is_untrained(model)
    return entry


def visualize(args) -> dict:
    """Every output of every ``args.adapter`` under ``args.out`` (one subfolder per adapter when there are several);
    returns the summary written to ``summary.json``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adapters = [Path(a) for a in args.adapter]
    bias_heads = _bias_heads(adapters)
    summary = {"adapters": {}, "files": []}
    for a in adapters:
        sub = out if len(adapters) == 1 else out / _safe(a.name if a.name != "adapter" else a.parent.name + "_" + a.name)
        entry = _one_adapter(a, args, sub, bias_heads)
        summary["adapters"][str(a)] = entry
        summary["files"] += entry["files"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Pictures of what GIFT / LoFiT adapters learned, from saved adapter "
                                            "directories (see docs/interpretability.md).")
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
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.smoke == bool(args.adapter):
        p.error("pass --adapter DIR (one or more) or --smoke")
    t0 = time.time()
    args._smoke_images = None
    if args.smoke:
        from .visualize_smoke import SMOKE_TEXTS, build_smoke

        with tempfile.TemporaryDirectory(prefix="peft_gift_smoke_") as tmp:
            args.adapter, args._smoke_images = build_smoke(Path(tmp))
            args.text = args.text or SMOKE_TEXTS
            summary = visualize(args)
    else:
        summary = visualize(args)
    logger.info("%d files in %s (%.1f s)", len(summary["files"]), args.out, time.time() - t0)
    return 0
