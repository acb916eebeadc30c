"""LoFiT's `merge_adapter` keeps the model's parameter set (what PEFT 0.22's generic tests assert): an offset merged
into a projection without a bias (Llama's o_proj) is added by the layer itself until `merge_and_unload`/`unload`
turn it into a real bias (and switch on ``attention_bias`` so that the saved model reloads); unmerging is bit-exact."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from tiny_models import model_output, randomise_lofit, text_inputs, tiny_gpt2, tiny_llama
from transformers import AutoModelForCausalLM

import peft_gift  # noqa: F401
from peft_gift import LofitConfig
from peft_gift.lofit import LofitLayer

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}  # o_proj without a bias; attn.c_proj (Conv1D) with one


def _offset_model(name, scale_too=False):
    pm = get_peft_model(MODELS[name](), LofitConfig(mode="bias", heads=[(0, 1), (1, 3)], task_type="CAUSAL_LM"))
    if scale_too:
        pm.add_adapter("s", LofitConfig(mode="scale", task_type="CAUSAL_LM"))
        pm.base_model.set_adapter(["default", "s"])
    randomise_lofit(pm, std=0.3)
    return pm.eval()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_merge_adapter_keeps_the_state_dict_keys_and_unmerge_is_bit_exact(name):
    pm = _offset_model(name)
    inputs = text_inputs()
    adapted = model_output(pm, inputs)
    before = _state(pm)
    params = {n for n, _ in pm.named_parameters()}
    pm.merge_adapter()
    assert all(layer.merged for layer in pm.modules() if isinstance(layer, LofitLayer))
    assert set(pm.state_dict()) == set(before)
    assert {n for n, _ in pm.named_parameters()} == params
    torch.testing.assert_close(model_output(pm, inputs), adapted, atol=1e-5, rtol=1e-5)
    pm.unmerge_adapter()
    after = _state(pm)
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    torch.testing.assert_close(model_output(pm, inputs), adapted, atol=0, rtol=0)


@pytest.mark.parametrize("order", [["s", "default"], ["default", "s"]], ids=["scale-first", "offset-first"])
def test_offset_kept_by_the_layer_composes_with_a_merged_scale(order):
    """Llama: W v is computed from the unscaled W whichever merges first, so both orders give the adapter's output."""
    pm = _offset_model("llama", scale_too=True)
    inputs = text_inputs()
    adapted = model_output(pm, inputs)
    keys = set(pm.state_dict())
    for adapter in order:
        pm.merge_adapter([adapter])
    assert set(pm.state_dict()) == keys
    torch.testing.assert_close(model_output(pm, inputs), adapted, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("unload", ["merge_and_unload", "merge_adapter+unload"])
def test_unloading_makes_the_kept_offset_a_real_bias_that_reloads(unload, tmp_path):
    """Llama: the unloaded o_proj gets the merged W v as its bias, q/k/v get zero biases and ``attention_bias`` is
    switched on, so ``from_pretrained`` gives the adapter's logits. ``unload()`` after ``merge_adapter()`` keeps what
    was merged, as for PEFT's LoRA."""
    pm = _offset_model("llama", scale_too=True)
    inputs = text_inputs()
    adapted = model_output(pm, inputs)
    if unload == "merge_and_unload":
        merged = pm.merge_and_unload()
    else:
        pm.merge_adapter()
        merged = pm.unload()
    assert not any(isinstance(m, LofitLayer) for m in merged.modules())
    attn = merged.model.layers[0].self_attn
    assert merged.config.attention_bias is True and attn.o_proj.bias is not None
    assert torch.count_nonzero(attn.q_proj.bias) == 0 and attn.k_proj.bias.shape == (attn.k_proj.out_features,)
    torch.testing.assert_close(model_output(merged, inputs), adapted, atol=1e-5, rtol=1e-4)
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(model_output(reloaded, inputs), adapted, atol=1e-5, rtol=1e-4)
