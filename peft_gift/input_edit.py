"""What GIFT and LoFiT layers share: the base for layers that edit their frozen base layer's input, and mixed batches.

Both tuners leave the base layer untouched and feed it an edited input (GIFT: x + s·φ(ψx); LoFiT: per-head
scales and offsets). A layer implements ``edit_input(x, adapter_names)``; `InputEditLayer.edited_forward` is the one
forward of both, and `adapter_names_hooks` routes a mixed-adapter batch (``model(..., adapter_names=[...])``, one
adapter per sample, ``"__base__"`` for none) to every tuner layer *and* every ``modules_to_save`` wrapper, with
beam search handled as PEFT does for LoRA (names repeated per beam, the encoder of an encoder-decoder model keeps
the original list).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator, Sequence

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

BASE = "__base__"


class InputEditLayer(BaseTunerLayer):
    """Mixin of a tuner layer computing ``base_layer(edit(x))``; subclasses define ``edit_input``.

    ``edit_input(x, adapter_names)`` returns x edited by the named adapters (those this layer holds; others are
    ignored), in x's dtype. ``forward`` must be defined on the concrete ``nn.Module`` subclass (``nn.Module`` comes
    first in its MRO) and simply calls `edited_forward`.
    """

    def edit_input(self, x: torch.Tensor, adapter_names: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def edited_forward(self, x: torch.Tensor, *args, adapter_names=None, **kwargs) -> torch.Tensor:
        """base_layer(edit(x)): the active adapters' edit, or per sample its own adapter's; the plain base layer when
        adapters are disabled (unmerging first) or merged into the weights."""
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is None:
            return self.base_layer(self.edit_input(x, self.active_adapters), *args, **kwargs)
        x = x.clone()
        for name, index in samples_per_adapter(adapter_names, x.shape[0], x.device).items():
            x[index] = self.edit_input(x[index], [name])
        return self.base_layer(x, *args, **kwargs)


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


def _inject_adapter_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


def _encoder_of(model: nn.Module):
    get_encoder = getattr(model, "get_encoder", None)
    if not callable(get_encoder):
        return None
    encoder = get_encoder()
    return None if encoder is model else encoder  # transformers 5 returns the model itself when it has no encoder


@contextmanager
def adapter_names_hooks(tuner: nn.Module, layer_cls: type, *args, **kwargs) -> Iterator[None]:
    """Context manager behind the tuners' ``_enable_peft_forward_hooks``: mixed-adapter batches."""
    adapter_names = kwargs.pop("adapter_names", None)
    if adapter_names is None:
        yield
        return
    if tuner.training:
        raise ValueError("Cannot pass `adapter_names` when the model is in training mode; call model.eval() first.")
    if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
        raise TypeError(f"adapter_names must be a list of adapter names, one per sample, got {adapter_names!r}")
    layers = [m for m in tuner.modules() if isinstance(m, layer_cls)]
    if any(layer.merged for layer in layers):
        raise ValueError("Cannot pass `adapter_names` while adapters are merged; call unmerge_adapter() first.")
    known = set().union(*(layer._all_available_adapter_names() for layer in layers)) if layers else set()
    unknown = sorted(set(adapter_names) - known - {BASE})
    if unknown:
        raise ValueError(f"adapter_names contains unknown adapter(s) {unknown}; available: {sorted(known)} or {BASE!r}")
    per_sample = list(adapter_names)
    num_beams = kwargs.get("num_beams")
    if isinstance(num_beams, int) and num_beams > 1:  # generate repeats every sample num_beams times
        per_sample = [name for name in adapter_names for _ in range(num_beams)]
    routed = lambda m: isinstance(m, (layer_cls, AuxiliaryTrainingWrapper))  # noqa: E731
    handles = [
        m.register_forward_pre_hook(partial(_inject_adapter_names, adapter_names=per_sample), with_kwargs=True)
        for m in tuner.modules() if routed(m)
    ]
    encoder = _encoder_of(tuner.model)
    if per_sample != list(adapter_names) and encoder is not None:  # the encoder sees each sample once
        handles += [
            m.register_forward_pre_hook(partial(_inject_adapter_names, adapter_names=list(adapter_names)),
                                        with_kwargs=True)
            for m in encoder.modules() if routed(m)
        ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
