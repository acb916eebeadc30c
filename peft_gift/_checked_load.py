"""Checked adapter loading shared by the GIFT and LoFiT tuners (PEFT's `_remap_adapter_state_dict_for_load` hook).

PEFT itself only warns about missing adapter tensors, ignores unknown ones or copies them into the model (an extra
``base_model.model.lm_head.weight`` overwrites the base weight) and loads NaN silently. Our tuners instead refuse a
file that does not match the adapter: missing or unexpected tensors, wrong shapes, non-float dtypes, NaN/inf. The
check runs after PEFT injected the adapter layers but before any value is copied; on failure the half-created
adapter is removed again (for the only adapter: the tuner layers are unloaded and the base model's ``requires_grad``
flags and tags restored), so the model is left as it was.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import _filter_state_dict_by_key_prefixes, _get_tuner_state_dict_key_prefixes


class CheckedLoading:
    """Mixin placed before ``BaseTuner`` in our tuners' bases: records the base model's state before the first
    injection and checks every adapter file in PEFT's ``_remap_adapter_state_dict_for_load`` hook. Subclasses name
    the method (``method_name``) and the config fields that explain a shape mismatch (``_describe_config``)."""

    method_name: str

    def _pre_injection_hook(self, model, config, adapter_name: str) -> None:
        super()._pre_injection_hook(model, config, adapter_name)
        self.__dict__["_base_state_before_injection"] = (  # what a failed first load must restore
            {id(p): p.requires_grad for p in model.parameters()},
            list(getattr(model, "model_tags", None) or []),
        )

    @classmethod
    def _describe_config(cls, config) -> str:
        raise NotImplementedError

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        what = f"{cls.method_name} adapter {adapter_name!r} ({cls._describe_config(config)})"
        return check_adapter_state_dict(model, adapter_name, remapped, what)


def _roll_back(peft_model, adapter_name: str) -> None:
    from peft import PeftModel

    if not isinstance(peft_model, PeftModel):  # layers injected without a PeftModel: nothing of ours to undo
        return
    tuner = peft_model.base_model
    if len(tuner.peft_config) > 1:
        tuner.delete_adapter(adapter_name)
        return
    model = tuner.unload()
    flags, tags = tuner.__dict__.get("_base_state_before_injection", ({}, None))
    for param in model.parameters():
        param.requires_grad_(flags.get(id(param), param.requires_grad))
    if tags is not None and hasattr(model, "model_tags"):
        model.model_tags = tags or None


def check_adapter_state_dict(peft_model, adapter_name: str, remapped: dict, what: str) -> dict:
    """Raise ``ValueError`` naming every mismatch between ``remapped`` (checkpoint keys already mapped to model keys)
    and the adapter ``adapter_name`` of ``peft_model``, after rolling the adapter back. ``what`` names the adapter
    and its config in the message, e.g. ``"GIFT adapter 'default' (r=4, sharing='module')"``. Returns
    ``remapped``."""
    own = peft_model.state_dict()
    expected = _filter_state_dict_by_key_prefixes(own, _get_tuner_state_dict_key_prefixes(peft_model, adapter_name))
    problems = []
    missing = sorted(set(expected) - set(remapped))
    if missing:
        problems.append(f"missing tensors {missing}")
    unexpected = sorted(
        k for k in remapped if k not in expected and not (k in own and (".modules_to_save." in k or "trainable_tokens_" in k))
    )
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
