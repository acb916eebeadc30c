"""FSDP2 checks for GIFT's shared Θ (which lives on the PEFT tuner, not in the layers that use it).

Under FSDP2 (``torch.distributed.fsdp.fully_shard``, also what accelerate's FSDP plugin with ``fsdp_version: 2``
applies), a parameter is synchronised across ranks only if it belongs to some FSDP unit; a Θ outside every unit
(decoder layers wrapped, root not wrapped) trains per rank and silently diverges. `check_fsdp_wrapping` raises in that
case; `FsdpWrappingCheck` runs it when the HF ``Trainer`` starts training (``Trainer(..., callbacks=[
FsdpWrappingCheck()])``). accelerate's FSDP2 plugin always wraps the root last, so going through the Trainer/accelerate
with an unwrapped model is safe; the check catches models wrapped by hand before they reach the Trainer.
"""

from __future__ import annotations

from torch import nn
from transformers import TrainerCallback


def _is_fsdp2_module(module: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(module, FSDPModule)


def unsynchronised_parameters(model: nn.Module) -> list[str]:
    """Names of trainable parameters that are in no FSDP2 unit while some other module of ``model`` is one.

    Empty when ``model`` uses no FSDP2 at all (single process, DDP) or every trainable parameter is inside a unit."""
    if not any(_is_fsdp2_module(module) for module in model.modules()):
        return []
    covered: set[int] = set()
    for module in model.modules():
        if _is_fsdp2_module(module):
            covered.update(id(p) for p in module.parameters())
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]


def check_fsdp_wrapping(model: nn.Module) -> None:
    """Raise ``ValueError`` if ``model`` is FSDP2-wrapped but a trainable parameter (GIFT's Θ on the tuner) is in no
    FSDP unit: its gradient would never be reduced and every rank would train its own copy."""
    missing = unsynchronised_parameters(model)
    if missing:
        shown = ", ".join(missing[:6]) + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else "")
        raise ValueError(
            f"FSDP2 wraps parts of this model but the trainable parameters {shown} are in no FSDP unit, so they would "
            "not be synchronised across ranks (GIFT's shared Θ lives on the PEFT tuner root). Also wrap the root: "
            "call fully_shard(peft_model) after wrapping the decoder layers (accelerate's FSDP2 plugin does this)."
        )


class FsdpWrappingCheck(TrainerCallback):
    """HF Trainer callback: `check_fsdp_wrapping` on the model being trained, when training begins."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            check_fsdp_wrapping(model)
        return control
