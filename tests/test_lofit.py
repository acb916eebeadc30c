"""LoFiT tuner: formula, storage, L1 term, head selection, merge/reload, bad input (tiny models, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from tiny_models import (
    image_inputs,
    model_output,
    randomise_lofit,
    text_inputs,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_vit,
)
from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification
from transformers.pytorch_utils import Conv1D

import peft_gift
from peft_gift import LofitConfig, LofitModel, lofit_stage2_config, select_heads
from peft_gift.lofit import LofitLayer

H, D, L = 4, 16, 2  # tiny models: 4 heads of 16, 2 layers

# name -> (factory, inputs, expected target names, auto class for reloading)
MODELS = {
    "llama": (tiny_llama, text_inputs, ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"],
              AutoModelForCausalLM),
    "gpt2": (tiny_gpt2, text_inputs, ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"],
             AutoModelForCausalLM),
    "bert": (tiny_bert, text_inputs,
             ["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.1.attention.output.dense"],
             AutoModelForSequenceClassification),
    "vit": (tiny_vit, image_inputs, ["vit.layers.0.attention.o_proj", "vit.layers.1.attention.o_proj"],
            AutoModelForImageClassification),
}
ALL = list(MODELS)


def build(name, **config):
    factory, inputs, targets, _ = MODELS[name]
    base = factory()
    return base, inputs(), targets


def lofit_layers(model):
    return {m.layer_index: m for m in model.modules() if isinstance(m, LofitLayer)}


def structure(model):
    return [(n, type(m).__name__) for n, m in model.named_modules()], sorted(model.state_dict())


def capture_projection_inputs(model, targets):
    """Forward pre-hooks on the base layers of the projections; returns {target: input} after each forward."""
    captured, handles = {}, []
    for target in targets:
        module = model.get_submodule(target)
        base = module.get_base_layer() if isinstance(module, LofitLayer) else module

        def hook(mod, args, _t=target):
            captured[_t] = args[0].detach().clone()

        handles.append(base.register_forward_pre_hook(hook))
    return captured, handles


# ---------------------------------------------------------------------------------------------------- targets / counts
@pytest.mark.parametrize("name", ALL)
def test_default_targets_are_attention_output_projections_only(name):
    base, _, targets = build(name)
    pm = get_peft_model(base, LofitConfig(mode="scale"))
    assert sorted(pm.base_model.targeted_module_names) == targets
    for t in targets:
        assert isinstance(pm.get_base_model().get_submodule(t), LofitLayer)
    wrapped = [n for n, m in pm.get_base_model().named_modules() if isinstance(m, LofitLayer)]
    assert sorted(wrapped) == targets
    if name == "gpt2":
        assert isinstance(pm.get_base_model().get_submodule(targets[0]).get_base_layer(), Conv1D)
        assert not isinstance(pm.get_base_model().transformer.h[0].mlp.c_proj, LofitLayer)
    if name == "bert":
        assert not isinstance(pm.get_base_model().bert.encoder.layer[0].output.dense, LofitLayer)


@pytest.mark.parametrize("name", ALL)
def test_parameter_counts_scale_and_bias(name):
    base, _, _ = build(name)
    pm = get_peft_model(base, LofitConfig(mode="scale"))
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert trainable == L * H * D
    for layer in lofit_layers(pm).values():
        assert layer.lofit_head_scale["default"].weight.shape == (H, D)

    heads = [(1, 3), (0, 1), (1, 0)]
    base, _, _ = build(name)
    pm = get_peft_model(base, LofitConfig(mode="bias", heads=heads))
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert trainable == len(heads) * D
    layers = lofit_layers(pm)
    assert layers[0].lofit_head_offset["default"].weight.shape == (1, D)
    assert layers[1].lofit_head_offset["default"].weight.shape == (2, D)
    assert layers[1].adapted_heads("default") == [0, 3]
    assert not layers[0].lofit_head_scale and not layers[1].lofit_head_scale
    # bias mode with heads in one layer only wraps that layer
    base, _, _ = build(name)
    pm = get_peft_model(base, LofitConfig(mode="bias", heads=[(1, 2)]))
    assert list(lofit_layers(pm)) == [1]
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == D


def test_geometry_from_config_head_dim_not_hidden_over_heads():
    # Gemma-like: heads * head_dim (4 * 8 = 32) != hidden_size (64)
    base = tiny_llama(head_dim=8)
    pm = get_peft_model(base, LofitConfig(mode="scale"))
    cfg = pm.peft_config["default"]
    assert (cfg.num_heads, cfg.head_dim) == (4, 8)
    assert lofit_layers(pm)[0].lofit_head_scale["default"].weight.shape == (4, 8)


def test_adapter_refuses_a_model_with_other_head_geometry(tmp_path):
    """A saved adapter's (num_heads, head_dim) must match the model it is loaded into, even at the same width; the
    refused load leaves no LoFiT layer behind."""
    pm = get_peft_model(tiny_llama(), LofitConfig(mode="scale"))
    pm.save_pretrained(tmp_path)
    other = tiny_llama(num_attention_heads=8, num_key_value_heads=4, head_dim=8)  # same width, other heads
    with pytest.raises(ValueError, match=r"LofitConfig.num_heads=4 does not match this model.*num_heads=8"):
        PeftModel.from_pretrained(other, tmp_path)
    assert not any("lofit" in type(m).__module__ for m in other.modules())


def test_print_trainable_parameters(capsys):
    pm = get_peft_model(tiny_llama(), LofitConfig(mode="bias", heads=[(0, 0), (1, 1)]))
    pm.print_trainable_parameters()
    assert "trainable params: 32 ||" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- the formula
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", ["scale", "bias"])
def test_identity_at_init_std_zero(name, mode):
    base, inputs, _ = build(name)
    expected = model_output(base, inputs)
    pm = get_peft_model(base, LofitConfig(mode=mode, init_std=0.0))
    assert torch.equal(model_output(pm, inputs), expected)
    # and the default init (1e-3) does change the output
    base, inputs, _ = build(name)
    pm = get_peft_model(base, LofitConfig(mode=mode))
    assert not torch.equal(model_output(pm, inputs), expected)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("layer_idx,head", [(0, 2), (1, 0)])
def test_offset_changes_only_that_heads_slice(name, layer_idx, head):
    base, inputs, targets = build(name)
    pm = get_peft_model(base, LofitConfig(mode="bias", heads=[(layer_idx, head)], init_std=0.0))
    v = torch.linspace(-1.0, 1.0, D)
    with torch.no_grad():
        lofit_layers(pm)[layer_idx].lofit_head_offset["default"].weight[0].copy_(v)
    captured, handles = capture_projection_inputs(pm.get_base_model(), targets)
    with pm.disable_adapter():
        model_output(pm, inputs)
    reference = dict(captured)
    model_output(pm, inputs)
    for h in handles:
        h.remove()
    for i, target in enumerate(targets):
        diff = captured[target] - reference[target]
        if i < layer_idx:
            assert torch.equal(diff, torch.zeros_like(diff))
        elif i == layer_idx:
            per_head = diff.reshape(*diff.shape[:-1], H, D)
            for other in range(H):
                if other != head:
                    assert torch.equal(per_head[..., other, :], torch.zeros_like(per_head[..., other, :]))
            torch.testing.assert_close(per_head[..., head, :], v.expand_as(per_head[..., head, :]))


@pytest.mark.parametrize("name", ALL)
def test_scale_multiplies_each_head(name):
    base, inputs, targets = build(name)
    pm = get_peft_model(base, LofitConfig(mode="scale", init_std=0.0))
    a = torch.randn(H, D, generator=torch.Generator().manual_seed(3)) * 0.5
    with torch.no_grad():
        lofit_layers(pm)[0].lofit_head_scale["default"].weight.copy_(a)
    captured, handles = capture_projection_inputs(pm.get_base_model(), targets[:1])
    with pm.disable_adapter():
        model_output(pm, inputs)
    z = captured[targets[0]]
    model_output(pm, inputs)
    for h in handles:
        h.remove()
    expected = (z.reshape(*z.shape[:-1], H, D) * (1 + a)).reshape(z.shape)
    torch.testing.assert_close(captured[targets[0]], expected)


def test_two_adapters_compose_scale_then_offset():
    base, inputs, targets = build("llama")
    pm = get_peft_model(base, LofitConfig(mode="scale", init_std=0.0), adapter_name="s")
    pm.add_adapter("b", LofitConfig(mode="bias", heads=[(0, 1)], init_std=0.0))
    a = torch.full((H, D), 0.5)
    v = torch.arange(D, dtype=torch.float32)
    with torch.no_grad():
        lofit_layers(pm)[0].lofit_head_scale["s"].weight.copy_(a)
        lofit_layers(pm)[0].lofit_head_offset["b"].weight[0].copy_(v)
    pm.base_model.set_adapter(["s", "b"])
    captured, handles = capture_projection_inputs(pm.get_base_model(), targets[:1])
    with pm.disable_adapter():
        model_output(pm, inputs)
    z = captured[targets[0]]
    joint = model_output(pm, inputs)
    out = captured[targets[0]]
    for h in handles:
        h.remove()
    expected = z.reshape(*z.shape[:-1], H, D) * 1.5
    expected[..., 1, :] += v
    torch.testing.assert_close(out, expected.reshape(z.shape))
    pm.set_adapter("s")
    only_s = model_output(pm, inputs)
    assert not torch.allclose(only_s, joint)


# ---------------------------------------------------------------------------------------------------- select_heads
def test_select_heads_global_ranking_best_first():
    pm = get_peft_model(tiny_gpt2(), LofitConfig(mode="scale", init_std=0.0))
    norms = {(0, 0): 0.1, (0, 1): 3.0, (0, 2): 0.5, (0, 3): 2.0, (1, 0): 2.5, (1, 1): 0.0, (1, 2): 4.0, (1, 3): 1.0}
    with torch.no_grad():
        for (layer, head), n in norms.items():
            vec = torch.zeros(D)
            vec[head] = n  # ||A_h||_2 = n
            lofit_layers(pm)[layer].lofit_head_scale["default"].weight[head].copy_(vec)
    ranked = sorted(norms, key=lambda k: -norms[k])
    assert select_heads(pm, k=3) == [(1, 2), (0, 1), (1, 0)] == ranked[:3]
    assert select_heads(pm, k=8) == ranked
    assert peft_gift.select_heads(pm, fraction=0.25) == ranked[:2]
    assert select_heads(pm, fraction=1.0) == ranked
    for bad in (dict(), dict(k=2, fraction=0.5)):
        with pytest.raises(ValueError, match="exactly one of"):
            select_heads(pm, **bad)
    for k in (0, 9, -1, 2.5):
        with pytest.raises(ValueError, match=r"1 <= k <= 8"):
            select_heads(pm, k=k)
    for f in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"0 < fraction <= 1"):
            select_heads(pm, fraction=f)
    stage2 = get_peft_model(tiny_gpt2(), LofitConfig(mode="bias", heads=[(0, 0)]))
    with pytest.raises(ValueError, match="mode='scale'"):
        select_heads(stage2, k=1)


def test_stage2_config_from_model_and_config():
    pm = get_peft_model(tiny_llama(), LofitConfig(mode="scale", l1_lambda=0.01, task_type="CAUSAL_LM"))
    randomise_lofit(pm)
    heads = select_heads(pm, k=3)
    c2 = lofit_stage2_config(pm, heads, init_std=0.0)
    assert isinstance(c2, LofitConfig) and c2.mode == "bias" and c2.l1_lambda == 0.0 and c2.init_std == 0.0
    assert c2.heads == [list(h) for h in sorted(heads)]
    assert c2.task_type == "CAUSAL_LM" and c2.target_modules == {"o_proj"} and (c2.num_heads, c2.head_dim) == (H, D)
    c2b = lofit_stage2_config(pm.peft_config["default"], heads)
    assert c2b.heads == c2.heads and c2b.init_std == 1e-3
    stage2 = get_peft_model(tiny_llama(), c2)
    assert sum(p.numel() for p in stage2.parameters() if p.requires_grad) == 3 * D
    with pytest.raises(ValueError, match="Unknown LofitConfig field"):
        lofit_stage2_config(pm, heads, rank=4)


# ---------------------------------------------------------------------------------------------------- merging
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", ["scale", "bias"])
def test_merge_equals_unmerged_and_unmerge_restores(name, mode):
    base, inputs, targets = build(name)
    base_out = model_output(base, inputs)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    heads = None if mode == "scale" else [(0, 3), (1, 1), (1, 2)]
    pm = get_peft_model(base, LofitConfig(mode=mode, heads=heads))
    randomise_lofit(pm, std=0.3)
    adapted = model_output(pm, inputs)
    assert not torch.allclose(adapted, base_out, atol=1e-4)
    pm.merge_adapter()
    assert all(layer.merged for layer in lofit_layers(pm).values())
    torch.testing.assert_close(model_output(pm, inputs), adapted, atol=1e-4, rtol=1e-4)
    with pm.disable_adapter():
        torch.testing.assert_close(model_output(pm, inputs), base_out, atol=1e-5, rtol=1e-5)
    pm.merge_adapter()
    pm.unmerge_adapter()
    torch.testing.assert_close(model_output(pm, inputs), adapted, atol=1e-5, rtol=1e-5)
    pm.merge_adapter()
    pm.unmerge_adapter()
    for key, value in pm.get_base_model().state_dict().items():
        orig = key.replace(".base_layer", "")
        if "lofit_" in key:
            continue
        torch.testing.assert_close(value, before[orig], atol=1e-6, rtol=1e-6)
    # a bias created by merging is removed again on unmerge
    restored = {k.replace(".base_layer", "") for k in pm.get_base_model().state_dict() if "lofit_" not in k}
    assert restored == set(before)
    merged = pm.merge_and_unload()
    assert not any(isinstance(m, LofitLayer) for m in merged.modules())
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(model_output(merged, inputs), adapted, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_merge_and_unload_save_reload_same_logits(name, tmp_path):
    base, inputs, targets = build(name)
    auto_cls = MODELS[name][3]
    pm = get_peft_model(base, LofitConfig(mode="bias", heads=[(0, 1), (1, 3)]))
    pm.add_adapter("scale", LofitConfig(mode="scale"))
    pm.base_model.set_adapter(["default", "scale"])
    randomise_lofit(pm, std=0.3)
    adapted = model_output(pm, inputs)
    merged = pm.merge_and_unload()
    torch.testing.assert_close(model_output(merged, inputs), adapted, atol=1e-4, rtol=1e-4)
    merged.save_pretrained(tmp_path)
    reloaded = auto_cls.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(model_output(reloaded, inputs), adapted, atol=1e-4, rtol=1e-4)
    if name == "llama":
        assert reloaded.config.attention_bias is True
        attn = reloaded.model.layers[0].self_attn
        assert attn.o_proj.bias is not None and attn.k_proj.bias.shape == (attn.k_proj.out_features,)
        assert attn.k_proj.out_features == 2 * D  # GQA: 2 KV heads
        assert torch.count_nonzero(attn.q_proj.bias) == 0


def test_sequential_merge_equals_joint_merge_and_unmerge_restores():
    base, inputs, _ = build("gpt2")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    pm = get_peft_model(base, LofitConfig(mode="scale"), adapter_name="s")
    pm.add_adapter("b", LofitConfig(mode="bias", heads=[(0, 0), (1, 2)]))
    pm.base_model.set_adapter(["s", "b"])
    randomise_lofit(pm, std=0.4)
    joint = model_output(pm, inputs)
    pm.merge_adapter(["s"])
    pm.merge_adapter(["b"])
    sequential = model_output(pm, inputs)
    pm.unmerge_adapter()
    pm.merge_adapter(["b"])  # offset first, then scale: same result
    pm.merge_adapter(["s"])
    reverse = model_output(pm, inputs)
    pm.unmerge_adapter()
    torch.testing.assert_close(sequential, joint, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(reverse, joint, atol=1e-4, rtol=1e-4)
    for key, value in pm.get_base_model().state_dict().items():
        if "lofit_" not in key:
            torch.testing.assert_close(value, before[key.replace(".base_layer", "")], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name, method", [("llama", "lofit"), ("gpt2", "lofit"), ("llama", "lora")])
def test_merge_unmerge_cycles_restore_the_weights(name, method):
    """100 merge/unmerge cycles give the base weights back: LoFiT bit for bit (two scale adapters and an offset on top,
    Linear and Conv1D projections), as documented (dividing by 1 + A drifted by tens of ε·max|W_row|); PEFT's LoRA, the
    reference, within a few ε·max|W_row|."""
    base, _, _ = build(name)
    if method == "lofit":
        pm = get_peft_model(base, LofitConfig(mode="scale"), adapter_name="s")
        pm.add_adapter("t", LofitConfig(mode="scale", heads=[(0, 1), (1, 2)]))
        pm.add_adapter("b", LofitConfig(mode="bias", heads=[(0, 1), (1, 3)]))
        pm.base_model.set_adapter(["s", "t", "b"])
        randomise_lofit(pm, std=0.3)
    else:
        pm = get_peft_model(base, LoraConfig(r=4, target_modules=["o_proj"], init_lora_weights=False))
    def base_weights():
        return {k: v.clone() for k, v in pm.get_base_model().state_dict().items() if "lofit_" not in k and "lora_" not in k}

    before = base_weights()
    for _ in range(100):
        pm.merge_adapter()
        pm.unmerge_adapter()
    after = base_weights()
    assert after.keys() == before.keys()
    if method == "lofit":
        assert all(torch.equal(after[key], value) for key, value in before.items())
    else:
        drift = max(((after[k] - w).abs().amax(1) / w.abs().amax(1)).max() for k, w in before.items() if "o_proj" in k)
        assert drift <= 8 * torch.finfo(torch.float32).eps


@pytest.mark.parametrize("mode", ["scale", "bias"])
def test_safe_merge_detects_nan_and_leaves_weights(mode):
    base, inputs, _ = build("llama")
    pm = get_peft_model(base, LofitConfig(mode=mode, heads=None if mode == "scale" else [(0, 0)]))
    weights = {k: v.clone() for k, v in pm.state_dict().items()}
    layer = lofit_layers(pm)[0]
    with torch.no_grad():
        (layer.lofit_head_scale if mode == "scale" else layer.lofit_head_offset)["default"].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaNs detected in the merged weights. The adapter default seems to be broken"):
        pm.merge_adapter(safe_merge=True)
    assert not layer.merged
    for key, value in pm.state_dict().items():
        if "lofit_" not in key:
            assert torch.equal(value, weights[key])
    assert layer.get_base_layer().bias is None


def test_safe_merge_equals_adapter_output():
    base, inputs, _ = build("bert")
    pm = get_peft_model(base, LofitConfig(mode="scale"))
    randomise_lofit(pm)
    adapted = model_output(pm, inputs)
    merged = pm.merge_and_unload(safe_merge=True)
    torch.testing.assert_close(model_output(merged, inputs), adapted, atol=1e-4, rtol=1e-4)


def test_merge_twice_warns_and_changes_nothing():
    base, inputs, _ = build("llama")
    pm = get_peft_model(base, LofitConfig(mode="bias", heads=[(0, 0)]))
    randomise_lofit(pm)
    pm.merge_adapter()
    state = {k: v.clone() for k, v in pm.state_dict().items()}
    with pytest.warns(UserWarning, match="All adapters are already merged"):
        pm.merge_adapter()
    for key, value in pm.state_dict().items():
        assert torch.equal(value, state[key])


# ---------------------------------------------------------------------------------------------------- config / JSON
def test_heads_json_round_trip(tmp_path):
    heads = [[1, 3], (0, 2), (1, 0)]
    cfg = LofitConfig(mode="bias", heads=heads, l1_lambda=0.0)
    assert cfg.heads == [[0, 2], [1, 0], [1, 3]]
    assert all(type(h) is list and all(type(x) is int for x in h) for h in cfg.heads)
    cfg.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    assert raw["heads"] == [[0, 2], [1, 0], [1, 3]] and raw["peft_type"] == "LOFIT"
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LofitConfig)
    assert loaded.heads == cfg.heads and loaded == cfg
    assert loaded.mode == "bias" and loaded.init_std == cfg.init_std


@pytest.mark.parametrize("make", [lambda: LofitConfig(mode="bias", heads=[(1, 2), [0, 1]]),
                                  lambda: LofitConfig(mode="scale"), lambda: LoraConfig()],
                         ids=["lofit-bias", "lofit-scale", "lora"])
def test_to_dict_equals_the_saved_json(tmp_path, make):
    """PEFT's `test_from_json_file`: a config's `to_dict()` equals the JSON it saves (LoFiT's `heads` are lists in
    both, not tuples in `to_dict()` and lists in the file)."""
    config = make()
    config.save_pretrained(tmp_path)
    assert config.to_dict() == config.from_json_file(str(tmp_path / "adapter_config.json"))


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        (dict(mode="shift"), ValueError, r"LofitConfig.mode must be one of \['scale', 'bias'\], got 'shift'"),
        (dict(mode="bias", heads=[]), ValueError, r"LofitConfig.heads is empty \(mode='bias'\)"),
        (dict(mode="scale", heads=[]), ValueError, r"LofitConfig.heads is empty \(mode='scale'\)"),
        (dict(heads=[(0, -1)]), ValueError, r"0 <= head < num_heads, got the negative \(0, -1\)"),
        (dict(heads=[(-2, 0)]), ValueError, r"0 <= layer < num_layers.*got the negative \(-2, 0\)"),
        (dict(heads=[(0, 1), (1, 1), [0, 1]]), ValueError, r"once, got the duplicates \[\(0, 1\)\]"),
        (dict(heads=[(0, 1, 2)]), TypeError, r"pairs of two ints or None, got the entry \(0, 1, 2\)"),
        (dict(heads=[(0.5, 1)]), TypeError, r"LofitConfig.heads must be a list of \(layer, head\) pairs of two ints"),
        (dict(heads="0,1"), TypeError, r"LofitConfig.heads must be a list of .* got '0,1'"),
        (dict(mode="bias", init_std=-1.0), ValueError, r"LofitConfig.init_std must be a finite number >= 0, got -1.0"),
        (dict(mode="scale", l1_lambda=float("nan")), ValueError, r"LofitConfig.l1_lambda must be a finite number >= 0"),
        (dict(mode="scale", l1_lambda="0.1"), TypeError, r"LofitConfig.l1_lambda must be a finite number >= 0, got"),
        (dict(mode="scale", num_heads=0), ValueError, r"LofitConfig.num_heads must be >= 1 or None, got 0"),
        (dict(mode="scale", head_dim=2.0), TypeError, r"LofitConfig.head_dim must be an int >= 1 or None, got 2.0"),
        (dict(mode="scale", layers_to_transform=[-1]), ValueError, r"LofitConfig.layers_to_transform must be an int"),
        (dict(mode="scale", layers_to_transform="1"), TypeError, r"LofitConfig.layers_to_transform must be an int"),
    ],
)
def test_bad_config_values_raise(kwargs, error, pattern):
    """One validation style for both tuners: TypeError for a wrong type, ValueError for a bad value, the message
    ``<Config>.<field> must be …, got …`` (GIFT's twin: tests/test_gift_config.py)."""
    with pytest.raises(error, match=pattern):
        LofitConfig(**kwargs)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(mode="bias", heads=[(0, 4)]), r"\(0, 4\): head 4 is out of range; valid heads are 0 <= head < 4"),
        (dict(mode="scale", heads=[(1, 1), (2, 0)]), r"\(2, 0\): layer 2 is out of range; valid layers are \[0, 1\]"),
        (dict(mode="bias", heads=[(7, 0)]), r"layer 7 is out of range; valid layers are \[0, 1\] \(0 <= layer < 2"),
        (dict(mode="bias", heads=[(0, 0)], num_heads=3), r"LofitConfig.num_heads=3 does not match this model, whose "
                                                          r"config has num_heads=4"),
        (dict(mode="scale", head_dim=8), r"head_dim=8 does not match|in_features=64, but num_heads \* head_dim = 4 \* 8"),
        (dict(mode="scale", layers_to_transform=[1, 5]), r"`layers_to_transform` contains layer\(s\) \[5\].*\[0, 1\]"),
        (
            dict(mode="bias", heads=[(0, 0)], layers_to_transform=[1]),
            r"layer 0 is out of range; valid layers are \[1\]",
        ),
    ],
)
def test_bad_input_raises_and_leaves_model_untouched(name, kwargs, pattern):
    base, inputs, _ = build(name)
    before = structure(base)
    out = model_output(base, inputs)
    with pytest.raises(ValueError, match=pattern):
        get_peft_model(base, LofitConfig(**kwargs))
    assert structure(base) == before
    assert torch.equal(model_output(base, inputs), out)
    assert not hasattr(base, "peft_config")


