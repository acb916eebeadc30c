"""The one place where peft-gift extends PEFT: new `PeftType` members, tuner registration, `PeftMixedModel`.

PEFT's `register_peft_method` only accepts names that are already members of the str-Enum
`peft.utils.peft_types.PeftType`, and peft has no plugin discovery. So we add real enum members (``GIFT``,
``LOFIT``) and then register our config/model classes. `PeftMixedModel` accepts a fixed tuple of types and builds
PEFT's `MixedModel` by name, so `allow_in_peft_mixed_model` extends that tuple and points `PeftMixedModel` at
`peft_gift.mixed.MixedModel` (PEFT's class extended to host our adapters). `track_loading_calls` wraps PEFT's loading
entry points so that a refused adapter file removes exactly the adapters that the failing call created (see
`peft_gift._checked_load`). Every step is idempotent: importing twice or `importlib.reload`-ing the package
re-registers the current classes without duplicating anything.
"""

from __future__ import annotations

import enum

from peft.utils.peft_types import PeftType


def _add_member_by_hand(enum_cls: type[enum.Enum], name: str, value: str) -> None:
    """Fallback that builds the member the way `EnumType.__new__` does and fills the enum's private maps."""
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    member._sort_order_ = len(enum_cls._member_names_)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    type.__setattr__(enum_cls, name, member)


def ensure_peft_type(name: str, *, _force_fallback: bool = False) -> PeftType:
    """Return ``PeftType[name]``, adding it as a real member (value == name) if it does not exist yet."""
    if name in PeftType.__members__:
        return PeftType[name]
    factory = getattr(enum, "_proto_member", None)
    if factory is not None and not _force_fallback:
        try:
            proto = factory(name)
            type.__setattr__(PeftType, name, proto)
            proto.__set_name__(PeftType, name)
        except Exception:  # pragma: no cover - only on an interpreter whose private enum API changed
            if name in PeftType._member_map_:
                raise
            _add_member_by_hand(PeftType, name, name)
    else:
        _add_member_by_hand(PeftType, name, name)
    member = PeftType[name]
    if PeftType(name) is not member or member.value != name:  # pragma: no cover - sanity check
        raise RuntimeError(f"could not add PeftType.{name} to peft's PeftType enum")
    return member


def register(name: str, config_cls: type, model_cls: type) -> None:
    """Register a tuner under ``PeftType[name.upper()]`` with prefix ``name + "_"``; re-registering replaces."""
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )
    from peft.utils import register_peft_method

    peft_type = ensure_peft_type(name.upper())
    for mapping in (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
    ):
        mapping.pop(peft_type, None)
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=f"{name}_",
                         is_mixed_compatible=True)
    allow_in_peft_mixed_model(peft_type, model_cls)
    track_loading_calls()


def track_loading_calls() -> None:
    """Wrap ``PeftModel.from_pretrained`` / ``load_adapter`` and ``PeftMixedModel.from_pretrained`` (whose
    ``load_adapter`` calls ``PeftModel``'s) with `_checked_load.loading_call`; a wrapper already there is replaced."""
    from peft import PeftMixedModel, PeftModel

    from ._checked_load import loading_call

    entry_points = ((PeftModel, "from_pretrained"), (PeftModel, "load_adapter"), (PeftMixedModel, "from_pretrained"))
    for cls, name in entry_points:
        attr = cls.__dict__[name]
        func = attr.__func__ if isinstance(attr, classmethod) else attr
        if getattr(func, "peft_gift_loading_call", False):
            func = func.__wrapped__
        wrapped = loading_call(func)
        setattr(cls, name, classmethod(wrapped) if isinstance(attr, classmethod) else wrapped)


def allow_in_peft_mixed_model(peft_type: PeftType, model_cls: type) -> None:
    """Let ``get_peft_model(..., mixed=True)`` / `PeftMixedModel` accept adapters of ``peft_type``: add it to the
    accepted types, its parameter prefix and layer class to those PEFT's `MixedModel` recognises (trainability,
    unloading, deleting, `set_adapter`), and make `PeftMixedModel` build `peft_gift.mixed.MixedModel`, which hands
    the method-specific steps to ``model_cls``."""
    import peft.mixed_model
    import peft.tuners.mixed
    import peft.tuners.mixed.model as mixed_model

    from .mixed import MixedModel

    for module in (peft.tuners.mixed, mixed_model):  # read by `PeftMixedModel`'s type check
        module.COMPATIBLE_TUNER_TYPES = tuple(dict.fromkeys((*module.COMPATIBLE_TUNER_TYPES, peft_type)))
    if model_cls.prefix not in mixed_model.PREFIXES:
        mixed_model.PREFIXES.append(model_cls.prefix)
    mixed_model.Layers = tuple(dict.fromkeys((*mixed_model.Layers, model_cls.tuner_layer_cls)))
    peft.mixed_model.MixedModel = MixedModel  # the tuner `PeftMixedModel.__init__` builds


GIFT = ensure_peft_type("GIFT")
LOFIT = ensure_peft_type("LOFIT")
