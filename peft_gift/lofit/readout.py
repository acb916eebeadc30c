"""Reading a LoFiT adapter out of a model: which adapter, its head geometry, head scores ‖A_h‖₂ and offsets W_o·v_h.

The one read API behind :func:`peft_gift.select_heads`, :mod:`peft_gift.interpret` and the training CLI; nothing
here changes the model.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from .._adapters import resolve_adapter
from ..targets import base_module_name
from .config import LofitConfig
from .layer import LofitLayer


def resolve_lofit_adapter(model: nn.Module, adapter_name: Optional[str] = None) -> tuple[str, LofitConfig]:
    """``(name, LofitConfig)``: ``adapter_name``, else the active LoFiT adapter, else the model's only one."""
    return resolve_adapter(model, adapter_name, LofitConfig, "LoFiT")


def lofit_layers(model: nn.Module, adapter_name: Optional[str] = None) -> list[tuple[str, LofitLayer]]:
    """``[(module name without the PEFT prefix, layer)]`` of the LoFiT layers (of ``adapter_name`` if given)."""
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, LofitLayer):
            continue
        if adapter_name is not None and module.adapter_mode(adapter_name) is None:
            continue
        out.append((base_module_name(name), module))
    return out


def _require_mode(adapter_name: str, config: LofitConfig, mode: str, what: str, other: str) -> None:
    if config.mode != mode:
        stage = "stage 1" if mode == "scale" else "stage 2"
        raise ValueError(
            f"{what} need a LoFiT {mode} adapter (mode={mode!r}, {stage}); adapter {adapter_name!r} has "
            f"mode={config.mode!r}. {other}"
        )


def head_scores(model: nn.Module, adapter_name: Optional[str] = None) -> dict[tuple[int, int], float]:
    """‖A_h‖₂ for every (layer, head) that the scale adapter ``adapter_name`` (default: see
    :func:`resolve_lofit_adapter`) learns, in module order."""
    adapter_name, config = resolve_lofit_adapter(model, adapter_name)
    _require_mode(adapter_name, config, "scale", "Head scores ‖A_h‖ (select_heads, head maps)",
                  "Use offset_vectors / decode_lofit_offsets for offset adapters.")
    scores: dict[tuple[int, int], float] = {}
    for _, module in lofit_layers(model, adapter_name):
        with torch.no_grad():
            norms = module.lofit_head_scale[adapter_name].weight.detach().to(torch.float32).norm(dim=-1).cpu().tolist()
        for head, norm in zip(module.adapted_heads(adapter_name), norms):
            key = (module.layer_index, head)
            if key in scores:
                raise ValueError(f"Two projections claim (layer, head) = {key}; set `layers_pattern`.")
            scores[key] = float(norm)
    if not scores:
        raise ValueError(f"LoFiT adapter {adapter_name!r} has no scale parameters in this model.")
    return scores


def head_geometry(model: nn.Module, adapter_name: Optional[str] = None) -> tuple[int, int, int]:
    """``(layers, heads per layer, head_dim)`` of the grid a LoFiT adapter lives on: layers from the model config
    (at least one more than the highest adapted layer), heads and head_dim from the adapted projections."""
    adapter_name, _ = resolve_lofit_adapter(model, adapter_name)
    layers = lofit_layers(model, adapter_name)
    if not layers:
        raise ValueError(f"LoFiT adapter {adapter_name!r} adapts no layer of this model.")
    heads = max(layer.head_shapes[adapter_name][0] for _, layer in layers)
    head_dim = layers[0][1].head_shapes[adapter_name][1]
    highest = max(layer.layer_index for _, layer in layers)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    count = next((getattr(text, n) for n in ("num_hidden_layers", "n_layer", "num_layers")
                  if isinstance(getattr(text, n, None), int)), 0)
    return max(count, highest + 1), heads, head_dim


def head_score_grid(model: nn.Module, adapter_name: Optional[str] = None) -> np.ndarray:
    """Layers × heads array of ‖A_h‖₂ (:func:`head_scores`); NaN where a head has no scale."""
    scores = head_scores(model, adapter_name)
    layers, heads, _ = head_geometry(model, adapter_name)
    grid = np.full((layers, heads), np.nan)
    for (layer, head), value in scores.items():
        grid[layer, head] = value
    return grid


def offset_vectors(model: nn.Module, adapter_name: Optional[str] = None) -> dict[tuple[int, int], torch.Tensor]:
    """What each head of a LoFiT offset (stage-2, mode "bias") adapter writes into the residual stream.

    For head h of layer l with offset v_h (head_dim) this is W_o[:, h·d:(h+1)·d] · v_h (d = head_dim, W_o the output
    projection in (out, in) layout, float32) — exactly the bias change that merging that head would make.
    """
    adapter_name, config = resolve_lofit_adapter(model, adapter_name)
    _require_mode(adapter_name, config, "bias", "Offset vectors",
                  "Use head_scores / lofit_head_score_grid for scale adapters.")
    out = {}
    for name, layer in lofit_layers(model, adapter_name):
        if any(layer.adapter_mode(m) == "scale" for m in layer.merged_adapters):
            raise ValueError(f"{name} has a merged scale adapter; unmerge it first so that W_o is the original one.")
        weight = layer.get_base_layer().weight.detach().float()
        weight = weight.T if layer.fan_in_fan_out else weight
        head_dim = layer.head_shapes[adapter_name][1]
        values = layer.lofit_head_offset[adapter_name].weight.detach().float()
        for head, v in zip(layer.adapted_heads(adapter_name), values):
            out[(layer.layer_index, head)] = weight[:, head * head_dim:(head + 1) * head_dim] @ v.to(weight.device)
    if not out:
        raise ValueError(f"LoFiT adapter {adapter_name!r} has no offset parameters in this model.")
    return dict(sorted(out.items()))
