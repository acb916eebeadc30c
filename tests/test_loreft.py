"""The LoReFT baseline of the recipes: the formula, the positions, the parameter count, save/reload, bad settings."""

from __future__ import annotations

import pytest
import torch
from tiny_models import model_output, text_inputs, tiny_bert, tiny_llama

from peft_gift.recipes.loreft import LoReftIntervention, attach_loreft, intervened_positions, load_loreft


def test_intervention_formula_and_orthonormal_rotation():
    torch.manual_seed(0)
    layer = LoReftIntervention(hidden_size=16, r=3)
    rotation = layer.rotate.weight.detach()
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3), atol=1e-5, rtol=0)
    h = torch.randn(2, 5, 16)
    w, b = layer.learned_source.weight.detach(), layer.learned_source.bias.detach()
    expected = h + (h @ w.T + b - h @ rotation.T) @ rotation  # Φ(h) = h + Rᵀ(Wh + b − Rh)
    torch.testing.assert_close(layer(h), expected, atol=1e-6, rtol=0)
    # inside the subspace the edit reaches W h + b: R Φ(h) = W h + b
    torch.testing.assert_close(layer(h) @ rotation.T, h @ w.T + b, atol=1e-5, rtol=0)


def test_positions_follow_the_mask_on_either_padding_side():
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    left = right.flip(1)
    sel = intervened_positions(right, prefix=1, suffix=2)
    assert sel.tolist() == [[True, False, True, True, False, False], [True, False, False, False, True, True]]
    # the same tokens with left padding: first real token and last two, shifted by the padding
    assert intervened_positions(left, prefix=1, suffix=2).tolist() == [
        [False, False, True, False, True, True], [True, False, False, False, True, True]]


def test_model_output_equals_manual_edit_on_the_intervened_positions_only():
    model = tiny_llama()
    inputs = text_inputs(batch=2, seq=8)
    inputs["attention_mask"][0, -3:] = 0  # padding in the first row
    loreft = attach_loreft(model, r=2, layers=[1], prefix=1, suffix=1)
    with torch.no_grad():
        for p in loreft.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    captured = {}
    block = model.model.layers[1]
    handle = block.register_forward_hook(lambda m, a, out: captured.setdefault("out", out))
    edited = model_output(model, inputs)
    handle.remove()
    loreft.remove()
    plain_hidden = {}
    handle = block.register_forward_hook(lambda m, a, out: plain_hidden.setdefault("out", out))
    plain = model_output(model, inputs)
    handle.remove()
    h0 = plain_hidden["out"][0] if isinstance(plain_hidden["out"], tuple) else plain_hidden["out"]
    h1 = captured["out"][0] if isinstance(captured["out"], tuple) else captured["out"]
    where = intervened_positions(inputs["attention_mask"], 1, 1)
    torch.testing.assert_close(h1[where], loreft.interventions["1"](h0[where]), atol=1e-5, rtol=0)
    torch.testing.assert_close(h1[~where], h0[~where], atol=0, rtol=0)
    assert (edited - plain).abs().max() > 1e-3


def test_parameter_count_save_and_reload(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny_bert()
    attach_loreft(model, r=2)
    n_layers, d = model.config.num_hidden_layers, model.config.hidden_size
    per_layer = sum(p.numel() for p in model.loreft.interventions["0"].parameters())
    assert per_layer == 2 * 2 * d + 2
    assert sum(p.numel() for p in model.loreft.parameters()) == n_layers * per_layer
    with torch.no_grad():
        for p in model.loreft.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    inputs = text_inputs()
    out = model_output(model, inputs)
    model.save_pretrained(tmp_path)
    again = load_loreft(AutoModelForSequenceClassification.from_pretrained(tmp_path), str(tmp_path))
    torch.testing.assert_close(model_output(again, inputs), out, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no LoReFT model"):
        load_loreft(tiny_bert(), str(tmp_path))


@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, "r must be an integer >= 1"),
    ({"prefix": 0, "suffix": 0}, "at least one intervened position"),
    ({"layers": [7]}, r"layers \[7\] out of range"),
    ({"dropout": 1.0}, "dropout"),
])
def test_bad_settings_raise_and_leave_the_model_alone(kwargs, message):
    model = tiny_llama()
    with pytest.raises(ValueError, match=message):
        attach_loreft(model, **kwargs)
    assert not hasattr(model, "loreft") and not hasattr(model.config, "loreft")
