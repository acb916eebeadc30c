"""Pictures of what GIFT / LoFiT adapters learned: cluster heat maps over images, token views, LoFiT head maps.

Rendering only (PNG through matplotlib's Agg backend, HTML); the numbers come from :mod:`peft_gift.interpret`.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .. import interpret
from ..lofit import select_heads

__all__ = ["save_cluster_maps", "save_lofit_head_map", "save_text_channel_view"]


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('Plotting needs matplotlib: pip install "peft-gift[train]"') from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _display_images(images, pixel_values: torch.Tensor) -> np.ndarray:
    """(batch, H, W, 3) float images in [0, 1]: the given images, else pixel_values min-max normalised per image."""
    if images is None:
        x = pixel_values.detach().float().cpu()
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        x = ((x - low) / (high - low).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()
        return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]
    out = []
    for image in images:
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ValueError(f"Display images must be (H, W, 3) arrays or PIL images, got shape {arr.shape}.")
        arr = arr[..., :3]
        out.append(arr / 255.0 if arr.max() > 1.0 else arr)
    if len(out) != pixel_values.shape[0]:
        raise ValueError(f"Got {len(out)} display images for a batch of {pixel_values.shape[0]} pixel_values.")
    return out


def _overlay(image: np.ndarray, heat: np.ndarray, alpha: float, cmap) -> np.ndarray:
    """Blend the JET-coloured heat map (upsampled bilinearly to the image size) over the image."""
    size = image.shape[:2]
    up = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(heat))[None, None].float(), size=size, mode="bilinear",
        align_corners=False,
    )[0, 0].clamp(0, 1).numpy()
    coloured = cmap(up)[..., :3]
    return np.clip((1.0 - alpha) * image + alpha * coloured, 0.0, 1.0)


def save_cluster_maps(
    model: nn.Module,
    pixel_values: torch.Tensor,
    path: Union[str, Path],
    layer: Optional[str] = None,
    images: Optional[Sequence[Any]] = None,
    channels: Optional[Sequence[int]] = None,
    adapter_name: Optional[str] = None,
    output: Literal["adapted", "base"] = "adapted",
    num_prefix_tokens: Optional[int] = None,
    alpha: float = 0.5,
    threshold: float = 0.5,
    labels: Optional[Sequence[str]] = None,
    cell_inches: float = 1.1,
    dpi: int = 80,
) -> torch.Tensor:
    """Draw GIFT's per-channel cluster heat maps of one layer over a batch of images and save them as a PNG.

    One row per image: the image, then one panel per channel j showing the normalised map of s_ij over the patches
    (min-max per map, values < ``threshold`` zeroed, JET colours blended with weight ``alpha`` over the image). CLS and
    register tokens are dropped (``num_prefix_tokens``; inferred from the token count by default).

    Args:
        model: PEFT model with a GIFT adapter on a ViT/DINOv2-style model.
        pixel_values: (batch, channels, H, W) model inputs; checked by :func:`patch_grid`.
        path: output PNG.
        layer: the GIFT layer to show; required when the adapter adapts more than one layer.
        images: optional display images (PIL or (H, W, 3) arrays, any size) — default: ``pixel_values`` rescaled.
        channels: channel indices to draw (default: all r).
        labels: optional row titles (e.g. class names).

    Returns:
        The (batch, r, rows, cols) heat maps that were drawn (all channels).
    """
    grid = interpret.patch_grid(model, pixel_values)
    if layer is None:
        names = interpret.gift_layer_names(model, adapter_name)
        if len(names) != 1:
            raise ValueError(f"Pass `layer`: the GIFT adapter adapts {len(names)} layers: {names}.")
        layer = names[0]
    scores = interpret.channel_scores(model, {"pixel_values": pixel_values}, [layer], adapter_name, output)
    maps = interpret.patch_heatmaps(next(iter(scores.values())), grid, num_prefix_tokens, threshold)
    rank = maps.shape[1]
    channels = list(range(rank)) if channels is None else list(channels)
    bad = [c for c in channels if not isinstance(c, int) or not 0 <= c < rank]
    if bad:
        raise ValueError(f"Channels {bad} do not exist; valid channels are 0..{rank - 1}.")
    shown = _display_images(images, pixel_values)
    plt = _require_matplotlib()
    cmap = plt.get_cmap("jet")
    batch = maps.shape[0]
    fig, axes = plt.subplots(
        batch, len(channels) + 1, figsize=(cell_inches * (len(channels) + 1), cell_inches * batch + 0.3),
        squeeze=False,
    )
    for b in range(batch):
        axes[b, 0].imshow(shown[b])
        axes[b, 0].set_title(labels[b] if labels is not None else "image", fontsize=7)
        for col, c in enumerate(channels, start=1):
            axes[b, col].imshow(_overlay(shown[b], maps[b, c].numpy(), alpha, cmap))
            if b == 0:
                axes[b, col].set_title(f"ch {c}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"GIFT channels of {layer}", fontsize=8)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return maps


def save_text_channel_view(
    scores: torch.Tensor,
    tokens: Sequence[Sequence[str]],
    path: Union[str, Path],
    k: int = 5,
    attention_mask: Optional[torch.Tensor] = None,
    title: str = "GIFT channel scores",
    dpi: int = 80,
) -> Path:
    """Save which tokens score highest on each GIFT channel.

    ``.html``: one row per channel with its top-``k`` tokens and every sequence coloured by the channel's min-max
    normalised score (values < 0.5 left white, as for the image maps). ``.png``: one heat map per sequence, channels ×
    tokens (min-max normalised per channel), with the top-``k`` tokens per channel listed beside it.
    """
    path = Path(path)
    top = interpret.top_tokens_per_channel(scores, tokens, k, attention_mask)
    batch, seq, rank = scores.shape
    mask = torch.ones(batch, seq) if attention_mask is None else attention_mask.float()
    path.parent.mkdir(parents=True, exist_ok=True)
    s = scores.float()
    low = torch.where(mask[..., None] > 0, s, torch.full_like(s, math.inf)).amin(dim=(0, 1))
    high = torch.where(mask[..., None] > 0, s, torch.full_like(s, -math.inf)).amax(dim=(0, 1))
    norm = ((s - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    if path.suffix.lower() == ".html":
        rows = []
        for j in range(rank):
            best = ", ".join(f"<b>{html.escape(t)}</b>&nbsp;({v:.2f})" for t, _, _, v in top[j])
            seqs = []
            for b in range(batch):
                spans = []
                for i in range(seq):
                    if mask[b, i] == 0:
                        continue
                    v = float(norm[b, i, j])
                    shade = 0.0 if v < 0.5 else v
                    colour = f"rgba(220,40,40,{shade:.2f})"
                    spans.append(f'<span style="background:{colour}" title="{float(s[b, i, j]):.3f}">'
                                 f"{html.escape(tokens[b][i])}</span>")
                seqs.append(" ".join(spans))
            rows.append(f"<tr><td>ch {j}</td><td>{best}</td><td>{'<br>'.join(seqs)}</td></tr>")
        path.write_text(
            "<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>td{border:1px solid #ccc;padding:4px;font-family:monospace;vertical-align:top}</style>"
            f"<h3>{html.escape(title)}</h3><table><tr><th>channel</th><th>top {k} tokens</th><th>per-token score "
            "(min-max per channel, &lt; 0.5 blank)</th></tr>" + "".join(rows) + "</table>\n",
            encoding="utf-8",
        )
        return path
    if path.suffix.lower() != ".png":
        raise ValueError(f"`path` must end in .png or .html, got {path.name!r}.")
    plt = _require_matplotlib()
    fig, axes = plt.subplots(
        batch, 2, figsize=(max(4.0, 0.35 * seq) + 3.2, max(1.6, 0.28 * rank + 0.9) * batch), squeeze=False,
        gridspec_kw={"width_ratios": [max(4.0, 0.35 * seq), 3.2]},
    )
    for b in range(batch):
        ax = axes[b, 0]
        ax.imshow((norm[b] * mask[b][:, None]).T.numpy(), cmap="jet", aspect="auto", vmin=0, vmax=1)
        ax.set_xticks(range(seq))
        ax.set_xticklabels([t if mask[b, i] else "" for i, t in enumerate(tokens[b])], rotation=90, fontsize=7)
        ax.set_yticks(range(rank))
        ax.set_yticklabels([f"ch {j}" for j in range(rank)], fontsize=7)
        ax.set_title(f"{title} — sequence {b}", fontsize=8)
        text = axes[b, 1]
        text.axis("off")
        if b == 0:
            lines = [f"ch {j}: " + " ".join(repr(t) for t, _, _, _ in top[j]) for j in range(rank)]
            text.text(0, 1, f"top {k} tokens (whole batch)\n" + "\n".join(lines), va="top", fontsize=6,
                      family="monospace")
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def save_lofit_head_map(
    model: nn.Module,
    path: Union[str, Path],
    selected: Optional[Sequence[tuple[int, int]]] = None,
    k: Optional[int] = None,
    adapter_name: Optional[str] = None,
    title: Optional[str] = None,
    dpi: int = 80,
) -> np.ndarray:
    """Save a layers × heads heat map of ‖A_h‖₂ (scale adapter) as PNG with the selected heads marked.

    The marked heads are ``selected`` if given, else the top ``k`` by :func:`peft_gift.select_heads` (nothing marked
    when both are None). Returns the grid that was drawn (see :func:`lofit_head_score_grid`).
    """
    grid = interpret.lofit_head_score_grid(model, adapter_name)
    if selected is None and k is not None:
        selected = select_heads(model, k=k, adapter_name=adapter_name)
    selected = [tuple(int(v) for v in pair) for pair in (selected or [])]
    outside = [p for p in selected if not (0 <= p[0] < grid.shape[0] and 0 <= p[1] < grid.shape[1])]
    if outside:
        raise ValueError(f"Selected heads {outside} are outside the {grid.shape[0]} layers × {grid.shape[1]} heads grid.")
    plt = _require_matplotlib()
    layers, heads = grid.shape
    fig, ax = plt.subplots(
        figsize=(min(12.0, max(4.0, 1.6 + 0.32 * heads)), min(10.0, max(2.8, 1.2 + 0.28 * layers)))
    )
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="‖A_h‖₂")
    if selected:
        ax.scatter([h for _, h in selected], [l for l, _ in selected], marker="s", s=60, facecolors="none",
                   edgecolors="red", linewidths=1.5)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(0, heads, max(1, heads // 16)))
    ax.set_yticks(range(0, layers, max(1, layers // 16)))
    title = title or "LoFiT stage-1 head scores ‖A_h‖₂"
    if selected:
        title += f"\n(red squares: {len(selected)} selected heads)"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return grid
