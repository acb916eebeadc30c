"""GIFT read-outs: cluster vectors C = W·φ, per-token channel scores, patch heat maps and top tokens (no plotting)."""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Sequence, Union

import torch
from torch import nn

from .._adapters import resolve_adapter
from ..gift.config import GiftConfig
from ..gift.layer import GiftLayer
from ._common import _eval_mode, _hf_model, _resolve_names, _run_model, _short


def _gift_adapter(model: nn.Module, adapter_name: Optional[str]) -> tuple[str, GiftConfig]:
    return resolve_adapter(model, adapter_name, GiftConfig, "GIFT")


def _gift_layers(model: nn.Module, adapter_name: str) -> dict[str, GiftLayer]:
    return {
        _short(name): module
        for name, module in model.named_modules()
        if isinstance(module, GiftLayer) and adapter_name in module.gift_group
    }


def gift_layer_names(model: nn.Module, adapter_name: Optional[str] = None) -> list[str]:
    """Names (without the ``base_model.model.`` prefix) of the layers adapted by GIFT adapter ``adapter_name``
    (default: the active GIFT adapter)."""
    adapter_name, _ = _gift_adapter(model, adapter_name)
    return list(_gift_layers(model, adapter_name))


def _selected_gift_layers(model, layers, adapter_name) -> tuple[str, dict[str, GiftLayer]]:
    adapter_name, _ = _gift_adapter(model, adapter_name)
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

    Which y: following the GIFT paper, y_i is the output of layer with **adapter ``adapter_name``**:
    y_i = W(x_i + s·φψx_i) + b, with x_i the layer's input for token i as the model computes it on ``inputs``, W the
    original (unmerged) weight, b the bias and (φ, ψ, s) those of ``adapter_name`` — whichever adapters are active,
    merged or disabled. With ``output="base"`` y_i is the frozen layer's output W x_i + b on the same input x_i.
    (The activations upstream of the layer, hence x_i, come from the model as it is set up: its active adapters.)

    The model runs once, in eval mode and under ``torch.no_grad()``; forward hooks on the selected GIFT layers capture
    x and are removed afterwards. Nothing else changes.

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
    weights = {name: layer.unmerged_weight().detach() for name, layer in selected.items()}
    captured: dict[str, torch.Tensor] = {}
    handles = [layer.register_forward_hook(_output_hook(name, layer, weights[name], adapter_name, output, captured))
               for name, layer in selected.items()]
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


def _output_hook(name: str, layer: GiftLayer, weight: torch.Tensor, adapter_name: str, output: str,
                 captured: dict[str, torch.Tensor]):
    """A forward hook storing in ``captured[name]`` the layer's y (float64) for ``output`` (see `channel_scores`)."""
    def hook(module, args, result):
        # y from the captured input and adapter_name's own Θ: the module's output would be the *active*
        # adapters' (or, inside disable_adapter, the base layer's) output instead.
        x = args[0].detach().double()
        if output == "adapted":
            phi, psi = (t.detach().to(device=x.device, dtype=torch.float64) for t in layer.theta(adapter_name))
            x = x + layer.gift_scaling[adapter_name] * (x @ psi.T) @ phi.T
        y = x @ weight.to(x.device).T
        bias = getattr(module.get_base_layer(), "bias", None)
        if bias is not None:
            y = y + bias.detach().double().to(y.device)
        if name in captured:
            raise ValueError(
                f"Layer {name!r} ran more than once in one forward pass; channel scores need one call per layer."
            )
        captured[name] = y

    return hook


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
