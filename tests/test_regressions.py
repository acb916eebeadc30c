"""One test per defect of the everyday-workflow review: each failed before its fix; LoRA twins show PEFT's reference."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tiny_models import model_output, text_inputs, tiny_bert, tiny_llama
from torch import nn

import peft_gift  # noqa: F401
from peft_gift import GiftConfig, LofitConfig
from peft_gift.gift import GiftLayer, group_key

CONFIGS = {
    "gift": lambda: GiftConfig(r=4),
    "lofit": lambda: LofitConfig(mode="bias", heads=[(0, 1), (1, 2)]),
    "lora": lambda: LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
}


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)


def _checkpoint(tmp_path, method, seed):
    pm = get_peft_model(tiny_llama(), CONFIGS[method]())
    _perturb(pm, seed)
    path = tmp_path / f"{method}-{seed}"
    pm.save_pretrained(path)
    return path, model_output(pm, text_inputs())


# ---- 1. a base that already holds adapter layers ---------------------------------------------------------------
@pytest.mark.parametrize("method", list(CONFIGS))
def test_checkpoint_loop_on_one_base_gives_each_checkpoints_outputs(tmp_path, method):
    checkpoints = [_checkpoint(tmp_path, method, seed) for seed in range(3)]
    base = tiny_llama()
    for path, expected in checkpoints:
        model = PeftModel.from_pretrained(base, path)
        torch.testing.assert_close(model_output(model, text_inputs()), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_get_peft_model_twice_on_one_base_trains_the_new_adapter(method):
    base = tiny_llama()
    get_peft_model(base, CONFIGS[method]())
    pm = get_peft_model(base, CONFIGS[method]())
    _perturb(pm, 5)
    trainable = [p for p in pm.parameters() if p.requires_grad]
    with pm.disable_adapter():
        reference = model_output(pm, text_inputs())
    assert not torch.allclose(model_output(pm, text_inputs()), reference)
    pm(**text_inputs(), labels=text_inputs()["input_ids"]).loss.backward()
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


@pytest.mark.parametrize("method", ["gift", "lofit"])
@pytest.mark.parametrize("failure", ["nan-weights", "no-weights-file"])
def test_load_retried_after_a_failed_load_takes_effect(tmp_path, method, failure):
    good, expected = _checkpoint(tmp_path, method, 1)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    if failure == "nan-weights":
        tensors = load_file(good / "adapter_model.safetensors")
        nan = {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}
        save_file(nan, bad / "adapter_model.safetensors")
    base = tiny_llama()
    plain = model_output(base, text_inputs())
    with pytest.raises((ValueError, OSError)):
        PeftModel.from_pretrained(base, bad)
    if failure == "nan-weights":  # refused by our check, which removes the adapter it created
        torch.testing.assert_close(model_output(base, text_inputs()), plain)
    model = PeftModel.from_pretrained(base, good)
    torch.testing.assert_close(model_output(model, text_inputs()), expected, atol=1e-5, rtol=1e-5)


# ---- 2. a failed load keeps the adapters that existed before ---------------------------------------------------
@pytest.mark.parametrize("method", ["gift", "lofit"])
@pytest.mark.parametrize("adapter", ["default", "other"])
def test_failed_state_dict_load_keeps_an_existing_adapter(method, adapter):
    pm = get_peft_model(tiny_llama(), CONFIGS[method]())
    pm.add_adapter("other", CONFIGS[method]())
    _perturb(pm, 3)
    pm.set_adapter(adapter)
    _perturb(pm, 4)
    before = model_output(pm, text_inputs())
    state = get_peft_model_state_dict(pm, adapter_name=adapter)
    bad = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    with pytest.raises(ValueError, match="NaN"):
        set_peft_model_state_dict(pm, bad, adapter_name=adapter)
    assert set(pm.peft_config) == {"default", "other"}
    torch.testing.assert_close(model_output(pm, text_inputs()), before)


# ---- 3. mixed batches use each adapter's own modules_to_save -------------------------------------------------------
@pytest.mark.parametrize("method", ["gift", "lofit", "lora"])
def test_mixed_batch_uses_each_adapters_classifier_head(method):
    config = {"gift": lambda: GiftConfig(r=4, task_type="SEQ_CLS"),
              "lofit": lambda: LofitConfig(mode="scale", task_type="SEQ_CLS"),
              "lora": lambda: LoraConfig(r=4, task_type="SEQ_CLS", init_lora_weights=False)}[method]
    pm = get_peft_model(tiny_bert(), config())
    pm.add_adapter("b", config())
    _perturb(pm, 0)
    pm.set_adapter("b")
    _perturb(pm, 1)
    pm.eval()
    inputs = text_inputs(3)
    expected = []
    for row, name in enumerate(["default", "b", "__base__"]):
        if name == "__base__":
            with pm.disable_adapter():
                expected.append(model_output(pm, inputs)[row])
        else:
            pm.set_adapter(name)
            expected.append(model_output(pm, inputs)[row])
    mixed = pm(**inputs, adapter_names=["default", "b", "__base__"]).logits
    torch.testing.assert_close(mixed, torch.stack(expected), atol=1e-5, rtol=1e-5)


# ---- 4./15. safe_merge refuses non-finite merged weights, naming the adapter ------------------------------------
@pytest.mark.parametrize("method", ["gift", "lora"])
def test_safe_merge_in_fp16_refuses_overflow(method):
    pm = get_peft_model(tiny_llama().half(), CONFIGS[method](), autocast_adapter_dtype=True)
    with torch.no_grad():
        for param in pm.parameters():
            if param.requires_grad:
                param.fill_(300.0)  # finite in fp32, overflows fp16 once merged
    with pytest.raises(ValueError, match=r"NaNs detected in the merged weights\. The adapter default seems"):
        pm.merge_adapter(safe_merge=True)


# ---- 5. singular or ill-conditioned I + sφψ -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["singular", "ill-conditioned", "well-conditioned"])
def test_unmerge_restores_weights_exactly_whatever_the_conditioning(kind):
    base = tiny_llama()
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    pm = get_peft_model(base, GiftConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in pm.named_parameters():
            if "gift_phi" in name:
                direction = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(0)), dim=0)
                param.copy_(torch.stack([direction, torch.zeros(64)], dim=1))
            if "gift_psi" in name:
                scale = {"singular": -1.0, "ill-conditioned": -0.99999, "well-conditioned": 0.3}[kind]
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


# ---- 7. LoFiT adapters refuse another head geometry ---------------------------------------------------------------
def test_lofit_adapter_refuses_a_model_with_other_head_geometry(tmp_path):
    pm = get_peft_model(tiny_llama(), LofitConfig(mode="scale"))
    pm.save_pretrained(tmp_path)
    other = tiny_llama(num_attention_heads=8, num_key_value_heads=4, head_dim=8)  # same width, other heads
    with pytest.raises(ValueError, match=r"LofitConfig.num_heads=4 does not match this model.*num_heads=8"):
        PeftModel.from_pretrained(other, tmp_path)
    assert not any("lofit" in type(m).__module__ for m in other.modules())


# ---- 8. checked loading refuses another adapter's modules_to_save ------------------------------------------------
@pytest.mark.parametrize("method", ["gift", "lofit"])
def test_loading_refuses_another_adapters_head(tmp_path, method):
    config = {"gift": lambda: GiftConfig(r=4, task_type="SEQ_CLS"),
              "lofit": lambda: LofitConfig(mode="scale", task_type="SEQ_CLS")}[method]
    pm = get_peft_model(tiny_bert(), config())
    pm.add_adapter("b", config())
    head = pm.base_model.model.classifier.modules_to_save["default"].weight.detach().clone()
    state = get_peft_model_state_dict(pm, adapter_name="b")
    state["classifier.modules_to_save.default.weight"] = torch.zeros_like(head)
    with pytest.raises(ValueError, match=r"unexpected tensors .*modules_to_save\.default"):
        set_peft_model_state_dict(pm, state, adapter_name="b")
    assert torch.equal(pm.base_model.model.classifier.modules_to_save["default"].weight, head)


# ---- 11. mixed batches in beam search ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(CONFIGS))
def test_mixed_batch_generate_with_beams(method):
    pm = get_peft_model(tiny_llama(), CONFIGS[method]())
    pm.add_adapter("b", CONFIGS[method]())
    _perturb(pm, 0)
    pm.set_adapter("b")
    _perturb(pm, 1)
    pm.eval()
    ids = text_inputs(2, 5)["input_ids"]
    kwargs = dict(max_new_tokens=3, num_beams=2, do_sample=False)
    mixed = pm.generate(input_ids=ids, adapter_names=["default", "b"], **kwargs)
    pm.set_adapter("default")
    first = pm.generate(input_ids=ids[:1], **kwargs)
    pm.set_adapter("b")
    second = pm.generate(input_ids=ids[1:], **kwargs)
    assert torch.equal(mixed, torch.cat([first, second]))


# ---- 12. Θ group names are injective and never empty -------------------------------------------------------------
def test_group_names_are_injective_and_never_empty():
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


# ---- 13. adding or loading one adapter leaves the others' trainability alone ------------------------------------
@pytest.mark.parametrize("method", list(CONFIGS))
def test_loading_a_reference_adapter_keeps_the_trained_one_trainable(tmp_path, method):
    path, _ = _checkpoint(tmp_path, method, 0)

    def flags(pm):
        out = {}
        for name, param in pm.named_parameters():
            if param.requires_grad or any(t in name for t in ("gift_", "lofit_", "lora_")):
                adapter = next(a for a in ("default", "ref", "third") if a in name.split("."))
                out.setdefault(adapter, set()).add(param.requires_grad)
        return out

    pm = PeftModel.from_pretrained(tiny_llama(), path, is_trainable=True)
    pm.load_adapter(path, adapter_name="ref", is_trainable=False)
    assert flags(pm) == {"default": {True}, "ref": {False}}
    pm.add_adapter("third", CONFIGS[method]())
    assert flags(pm)["default"] == {True}
    pm = PeftModel.from_pretrained(tiny_llama(), path, is_trainable=False)
    pm.load_adapter(path, adapter_name="ref", is_trainable=True)
    assert flags(pm) == {"default": {False}, "ref": {True}}


# ---- 14. LoFiT on an attention block outside a numbered layer container ----------------------------------------
class _OneBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn_out = nn.Linear(32, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.attn_out(x))


def test_lofit_adapts_an_unnumbered_projection_when_no_layer_index_is_needed():
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


# ---- symmetry: both tuners filter regex targets by layers_to_transform -------------------------------------------
@pytest.mark.parametrize("method", ["gift", "lofit"])
def test_layers_to_transform_applies_to_regex_targets_in_both_tuners(method):
    config = {"gift": lambda: GiftConfig(r=2, target_modules=r".*\.q_proj", layers_to_transform=[1]),
              "lofit": lambda: LofitConfig(mode="scale", target_modules=r".*\.o_proj", layers_to_transform=[1])}[method]
    pm = get_peft_model(tiny_llama(), config())
    adapted = sorted(n for n, m in pm.named_modules() if type(m).__name__ == "Linear" and hasattr(m, "base_layer"))
    suffix = "q_proj" if method == "gift" else "o_proj"
    assert adapted == [f"base_model.model.model.layers.1.self_attn.{suffix}"]


def test_checked_load_into_layers_injected_without_a_peft_model():
    """`inject_adapter_in_model` + `set_peft_model_state_dict` on a plain module (what transformers' adapter API does)."""
    from peft import inject_adapter_in_model

    model = inject_adapter_in_model(
        LofitConfig(mode="scale", target_modules=["0"], num_heads=4, head_dim=8, init_std=0.1), nn.Sequential(nn.Linear(32, 32))
    )
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    set_peft_model_state_dict(model, {k: v * 2 for k, v in state.items()})
    for key, value in get_peft_model_state_dict(model).items():
        torch.testing.assert_close(value, state[key] * 2)
