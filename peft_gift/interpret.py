"""Interpretability tools for GIFT and LoFiT adapters.

Everything here reads a model without changing it: activations are captured with forward hooks that are removed
before the function returns, parameters are only read, and the train/eval mode is restored.

GIFT (Ŵ = W(I + s·φψ), see :class:`peft_gift.GiftConfig`)
    * :func:`cluster_vectors` — C = W·φ (d_out × r) per adapted layer, W the *unmerged* frozen weight.
    * :func:`channel_scores` — s_ij = y_i · C[:, j] for every token i and channel j on given inputs, where y_i is the
      output of the adapted layer for token i.
    * :func:`patch_heatmaps`, :func:`save_cluster_maps` — per-channel heat maps over ViT/DINOv2 patches, normalised and
      drawn as in the GIFT paper (min-max per map, values < 0.5 zeroed, JET colours blended over the image).
    * :func:`save_text_channel_view` — which tokens score highest on each channel (PNG or HTML).
    * :func:`decode_gift_channels` — the columns of C read through the final norm and the LM head.

LoFiT (z_h ← (1 + A_h) ⊙ z_h + v_h, see :class:`peft_gift.LofitConfig`)
    * :func:`lofit_head_score_grid`, :func:`save_lofit_head_map` — layers × heads map of ‖A_h‖₂ of a scale adapter,
      selected heads marked.
    * :func:`lofit_offset_vectors`, :func:`decode_lofit_offsets` — what each offset head writes into the residual
      stream (W_o[:, head] · v_h) and the tokens it promotes through the final norm and the LM head.

Plotting needs matplotlib (``pip install "peft-gift[examples]"``); it always uses the non-interactive Agg backend.
"""

from __future__ import annotations

import html
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .gift.config import GiftConfig
from .gift.layer import GiftLayer
from .lofit.config import LofitConfig
from .lofit.layer import LofitLayer

__all__ = [
    "gift_layer_names",
    "cluster_vectors",
    "channel_scores",
    "patch_grid",
    "patch_heatmaps",
    "save_cluster_maps",
    "top_tokens_per_channel",
    "save_text_channel_view",
    "decode_vectors",
    "decode_gift_channels",
    "lofit_head_score_grid",
    "save_lofit_head_map",
    "lofit_offset_vectors",
    "decode_lofit_offsets",
]

_PEFT_PREFIX = "base_model.model."


# ---------------------------------------------------------------------------------------------------- helpers
def _adapter_and_config(model: nn.Module, adapter_name: Optional[str], config_cls, kind: str):
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        raise ValueError(f"Expected a PEFT model with a {kind} adapter (the model has no `peft_config`).")
    mine = {name: cfg for name, cfg in configs.items() if isinstance(cfg, config_cls)}
    if adapter_name is None:
        active = getattr(model, "active_adapter", None)
        if isinstance(active, (list, tuple)):
            active = active[0] if len(active) == 1 else None
        if active in mine:
            adapter_name = active
        elif len(mine) == 1:
            adapter_name = next(iter(mine))
        elif not mine:
            raise ValueError(
                f"The model has no {kind} adapter; its adapters are "
                f"{ {n: type(c).__name__ for n, c in configs.items()} }."
            )
        else:
            raise ValueError(f"Several {kind} adapters ({sorted(mine)}); pass `adapter_name`.")
    if adapter_name not in configs:
        raise ValueError(f"Adapter {adapter_name!r} does not exist; the model's adapters are {sorted(configs)}.")
    if adapter_name not in mine:
        raise ValueError(
            f"Adapter {adapter_name!r} is a {type(configs[adapter_name]).__name__}, not a {config_cls.__name__}; "
            f"{kind} adapters of this model: {sorted(mine)}."
        )
    return adapter_name, configs[adapter_name]


def _short(name: str) -> str:
    return name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name


