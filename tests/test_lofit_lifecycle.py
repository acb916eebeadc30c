"""LoFiT adapter lifecycle, as PEFT checks it for LoRA: save/load, several adapters, disable/delete, Trainer, bf16."""

from __future__ import annotations

import json

import pytest
import torch
from peft import (
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file
from tiny_models import model_output, randomise_lofit, text_inputs, tiny_gpt2, tiny_llama
from torch import nn
from transformers import Trainer, TrainingArguments

import peft_gift  # noqa: F401  (registers LOFIT)
from peft_gift import LofitConfig
from peft_gift.lofit import LofitLayer

D = 16


def lofit_layers(model):
    return [m for m in model.modules() if isinstance(m, LofitLayer)]


def test_save_load_in_fresh_process(tmp_path, fresh_process):
    inputs = text_inputs()
    pm = get_peft_model(tiny_llama(), LofitConfig(mode="bias", heads=[(1, 2), (0, 1)], task_type="CAUSAL_LM"))
    pm.add_adapter("other", LofitConfig(mode="scale", l1_lambda=0.01, task_type="CAUSAL_LM"))
    randomise_lofit(pm)
    expected = {"default": model_output(pm, inputs)}
    pm.set_adapter("other")
    expected["other"] = model_output(pm, inputs)
    pm.set_adapter("default")
    pm.save_pretrained(tmp_path)
    torch.save(expected, tmp_path / "expected.pt")

    files = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "other"} <= files
    assert "model.safetensors" not in files and "config.json" not in files
    assert (tmp_path / "other" / "adapter_model.safetensors").exists()
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(saved) == [
        "base_model.model.model.layers.0.self_attn.o_proj.lofit_head_offset.weight",
        "base_model.model.model.layers.1.self_attn.o_proj.lofit_head_offset.weight",
    ]
    assert saved["base_model.model.model.layers.0.self_attn.o_proj.lofit_head_offset.weight"].shape == (1, D)
    assert sum(t.numel() for t in saved.values()) == 2 * D
    other = load_file(tmp_path / "other" / "adapter_model.safetensors")
    assert all(k.endswith("lofit_head_scale.weight") for k in other) and len(other) == 2
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LOFIT" and config["heads"] == [[0, 1], [1, 2]] and config["mode"] == "bias"
    readme = (tmp_path / "README.md").read_text()
    assert "library_name: peft" in readme and "- lofit" in readme

    out = fresh_process(
        f"""
        import warnings, torch
        import peft_gift
        from peft import PeftModel
        from tiny_models import tiny_llama, text_inputs, model_output
        path = {str(tmp_path)!r}
        expected = torch.load(path + "/expected.pt")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pm = PeftModel.from_pretrained(tiny_llama(), path)
            pm.load_adapter(path + "/other", adapter_name="other")
        assert not [w for w in caught if "missing adapter keys" in str(w.message)], caught
        assert pm.peft_config["default"].heads == [[0, 1], [1, 2]]
        assert not any(p.requires_grad for p in pm.parameters())
        inputs = text_inputs()
        torch.testing.assert_close(model_output(pm, inputs), expected["default"], rtol=0, atol=0)
        pm.set_adapter("other")
        torch.testing.assert_close(model_output(pm, inputs), expected["other"], rtol=0, atol=0)
        lazy = PeftModel.from_pretrained(tiny_llama(), path, low_cpu_mem_usage=True)
        assert not any(p.device.type == "meta" for p in lazy.parameters())
        torch.testing.assert_close(model_output(lazy, inputs), expected["default"], rtol=0, atol=0)
        print("LOADED-OK")
        """
    )
    assert "LOADED-OK" in out


def test_adapters_activate_disable_delete_unload():
    inputs = text_inputs()
    base = tiny_gpt2()
    base_out = model_output(base, inputs)
    base_keys = sorted(base.state_dict())
    pm = get_peft_model(base, LofitConfig(mode="scale"), adapter_name="a")
    pm.add_adapter("b", LofitConfig(mode="bias", heads=[(1, 0)]))
    randomise_lofit(pm)
    assert pm.active_adapters == ["a"]
    layer0, layer1 = lofit_layers(pm)
    # only the active adapter is trainable; b targets only layer 1
    assert layer0.lofit_head_scale["a"].weight.requires_grad and not layer1.lofit_head_offset["b"].weight.requires_grad
    assert "b" not in layer0.lofit_head_offset
    out_a = model_output(pm, inputs)
    pm.set_adapter("b")
    assert layer1.lofit_head_offset["b"].weight.requires_grad and not layer0.lofit_head_scale["a"].weight.requires_grad
    out_b = model_output(pm, inputs)
    assert not torch.allclose(out_a, out_b) and not torch.allclose(out_b, base_out)
    with pm.disable_adapter():
        torch.testing.assert_close(model_output(pm, inputs), base_out, rtol=0, atol=0)
    torch.testing.assert_close(model_output(pm, inputs), out_b, rtol=0, atol=0)

    with pytest.raises(ValueError, match="Adapter nope does not exist"):
        pm.delete_adapter("nope")
    pm.merge_adapter()
    with pytest.raises(ValueError, match="while they are merged"):
        pm.delete_adapter("b")
    pm.unmerge_adapter()
    with pytest.warns(UserWarning, match="Setting active adapter to a"):
        pm.delete_adapter("b")
    assert "b" not in pm.peft_config and pm.active_adapters == ["a"]
    for layer in lofit_layers(pm):
        for attr in ("lofit_head_scale", "lofit_head_offset", "lofit_head_index"):
            assert "b" not in getattr(layer, attr)
        assert "b" not in layer.head_shapes
    torch.testing.assert_close(model_output(pm, inputs), out_a, rtol=0, atol=0)
    pm.delete_adapter("a")  # the last one: the wrapped model still runs and equals the base model
    torch.testing.assert_close(model_output(pm.base_model.model, inputs), base_out, rtol=0, atol=0)

    pm = get_peft_model(tiny_gpt2(), LofitConfig(mode="scale", l1_lambda=0.1))
    randomise_lofit(pm)
    unloaded = pm.unload()
    assert sorted(unloaded.state_dict()) == base_keys and not unloaded._forward_hooks
    torch.testing.assert_close(model_output(unloaded, inputs), base_out, rtol=0, atol=0)


