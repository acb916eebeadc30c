"""Pictures of the read-outs (PNG through matplotlib's Agg backend, HTML): GIFT cluster maps, token views, head maps.

The numbers come from this package's read-outs; here they are only drawn. Every title is wrapped to the width it is
drawn in, padded positions (attention mask 0) are left out of token views, and a ``note`` (e.g. "untrained adapter")
is added to every title of a figure.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..lofit import select_heads
from .gift import (
    _gift_adapter,
    _gift_layers,
    channel_scores,
    gift_layer_names,
    patch_grid,
    patch_heatmaps,
    top_tokens_per_channel,
)
from .lofit import lofit_head_score_grid

__all__ = ["gift_is_untrained", "save_cluster_maps", "save_lofit_head_map", "save_text_channel_view"]

# average advance of a character of a title in matplotlib's default font (DejaVu Sans), in units of the font size:
# module names measure about 0.55
_CHAR_EM = 0.6


def gift_is_untrained(model: nn.Module, adapter_name: Optional[str] = None) -> bool:
    """Whether GIFT adapter ``adapter_name`` (default: the active one) is still at its initialisation: φψ = 0 in every
    group because ψ = 0 (``init="gift"``) or φ = 0 (``init="wegeft"``). Its channel maps then show the random
    initial factor, not anything learned."""
    adapter_name, _ = _gift_adapter(model, adapter_name)
    for layer in _gift_layers(model, adapter_name).values():
        phi, psi = layer.theta(adapter_name)
        if bool(phi.detach().any()) and bool(psi.detach().any()):
            return False
    return True


def _wrap(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_inches`` at ``fontsize``: after spaces and dots (module names),
    inside a word only when the word alone is too long."""
    width = max(8, int(width_inches * 72 / (_CHAR_EM * fontsize)))
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for piece in re.findall(r"[^ .]*[ .]?", paragraph):
            while len(piece) > width:
                if line:
                    lines.append(line.rstrip())
                    line = ""
                lines.append(piece[:width])
                piece = piece[width:]
            if line and len(line) + len(piece.rstrip()) > width:
                lines.append(line.rstrip())
                line = ""
            line += piece
        lines.append(line.rstrip())
    return "\n".join(lines)


def _titled(title: str, note: Optional[str]) -> str:
    return title if not note else f"{title}\n({note})"


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('Plotting needs matplotlib: pip install "peft-gift[train]"') from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _display_images(images, pixel_values: torch.Tensor):
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
    up = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(heat))[None, None].float(), size=image.shape[:2], mode="bilinear",
        align_corners=False,
    )[0, 0].clamp(0, 1).numpy()
    return np.clip((1.0 - alpha) * image + alpha * cmap(up)[..., :3], 0.0, 1.0)


