"""Shared Θ and device placement: PEFT's per-layer device moves, low-memory loading and accelerate's offload hooks.

GIFT's Θ is shared by every layer of its group (possibly on different devices), so no per-layer move may touch it;
the forward pass moves Θ to the input's device instead (as PEFT's VeRA does with its shared A/B). The split over a
GPU and the CPU is covered by ``scripts/gpu_check.py``; here what the CPU allows: meta moves, dtype casts, a
``low_cpu_mem_usage`` load and accelerate's ``cpu_offload`` / ``dispatch_model`` hooks.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import tiny_llama

import peft_gift
from peft_gift.gift.layer import GiftLayer

IDS = torch.tensor([[1, 5, 9, 13, 2, 7, 30, 4]])


def _trained_gift(seed: int = 0):
    model = get_peft_model(tiny_llama(), peft_gift.GiftConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.1)
    return model.eval()


def _theta(model):
    tuner = model.base_model
    return {f"{c}.{a}.{g}": p for c in ("gift_phi", "gift_psi") for a, d in getattr(tuner, c).items()
            for g, p in d.items()}


def _first_gift_layer(model):
    return next(m for m in model.modules() if isinstance(m, GiftLayer))


def test_per_layer_move_to_meta_leaves_shared_theta_alone():
    model = _trained_gift()
    before = {k: (p.device, p.detach().clone()) for k, p in _theta(model).items()}
    _first_gift_layer(model)._move_adapter_to_device_of_base_layer("default", device=torch.device("meta"))
    for key, param in _theta(model).items():
        assert param.device == before[key][0], key
        torch.testing.assert_close(param.detach(), before[key][1], rtol=0, atol=0)


def test_per_layer_move_does_not_cast_shared_theta():
    """A bf16 base layer: PEFT's move would also cast the adapter to bf16; Θ stays float32 (PEFT's autocast)."""
    model = get_peft_model(tiny_llama().to(torch.bfloat16), peft_gift.GiftConfig(r=4))
    assert {p.dtype for p in _theta(model).values()} == {torch.float32}
    for layer in (m for m in model.modules() if isinstance(m, GiftLayer)):
        layer._move_adapter_to_device_of_base_layer("default")
    assert {p.dtype for p in _theta(model).values()} == {torch.float32}


def test_lora_twin_per_layer_move_moves_only_that_layer():
    """The reference behaviour: LoRA's per-layer move touches that layer's own tensors only."""
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    layers = [m for n, m in model.named_modules() if n.endswith("q_proj") and hasattr(m, "lora_A")]
    layers[0]._move_adapter_to_device_of_base_layer("default", device=torch.device("meta"))
    assert layers[0].lora_A["default"].weight.device.type == "meta"
    assert layers[1].lora_A["default"].weight.device.type == "cpu"


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_low_cpu_mem_usage_load_matches_plain_load(tmp_path, low_cpu_mem_usage):
    model = _trained_gift()
    with torch.no_grad():
        expected = model(IDS).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage).eval()
    assert all(p.device.type == "cpu" for p in _theta(loaded).values())
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, expected, rtol=0, atol=1e-6)


def test_cpu_offload_hooks_match_plain_model():
    """accelerate's cpu_offload: weights live off the module (meta) and are put back around each module's forward;
    Θ, used inside other modules' forward, must still reach them."""
    from accelerate import cpu_offload

    model = _trained_gift()
    with torch.no_grad():
        expected = model(IDS).logits
    cpu_offload(model, execution_device=torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, expected, rtol=0, atol=1e-6)


def test_dispatch_model_with_device_map_matches_plain_model():
    from accelerate import dispatch_model, infer_auto_device_map

    model = _trained_gift()
    with torch.no_grad():
        expected = model(IDS).logits
    device_map = infer_auto_device_map(model, max_memory={"cpu": "1GiB"})
    dispatch_model(model, device_map=device_map)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, expected, rtol=0, atol=1e-6)


def test_theta_gradient_flows_through_a_device_move(monkeypatch):
    """Forward uses Θ on the input's device: the move is part of the graph, so the gradient reaches Θ where it lives.
    (On CPU the move is a no-op; the CPU + GPU split runs in scripts/gpu_check.py.)"""
    model = _trained_gift().train()
    model(IDS, labels=IDS).loss.backward()
    grads = [p.grad for p in _theta(model).values()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
