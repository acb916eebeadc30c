"""GIFT and LoFiT adapters in PEFT's `PeftMixedModel` (``get_peft_model(model, config, mixed=True)``), beside LoRA,
LoHa, LoKr, AdaLoRA, OFT and SHiRA.

PEFT 0.21's `MixedModel` (the tuner behind `PeftMixedModel`) accepts a fixed tuple of types and dispatches on a
fixed chain of config classes; ``register_peft_method(..., is_mixed_compatible=True)`` only lets
`PeftMixedModel.from_pretrained` read the config. `MixedModel` here is PEFT's class with each step that depends on the
adapter's method handing GIFT/LoFiT adapters to their own tuner's code (the same code `GiftModel` / `LofitModel` run);
`allow_in_peft_mixed_model` (run by ``import peft_gift``) adds our types, prefixes and layer classes to PEFT's lists
and makes `PeftMixedModel` build this class; PEFT's own types take PEFT's code paths unchanged.

The PEFT names this relies on are checked at import. A PEFT release that lacks or changed one of them does not break
``import peft_gift``: one warning names the PEFT version and what is missing, PEFT's mixed models are left exactly as
PEFT made them, GIFT/LoFiT work as usual through `get_peft_model` / `PeftModel`, and a GIFT/LoFiT config given to
`PeftMixedModel` raises a ValueError saying why.

Where two adapters of different types target the same module, the one added later wraps the earlier one (as in
PEFT for every type):

    LoRA added after GIFT:   y = W(I + sφψ)x + (α/r)BAx
    GIFT added after LoRA:   y = (W + (α/r)BA)(I + sφψ)x

`merge_and_unload()` and `merge_adapter()` merge nests that hold a GIFT/LoFiT layer inside out, at any depth, so the
merged weight is the same composition, and `unmerge_adapter()` undoes them outside in (nests of PEFT's own layers
merge as PEFT merges them). Mixed-adapter batches (``adapter_names=``), saving and model cards are not supported by
`PeftMixedModel` for any type.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from contextlib import ExitStack
from typing import Iterator, Optional, Union

import peft
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer

from .input_edit import InputEditLayer
from .targets import candidate_modules
from .tuner import InputEditTuner, injection, release_4bit_layout

# What this module reads, extends or replaces in PEFT (0.21, 0.22). A release that renames one of them switches mixed
# support off (with a warning), instead of silently changing how mixed models behave.
_PEFT_NAMES = {
    "peft.tuners.mixed": {"COMPATIBLE_TUNER_TYPES": tuple, "MixedModel": type},
    "peft.tuners.mixed.model": {"COMPATIBLE_TUNER_TYPES": tuple, "PREFIXES": list, "Layers": tuple},
    "peft.mixed_model": {"MixedModel": type},
    "peft.tuners.tuners_utils": {"onload_layer": object},
}
_PEFT_MIXED_MODEL_METHODS = (
    "_check_new_adapter_config", "_prepare_adapter_config", "_check_target_module_exists", "inject_adapter",
    "_create_and_replace", "_cast_adapter_dtype", "delete_adapter", "_unload_and_optionally_merge", "merge_adapter",
    "_check_merge_allowed", "_replace_module",
)


def _missing_peft_names() -> list[str]:
    """Every name this module needs that PEFT does not have (as the expected type); empty when all are there."""
    missing, modules = [], {}
    for module_name, names in _PEFT_NAMES.items():
        try:
            modules[module_name] = importlib.import_module(module_name)
        except ImportError:
            missing.append(module_name)
            continue
        missing += [f"{module_name}.{name}" for name, kind in names.items()
                    if not isinstance(getattr(modules[module_name], name, None), kind)]
    tuner = getattr(modules.get("peft.tuners.mixed"), "MixedModel", None)
    if isinstance(tuner, type):
        missing += [f"peft.tuners.mixed.MixedModel.{name}" for name in _PEFT_MIXED_MODEL_METHODS
                    if not hasattr(tuner, name)]
    return missing


MISSING = _missing_peft_names()
UNAVAILABLE = (
    f"GIFT/LoFiT adapters cannot be used in PEFT's mixed models (PeftMixedModel, get_peft_model(..., mixed=True)) with "
    f"peft {peft.__version__}: peft_gift extends them through names of peft 0.21/0.22 that this peft lacks or has "
    f"changed ({', '.join(MISSING)}). GIFT and LoFiT work as usual through get_peft_model / PeftModel (which also "
    "hosts several GIFT or several LoFiT adapters); for mixed models install a peft that peft_gift supports."
) if MISSING else ""
if MISSING:
    warnings.warn(UNAVAILABLE, stacklevel=2)
    PeftMixedTuner = BaseTuner  # `MixedModel` below is then defined but never used
    onload_layer = None
else:
    import peft.mixed_model
    import peft.tuners.mixed.model
    from peft.tuners.tuners_utils import onload_layer

    PeftMixedTuner = peft.tuners.mixed.MixedModel


def _input_edit_tuner(config) -> Optional[type[InputEditTuner]]:
    """`GiftModel` / `LofitModel` for a config of ours; None for PEFT's own types."""
    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(getattr(config, "peft_type", None))
    return tuner if isinstance(tuner, type) and issubclass(tuner, InputEditTuner) else None