def test_checked_load_into_layers_injected_without_a_peft_model():
    """`inject_adapter_in_model` + `set_peft_model_state_dict` on a plain module (what transformers' adapter API does):
    the checked load works without a PeftModel around the layers."""
    model = inject_adapter_in_model(
        LofitConfig(mode="scale", target_modules=["0"], num_heads=4, head_dim=8, init_std=0.1), nn.Sequential(nn.Linear(32, 32))
    )
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    set_peft_model_state_dict(model, {k: v * 2 for k, v in state.items()})
    for key, value in get_peft_model_state_dict(model).items():
        torch.testing.assert_close(value, state[key] * 2)


def test_set_requires_grad_and_inference_mode():
    pm = get_peft_model(tiny_llama(), LofitConfig(mode="bias", heads=[(0, 0)]))
    pm.add_adapter("x", LofitConfig(mode="scale"))
    pm.base_model.set_requires_grad("x", True)
    assert all(layer.lofit_head_scale["x"].weight.requires_grad for layer in lofit_layers(pm))
    pm.base_model.set_requires_grad(["x", "default"], False)
    assert not any(p.requires_grad for p in pm.parameters())
    pm = get_peft_model(tiny_llama(), LofitConfig(mode="scale", inference_mode=True))
    assert not any(p.requires_grad for p in pm.parameters())


def test_trainer_changes_only_adapter_params(tmp_path):
    base = tiny_llama()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    pm = get_peft_model(base, LofitConfig(mode="bias", heads=[(0, 1), (1, 3)], task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}
    assert len(before) == 2
    rows = text_inputs(8, 12)["input_ids"]
    data = [dict(input_ids=row, attention_mask=torch.ones_like(row), labels=row) for row in rows]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
        save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True,
    )
    Trainer(model=pm, args=args, train_dataset=data).train()
    for name, param in pm.named_parameters():
        if name in before:
            assert not torch.equal(param.detach(), before[name]), name
    for key, value in pm.get_base_model().state_dict().items():
        if "lofit_" not in key:
            assert torch.equal(value, base_state[key.replace(".base_layer", "")]), key


def test_bf16_base_fp32_adapters():
    inputs = text_inputs()
    base = tiny_llama().to(torch.bfloat16)
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    pm = get_peft_model(base, LofitConfig(mode="scale", l1_lambda=0.01))
    pm.add_adapter("b", LofitConfig(mode="bias", heads=[(0, 2)]))
    for layer in lofit_layers(pm):
        for container in (layer.lofit_head_scale, layer.lofit_head_offset):
            assert all(p.dtype == torch.float32 for p in container.parameters())
        assert layer.get_base_layer().weight.dtype == torch.bfloat16
    randomise_lofit(pm)
    pm.base_model.set_adapter(["default", "b"])
    out = pm(**inputs, labels=inputs["input_ids"])
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()
    out.loss.backward()
    grads = [p.grad for layer in lofit_layers(pm) for p in layer.lofit_head_scale.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    pm.merge_adapter()
    pm.unmerge_adapter()  # bf16 merges keep a copy: unmerge restores bit-exactly
    for key, value in pm.get_base_model().state_dict().items():
        if "lofit_" not in key:
            assert torch.equal(value, weights[key.replace(".base_layer", "")]), key


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_same_grads(use_reentrant):
    inputs = text_inputs()
    grads = []
    for checkpointing in (False, True):
        base = tiny_llama()
        if checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        pm = get_peft_model(base, LofitConfig(mode="scale", l1_lambda=0.01, task_type="CAUSAL_LM"))
        randomise_lofit(pm)
        pm.train()
        pm(**inputs, labels=inputs["input_ids"]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in pm.named_parameters() if p.grad is not None})
    assert sorted(grads[0]) == sorted(grads[1]) and len(grads[0]) == 2
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_generate_with_offsets():
    pm = get_peft_model(tiny_llama(), LofitConfig(mode="bias", heads=[(0, 0)], task_type="CAUSAL_LM"))
    randomise_lofit(pm)
    ids = text_inputs(1, 5)["input_ids"]
    out = pm.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 8)
