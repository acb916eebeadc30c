"""Bad inputs: each gives an error that names the problem, and the model is left exactly as it was.

Covers configs, targets and tampered adapter folders (wrong shapes, missing / extra tensors, NaN / inf / int values,
a config that does not match the file, a truncated file, pickle folders). Mismatching adapter files are refused by the
tuners' checked loading (peft_gift._checked_load), which rolls the adapter back; PEFT's own fallback for
`adapter_model.bin` uses torch.load(weights_only=True), so a code-carrying pickle is never executed.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import model_output, randomise_theta, text_inputs, tiny_llama
from torch import nn

import peft_gift
from peft_gift import GiftConfig, LofitConfig
from peft_gift.gift.layer import GiftLayer

THETA_Q = "base_model.gift_phi.model-layers-self_attn-q_proj"


# ---- helpers -------------------------------------------------------------------------------------------------------
def snapshot(model: nn.Module):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "types": {n: type(m) for n, m in model.named_modules()},
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "out": model_output(model, text_inputs()),
    }


def assert_untouched(model: nn.Module, snap) -> None:
    assert {n: type(m) for n, m in model.named_modules()} == snap["types"]
    state = model.state_dict()
    assert state.keys() == snap["state"].keys()
    assert all(torch.equal(state[k], v) for k, v in snap["state"].items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == snap["grad"]
    assert not hasattr(model, "peft_config") or "peft_config" not in model.__dict__
    assert not model._forward_hooks
    torch.testing.assert_close(model_output(model, text_inputs()), snap["out"], rtol=0, atol=0)


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model)
    model.save_pretrained(folder)
    return str(folder)


def tampered(good_folder, tmp_path, tensors=None, config=None, files=None) -> str:
    folder = str(tmp_path / "adapter")
    shutil.copytree(good_folder, folder)
    if tensors is not None:
        state = load_file(os.path.join(folder, "adapter_model.safetensors"))
        save_file(tensors(state), os.path.join(folder, "adapter_model.safetensors"))
    if config is not None:
        path = os.path.join(folder, "adapter_config.json")
        cfg = json.load(open(path))
        config(cfg)
        json.dump(cfg, open(path, "w"))
    if files is not None:
        files(folder)
    return folder


def load_fails(folder, match, exc=ValueError, untouched=True):
    base = tiny_llama()
    snap = snapshot(base)
    with pytest.raises(exc, match=match):
        PeftModel.from_pretrained(base, folder)
    if untouched:
        assert_untouched(base, snap)


# ---- configs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(r=0), ValueError, r"r must be >= 1, got 0"),
    (dict(r="4"), TypeError, r"r must be an int"),
    (dict(r=True), TypeError, r"r must be an int"),
    (dict(sharing="global"), ValueError, r"sharing must be one of .*'global'"),
    (dict(init="lora"), ValueError, r"init must be one of .*'lora'"),
    (dict(alpha=0), ValueError, r"alpha must be a finite number > 0"),
    (dict(alpha=float("inf")), ValueError, r"alpha must be a finite number > 0 or None, got inf"),
    (dict(alpha="2"), TypeError, r"alpha must be a number"),
    (dict(dropout="0.1"), TypeError, r"dropout must be a float in \[0, 1\), got '0.1'"),
    (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
    (dict(layers_pattern="layers"), ValueError, r"layers_pattern requires layers_to_transform"),
])
def test_bad_gift_config(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GiftConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="shift"), r"LofitConfig.mode must be one of"),
    (dict(heads=[(0, 1), (0, 1)]), r"duplicate"),
    (dict(), r"LofitConfig\(\) needs `mode`: LoFiT is two stages\. Stage 1: LofitConfig\(mode='scale'"),
    (dict(mode="bias", heads=[]), r"heads is empty"),
    (dict(mode="scale", heads=[]), r"heads is empty \(mode='scale'\): select at least one"),
    (dict(mode="scale", l1_lambda=float("nan")), r"LofitConfig.l1_lambda must be a finite number"),
])
def test_bad_lofit_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LofitConfig(**kwargs)


# ---- targets: get_peft_model / add_adapter must not modify the model when they fail --------------------------------
@pytest.mark.parametrize("config,exc,match", [
    (GiftConfig(r=4, target_modules=["nonexistent_proj"]), ValueError, r"nonexistent_proj.*not found"),
    (GiftConfig(r=4, target_modules=["embed_tokens"]), ValueError, r"cannot adapt module 'model.embed_tokens' of type Embedding"),
    (GiftConfig(r=4, target_modules=["input_layernorm"]), ValueError, r"of type LlamaRMSNorm"),
    (GiftConfig(r=4, target_modules=["q_proj", "down_proj"], sharing="all"), ValueError, r"different in_features"),
])
def test_bad_targets_leave_model_untouched(config, exc, match):
    base = tiny_llama()
    snap = snapshot(base)
    with pytest.raises(exc, match=match):
        get_peft_model(base, config)
    assert_untouched(base, snap)


def test_no_default_targets_for_unknown_model():
    base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match=r"target_modules is required"):
        get_peft_model(base, GiftConfig(r=2))
    assert all(isinstance(m, (nn.Sequential, nn.Linear, nn.ReLU)) for m in base.modules())
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())


def test_failed_add_adapter_leaves_existing_adapter_alone():
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model)
    out = model_output(model, text_inputs())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"different in_features"):
        model.add_adapter("bad", GiftConfig(r=2, target_modules=["q_proj", "down_proj"], sharing="all"))
    assert "bad" not in model.base_model.gift_phi and "bad" not in model.peft_config
    assert model.state_dict().keys() == state.keys()
    torch.testing.assert_close(model_output(model, text_inputs()), out, rtol=0, atol=0)


def test_add_existing_adapter_name_reinitialises_nothing():
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"default.*already"):
        model.add_adapter("default", GiftConfig(r=4))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# ---- tampered adapter folders: PeftModel.from_pretrained raises and the base model is untouched --------------------
FILE_CASES = {
    "wrong_shape": (dict(tensors=lambda s: {**s, THETA_Q: torch.zeros(3, 3)}), r"has shape \(3, 3\) in the file, the model expects \(64, 4\)"),
    "transposed": (dict(tensors=lambda s: {**s, THETA_Q: s[THETA_Q].T.contiguous()}), r"has shape \(4, 64\) in the file"),
    "missing_tensor": (dict(tensors=lambda s: {k: v for k, v in s.items() if k != THETA_Q}), r"missing tensors \['base_model.gift_phi.default.model-layers-self_attn-q_proj'\]"),
    "extra_theta_group": (dict(tensors=lambda s: {**s, "base_model.gift_phi.model-layers-mlp-up_proj": torch.zeros(64, 4)}), r"unexpected tensors \['base_model.gift_phi.model-layers-mlp-up_proj'\]"),
    "extra_base_weight": (dict(tensors=lambda s: {**s, "base_model.model.lm_head.weight": torch.zeros(128, 64)}), r"unexpected tensors \['base_model.model.lm_head.weight'\]"),
    "nan": (dict(tensors=lambda s: {**s, THETA_Q: torch.full_like(s[THETA_Q], float("nan"))}), r"self_attn-q_proj contains NaN or infinite values"),
    "inf": (dict(tensors=lambda s: {**s, THETA_Q: s[THETA_Q].index_fill(0, torch.tensor([3]), float("inf"))}), r"contains NaN or infinite values"),
    "int_dtype": (dict(tensors=lambda s: {**s, THETA_Q: torch.ones(64, 4, dtype=torch.int32)}), r"has dtype torch.int32 in the file"),
    "empty_file": (dict(tensors=lambda s: {"unrelated": torch.zeros(1)}), r"missing tensors"),
    "config_r_mismatch": (dict(config=lambda c: c.update(r=8)), r"\(r=8, sharing=.module.\).*the model expects \(64, 8\)"),
    "config_sharing_mismatch": (dict(config=lambda c: c.update(sharing="layer")), r"missing tensors.*model-layers-0-self_attn-q_proj.*unexpected tensors"),
    "config_targets_mismatch": (dict(config=lambda c: c.update(target_modules=["q_proj", "k_proj", "v_proj"])), r"missing tensors.*k_proj"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_tampered_adapter_file(good_folder, tmp_path, case):
    kwargs, match = FILE_CASES[case]
    load_fails(tampered(good_folder, tmp_path, **kwargs), match)


def test_config_targets_absent_from_model(good_folder, tmp_path):
    folder = tampered(good_folder, tmp_path, config=lambda c: c.update(target_modules=["nonexistent_proj"]))
    load_fails(folder, r"nonexistent_proj.*not found")


def test_truncated_safetensors(good_folder, tmp_path):
    """A file that cannot be read fails inside PEFT after the layers were injected (before our checks can run): the
    error is clear, but like PEFT's own tuners the passed base model then holds the injected layers."""
    def truncate(folder):
        path = os.path.join(folder, "adapter_model.safetensors")
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])

    load_fails(tampered(good_folder, tmp_path, files=truncate), r"(?i)incomplete|invalid|deserializ", exc=Exception,
               untouched=False)


