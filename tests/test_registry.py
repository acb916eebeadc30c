import importlib
import json
import pickle

import pytest
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType

import peft_gift
from peft_gift import _registry


@pytest.mark.parametrize("name", ["GIFT", "LOFIT"])
def test_real_enum_members(name):
    member = PeftType[name]
    assert member.value == name
    assert PeftType(name) is member
    assert getattr(PeftType, name) is member
    assert name in PeftType.__members__ and member in list(PeftType)
    assert json.loads(json.dumps(member)) == name
    assert pickle.loads(pickle.dumps(member)) is member
    assert isinstance(member, str) and member == name


def test_gift_registered_with_prefix():
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.GIFT] is peft_gift.GiftConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.GIFT] is peft_gift.GiftModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.GIFT] == "gift_"
    assert peft_gift.GiftModel.prefix == "gift_"


def test_import_twice_and_reload_are_idempotent():
    members_before = list(PeftType)
    importlib.import_module("peft_gift")
    importlib.reload(_registry)
    reloaded = importlib.reload(peft_gift)
    assert list(PeftType) == members_before
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.GIFT] is reloaded.GiftConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.GIFT] is reloaded.GiftModel
    assert list(PEFT_TYPE_TO_PREFIX_MAPPING.values()).count("gift_") == 1


def test_fallback_member_factory_is_consistent():
    name = "PEFTGIFT_TEST_FALLBACK"
    member = _registry.ensure_peft_type(name, _force_fallback=True)
    try:
        assert PeftType(name) is member is PeftType[name] is getattr(PeftType, name)
        assert member.name == name and member.value == name and member in list(PeftType)
        assert pickle.loads(pickle.dumps(member)) is member
        assert _registry.ensure_peft_type(name) is member  # idempotent
    finally:  # leave peft's enum as we found it
        PeftType._member_map_.pop(name)
        PeftType._value2member_map_.pop(name)
        PeftType._member_names_.remove(name)
        type.__delattr__(PeftType, name)
