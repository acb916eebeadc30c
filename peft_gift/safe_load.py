"""Loading GIFT / LoFiT adapters safely: safetensors only, and a failed load leaves the model as it was.

PEFT 0.21 behaviour this changes (only for GIFT / LoFiT adapters, hooked by ``install()`` at ``import peft_gift``):

* ``PeftModel.from_pretrained(base, path)`` injects the adapter layers into ``base`` (and freezes its parameters)
  before it reads the weights; if reading fails, ``base`` stays modified. Now the injected layers are removed and
  ``requires_grad`` is restored before the error propagates.
* ``peft_model.load_adapter(path, name)`` leaves a half-created adapter ``name`` behind when reading fails. Now it is
  deleted again (the previously active adapter stays active).
* With only a pickle ``adapter_model.bin`` in a local folder PEFT calls ``torch.load(weights_only=True)``; that
  refuses code-carrying pickles but still reads pickles. GIFT / LoFiT adapters are read from
  ``adapter_model.safetensors`` only, with an error that says how to convert. (For a Hub repository without a
  safetensors file PEFT's ``weights_only=True`` remains the guard.)
"""

from __future__ import annotations

import os

from ._registry import GIFT, LOFIT

PLUGIN_TYPES = (GIFT, LOFIT)


def _local_folder(model_id, kwargs) -> str | None:
    path = os.path.join(str(model_id), kwargs["subfolder"]) if kwargs.get("subfolder") else str(model_id)
    return path if os.path.isdir(path) else None


def _refuse_pickle_only(model_id, kwargs) -> None:
    folder = _local_folder(model_id, kwargs)
    if folder is None or os.path.exists(os.path.join(folder, "adapter_model.safetensors")):
        return
    if not os.path.exists(os.path.join(folder, "adapter_model.bin")):
        return
    from peft import PeftConfig

    try:
        peft_type = PeftConfig.from_pretrained(folder).peft_type
    except Exception:  # no readable config: PEFT reports that itself
        return
    if peft_type in PLUGIN_TYPES:
        raise ValueError(
            f"{folder} holds only a pickle adapter_model.bin; peft-gift loads {peft_type.value} adapters from "
            f"adapter_model.safetensors only. Convert a file you trust with: "
            f"safetensors.torch.save_file(torch.load('adapter_model.bin', weights_only=True), "
            f"'adapter_model.safetensors')."
        )


def _restore_base(model, frozen_flags, had_peft_config, model_tags) -> None:
    """Undo PeftModel's injection into ``model``: tuner layers back to their base layers, requires_grad, tags and
    forward hooks (LoFiT's L1 hook) restored."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if getattr(parent, child, None) is module:
                setattr(parent, child, module.get_base_layer())
    for param in model.parameters():
        if id(param) in frozen_flags:
            param.requires_grad_(frozen_flags[id(param)])
    if not had_peft_config and "peft_config" in getattr(model, "__dict__", {}):
        del model.__dict__["peft_config"]
    if "model_tags" in getattr(model, "__dict__", {}):
        model.model_tags = model_tags
    for key, hook in list(model._forward_hooks.items()):
        if type(hook).__module__.startswith("peft_gift."):
            del model._forward_hooks[key]


def install() -> None:
    """Hook PeftModel.from_pretrained / load_adapter (idempotent)."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if getattr(PeftModel, "_peft_gift_safe_load_installed", False):
        return
    original_from_pretrained = PeftModel.from_pretrained.__func__
    original_load_adapter = PeftModel.load_adapter

    def from_pretrained(cls, model, model_id, adapter_name="default", *args, **kwargs):
        _refuse_pickle_only(model_id, kwargs)
        had_tuner_layers = any(isinstance(m, BaseTunerLayer) for m in model.modules())
        flags = {id(p): p.requires_grad for p in model.parameters()}
        had_peft_config = "peft_config" in getattr(model, "__dict__", {})
        model_tags = list(getattr(model, "model_tags", None) or []) or None
        try:
            return original_from_pretrained(cls, model, model_id, adapter_name, *args, **kwargs)
        except Exception:
            injected = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
            is_plugin = any(type(m).__module__.startswith("peft_gift.") for m in injected)
            if is_plugin and not had_tuner_layers:
                _restore_base(model, flags, had_peft_config, model_tags)
            raise

    def load_adapter(self, model_id, adapter_name, *args, **kwargs):
        _refuse_pickle_only(model_id, kwargs)
        existed = adapter_name in self.peft_config
        active = self.active_adapter
        try:
            return original_load_adapter(self, model_id, adapter_name, *args, **kwargs)
        except Exception:
            config = self.peft_config.get(adapter_name)
            if not existed and config is not None and config.peft_type in PLUGIN_TYPES and len(self.peft_config) > 1:
                self.delete_adapter(adapter_name)
                if active in self.peft_config:
                    self.set_adapter(active)
            raise

    from_pretrained.__doc__ = original_from_pretrained.__doc__
    load_adapter.__doc__ = original_load_adapter.__doc__
    PeftModel.from_pretrained = classmethod(from_pretrained)
    PeftModel.load_adapter = load_adapter
    PeftModel._peft_gift_safe_load_installed = True