def test_unknown_peft_type(good_folder, tmp_path):
    folder = tampered(good_folder, tmp_path, config=lambda c: c.update(peft_type="GIFTX"))
    load_fails(folder, r"GIFTX", exc=Exception)


def test_missing_adapter_config(good_folder, tmp_path):
    folder = tampered(good_folder, tmp_path, files=lambda f: os.remove(os.path.join(f, "adapter_config.json")))
    load_fails(folder, r"adapter_config.json", exc=Exception)


def _to_pickle(folder):
    state = load_file(os.path.join(folder, "adapter_model.safetensors"))
    os.remove(os.path.join(folder, "adapter_model.safetensors"))
    torch.save(state, os.path.join(folder, "adapter_model.bin"))


def test_pickle_only_folder_loads_only_plain_tensors(good_folder, tmp_path):
    """PEFT reads a folder with only adapter_model.bin through torch.load(weights_only=True): plain tensors load and
    are checked like safetensors ones (a NaN pickle is refused and rolled back)."""
    expected = model_output(PeftModel.from_pretrained(tiny_llama(), good_folder), text_inputs())
    loaded = PeftModel.from_pretrained(tiny_llama(), tampered(good_folder, tmp_path / "ok", files=_to_pickle))
    torch.testing.assert_close(model_output(loaded, text_inputs()), expected, rtol=0, atol=0)

    def nan_pickle(folder):
        state = load_file(os.path.join(folder, "adapter_model.safetensors"))
        state[THETA_Q] = torch.full_like(state[THETA_Q], float("nan"))
        save_file(state, os.path.join(folder, "adapter_model.safetensors"))
        _to_pickle(folder)

    load_fails(tampered(good_folder, tmp_path / "nan", files=nan_pickle), r"contains NaN")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_never_unpickled(good_folder, tmp_path):
    marker = str(tmp_path / "executed")

    def evil(folder):
        os.remove(os.path.join(folder, "adapter_model.safetensors"))
        torch.save({"x": _Payload(marker)}, os.path.join(folder, "adapter_model.bin"))

    folder = tampered(good_folder, tmp_path, files=evil)
    load_fails(folder, r"Weights only load failed", exc=Exception, untouched=False)
    assert not os.path.exists(marker)


