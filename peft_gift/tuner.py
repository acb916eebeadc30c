"""What the GIFT and LoFiT tuners share: target selection, checked loading, mixed-batch routing and model tags."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner

from ._checked_load import check_adapter_state_dict, note_injection, snapshot_base_state
from .input_edit import adapter_names_hooks
from .targets import default_targets, match_target


class InputEditTuner(BaseTuner):
    """Base of `GiftModel` and `LofitModel`. Subclasses set PEFT's class attributes (``prefix``, ``tuner_layer_cls``,
    ``target_module_mapping``), ``method_name`` (used in messages and as the model tag) and ``_describe_config``
    (the config fields that explain a shape mismatch in a refused adapter file)."""

    method_name: str

    def _prepare_adapter_config(self, peft_config, model_config: dict):
        if peft_config.target_modules is None:
            peft_config.target_modules = default_targets(
                self.target_module_mapping, model_config, type(peft_config).__name__
            )
        return peft_config

    def _check_target_module_exists(self, peft_config, key: str):
        return match_target(peft_config, key)

    def _pre_injection_hook(self, model, config, adapter_name: str) -> None:
        super()._pre_injection_hook(model, config, adapter_name)
        snapshot_base_state(self, model)

    def inject_adapter(self, model, adapter_name: str, *args, **kwargs) -> None:
        note_injection(self, adapter_name)
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        if hasattr(model, "add_model_tags"):
            model.add_model_tags([self.method_name.lower()])

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        # Our layers keep the base layer and create their tensors on its device, so replacing is just that. PEFT's
        # generic version also copies ``child.weight`` onto modules without a base layer, which breaks unloading a
        # ``modules_to_save`` head that is not a Linear (e.g. RoBERTa's classification head); LoRA overrides it too.
        setattr(parent, child_name, new_module)

    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """Mixed-adapter batches: ``model(..., adapter_names=[...])`` picks one adapter per sample."""
        return adapter_names_hooks(self, self.tuner_layer_cls, *args, **kwargs)

    @classmethod
    def _describe_config(cls, config) -> str:
        raise NotImplementedError

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        what = f"{cls.method_name} adapter {adapter_name!r} ({cls._describe_config(config)})"
        return check_adapter_state_dict(model, adapter_name, remapped, what)
