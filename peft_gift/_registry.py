"""PEFT's method registry, extended: real `PeftType` members for our tuners and their registration with PEFT.

PEFT's `register_peft_method` only accepts names that are already members of the str-Enum
`peft.utils.peft_types.PeftType`, and peft has no plugin discovery. So we add real enum members (``GIFT``,
``LOFIT``) and then register our config/model classes. Registering is idempotent: importing twice or
`importlib.reload`-ing the package re-registers the current classes without duplicating anything. This module imports
nothing of peft_gift (`peft_gift/__init__.py` registers the tuners, `peft_gift.mixed` extends `PeftMixedModel`).
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


def register(name: str, config_cls: type, model_cls: type) -> PeftType:
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
    return peft_type


GIFT = ensure_peft_type("GIFT")
LOFIT = ensure_peft_type("LOFIT")
