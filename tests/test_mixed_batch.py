"""Mixed-adapter batches (one adapter per sample) for GIFT; PEFT itself offers this only for LoRA/RoAd."""

import pytest
import torch
from tiny_models import gift_two_adapter_model, model_output, text_inputs


def per_adapter_outputs(model, inputs):
    outs = {}
    with model.disable_adapter():
        outs["__base__"] = model_output(model, inputs)
    for name in ("default", "other"):
        model.set_adapter(name)
        outs[name] = model_output(model, inputs)
    model.set_adapter("default")
    return outs


def test_mixed_batch_equals_per_adapter_runs():
    model = gift_two_adapter_model().eval()
    inputs = text_inputs(batch=4)
    expected = per_adapter_outputs(model, inputs)
    names = ["other", "__base__", "default", "other"]
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[i], expected[name][i], atol=1e-5, rtol=1e-5)


def test_mixed_batch_generate():
    model = gift_two_adapter_model().eval()
    inputs = text_inputs(batch=3, seq=5)
    names = ["default", "other", "__base__"]
    mixed = model.generate(**inputs, adapter_names=names, max_new_tokens=4, do_sample=False)
    for i, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                single = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        else:
            model.set_adapter(name)
            single = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert torch.equal(mixed[i], single[i]), name


def test_mixed_batch_errors():
    model = gift_two_adapter_model()
    inputs = text_inputs(batch=2)
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(**inputs, adapter_names=["default", "other"])
    model.eval()
    with pytest.raises(ValueError, match="2 samples"):
        model(**inputs, adapter_names=["default"])
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['nope'\]"):
        model(**inputs, adapter_names=["default", "nope"])
    model.merge_adapter(["default"])
    with pytest.raises(ValueError, match="merged"):
        model(**inputs, adapter_names=["default", "other"])


def test_lofit_mixed_batch_equals_per_adapter_runs():
    from peft import get_peft_model
    from tiny_models import tiny_gpt2

    from peft_gift import LofitConfig

    model = get_peft_model(tiny_gpt2(), LofitConfig(mode="bias", heads=[(0, 1), (1, 3)], init_std=0.5))
    model.add_adapter("other", LofitConfig(mode="scale", init_std=0.5))
    model.eval()
    inputs = text_inputs(batch=3)
    expected = per_adapter_outputs(model, inputs)
    names = ["other", "default", "__base__"]
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[i], expected[name][i], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected["other"], expected["default"])