class MixedModel(PeftMixedTuner):
    """PEFT's `MixedModel`, also hosting GIFT (Ŵ = W(I + sφψ), Θ shared per group and kept here as ``gift_phi`` /
    ``gift_psi``) and LoFiT (z_h ← z_h ⊙ (1 + A_h) + v_h before the attention output projection) adapters."""

    def _check_new_adapter_config(self, config) -> None:
        if _input_edit_tuner(config) is None:
            return super()._check_new_adapter_config(config)
        return BaseTuner._check_new_adapter_config(self, config)

    @staticmethod
    def _prepare_adapter_config(peft_config, model_config):
        tuner = _input_edit_tuner(peft_config)
        if tuner is None:
            return PeftMixedTuner._prepare_adapter_config(peft_config, model_config)
        return tuner._prepare_adapter_config(peft_config, model_config)

    def _check_target_module_exists(self, peft_config, key: str):
        tuner = _input_edit_tuner(peft_config)
        if tuner is None:
            return super()._check_target_module_exists(peft_config, key)
        return tuner._check_target_module_exists(peft_config, key)

    def inject_adapter(self, model, adapter_name: str, *args, **kwargs) -> None:
        tuner = _input_edit_tuner(self.peft_config[adapter_name])
        if tuner is None:
            return super().inject_adapter(model, adapter_name, *args, **kwargs)
        if getattr(model, "base_model", None) is self:
            # `PeftMixedModel.add_adapter` passes itself, so module names would start with "base_model.model.":
            # inject into the wrapped model as the first adapter was, so GIFT's group names (and the adapter file's
            # tensor names) are the same as in a `PeftModel`
            model = self.model
        with injection(tuner, self, model, adapter_name):
            super().inject_adapter(model, adapter_name, *args, **kwargs)

    def _create_and_replace(self, config, *args, **kwargs) -> None:
        tuner = _input_edit_tuner(config)
        if tuner is None:
            return super()._create_and_replace(config, *args, **kwargs)
        return tuner._create_and_replace(self, config, *args, **kwargs)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        tuner = _input_edit_tuner(self.peft_config.get(adapter_name))
        if tuner is not None and autocast_adapter_dtype:
            tuner._cast_own_state(self, adapter_name)

    def delete_adapter(self, adapter_name: Union[str, list[str]]) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        tuners = {name: _input_edit_tuner(self.peft_config.get(name)) for name in names}
        super().delete_adapter(adapter_name)
        for name, tuner in tuners.items():
            if tuner is not None:
                tuner._delete_own_state(self, name)
        release_4bit_layout(self.model)

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: Optional[list[str]] = None):
        """Nests holding a GIFT/LoFiT layer merge inside out (`merge_adapter`) and are replaced by their base layer
        here; PEFT unloads the rest as it does without peft_gift (its own merge order merges the middle layer of a
        three-deep nest before the innermost one)."""
        tuners = {_input_edit_tuner(config) for config in self.peft_config.values()} - {None}
        with ExitStack() as stack:
            for tuner in tuners:
                stack.enter_context(tuner._unloading(self.model))
            if merge:
                for name, chain in list(_nests(self.model)):
                    if any(isinstance(layer, InputEditLayer) for layer in chain):
                        _merge_inside_out(chain, adapter_names, safe_merge)
                        parent, _, child = name.rpartition(".")
                        self._replace_module(self.model.get_submodule(parent), child, chain[0].get_base_layer(),
                                             chain[0])
            model = super()._unload_and_optionally_merge(merge=merge, progressbar=progressbar, safe_merge=safe_merge,
                                                         adapter_names=adapter_names)
        release_4bit_layout(self.model)
        return model

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        """Merge nested layers inside out (`_merge_inside_out`); a nest of PEFT's own layers only merges as PEFT
        merges it (its types behave as without peft_gift). `unmerge_adapter` (outer layers first) needs no change."""
        self._check_merge_allowed()
        for _, chain in _nests(self.model):
            if any(isinstance(layer, InputEditLayer) for layer in chain):
                _merge_inside_out(chain, adapter_names, safe_merge)
                continue
            for layer in chain:
                with onload_layer(layer):
                    layer.merge(adapter_names=adapter_names, safe_merge=safe_merge)