def test_wrong_target_in_features_raises():
    base = tiny_llama()
    before = structure(base)
    with pytest.raises(ValueError, match=r"mlp.down_proj' has in_features=128, but num_heads \* head_dim = 4 \* 16"):
        get_peft_model(base, LofitConfig(mode="scale", target_modules=["down_proj"]))
    assert structure(base) == before


def test_bad_add_adapter_leaves_peft_model_untouched():
    pm = get_peft_model(tiny_llama(), LofitConfig(mode="scale"))
    before = structure(pm)
    with pytest.raises(ValueError, match="head 9 is out of range"):
        pm.add_adapter("bad", LofitConfig(mode="bias", heads=[(0, 9)]))
    assert structure(pm) == before
    assert list(pm.peft_config) == ["default"]
    with pytest.raises(ValueError, match="already exists"):
        pm.add_adapter("default", LofitConfig(mode="bias", heads=[(0, 1)]))
    assert structure(pm) == before


def test_unknown_model_type_requires_target_modules():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(2)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    with pytest.raises(ValueError, match="target_modules"):
        get_peft_model(Tiny(), LofitConfig(mode="scale", num_heads=2, head_dim=4))
    pm = get_peft_model(Tiny(), LofitConfig(mode="scale", num_heads=2, head_dim=4, target_modules=["0", "1"]))
    assert sorted(lofit_layers(pm)) == [0, 1]
    assert isinstance(pm.base_model, LofitModel)


class _OneBlock(torch.nn.Module):
    """One attention output projection outside any numbered layer container, then a head."""

    def __init__(self):
        super().__init__()
        self.attn_out = torch.nn.Linear(32, 32)
        self.head = torch.nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.attn_out(x))


def test_unnumbered_projection_is_adapted_when_no_layer_index_is_needed():
    """scale mode needs no layer index: the projection is adapted (input scaled per head); bias mode with ``heads``
    names layers by index and refuses such a module, naming it."""
    torch.manual_seed(0)
    model = _OneBlock()
    x = torch.randn(2, 5, 32)
    pm = get_peft_model(model, LofitConfig(mode="scale", target_modules=["attn_out"], num_heads=4, head_dim=8,
                                           init_std=0.1))
    layer = pm.base_model.model.attn_out
    scale = layer.get_scale_vector("default")
    with torch.no_grad():
        torch.testing.assert_close(pm(x), model.head(layer.get_base_layer()(x * scale)))
    with pytest.raises(ValueError, match=r"LofitConfig.heads names layers by index.*'attn_out' has no layer index"):
        get_peft_model(_OneBlock(), LofitConfig(mode="bias", heads=[(0, 1)], target_modules=["attn_out"],
                                                num_heads=4, head_dim=8))