def _cluster_maps(model, pixel_values, layer, adapter_name, output, num_prefix_tokens, threshold, channels):
    grid = patch_grid(model, pixel_values)
    if layer is None:
        names = gift_layer_names(model, adapter_name)
        if len(names) != 1:
            raise ValueError(f"Pass `layer`: the GIFT adapter adapts {len(names)} layers: {names}.")
        layer = names[0]
    scores = channel_scores(model, {"pixel_values": pixel_values}, [layer], adapter_name, output)
    maps = patch_heatmaps(next(iter(scores.values())), grid, num_prefix_tokens, threshold)
    rank = maps.shape[1]
    channels = list(range(rank)) if channels is None else list(channels)
    bad = [c for c in channels if not isinstance(c, int) or not 0 <= c < rank]
    if bad:
        raise ValueError(f"Channels {bad} do not exist; valid channels are 0..{rank - 1}.")
    return layer, maps, channels


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
    note: Optional[str] = None,
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
        note: a line added to the figure title (e.g. that the adapter is untrained).

    Returns the (batch, r, rows, cols) heat maps that were drawn (all channels).
    """
    layer, maps, channels = _cluster_maps(model, pixel_values, layer, adapter_name, output, num_prefix_tokens,
                                          threshold, channels)
    shown = _display_images(images, pixel_values)
    plt = _require_matplotlib()
    cmap = plt.get_cmap("jet")
    batch, width = maps.shape[0], cell_inches * (len(channels) + 1)
    title = _wrap(_titled(f"GIFT channels of {layer}", note), width - 0.2, 8)
    title_inches = 0.2 + 8 * 1.3 / 72 * (title.count("\n") + 1)  # 8 pt lines at 1.3 line spacing, plus a margin
    fig, axes = plt.subplots(batch, len(channels) + 1, figsize=(width, cell_inches * batch + 0.1 + title_inches),
                             squeeze=False)
    for b in range(batch):
        axes[b, 0].imshow(shown[b])
        axes[b, 0].set_title(_wrap(labels[b] if labels is not None else "image", cell_inches, 7), fontsize=7)
        for col, c in enumerate(channels, start=1):
            axes[b, col].imshow(_overlay(shown[b], maps[b, c].numpy(), alpha, cmap))
            if b == 0:
                axes[b, col].set_title(f"ch {c}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 1 - title_inches / fig.get_figheight()))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return maps


def _normalised(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scores min-max normalised per channel over the unpadded positions of the batch."""
    s = scores.float()
    low = torch.where(mask[..., None] > 0, s, torch.full_like(s, math.inf)).amin(dim=(0, 1))
    high = torch.where(mask[..., None] > 0, s, torch.full_like(s, -math.inf)).amax(dim=(0, 1))
    return ((s - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)


def _text_html(path: Path, scores, norm, tokens, mask, top, k: int, title: str) -> None:
    rank = scores.shape[2]
    rows = []
    for j in range(rank):
        best = ", ".join(f"<b>{html.escape(t)}</b>&nbsp;({v:.2f})" for t, _, _, v in top[j])
        seqs = []
        for b in range(scores.shape[0]):
            spans = []
            for i in mask[b].nonzero().flatten().tolist():
                v = float(norm[b, i, j])
                colour = f"rgba(220,40,40,{0.0 if v < 0.5 else v:.2f})"
                spans.append(f'<span style="background:{colour}" title="{float(scores[b, i, j]):.3f}">'
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


def _text_png(path: Path, norm, tokens, mask, top, k: int, title: str, dpi: int) -> None:
    """One heat map per sequence over its unpadded positions only (channels × tokens), the top tokens beside it."""
    plt = _require_matplotlib()
    batch, _, rank = norm.shape
    kept = [mask[b].nonzero().flatten().tolist() for b in range(batch)]
    width = max(1, max(map(len, kept)))
    map_inches = max(4.0, 0.35 * width)
    titles = [_wrap(f"{title} — sequence {b}", map_inches + 0.3, 8) for b in range(batch)]
    row_inches = max(1.6, 0.28 * rank + 0.9) + 0.15 * max(t.count("\n") for t in titles)
    fig, axes = plt.subplots(batch, 2, figsize=(map_inches + 3.2, row_inches * batch), squeeze=False,
                             gridspec_kw={"width_ratios": [map_inches, 3.2]})
    for b in range(batch):
        ax = axes[b, 0]
        if kept[b]:
            ax.imshow(norm[b, kept[b]].T.numpy(), cmap="jet", aspect="auto", vmin=0, vmax=1)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_xticks(range(len(kept[b])))
        ax.set_xticklabels([tokens[b][i] for i in kept[b]], rotation=90, fontsize=7)
        ax.set_yticks(range(rank))
        ax.set_yticklabels([f"ch {j}" for j in range(rank)], fontsize=7)
        ax.set_title(titles[b], fontsize=8)
        text = axes[b, 1]
        text.axis("off")
        if b == 0:
            lines = [f"ch {j}: " + " ".join(repr(t) for t, _, _, _ in top[j]) for j in range(rank)]
            text.text(0, 1, f"top {k} tokens (whole batch)\n" + "\n".join(lines), va="top", fontsize=6,
                      family="monospace")
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def save_text_channel_view(
    scores: torch.Tensor,
    tokens: Sequence[Sequence[str]],
    path: Union[str, Path],
    k: int = 5,
    attention_mask: Optional[torch.Tensor] = None,
    title: str = "GIFT channel scores",
    dpi: int = 80,
    note: Optional[str] = None,
) -> Path:
    """Save which tokens score highest on each GIFT channel; padded positions (``attention_mask`` 0) are left out.

    ``.html``: one row per channel with its top-``k`` tokens and every sequence coloured by the channel's min-max
    normalised score (values < 0.5 left white, as for the image maps). ``.png``: one heat map per sequence, channels ×
    tokens (min-max normalised per channel), with the top-``k`` tokens per channel listed beside it. ``note`` is added
    to the title.
    """
    path = Path(path)
    if path.suffix.lower() not in (".png", ".html"):
        raise ValueError(f"`path` must end in .png or .html, got {path.name!r}.")
    top = top_tokens_per_channel(scores, tokens, k, attention_mask)
    batch, seq, _ = scores.shape
    mask = torch.ones(batch, seq) if attention_mask is None else attention_mask.float().cpu()
    norm = _normalised(scores.cpu(), mask)
    title = _titled(title, note)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".html":
        _text_html(path, scores.cpu(), norm, tokens, mask, top, k, title.replace("\n", " "))
    else:
        _text_png(path, norm, tokens, mask, top, k, title, dpi)
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
    grid = lofit_head_score_grid(model, adapter_name)
    if selected is None and k is not None:
        selected = select_heads(model, k=k, adapter_name=adapter_name)
    selected = [tuple(int(v) for v in pair) for pair in (selected or [])]
    outside = [p for p in selected if not (0 <= p[0] < grid.shape[0] and 0 <= p[1] < grid.shape[1])]
    if outside:
        raise ValueError(f"Selected heads {outside} are outside the {grid.shape[0]} layers × {grid.shape[1]} heads grid.")
    plt = _require_matplotlib()
    layers, heads = grid.shape
    width = min(12.0, max(4.0, 1.6 + 0.32 * heads))
    fig, ax = plt.subplots(figsize=(width, min(10.0, max(2.8, 1.2 + 0.28 * layers))))
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
    ax.set_title(_wrap(title, width - 0.4, 9), fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return grid