def _nests(model) -> Iterator[tuple[str, list[BaseTunerLayer]]]:
    """(name, nest) for every outermost tuner layer of ``model``; a nest lists its tuner layers outermost first."""
    for name, outer in candidate_modules(model):
        if isinstance(outer, BaseTunerLayer):
            chain = [outer]
            while isinstance(chain[-1].base_layer, BaseTunerLayer):
                chain.append(chain[-1].base_layer)
            yield name, chain


def _merge_inside_out(chain: list[BaseTunerLayer], adapter_names: Optional[list[str]], safe_merge: bool) -> None:
    """Merge ``adapter_names`` (default: each layer's active adapters) into a nest (outermost layer first). A layer
    wrapping another adapter's layer acts on that layer's effective weight (GIFT outside LoRA: (W + ΔW)(I + sφψ); LoRA
    outside GIFT: W(I + sφψ) + ΔW), so the inner layer merges first and the outer one merges into its result (PEFT's
    generic merge merges the outer layer first, into the innermost weight). A merged layer outside a layer that merges
    now is unmerged and merged again on top of it."""
    new = [[name for name in (layer.active_adapters if adapter_names is None else adapter_names)
            if name in layer._all_available_adapter_names() and name not in layer.merged_adapters]
           for layer in chain]
    changed = [index for index, names in enumerate(new) if names]
    for index, layer in enumerate(chain[: changed[-1]] if changed else []):
        if layer.merged:
            new[index] = layer.merged_adapters + new[index]
            with onload_layer(layer):
                layer.unmerge()
    for layer, names in reversed(list(zip(chain, new))):
        if names:
            with onload_layer(layer):
                layer.merge(safe_merge=safe_merge, adapter_names=names)


def allow_in_peft_mixed_model(peft_type, model_cls: type[InputEditTuner]) -> None:
    """Let ``get_peft_model(..., mixed=True)`` / `PeftMixedModel` accept adapters of ``peft_type``: add it to the
    accepted types, its parameter prefix and layer class to those PEFT's `MixedModel` recognises (trainability,
    unloading, deleting, `set_adapter`), and make `PeftMixedModel` build `MixedModel`, which hands the method-specific
    steps to ``model_cls``. Idempotent. With a PEFT that lacks what this needs (`MISSING`), change nothing but PEFT's
    check of a mixed model's config, which then refuses ours with `UNAVAILABLE`."""
    if MISSING:
        _refuse_in_peft_mixed_model()
        return
    mixed_model = peft.tuners.mixed.model
    for module in (peft.tuners.mixed, mixed_model):  # read by `PeftMixedModel`'s type check
        module.COMPATIBLE_TUNER_TYPES = tuple(dict.fromkeys((*module.COMPATIBLE_TUNER_TYPES, peft_type)))
    if model_cls.prefix not in mixed_model.PREFIXES:
        mixed_model.PREFIXES.append(model_cls.prefix)
    mixed_model.Layers = tuple(dict.fromkeys((*mixed_model.Layers, model_cls.tuner_layer_cls)))
    peft.mixed_model.MixedModel = MixedModel  # the tuner `PeftMixedModel.__init__` builds


def _refuse_in_peft_mixed_model() -> None:
    """Make ``peft.mixed_model._check_config_compatible`` (run by `PeftMixedModel.__init__` and ``add_adapter``)
    raise ``ValueError(UNAVAILABLE)`` for a GIFT/LoFiT config; other configs go to PEFT's check. Idempotent; nothing
    is changed where that function is missing too."""
    try:
        module = importlib.import_module("peft.mixed_model")
    except ImportError:
        return
    check = getattr(module, "_check_config_compatible", None)
    if not callable(check) or getattr(check, "peft_gift_refusal", False):
        return

    @functools.wraps(check)
    def refuse_ours(peft_config, *args, **kwargs):
        if _input_edit_tuner(peft_config) is not None:
            raise ValueError(UNAVAILABLE)
        return check(peft_config, *args, **kwargs)

    refuse_ours.peft_gift_refusal = True
    module._check_config_compatible = refuse_ours