def _hf_model(model: nn.Module) -> nn.Module:
    """The wrapped transformers model of a PeftModel / tuner (or the model itself)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    inner = getattr(model, "model", None)
    if hasattr(model, "peft_config") and isinstance(inner, nn.Module):
        return inner
    return model


def _resolve_names(available: Sequence[str], wanted, all_modules: Iterable[str], what: str) -> list[str]:
    """Map user names (full names, names without the PEFT prefix, or unique dotted suffixes) to ``available``."""
    if wanted is None:
        return list(available)
    if isinstance(wanted, str):
        wanted = [wanted]
    all_short = {_short(n) for n in all_modules}
    out = []
    for item in wanted:
        if not isinstance(item, str):
            raise ValueError(f"Layer names must be strings, got {item!r}; modules with {what}: {list(available)}.")
        key = _short(item)
        matches = [a for a in available if a == key or a.endswith("." + key)]
        if len(matches) == 1:
            out.append(matches[0])
            continue
        if len(matches) > 1:
            raise ValueError(f"{item!r} matches several modules with {what}: {matches}; use a full module name.")
        exists = any(n == key or n.endswith("." + key) for n in all_short)
        reason = f"has no {what}" if exists else "is not a module of this model"
        raise ValueError(f"Module {item!r} {reason}. Modules with {what}: {list(available)}.")
    return out


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _run_model(model: nn.Module, inputs) -> None:
    if isinstance(inputs, Mapping):
        model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        model(*inputs)
    else:
        model(inputs)


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('Plotting needs matplotlib: pip install "peft-gift[examples]"') from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------------- GIFT
def _gift_layers(model: nn.Module, adapter_name: str) -> dict[str, GiftLayer]:
    return {
        _short(name): module
        for name, module in model.named_modules()
        if isinstance(module, GiftLayer) and adapter_name in module.gift_group
    }


def gift_layer_names(model: nn.Module, adapter_name: Optional[str] = None) -> list[str]:
    """Names (without the ``base_model.model.`` prefix) of the layers adapted by GIFT adapter ``adapter_name``
    (default: the active GIFT adapter)."""
    adapter_name, _ = _adapter_and_config(model, adapter_name, GiftConfig, "GIFT")
    return list(_gift_layers(model, adapter_name))


def _selected_gift_layers(model, layers, adapter_name) -> tuple[str, dict[str, GiftLayer]]:
    adapter_name, _ = _adapter_and_config(model, adapter_name, GiftConfig, "GIFT")
    found = _gift_layers(model, adapter_name)
    if not found:
        raise ValueError(f"GIFT adapter {adapter_name!r} adapts no layer of this model.")
    names = _resolve_names(
        list(found), layers, (n for n, _ in model.named_modules()), f"GIFT adapter {adapter_name!r}"
    )
    return adapter_name, {name: found[name] for name in names}


def cluster_vectors(
    model: nn.Module, layers: Union[str, Sequence[str], None] = None, adapter_name: Optional[str] = None
) -> dict[str, torch.Tensor]:
    """GIFT cluster vectors C = W·φ (d_out × r, float32) per adapted layer.

    W is the layer's original (*unmerged*) frozen weight in (out, in) layout — for GPT-2 ``Conv1D``, whose weight is
    stored as (in, out), W = weight.T — and φ (d_in × r) is the Θ of the layer's sharing group. Since
    Ŵ = W + s·(W·φ)·ψ, column j of C is the direction the adapter writes along for channel j.

    Args:
        model: a PEFT model with a GIFT adapter.
        layers: module names (full, without ``base_model.model.``, or a unique dotted suffix such as
            ``"layers.0.self_attn.q_proj"``); ``None`` means every layer the adapter adapts.
        adapter_name: the GIFT adapter (default: the active one).

    Returns:
        ``{layer name: C}`` in the order of the model's modules.

    Raises:
        ValueError: a requested module does not exist or has no GIFT adapter (the message lists the valid names).
    """
    adapter_name, selected = _selected_gift_layers(model, layers, adapter_name)
    out = {}
    with torch.no_grad():
        for name, layer in selected.items():
            phi, _ = layer.theta(adapter_name)
            weight = layer.unmerged_weight().detach()
            out[name] = (weight @ phi.detach().to(device=weight.device, dtype=torch.float64)).float()
    return out


def channel_scores(
    model: nn.Module,
    inputs: Any,
    layers: Union[str, Sequence[str], None] = None,
    adapter_name: Optional[str] = None,
    output: Literal["adapted", "base"] = "adapted",
) -> dict[str, torch.Tensor]:
    """Per-token GIFT channel scores s_ij = y_i · C[:, j] with C = W·φ (see :func:`cluster_vectors`).

    Which y: following the GIFT paper, y_i is the **output of the adapted layer** for token i, exactly as it runs
    inside the model on ``inputs``: y_i = Ŵ x_i + b = W(x_i + s·φψx_i) + b, with x_i the layer's input for token i and b
    its bias (also when the adapter is merged). With ``output="base"`` y_i is the frozen layer's output W x_i + b on the
    same input x_i instead (the activations upstream of the layer still come from the adapted model).

    The model runs once, in eval mode and under ``torch.no_grad()``; forward hooks on the selected GIFT layers capture
    y and are removed afterwards. Nothing else changes.

    Args:
        model: a PEFT model with a GIFT adapter.
        inputs: what the model is called with: a mapping (``model(**inputs)``), a tuple/list (``model(*inputs)``) or
            a tensor (``model(inputs)``).
        layers, adapter_name: as in :func:`cluster_vectors`.
        output: ``"adapted"`` (default, the paper's choice) or ``"base"``.

    Returns:
        ``{layer name: scores}`` with scores of shape ``y.shape[:-1] + (r,)`` in float32, e.g. (batch, tokens, r).
    """
    if output not in ("adapted", "base"):
        raise ValueError(f"`output` must be 'adapted' or 'base', got {output!r}.")
    centres = cluster_vectors(model, layers, adapter_name)
    adapter_name, selected = _selected_gift_layers(model, list(centres), adapter_name)
    weights = {name: layer.unmerged_weight().detach() for name, layer in selected.items()} if output == "base" else {}
    captured: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module, args, result):
            if output == "adapted":
                y = result[0] if isinstance(result, tuple) else result
                y = y.detach().double()
            else:
                x = args[0].detach().double()
                y = x @ weights[name].to(x.device).T
                bias = getattr(module.get_base_layer(), "bias", None)
                if bias is not None:
                    y = y + bias.detach().double().to(y.device)
            if name in captured:
                raise ValueError(
                    f"Layer {name!r} ran more than once in one forward pass; channel scores need one call per layer."
                )
            captured[name] = y

        return hook

    handles = [layer.register_forward_hook(make_hook(name)) for name, layer in selected.items()]
    try:
        with _eval_mode(model), torch.no_grad():
            _run_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in centres if name not in captured]
    if missing:
        raise ValueError(f"Layers {missing} did not run on these inputs; check `inputs` and `layers`.")
    return {name: (captured[name] @ centres[name].to(captured[name].device).double()).float() for name in centres}


def patch_grid(model: nn.Module, pixel_values: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) of the patch grid a ViT/DINOv2-style model produces for ``pixel_values``, after checking the images.

    Raises:
        ValueError: not a (batch, channels, height, width) tensor, wrong number of channels, a side that is not a
            multiple of the patch size, or (for models with fixed position embeddings, e.g. ViT) a size other than
            ``config.image_size``.
    """
    config = getattr(_hf_model(model), "config", None)
    patch = getattr(config, "patch_size", None)
    if patch is None:
        raise ValueError("The model config has no `patch_size`; patch heat maps need a ViT/DINOv2-style model.")
    patch = tuple(patch) if isinstance(patch, (list, tuple)) else (patch, patch)
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a (batch, channels, height, width) tensor, got {shape}.")
    _, channels, height, width = pixel_values.shape
    want_channels = getattr(config, "num_channels", channels)
    if channels != want_channels:
        raise ValueError(f"Images have {channels} channels; the model expects num_channels={want_channels}.")
    if height % patch[0] or width % patch[1]:
        raise ValueError(
            f"Image size {height}x{width} is not a multiple of the patch size {patch[0]}x{patch[1]}; valid sizes "
            f"are multiples of it (the model's own size is {getattr(config, 'image_size', '?')})."
        )
    image_size = getattr(config, "image_size", None)
    if getattr(config, "model_type", "") in ("vit", "deit") and image_size is not None:
        expected = tuple(image_size) if isinstance(image_size, (list, tuple)) else (image_size, image_size)
        if (height, width) != expected:
            raise ValueError(
                f"Image size {height}x{width} does not match this {config.model_type} model, whose position "
                f"embeddings are fixed to image_size={expected[0]}x{expected[1]}; resize the images to that size."
            )
    return height // patch[0], width // patch[1]


def patch_heatmaps(
    scores: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: Optional[int] = None, threshold: float = 0.5
) -> torch.Tensor:
    """Per-channel heat maps over image patches, normalised as in the GIFT paper.

    Args:
        scores: (batch, tokens, r) channel scores of one layer (from :func:`channel_scores`).
        grid: (rows, cols) of the patch grid (see :func:`patch_grid`).
        num_prefix_tokens: tokens before the patches (CLS and register tokens) that are dropped; ``None`` infers
            ``tokens - rows*cols``.
        threshold: after min-max normalising each (image, channel) map to [0, 1], values below this are set to 0.

    Returns:
        (batch, r, rows, cols) float32 maps in [0, 1].
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be (batch, tokens, r), got shape {tuple(scores.shape)}.")
    rows, cols = grid
    tokens = scores.shape[1]
    if num_prefix_tokens is None:
        num_prefix_tokens = tokens - rows * cols
    if num_prefix_tokens < 0 or tokens - num_prefix_tokens != rows * cols:
        raise ValueError(
            f"{tokens} tokens minus {num_prefix_tokens} prefix tokens do not fill a {rows}x{cols} patch grid "
            f"({rows * cols} patches); wrong image size or num_prefix_tokens?"
        )
    maps = scores[:, num_prefix_tokens:, :].float().transpose(1, 2).reshape(scores.shape[0], scores.shape[2], rows, cols)
    low = maps.amin(dim=(2, 3), keepdim=True)
    high = maps.amax(dim=(2, 3), keepdim=True)
    maps = (maps - low) / (high - low).clamp_min(1e-12)
    return torch.where(maps < threshold, torch.zeros_like(maps), maps)


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
    grid = patch_grid(model, pixel_values)
    adapter_name, _ = _adapter_and_config(model, adapter_name, GiftConfig, "GIFT")
    if layer is None:
        names = list(_gift_layers(model, adapter_name))
        if len(names) != 1:
            raise ValueError(f"Pass `layer`: GIFT adapter {adapter_name!r} adapts {len(names)} layers: {names}.")
        layer = names[0]
    scores = channel_scores(model, {"pixel_values": pixel_values}, [layer], adapter_name, output)
    maps = patch_heatmaps(next(iter(scores.values())), grid, num_prefix_tokens, threshold)
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


def top_tokens_per_channel(
    scores: torch.Tensor,
    tokens: Sequence[Sequence[str]],
    k: int = 5,
    attention_mask: Optional[torch.Tensor] = None,
) -> list[list[tuple[str, int, int, float]]]:
    """For each channel j, the ``k`` highest-scoring tokens over the batch: ``[(token, sequence, position, score)]``.

    Args:
        scores: (batch, seq, r) channel scores of one layer.
        tokens: token strings per sequence (``tokens[b][i]`` for position i).
        attention_mask: (batch, seq); positions with 0 (padding) are never picked.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be (batch, seq, r), got shape {tuple(scores.shape)}.")
    batch, seq, rank = scores.shape
    if len(tokens) != batch or any(len(t) != seq for t in tokens):
        raise ValueError(f"`tokens` must hold {batch} sequences of {seq} token strings to match the scores.")
    flat = scores.float().reshape(batch * seq, rank).clone()
    if attention_mask is not None:
        flat[attention_mask.reshape(-1) == 0] = -math.inf
    k = min(k, int(torch.isfinite(flat[:, 0]).sum()))
    values, index = flat.topk(k, dim=0)
    return [
        [(tokens[i // seq][i % seq], i // seq, i % seq, float(values[n, j])) for n, i in enumerate(index[:, j].tolist())]
        for j in range(rank)
    ]


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
    top = top_tokens_per_channel(scores, tokens, k, attention_mask)
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


# ---------------------------------------------------------------------------------------------------- decoding
_FINAL_NORMS = (
    "model.norm", "transformer.ln_f", "model.final_layernorm", "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm", "transformer.norm_f", "model.language_model.norm",
)


def _final_norm_and_head(model: nn.Module) -> tuple[Optional[nn.Module], nn.Module]:
    hf = _hf_model(model)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise ValueError(
            f"{type(hf).__name__} has no LM head (get_output_embeddings() is None); decoding needs a causal or "
            "masked language model such as AutoModelForCausalLM."
        )
    for path in _FINAL_NORMS:
        module = hf
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.Module):
            return module, head
    return None, head


def decode_vectors(
    model: nn.Module,
    vectors: torch.Tensor,
    tokenizer=None,
    k: int = 10,
    apply_final_norm: bool = True,
) -> list[list[tuple[Union[str, int], float]]]:
    """Read residual-stream directions through the model's final norm and LM head (the "logit lens").

    For each row v of ``vectors`` (n × hidden_size) computes logits = lm_head(final_norm(v)) and returns the ``k``
    tokens with the largest logits as ``[(token, logit)]`` — token strings when a tokenizer is given, else ids. This is
    the direct path only: it ignores what later layers do with v.

    Raises:
        ValueError: the model has no LM head, or the vectors' width is not the LM head's input size.
    """
    norm, head = _final_norm_and_head(model)
    hidden = head.weight.shape[1]
    vectors = torch.as_tensor(vectors)
    if vectors.dim() == 1:
        vectors = vectors[None]
    if vectors.dim() != 2 or vectors.shape[1] != hidden:
        raise ValueError(
            f"Vectors of shape {tuple(vectors.shape)} cannot be decoded: the LM head reads {hidden}-dim hidden states."
        )
    if apply_final_norm and norm is None:
        raise ValueError(
            f"No final norm found on {type(_hf_model(model)).__name__} (looked for {list(_FINAL_NORMS)}); "
            "pass apply_final_norm=False to decode without it."
        )
    with torch.no_grad():
        h = vectors.to(device=head.weight.device, dtype=head.weight.dtype)
        if apply_final_norm:
            h = norm(h)
        logits = head(h).float()
    k = min(k, logits.shape[-1])
    values, index = logits.topk(k, dim=-1)
    out = []
    for row_v, row_i in zip(values.tolist(), index.tolist()):
        names = tokenizer.convert_ids_to_tokens(row_i) if tokenizer is not None else row_i
        out.append(list(zip(names, row_v)))
    return out


def decode_gift_channels(
    model: nn.Module,
    layer: Optional[str] = None,
    tokenizer=None,
    k: int = 10,
    adapter_name: Optional[str] = None,
    apply_final_norm: bool = True,
) -> dict[str, list[list[tuple[Union[str, int], float]]]]:
    """The tokens each GIFT channel promotes: every column of C = W·φ decoded with :func:`decode_vectors`.

    Only layers whose output lives in the residual stream (d_out == the LM head's hidden size, e.g. ``o_proj``,
    ``down_proj`` or non-GQA ``v_proj``) can be read this way. ``layer=None`` decodes every such adapted layer.

    Returns:
        ``{layer name: [top tokens of channel 0, channel 1, ...]}``.
    """
    _, head = _final_norm_and_head(model)
    hidden = head.weight.shape[1]
    centres = cluster_vectors(model, layer, adapter_name)
    fitting = {name: c for name, c in centres.items() if c.shape[0] == hidden}
    if not fitting:
        raise ValueError(
            f"No requested GIFT layer writes to the {hidden}-dim residual stream: "
            f"{ {n: c.shape[0] for n, c in centres.items()} } (layer: d_out). Decode layers with d_out == {hidden}."
        )
    if layer is not None and len(fitting) != len(centres):
        bad = {n: c.shape[0] for n, c in centres.items() if n not in fitting}
        raise ValueError(f"Layers {bad} (name: d_out) do not write to the {hidden}-dim residual stream.")
    return {
        name: decode_vectors(model, c.T, tokenizer, k, apply_final_norm) for name, c in fitting.items()
    }


# ---------------------------------------------------------------------------------------------------- LoFiT
def _lofit_layers(model: nn.Module) -> list[tuple[str, LofitLayer]]:
    return [(_short(n), m) for n, m in model.named_modules() if isinstance(m, LofitLayer)]


def _num_layers(model: nn.Module, seen: Iterable[int]) -> int:
    config = getattr(_hf_model(model), "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text, name, None)
        if isinstance(value, int):
            return max(value, max(seen, default=-1) + 1)
    return max(seen, default=-1) + 1


def lofit_head_score_grid(model: nn.Module, adapter_name: Optional[str] = None) -> np.ndarray:
    """Layers × heads array of ‖A_h‖₂ for a LoFiT scale (stage-1) adapter; NaN where a head has no scale.

    Raises:
        ValueError: the adapter is not a LoFiT adapter or is in bias mode (offsets, no scales to score).
    """
    adapter_name, config = _adapter_and_config(model, adapter_name, LofitConfig, "LoFiT")
    if config.mode != "scale":
        raise ValueError(
            f"Head scores ‖A_h‖ need a LoFiT scale adapter (mode='scale', stage 1); adapter {adapter_name!r} has "
            f"mode={config.mode!r}. Use lofit_offset_vectors / decode_lofit_offsets for offset adapters."
        )
    entries = []
    for _, layer in _lofit_layers(model):
        if adapter_name not in layer.lofit_head_scale:
            continue
        norms = layer.lofit_head_scale[adapter_name].detach().float().norm(dim=-1).cpu()
        num_heads = layer.head_shapes[adapter_name][0]
        entries.append((layer.layer_index, num_heads, layer.adapted_heads(adapter_name), norms))
    if not entries:
        raise ValueError(f"LoFiT adapter {adapter_name!r} has no scale parameters in this model.")
    grid = np.full((_num_layers(model, [e[0] for e in entries]), max(e[1] for e in entries)), np.nan)
    for index, _, heads, norms in entries:
        grid[index, heads] = norms.numpy()
    return grid


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
        from .lofit import select_heads

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


def lofit_offset_vectors(model: nn.Module, adapter_name: Optional[str] = None) -> dict[tuple[int, int], torch.Tensor]:
    """What each head of a LoFiT offset (stage-2, mode "bias") adapter writes into the residual stream.

    For head h of layer l with offset v_h (head_dim) this is W_o[:, h·d:(h+1)·d] · v_h (d = head_dim, W_o the output
    projection in (out, in) layout, float32) — exactly the bias change that merging that head would make.

    Raises:
        ValueError: the adapter is not a LoFiT adapter or is in scale mode.
    """
    adapter_name, config = _adapter_and_config(model, adapter_name, LofitConfig, "LoFiT")
    if config.mode != "bias":
        raise ValueError(
            f"Offset vectors need a LoFiT bias adapter (mode='bias', stage 2); adapter {adapter_name!r} has "
            f"mode={config.mode!r}. Use lofit_head_score_grid / save_lofit_head_map for scale adapters."
        )
    out = {}
    for name, layer in _lofit_layers(model):
        if adapter_name not in layer.lofit_head_offset:
            continue
        if any(layer.adapter_mode(m) == "scale" for m in layer.merged_adapters):
            raise ValueError(f"{name} has a merged scale adapter; unmerge it first so that W_o is the original one.")
        base = layer.get_base_layer()
        weight = base.weight.detach().float()
        weight = weight.T if layer.fan_in_fan_out else weight
        head_dim = layer.head_shapes[adapter_name][1]
        values = layer.lofit_head_offset[adapter_name].detach().float()
        for head, v in zip(layer.adapted_heads(adapter_name), values):
            out[(layer.layer_index, head)] = weight[:, head * head_dim:(head + 1) * head_dim] @ v.to(weight.device)
    if not out:
        raise ValueError(f"LoFiT adapter {adapter_name!r} has no offset parameters in this model.")
    return dict(sorted(out.items()))


def decode_lofit_offsets(
    model: nn.Module, tokenizer=None, k: int = 10, adapter_name: Optional[str] = None, apply_final_norm: bool = True
) -> dict[tuple[int, int], list[tuple[Union[str, int], float]]]:
    """The tokens each offset head promotes: W_o[:, head]·v_h (:func:`lofit_offset_vectors`) through the final norm
    and the LM head (:func:`decode_vectors`). Returns ``{(layer, head): [(token, logit), ...]}``."""
    vectors = lofit_offset_vectors(model, adapter_name)
    keys = list(vectors)
    decoded = decode_vectors(model, torch.stack([vectors[key] for key in keys]), tokenizer, k, apply_final_norm)
    return dict(zip(keys, decoded))
