import json

import pytest
from peft import PeftConfig, get_peft_model
from peft.utils.peft_types import PeftType
from tiny_models import tiny_bert, tiny_dinov2, tiny_gpt2, tiny_llama, tiny_roberta, tiny_t5, tiny_vit

from peft_gift import GiftConfig


def test_defaults_and_peft_type():
    cfg = GiftConfig()
    assert cfg.r == 64 and cfg.sharing == "module" and cfg.init == "gift" and cfg.alpha is None
    assert cfg.peft_type is PeftType.GIFT and cfg.scaling == 1.0
    assert GiftConfig(r=8, alpha=16).scaling == 2.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"r": 0}, "r"),
        ({"r": -3}, "r"),
        ({"sharing": "block"}, "sharing"),
        ({"init": "lora"}, "init"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"layers_pattern": "layers"}, "layers_pattern"),
    ],
)
def test_bad_values_raise_value_error_naming_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GiftConfig(**kwargs)


@pytest.mark.parametrize("value", [2.5, "8", True])
def test_r_must_be_int(value):
    with pytest.raises(TypeError, match="r must be an int"):
        GiftConfig(r=value)


@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"layers_to_transform": [0, -1]}, ValueError, r"GiftConfig.layers_to_transform must be an int >= 0.*got \[0, -1\]"),
    ({"layers_to_transform": "0"}, TypeError, r"GiftConfig.layers_to_transform must be an int >= 0.*got '0'"),
    ({"sharing": "block"}, ValueError, r"GiftConfig.sharing must be one of \['module', 'all', 'layer'\], got 'block'"),
])
def test_shared_fields_and_message_style_match_lofit(kwargs, error, pattern):
    """The fields both tuners share are declared and validated once (`peft_gift.config.InputEditConfig`), in one
    style: TypeError for a wrong type, ValueError for a bad value, ``<Config>.<field> must be …, got …``."""
    from peft_gift import LofitConfig
    from peft_gift.config import InputEditConfig

    assert issubclass(GiftConfig, InputEditConfig) and issubclass(LofitConfig, InputEditConfig)
    with pytest.raises(error, match=pattern):
        GiftConfig(**kwargs)


def test_json_round_trip_exact(tmp_path):
    cfg = GiftConfig(
        r=16, alpha=32.0, sharing="layer", init="wegeft", dropout=0.1, target_modules=["v_proj", "q_proj"],
        exclude_modules=["lm_head"], layers_to_transform=[0, 1], layers_pattern="layers", modules_to_save=["score"],
    )
    cfg.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is GiftConfig
    assert loaded.to_dict() == cfg.to_dict()
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "GIFT"


@pytest.mark.parametrize(
    "factory, expected",
    [
        (tiny_llama, ["q_proj", "v_proj"]),
        (tiny_gpt2, ["c_attn"]),
        (tiny_bert, ["query", "value"]),
        (tiny_roberta, ["query", "value"]),
        (tiny_vit, ["o_proj"]),  # the paper's ViT setting: the attention output projection
        (tiny_dinov2, ["o_proj"]),
        (tiny_t5, ["q", "v"]),
    ],
)
def test_default_target_modules_per_model_type(factory, expected):
    model = get_peft_model(factory(), GiftConfig(r=2))
    assert sorted(model.peft_config["default"].target_modules) == expected
    leaves = {name.rsplit(".", 1)[-1] for name in model.base_model.targeted_module_names}
    assert leaves == set(expected)


def test_unknown_model_type_requires_target_modules():
    import torch.nn as nn

    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="target_modules is required"):
        get_peft_model(model, GiftConfig(r=2))
