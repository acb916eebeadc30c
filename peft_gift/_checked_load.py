"""Checked adapter loading for the GIFT and LoFiT tuners: strict key/shape/dtype/finiteness check, exact rollback.

PEFT itself only warns about missing adapter tensors, ignores unknown ones or copies them into the model (an extra
``base_model.model.lm_head.weight`` overwrites the base weight) and loads NaN silently. Our tuners instead refuse a
file that does not match the adapter: missing or unexpected tensors (another adapter's ``modules_to_save`` included),
wrong shapes, non-float dtypes, NaN/inf. The check runs in PEFT's ``_remap_adapter_state_dict_for_load`` hook, before
any value is copied, so a refused file changes no existing adapter. An adapter that the failing ``from_pretrained`` /
``load_adapter`` call (of `PeftModel` or `PeftMixedModel`) itself created is removed again (for the only adapter: the
tuner layers are unloaded and the base model's ``requires_grad`` flags and tags restored). Which adapters a call
created is recorded while it runs: `track_loading_calls` (run by ``import peft_gift``) wraps those entry points with
`loading_call`, and our tuners note each adapter they inject during such a call.
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from typing import Optional

import torch

from ._peft_private import _filter_state_dict_by_key_prefixes, _get_tuner_state_dict_key_prefixes

# (tuner, adapter name) of every adapter our tuners injected during the PEFT loading call now running (None outside)
_CREATED_BY_LOAD: ContextVar[Optional[list]] = ContextVar("peft_gift_created_by_load", default=None)


def loading_call(load):
    """Wrap a PEFT loading entry point (``PeftModel.from_pretrained`` / ``load_adapter``,
    ``PeftMixedModel.from_pretrained``) so that the adapters created during the outermost such call are known until it
    returns or raises, and no longer."""

    @functools.wraps(load)
    def wrapper(*args, **kwargs):
        if _CREATED_BY_LOAD.get() is not None:  # nested: from_pretrained calls load_adapter
            return load(*args, **kwargs)
        token = _CREATED_BY_LOAD.set([])
        try:
            return load(*args, **kwargs)
        finally:
            _CREATED_BY_LOAD.reset(token)

    wrapper.peft_gift_loading_call = True
    return wrapper


def track_loading_calls() -> None:
    """Wrap ``PeftModel.from_pretrained`` / ``load_adapter`` and ``PeftMixedModel.from_pretrained`` (whose
    ``load_adapter`` calls ``PeftModel``'s) with `loading_call`; a wrapper already there is replaced."""
    from peft import PeftMixedModel, PeftModel

    entry_points = ((PeftModel, "from_pretrained"), (PeftModel, "load_adapter"), (PeftMixedModel, "from_pretrained"))
    for cls, name in entry_points:
        attr = cls.__dict__[name]
        func = attr.__func__ if isinstance(attr, classmethod) else attr
        if getattr(func, "peft_gift_loading_call", False):
            func = func.__wrapped__
        wrapped = loading_call(func)
        setattr(cls, name, classmethod(wrapped) if isinstance(attr, classmethod) else wrapped)


def note_injection(tuner, adapter_name: str) -> None:
    """Record that ``tuner`` creates ``adapter_name``: inside a PEFT loading call, a refused file removes it again."""
    created = _CREATED_BY_LOAD.get()
    if created is not None:
        created.append((tuner, adapter_name))


def _created_by_this_load(tuner, adapter_name: str) -> bool:
    return any(t is tuner and name == adapter_name for t, name in _CREATED_BY_LOAD.get() or ())


def snapshot_base_state(tuner, model) -> None:
    """Remember what a failed first load must restore: the base model's ``requires_grad`` flags and tags."""
    tuner.__dict__["_base_state_before_injection"] = (
        {id(p): p.requires_grad for p in model.parameters()},
        list(getattr(model, "model_tags", None) or []),
    )


def _roll_back(peft_model, adapter_name: str) -> None:
    from peft import PeftMixedModel, PeftModel

    if not isinstance(peft_model, (PeftModel, PeftMixedModel)):  # layers injected without a PeftModel: nothing to undo
        return
    tuner = peft_model.base_model
    if not _created_by_this_load(tuner, adapter_name):  # the adapter existed before this load: keep it as it is
        return
    if len(tuner.peft_config) > 1:
        tuner.delete_adapter(adapter_name)
        return
    model = tuner.unload()
    flags, tags = tuner.__dict__.get("_base_state_before_injection", ({}, None))
    for param in model.parameters():
        param.requires_grad_(flags.get(id(param), param.requires_grad))
    if tags is not None and hasattr(model, "model_tags"):
        model.model_tags = tags or None


def _is_auxiliary_key(key: str, adapter_name: str) -> bool:
    """A ``modules_to_save`` / trainable-token tensor of ``adapter_name`` (not of another adapter)."""
    return f".modules_to_save.{adapter_name}." in key or (
        "trainable_tokens_" in key and (key.endswith(f".{adapter_name}") or f".{adapter_name}." in key)
    )


def check_adapter_state_dict(peft_model, adapter_name: str, remapped: dict, what: str, prefix: str) -> dict:
    """Raise ``ValueError`` naming every mismatch between ``remapped`` (checkpoint keys already mapped to model keys)
    and the adapter ``adapter_name`` of ``peft_model``, after rolling back an adapter this load created. ``what``
    names the adapter and its config in the message, e.g. ``"GIFT adapter 'default' (r=4, sharing='module')"``;
    ``prefix`` is its method's attribute prefix (``"gift_"``): tensors of another method's adapter of the same name
    (a base that still carries LoRA layers) are not part of this file. Returns ``remapped``."""
    own = peft_model.state_dict()
    prefixes = {p for p in _get_tuner_state_dict_key_prefixes(peft_model, adapter_name)
                if p.removesuffix(f".{adapter_name}").rpartition(".")[2].startswith(prefix)}
    expected = _filter_state_dict_by_key_prefixes(own, prefixes)
    expected.update({k: v for k, v in own.items() if _is_auxiliary_key(k, adapter_name)})
    problems = []
    missing = sorted(set(expected) - set(remapped))
    if missing:
        problems.append(f"missing tensors {missing}")
    unexpected = sorted(k for k in remapped if k not in expected)
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for key in sorted(set(expected) & set(remapped)):
        value, want = remapped[key], expected[key]
        if tuple(value.shape) != tuple(want.shape):
            problems.append(f"{key} has shape {tuple(value.shape)} in the file, the model expects {tuple(want.shape)}")
        elif not value.is_floating_point():
            problems.append(f"{key} has dtype {value.dtype} in the file; adapter weights must be floating point")
        elif not torch.isfinite(value).all():
            problems.append(f"{key} contains NaN or infinite values")
    if problems:
        _roll_back(peft_model, adapter_name)
        raise ValueError(
            f"Cannot load {what}: the adapter file does not match its adapter_config.json and this model: "
            + "; ".join(problems) + "."
        )
    return remapped
