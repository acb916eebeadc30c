"""The forward of our tuner layers, and mixed-adapter batches (``model(..., adapter_names=[...])``).

GIFT and LoFiT layers both edit the *input* of their frozen base layer (GIFT: x + s·φ(ψx); LoFiT: per-head scale and
offset) and implement ``edit_input(x, adapter_names)``; `forward_with_edited_input` is their common forward.

Mixed batches pick one adapter per sample, ``"__base__"`` for none (PEFT offers this only for LoRA/RoAd).
`PeftModel.forward`/`generate` hand ``adapter_names`` to the tuner's ``_enable_peft_forward_hooks``; ours
(`adapter_names_hooks`) injects it into every tuner layer's forward via a pre-forward hook, and the layer edits each
adapter's sub-batch with that adapter only.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator, Sequence

import torch
from torch import nn

BASE = "__base__"


def _inject_adapter_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


@contextmanager
def adapter_names_hooks(tuner: nn.Module, layer_cls: type, *args, **kwargs) -> Iterator[None]:
    """Context manager behind ``_enable_peft_forward_hooks`` of `GiftModel` and `LofitModel`."""
    adapter_names = kwargs.pop("adapter_names", None)
    if adapter_names is None:
        yield
        return
    if tuner.training:
        raise ValueError("Cannot pass `adapter_names` when the model is in training mode; call model.eval() first.")
    layers = [m for m in tuner.modules() if isinstance(m, layer_cls)]
    if any(layer.merged for layer in layers):
        raise ValueError("Cannot pass `adapter_names` while adapters are merged; call unmerge_adapter() first.")
    known = set().union(*(layer._all_available_adapter_names() for layer in layers)) if layers else set()
    unknown = sorted(set(adapter_names) - known - {BASE})
    if unknown:
        raise ValueError(f"adapter_names contains unknown adapter(s) {unknown}; available: {sorted(known)} or {BASE!r}")
    handles = [
        layer.register_forward_pre_hook(partial(_inject_adapter_names, adapter_names=list(adapter_names)),
                                        with_kwargs=True)
        for layer in layers
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def samples_per_adapter(adapter_names: Sequence[str], batch_size: int, device) -> dict[str, torch.Tensor]:
    """{adapter: indices of its samples} (``"__base__"`` excluded); checks one name per sample."""
    if len(adapter_names) != batch_size:
        raise ValueError(
            f"adapter_names has {len(adapter_names)} entries but the batch has {batch_size} samples; pass one adapter "
            f"name (or {BASE!r}) per sample"
        )
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(adapter_names):
        if name != BASE:
            groups.setdefault(name, []).append(index)
    return {name: torch.tensor(idx, device=device) for name, idx in groups.items()}


def forward_with_edited_input(layer, x: torch.Tensor, *args, adapter_names=None, **kwargs) -> torch.Tensor:
    """base_layer(edit(x)): the active adapters' edit, or per sample its own adapter's; the plain base layer when
    adapters are disabled (unmerging first) or merged into the weights."""
    if layer.disable_adapters:
        if layer.merged:
            layer.unmerge()
        return layer.base_layer(x, *args, **kwargs)
    if layer.merged:
        return layer.base_layer(x, *args, **kwargs)
    if adapter_names is None:
        return layer.base_layer(layer.edit_input(x, layer.active_adapters), *args, **kwargs)
    x = x.clone()
    for name, index in samples_per_adapter(adapter_names, x.shape[0], x.device).items():
        x[index] = layer.edit_input(x[index], [name])
    return layer.base_layer(x, *args, **kwargs)
