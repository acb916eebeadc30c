"""Shared helpers of the interpretability readers: module names, the wrapped model, eval mode, running inputs."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Mapping, Sequence

from torch import nn

from ..targets import base_module_name as _short


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
