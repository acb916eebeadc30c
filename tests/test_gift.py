"""GIFT numerics: adapter == formula, identity at init, exact merge/unmerge, parameter counts, sharing modes, Θ groups
and targeting (layers_to_transform in both tuners)."""

import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from tiny_models import (
    image_inputs,
    model_output,
    randomise_theta,
    t5_inputs,
    text_inputs,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_roberta,
    tiny_t5,
    tiny_vit,
)
from torch import nn
from transformers import RobertaConfig, RobertaForSequenceClassification, ViTConfig, ViTModel

from peft_gift import GiftConfig, LofitConfig
from peft_gift.gift import GiftLayer, group_key
from peft_gift.targets import base_module_name

ARCHS = {
    "llama": (tiny_llama, text_inputs),
    "gpt2": (tiny_gpt2, text_inputs),
    "bert": (tiny_bert, text_inputs),
    "roberta": (tiny_roberta, text_inputs),
    "vit": (tiny_vit, image_inputs),
    "t5": (tiny_t5, t5_inputs),
}


def gift_layers(peft_model):
    return [m for m in peft_model.modules() if isinstance(m, GiftLayer)]


def expected_weight(layer: GiftLayer, adapters) -> torch.Tensor:
    """Ŵ = W(I + Σ s φψ) in (out, in) layout, built densely from the definition."""
    base = layer.get_base_layer()
    w = base.weight.T if layer.fan_in_fan_out else base.weight
    m = torch.eye(layer.in_features)
    for a in adapters:
        phi, psi = layer.theta(a)
        m = m + layer.gift_scaling[a] * phi @ psi
    return w @ m


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("init", ["gift", "wegeft"])
def test_identity_at_init(arch, init):
    factory, inputs = ARCHS[arch]
    base = factory()
    expected = model_output(base, inputs())
    model = get_peft_model(base, GiftConfig(r=4, init=init, alpha=8))
    assert torch.equal(model_output(model, inputs()), expected)
    phi = next(iter(model.base_model.gift_phi["default"].values()))
    psi = next(iter(model.base_model.gift_psi["default"].values()))
    zero, nonzero = (psi, phi) if init == "gift" else (phi, psi)
    assert torch.count_nonzero(zero) == 0 and torch.count_nonzero(nonzero) == nonzero.numel()
    # nn.Linear's default init bound 1/sqrt(fan_in) of the factor that maps into its output
    fan_in = nonzero.shape[1]
    assert nonzero.abs().max() <= 1 / fan_in**0.5 + 1e-7


@pytest.mark.parametrize("arch", ARCHS)
def test_every_layer_equals_formula(arch):
    factory, _ = ARCHS[arch]
    model = get_peft_model(factory(), GiftConfig(r=3, alpha=6.0))
    randomise_theta(model)
    layers = gift_layers(model)
    assert layers
    for layer in layers:
        x = torch.randn(2, 5, layer.in_features)
        bias = layer.get_base_layer().bias
        expected = F.linear(x, expected_weight(layer, ["default"]), bias)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        assert layer.gift_scaling["default"] == 2.0


def layer_weight(layer):
    w = layer.get_base_layer().weight.detach()
    return (w.T if layer.fan_in_fan_out else w).clone()


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_unmerge_merge_and_unload(arch):
    factory, inputs = ARCHS[arch]
    base = factory()
    base_out = model_output(base, inputs())
    base_keys = set(base.state_dict())
    model = get_peft_model(base, GiftConfig(r=4))
    randomise_theta(model, std=0.5)
    adapted = model_output(model, inputs())
    assert not torch.allclose(adapted, base_out, atol=1e-4, rtol=1e-2)  # the adapter really changes the output
    layers = gift_layers(model)
    originals = [layer_weight(layer) for layer in layers]
    expected = [expected_weight(layer, ["default"]).detach() for layer in layers]

    model.merge_adapter()
    assert all(layer.merged for layer in layers)
    torch.testing.assert_close(model_output(model, inputs()), adapted, atol=1e-4, rtol=1e-4)
    for layer, want in zip(layers, expected):
        torch.testing.assert_close(layer_weight(layer), want, atol=1e-5, rtol=1e-5)

    model.unmerge_adapter()  # exact: W = W'(I + sφψ)⁻¹ by Woodbury in float64, no stored copy
    assert not any(layer.merged for layer in layers)
    for layer, original in zip(layers, originals):
        torch.testing.assert_close(layer_weight(layer), original, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model_output(model, inputs()), adapted, atol=1e-4, rtol=1e-4)

    merged = model.merge_and_unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(model_output(merged, inputs()), adapted, atol=1e-4, rtol=1e-4)
    assert set(merged.state_dict()) == base_keys


