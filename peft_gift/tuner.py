"""What the GIFT and LoFiT tuners share: target selection, checked loading, mixed-batch routing and model tags."""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Iterator

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from ._bnb_cpu import hold_standard_layout, release_standard_layout
from ._checked_load import check_adapter_state_dict, note_injection, snapshot_base_state
from .input_edit import InputEditLayer, adapter_names_hooks
from .targets import default_targets, match_target


class InputEditTuner(BaseTuner):
    """Base of `GiftModel` and `LofitModel`. Subclasses set PEFT's class attributes (``prefix``, ``tuner_layer_cls``,
    ``target_module_mapping``), ``method_name`` (used in messages and as the model tag) and ``_describe_config``
    (the config fields that explain a shape mismatch in a refused adapter file).

    The steps that are specific to a method are classmethods taking the hosting tuner as an argument (``_injecting``,
    ``_cast_own_state``, ``_delete_own_state``, ``_unloading``, ``_create_and_replace`` called unbound), so that PEFT's
    `MixedModel` can host our adapters beside LoRA with the same code (see `peft_gift.mixed`)."""

    method_name: str

    @classmethod
    def _prepare_adapter_config(cls, peft_config, model_config: dict):
        if peft_config.target_modules is None:
            peft_config.target_modules = default_targets(
                cls.target_module_mapping, model_config, type(peft_config).__name__
            )
        return peft_config

    @classmethod
    def _check_target_module_exists(cls, peft_config, key: str):
        return match_target(peft_config, key)

    @classmethod
    @contextmanager
    def _injecting(cls, tuner: BaseTuner, model: nn.Module, config, adapter_name: str) -> Iterator[None]:
        """Around the injection of ``adapter_name`` into ``model`` by ``tuner``: check the config against the model
        before any change (raise ValueError), undo work on ``tuner`` if the injection fails (the layers are rolled back
        by `injection`)."""
        yield

    @classmethod
    def _cast_own_state(cls, tuner: BaseTuner, adapter_name: str) -> None:
        """Cast 16-bit state kept on ``tuner`` (not in the layers) to float32, as PEFT does for layer weights."""

    @classmethod
    def _delete_own_state(cls, tuner: BaseTuner, adapter_name: str) -> None:
        """Remove state of ``adapter_name`` kept on ``tuner`` (not in the layers)."""

    @classmethod
    def _unloading(cls, model: nn.Module) -> AbstractContextManager:
        """Around unloading (with or without merging) this method's layers out of ``model``."""
        return nullcontext()

    def inject_adapter(self, model, adapter_name: str, *args, **kwargs) -> None:
        with injection(type(self), self, model, adapter_name):
            super().inject_adapter(model, adapter_name, *args, **kwargs)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        if autocast_adapter_dtype:
            self._cast_own_state(self, adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._delete_own_state(self, adapter_name)
        release_4bit_layout(self.model)

    def _unload_and_optionally_merge(self, *args, **kwargs):
        with self._unloading(self.model):
            model = super()._unload_and_optionally_merge(*args, **kwargs)
        release_4bit_layout(self.model)
        return model

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
        return check_adapter_state_dict(model, adapter_name, remapped, what, cls.prefix)


@contextmanager
def injection(tuner_cls: type[InputEditTuner], tuner: BaseTuner, model: nn.Module, adapter_name: str):
    """Wrap ``tuner``'s generic `BaseTuner.inject_adapter` of an adapter of method ``tuner_cls``: note which loading
    call creates it (checked loading), fill in default targets, run the method's checks and clean-up
    (`InputEditTuner._injecting`), roll the layers back if the injection fails, tag the model. The model's 4-bit layers
    keep bitsandbytes' standard layout while it carries an adapter (`peft_gift._bnb_cpu`)."""
    note_injection(tuner, adapter_name)
    if len(tuner.peft_config) == 1:  # what a failed first load restores
        snapshot_base_state(tuner, model)
    config = tuner_cls._prepare_adapter_config(tuner.peft_config[adapter_name], tuner.get_model_config(model))
    existing = {id(m) for m in model.modules() if isinstance(m, BaseTunerLayer)}
    with tuner_cls._injecting(tuner, model, config, adapter_name):
        hold_standard_layout(model)  # refuses a repacked 4-bit layer before anything changes
        try:
            yield
        except BaseException:
            _remove_from_layers(tuner_cls.tuner_layer_cls, model, adapter_name, existing)
            release_4bit_layout(model)
            raise
    if hasattr(model, "add_model_tags"):
        model.add_model_tags([tuner_cls.method_name.lower()])


def _remove_from_layers(layer_cls: type, model: nn.Module, adapter_name: str, existing: set[int]) -> None:
    """Undo a failed injection of ``adapter_name``: layers that existed before (ids in ``existing``) drop it, layers
    the injection created are replaced by their base layer again."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, layer_cls) or adapter_name not in module._all_available_adapter_names():
            continue
        if id(module) in existing:
            module.delete_adapter(adapter_name)
        else:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.base_layer)


def release_4bit_layout(model: nn.Module) -> None:
    """Once ``model`` carries no GIFT/LoFiT adapter any more, give its 4-bit layers bitsandbytes' repacking flag back."""
    if not any(isinstance(layer, InputEditLayer) and layer._all_available_adapter_names() for layer in model.modules()):
        release_standard_layout(model)
