"""LoFiT's L1 term λ·Σ|A| at the optimizer step: one global ``torch.optim`` step pre-hook, acting on nothing but the
gradients of penalised LoFiT scale tensors, and the checks that refuse a training forward it could not serve.

Scope of the process-wide part: installed when the first scale adapter with ``l1_lambda > 0`` is created (or
unpickled / deep-copied) in the process, never removed. At every ``torch.optim`` optimizer step it looks up, among
the parameters that optimizer holds, the scale tensors A of *active* adapters with λ > 0 and ``requires_grad`` in
live LoFiT layers (a weak registry that copies and unpickled models rejoin, `LofitLayer.__setstate__`); for any
other optimizer it does nothing. It adds λ·sign(A) (times the ``grad_scale`` a fused optimizer will divide by) to
each such gradient once — a gradient already given the term (same tensor, same version) is skipped, so nested steps,
a retried step or an optimizer subclass calling ``super().step()`` count it once — and for a step with a closure it
wraps the closure instead: the closure's fresh gradients get the term and its returned loss gets λ·Σ|A|. It marks the
gradient tensors it changed with one attribute (``_lofit_l1_version``).
"""

from __future__ import annotations

import sys
import weakref
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

# Layers that may hold a scale adapter with λ > 0 (weakly: a deleted model drops out by itself). Each answers
# ``penalised_scales()`` -> [(A, λ)] for its active, trainable, penalised scale tensors.
_PENALISED_LAYERS: weakref.WeakSet = weakref.WeakSet()
_STEP_HOOK = None
_APPLIED = "_lofit_l1_version"  # on a gradient tensor: its ``_version`` right after the term was added to it

_INSTEAD = ("Set l1_lambda=0 in the LofitConfig and add `peft_model.base_model.l1_penalty(l1_lambda=λ)` to the "
            "training loss once per optimizer step (docs/lofit.md, 'Where the L1 term is applied').")


def register_penalised_layer(layer: nn.Module) -> None:
    """Let the step hook see ``layer``'s penalised scales, installing the hook once per process."""
    global _STEP_HOOK
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_pre_hook(add_l1_term)
    _PENALISED_LAYERS.add(layer)


def _penalised(optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, float]]:
    """[(A, λ)] for the penalised scale tensors that ``optimizer`` updates."""
    if not _PENALISED_LAYERS:
        return []
    wanted = {id(scale): (scale, lam) for layer in list(_PENALISED_LAYERS) for scale, lam in layer.penalised_scales()}
    if not wanted:
        return []
    return [wanted[id(p)] for group in optimizer.param_groups for p in group["params"] if id(p) in wanted]


def _add_subgradient(penalised: list[tuple[torch.Tensor, float]], grad_scale: Optional[torch.Tensor] = None) -> None:
    """grad(A) += λ·sign(A)·grad_scale for every A whose current gradient has not had the term yet."""
    with torch.no_grad():
        for scale, lam in penalised:
            grad = scale.grad
            if grad is None or getattr(grad, _APPLIED, None) == grad._version:
                continue
            term = torch.sign(scale.detach()).to(grad.dtype)
            if grad_scale is not None:
                term = term * grad_scale.to(device=grad.device, dtype=grad.dtype)
            grad.add_(term, alpha=lam)
            setattr(grad, _APPLIED, grad._version)


def _with_l1(closure: Callable, penalised: list[tuple[torch.Tensor, float]]) -> Callable:
    """``closure`` whose fresh gradients get λ·sign(A) and whose returned loss gets λ·Σ|A|, as if the loss had it."""
    if getattr(closure, _APPLIED, False):  # already wrapped by an enclosing step (ZeroRedundancyOptimizer)
        return closure

    def closure_with_l1():
        loss = closure()
        _add_subgradient(penalised)
        if loss is None:
            return loss
        with torch.no_grad():
            value = sum(lam * scale.detach().abs().sum().to(torch.float32) for scale, lam in penalised)
        return loss + (value.to(loss.device) if isinstance(loss, torch.Tensor) else float(value))

    setattr(closure_with_l1, _APPLIED, True)
    return closure_with_l1


def add_l1_term(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict[str, Any]):
    """The global step pre-hook (see the module docstring). ``args[0]`` is the optimizer itself."""
    penalised = _penalised(optimizer)
    if not penalised:
        return None
    if kwargs.get("closure") is not None:
        return args, {**kwargs, "closure": _with_l1(kwargs["closure"], penalised)}
    if len(args) > 1 and args[1] is not None:
        return (args[0], _with_l1(args[1], penalised), *args[2:]), kwargs
    # GradScaler hands fused optimizers the scale to divide by (when `unscale_` has not run), as an attribute
    _add_subgradient(penalised, getattr(optimizer, "grad_scale", None))
    return None


def _deepspeed_initialised() -> bool:
    comm = sys.modules.get("deepspeed.comm")  # never imported here: only a process that imported it can use it
    return comm is not None and bool(comm.is_initialized())


def refuse_unreachable_scale(scale: torch.Tensor, adapter_name: str) -> None:
    """Raise before a training forward builds a gradient of ``scale`` (λ > 0) that no ``torch.optim`` step of the
    model's own parameter would receive: a functional call (the tensor used is not the registered nn.Parameter) or
    DeepSpeed (its optimizers step flat copies of the parameters)."""
    if not (scale.requires_grad and torch.is_grad_enabled()):
        return
    if not isinstance(scale, nn.Parameter):
        raise ValueError(
            f"LoFiT adapter {adapter_name!r} has l1_lambda > 0, but this training forward uses a tensor in place of "
            "its scale parameter (torch.func.functional_call / torch.func.grad, or a wrapper that swaps parameters "
            "such as FSDP1 with flat parameters): the L1 term, added at the optimizer step to the gradient of the "
            f"model's own parameter, would be lost. {_INSTEAD}"
        )
    if _deepspeed_initialised():
        raise ValueError(
            f"LoFiT adapter {adapter_name!r} has l1_lambda > 0 under DeepSpeed ZeRO (a DeepSpeed process group is "
            "initialised, and DeepSpeed's optimizers — ZeRO stages 1-3 and its fp16/bf16 optimizers — update flat "
            f"copies of the parameters): the L1 term, added at each torch.optim step, would not be applied. {_INSTEAD}"
        )