@pytest.mark.parametrize("kind", ["singular", "ill-conditioned", "well-conditioned"])
def test_unmerge_restores_weights_exactly_whatever_the_conditioning(kind):
    """Θ = (φ, ψ) with ψ = c·φᵀ on one unit direction: I + sφψ is singular for c = -1 and ill-conditioned for
    c = -0.99999. Merging still gives the adapter's outputs, and unmerging (also inside disable_adapter) restores the
    base weights exactly: by Woodbury when I + sφψ is well-conditioned, from the copy of W that merge keeps otherwise."""
    base = tiny_llama()
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    pm = get_peft_model(base, GiftConfig(r=2, target_modules=["q_proj"]))
    direction = F.normalize(torch.randn(64, generator=torch.Generator().manual_seed(0)), dim=0)
    scale = {"singular": -1.0, "ill-conditioned": -0.99999, "well-conditioned": 0.3}[kind]
    with torch.no_grad():
        for name, param in pm.named_parameters():
            if "gift_phi" in name:
                param.copy_(torch.stack([direction, torch.zeros(64)], dim=1))
            if "gift_psi" in name:
                param.copy_(torch.stack([direction * scale, torch.zeros(64)]))
    merged_reference = model_output(pm, text_inputs())
    pm.merge_adapter()
    torch.testing.assert_close(model_output(pm, text_inputs()), merged_reference, atol=1e-4, rtol=1e-4)
    with pm.disable_adapter():
        plain = model_output(pm, text_inputs())  # unmerges inside
    pm.unmerge_adapter()
    for key, value in pm.get_base_model().state_dict().items():
        if "gift_" not in key:
            torch.testing.assert_close(value, weights[key.replace(".base_layer", "")], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(plain, model_output(tiny_llama(), text_inputs()), atol=1e-5, rtol=1e-5)


def test_merge_is_relative_to_unmerged_weight_and_twice_warns():
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model)
    model.merge_adapter()
    merged_state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="All adapters are already merged"):
        model.merge_adapter()
    for k, v in model.state_dict().items():
        assert torch.equal(v, merged_state[k])