def test_peft_fallback_uses_weights_only(tmp_path):
    """PEFT reads .bin with weights_only=True: a code-carrying pickle is refused without running it."""
    from peft.utils.save_and_load import load_peft_weights

    marker = str(tmp_path / "executed")
    torch.save({"x": _Payload(marker)}, tmp_path / "adapter_model.bin")
    with pytest.raises(Exception, match=r"Weights only load failed"):
        load_peft_weights(str(tmp_path), device="cpu")
    assert not os.path.exists(marker)


def test_load_adapter_failure_removes_half_created_adapter(good_folder, tmp_path):
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model, seed=5)
    out = model_output(model, text_inputs())
    keys = set(model.state_dict())
    folder = tampered(good_folder, tmp_path, tensors=lambda s: {**s, THETA_Q: torch.full_like(s[THETA_Q], float("nan"))})
    with pytest.raises(ValueError, match=r"Cannot load GIFT adapter 'second'.*NaN"):
        model.load_adapter(folder, adapter_name="second")
    assert "second" not in model.peft_config and "second" not in model.base_model.gift_phi
    assert all("second" not in layer.gift_group for layer in model.modules() if isinstance(layer, GiftLayer))
    assert set(model.state_dict()) == keys and model.active_adapter == "default"
    torch.testing.assert_close(model_output(model, text_inputs()), out, rtol=0, atol=0)
    model.load_adapter(good_folder, adapter_name="second")  # the name is free again and a good file loads


@pytest.mark.parametrize("case", ["nan", "missing", "extra_base_weight"])
def test_tampered_lofit_file_is_refused_and_rolled_back(tmp_path, case):
    model = get_peft_model(tiny_llama(), LofitConfig(mode="bias", heads=[(0, 1), (1, 2)], init_std=0.1))
    model.save_pretrained(tmp_path / "lofit")
    path = tmp_path / "lofit" / "adapter_model.safetensors"
    state = load_file(path)
    key = sorted(state)[0]
    if case == "nan":
        state[key] = torch.full_like(state[key], float("nan"))
        match = r"Cannot load LoFiT adapter 'default'.*contains NaN"
    elif case == "missing":
        del state[key]
        match = r"missing tensors"
    else:
        state["base_model.model.lm_head.weight"] = torch.zeros(128, 64)
        match = r"unexpected tensors \['base_model.model.lm_head.weight'\]"
    save_file(state, path)
    load_fails(str(tmp_path / "lofit"), match)


def test_good_folder_still_loads(good_folder):
    """Control: the untampered folder loads, so the failures above come from the tampering."""
    model = PeftModel.from_pretrained(tiny_llama(), good_folder)
    assert isinstance(model.base_model, peft_gift.GiftModel)
