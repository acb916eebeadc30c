"""GIFT and LoFiT with the rest of the stack: PEFT's trainable tokens, mixed models, model status, TRL, transformers."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from tiny_models import model_output, text_inputs, tiny_llama

import peft_gift  # noqa: F401
from peft_gift import GiftConfig, LofitConfig

CONFIGS = {
    "gift": lambda **kw: GiftConfig(r=4, **kw),
    "lofit": lambda **kw: LofitConfig(mode="scale", init_std=0.1, **kw),
}


@pytest.mark.parametrize("method", list(CONFIGS))
def test_trainable_token_indices_train_only_those_rows_and_round_trip(tmp_path, method):
    pm = get_peft_model(tiny_llama(), CONFIGS[method](trainable_token_indices=[3, 5]))
    embedding = pm.get_base_model().get_input_embeddings()
    before = model_output(tiny_llama(), text_inputs())  # the base embedding itself must stay untouched
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert any("trainable_tokens_delta.default" in n for n in trainable)
    batch = text_inputs()
    batch["input_ids"][:, :2] = torch.tensor([3, 5])
    optimizer = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=1.0)
    pm(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    ids = torch.arange(8)
    rows = embedding(ids) - tiny_llama().get_input_embeddings()(ids)
    changed = {int(i) for i in torch.nonzero(rows.abs().sum(-1) > 0)}
    assert changed == {3, 5}
    pm.save_pretrained(tmp_path)
    assert any("trainable_tokens_delta" in k for k in load_file(tmp_path / "adapter_model.safetensors"))
    expected = model_output(pm, batch)
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    torch.testing.assert_close(model_output(reloaded, batch), expected)
    with reloaded.disable_adapter():
        torch.testing.assert_close(model_output(reloaded, text_inputs()), before)


def test_model_status_reports_gift_theta(tmp_path):
    pm = get_peft_model(tiny_llama(), CONFIGS["gift"]())
    pm.add_adapter("other", CONFIGS["gift"]())
    status = pm.get_model_status()
    assert status.requires_grad == {"default": True, "other": False}
    assert status.devices == {"default": ["cpu"], "other": ["cpu"]}
    layers = pm.get_layer_status()
    assert layers and all(layer.requires_grad == {"default": True, "other": False} for layer in layers)