def test_safe_merge_equals_and_detects_nan():
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model)
    adapted = model_output(model, text_inputs())
    safe = copy.deepcopy(model).merge_and_unload(safe_merge=True)
    torch.testing.assert_close(model_output(safe, text_inputs()), adapted, atol=1e-4, rtol=1e-4)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(iter(model.base_model.gift_psi["default"].values()))[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaNs detected in the merged weights"):
        model.merge_and_unload(safe_merge=True)
    for k, v in model.state_dict().items():  # nothing was written
        if "gift_psi" not in k:
            assert torch.equal(v, before[k]), k


def test_fp16_merge_unmerge():
    model = get_peft_model(tiny_llama().to(torch.float16), GiftConfig(r=4), autocast_adapter_dtype=False)
    randomise_theta(model, std=0.05)
    layer = gift_layers(model)[0]
    w0 = layer.get_base_layer().weight.detach().clone()
    model.merge_adapter()
    assert layer.get_base_layer().weight.dtype == torch.float16
    model.unmerge_adapter()
    torch.testing.assert_close(layer.get_base_layer().weight, w0, atol=2e-3, rtol=2e-3)


# ---- parameter counts --------------------------------------------------------------------------------------------
def _roberta_base_shaped(layers):
    cfg = RobertaConfig(hidden_size=768, num_attention_heads=12, intermediate_size=64, num_hidden_layers=layers,
                        vocab_size=64, max_position_embeddings=34, pad_token_id=1)
    return RobertaForSequenceClassification(cfg)


@pytest.mark.parametrize("layers", [1, 3])
def test_roberta_base_count_98304_independent_of_depth(layers):
    model = get_peft_model(_roberta_base_shaped(layers), GiftConfig(r=32, target_modules=["query", "value"]))
    theta = {n: p.numel() for n, p in model.named_parameters() if "gift_" in n}
    assert sum(theta.values()) == 98_304 == 2 * 2 * 32 * 768
    assert len(theta) == 4  # two tensors per group, two groups
    assert len(model.base_model.targeted_module_names) == 2 * layers


def test_vit_b16_attention_output_projection_count_24576():
    cfg = ViTConfig(hidden_size=768, num_attention_heads=12, intermediate_size=64, num_hidden_layers=2,
                    image_size=32, patch_size=16)
    model = get_peft_model(ViTModel(cfg), GiftConfig(r=16, target_modules=["attention.o_proj"]))
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == 24_576 == 2 * 16 * 768
    assert all(n.endswith("attention.o_proj") for n in model.base_model.targeted_module_names)


def test_sharing_modes_group_counts():
    for sharing, groups in [("module", 2), ("all", 1), ("layer", 4)]:
        model = get_peft_model(tiny_llama(), GiftConfig(r=4, sharing=sharing))
        assert len(model.base_model.gift_phi["default"]) == groups
        trainable, _ = model.get_nb_trainable_parameters()
        assert trainable == groups * 2 * 4 * 64


def test_sharing_all_means_one_parameter_object_used_everywhere():
    model = get_peft_model(tiny_llama(), GiftConfig(r=4, sharing="all"))
    phis = {id(layer.theta("default")[0]) for layer in gift_layers(model)}
    assert len(phis) == 1 and len(gift_layers(model)) == 4


def test_group_names_are_injective_and_never_empty():
    """Θ group keys (ParameterDict keys: no dots, not empty) of distinct module names never collide, and numbered
    top-level modules (an nn.Sequential) get a group."""
    names = ["a.b-c", "a-b.c", "a.b.c", "a~b.c", "0", "layers.0.q", "x-y"]
    for sharing in ("module", "layer"):
        keys = [group_key(n, sharing) for n in names]
        assert all(keys) and all("." not in k for k in keys)
    layer_keys = [group_key(n, "layer") for n in names]
    assert len(set(layer_keys)) == len(names)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    pm = get_peft_model(model, GiftConfig(r=2, target_modules=["0", "2"]))
    assert sum(isinstance(m, GiftLayer) for m in pm.modules()) == 2
    assert len(pm.base_model.gift_phi["default"]) == 1  # both Linear layers: one module type, one Θ


def test_sharing_all_with_unequal_in_features_raises_and_leaves_model_untouched():
    base = tiny_llama()
    before = {n: type(m) for n, m in base.named_modules()}
    with pytest.raises(ValueError, match=r"down_proj \(in_features=128\)"):
        get_peft_model(base, GiftConfig(r=4, sharing="all", target_modules=["q_proj", "down_proj"]))
    assert {n: type(m) for n, m in base.named_modules()} == before
    assert not hasattr(base, "peft_config")


def test_unsupported_target_type_raises_naming_module():
    base = tiny_llama()
    with pytest.raises(ValueError, match="embed_tokens.*Embedding"):
        get_peft_model(base, GiftConfig(r=4, target_modules=["embed_tokens"]))
    assert not any(isinstance(m, BaseTunerLayer) for m in base.modules())


def test_layers_to_transform_restricts_targets():
    model = get_peft_model(tiny_llama(), GiftConfig(r=4, layers_to_transform=[0]))
    assert sorted(model.base_model.targeted_module_names) == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    assert len(model.base_model.gift_phi["default"]) == 2


@pytest.mark.parametrize("config_cls", [GiftConfig, LofitConfig])
def test_layers_to_transform_with_a_regex_target_is_refused_with_pefts_reason(config_cls):
    """PEFT >= 0.22 refuses the pair (a str target ignores layers_to_transform); so do both tuners on every PEFT."""
    reason = re.escape("`layers_to_transform` cannot be used when `target_modules` is a str. "
                       f"({config_cls.__name__}.target_modules=")
    with pytest.raises(ValueError, match="^" + reason):
        config_cls(target_modules=r".*\.q_proj", layers_to_transform=[1])


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_bert], ids=["gpt2", "bert"])
def test_lofit_default_targets_with_layers_to_transform_save_and_load(factory, tmp_path):
    """LoFiT's defaults for GPT-2/BERT-style models name the attention output projection as a suffix list, so
    ``layers_to_transform`` works; a config saved by earlier releases with the former default regex loads as it."""
    pm = get_peft_model(factory(), LofitConfig(mode="scale", layers_to_transform=[1], init_std=0.1))
    adapted = sorted(base_module_name(n) for n, m in pm.named_modules() if isinstance(m, BaseTunerLayer))
    assert len(adapted) == 1 and ".1." in adapted[0] and ("attn.c_proj" in adapted[0] or "attention.output" in adapted[0])
    pm.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert isinstance(saved["target_modules"], list)
    old = {"attn.c_proj": r".*\.attn\.c_proj$", "attention.output.dense": r".*\.attention\.output\.dense$"}
    saved["target_modules"] = old[saved["target_modules"][0]]
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved))
    loaded = PeftModel.from_pretrained(factory(), tmp_path)
    inputs = text_inputs()
    assert torch.allclose(model_output(loaded, inputs), model_output(pm, inputs), atol=1e-6)


def test_dropout_only_in_training():
    model = get_peft_model(tiny_llama(), GiftConfig(r=4, dropout=0.5))
    randomise_theta(model)
    model.eval()
    a, b = model_output(model, text_inputs()), model_output(model, text_inputs())
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(0)
    c = model_output(model, text_inputs())
    assert not torch.allclose(a, c)


def test_forward_never_builds_dense_products():
    """The adapter path only creates (…, r) and (…, d_in) tensors: no d_out×d_in / d_out×r products."""
    model = get_peft_model(tiny_llama(), GiftConfig(r=3))
    randomise_theta(model)
    layer = gift_layers(model)[0]
    shapes = []

    def record(func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            shapes.append(tuple(out.shape))
        return out

    from torch.overrides import TorchFunctionMode

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return record(func, types, args, kwargs)

    x = torch.randn(1, 7, layer.in_features)
    with Recorder():
        layer(x)
    assert (layer.out_features, layer.in_features) not in shapes
    assert all(s[-1] in (3, layer.in_features, layer.out_features) for s in shapes if len(s) == 3)
