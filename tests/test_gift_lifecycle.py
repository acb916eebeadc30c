"""GIFT through PEFT's whole adapter lifecycle (the generic checks PEFT runs on its own tuners), and the loading checks
GIFT and LoFiT share."""

import copy
import json
import shutil
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from tiny_models import (
    gift_two_adapter_model,
    model_output,
    randomise_theta,
    save_checkpoint,
    text_inputs,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    word_tokenizer,
)
from torch import nn

from peft_gift import GiftConfig, LofitConfig
from peft_gift.gift import GiftLayer


def theta_names(model, adapter=None):
    return sorted(n for n, _ in model.named_parameters() if (".gift_phi." in n or ".gift_psi." in n)
                  and (adapter is None or f".{adapter}." in n))


def trainable_names(model):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


# ---- trainability --------------------------------------------------------------------------------------------
def test_only_theta_gets_gradients_and_changes():
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    assert trainable_names(model) == theta_names(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = text_inputs()
    for _ in range(3):
        out = model(**inputs, labels=inputs["input_ids"])
        out.loss.backward()
        assert {n for n, p in model.named_parameters() if p.grad is not None} == set(start)
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
        else:
            assert not torch.equal(p, start[n]), n


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_same_grads(use_reentrant):
    def grads(checkpointing):
        model = get_peft_model(tiny_llama(), GiftConfig(r=4))
        randomise_theta(model)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
            model.enable_input_require_grads()
        model.train()
        inputs = text_inputs()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert set(plain) == set(ckpt) and plain
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-5, rtol=1e-4)


def test_requires_grad_follows_set_adapter_and_set_requires_grad():
    model = gift_two_adapter_model()
    assert trainable_names(model) == theta_names(model, "default")  # new inactive adapter stays frozen
    model.set_adapter("other")
    assert model.active_adapters == ["other"]
    assert trainable_names(model) == theta_names(model, "other")
    model.base_model.set_adapter(["default", "other"])
    assert trainable_names(model) == theta_names(model)
    model.set_requires_grad("default", requires_grad=False)
    assert trainable_names(model) == theta_names(model, "other")
    model.set_requires_grad(["default"], requires_grad=True)
    assert trainable_names(model) == theta_names(model)


def test_layers_only_targeted_by_other_are_not_activated():
    model = gift_two_adapter_model()
    o_proj = model.base_model.model.model.layers[0].self_attn.o_proj
    assert isinstance(o_proj, GiftLayer) and o_proj.active_adapters == ["default"]
    model.set_adapter("other")
    v_proj = model.base_model.model.model.layers[0].self_attn.v_proj
    assert v_proj.active_adapters == ["other"] and "other" not in v_proj.gift_group


# ---- multiple adapters, merge, disable, delete, unload --------------------------------------------------------
def test_two_adapters_sum_and_merge_orders_agree():
    model = gift_two_adapter_model()
    inputs = text_inputs()
    with model.disable_adapter():
        base = model_output(model, inputs)
    model.set_adapter("default")
    only_default = model_output(model, inputs)
    model.set_adapter("other")
    only_other = model_output(model, inputs)
    model.base_model.set_adapter(["default", "other"])
    joint = model_output(model, inputs)
    assert not torch.allclose(joint, only_default, atol=1e-3) and not torch.allclose(joint, only_other, atol=1e-3)

    # the joint model is W(I + s1 φ1ψ1 + s2 φ2ψ2) on layers both target
    q = model.base_model.model.model.layers[1].self_attn.q_proj
    x = torch.randn(3, q.in_features)
    m = torch.eye(q.in_features)
    for a in ("default", "other"):
        phi, psi = q.theta(a)
        m = m + q.gift_scaling[a] * phi @ psi
    torch.testing.assert_close(q(x), x @ (q.get_base_layer().weight @ m).T, atol=1e-5, rtol=1e-5)

    model.merge_adapter(["default", "other"])
    torch.testing.assert_close(model_output(model, inputs), joint, atol=1e-4, rtol=1e-4)
    model.unmerge_adapter()
    model.merge_adapter(["default"])
    model.merge_adapter(["other"])  # sequential merge == merging both at once
    torch.testing.assert_close(model_output(model, inputs), joint, atol=1e-4, rtol=1e-4)
    with model.disable_adapter():  # disabling a merged model gives the base model (and unmerges)
        torch.testing.assert_close(model_output(model, inputs), base, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(model_output(model, inputs), base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model_output(model, inputs), joint, atol=1e-4, rtol=1e-4)

    chosen = copy.deepcopy(model).merge_and_unload(adapter_names=["other"])
    torch.testing.assert_close(model_output(chosen, inputs), only_other, atol=1e-4, rtol=1e-4)


def test_delete_adapter_removes_theta_everywhere():
    model = gift_two_adapter_model()
    model.set_adapter("other")
    with pytest.warns(UserWarning, match="Setting active adapter to default"):
        model.delete_adapter("other")
    assert "other" not in model.peft_config and "other" not in model.base_model.gift_phi
    assert theta_names(model, "other") == []
    assert all("other" not in layer.gift_group and "other" not in layer.gift_dropout
               for layer in model.modules() if isinstance(layer, GiftLayer))
    assert model.active_adapters == ["default"]
    with pytest.raises(ValueError, match="Adapter unknown does not exist"):
        model.delete_adapter("unknown")
    model.merge_adapter()
    with pytest.raises(ValueError, match="while they are merged"):
        model.delete_adapter("default")
    model.unmerge_adapter()
    model.delete_adapter("default")
    assert len(model.base_model.gift_phi) == 0 and theta_names(model) == []
    model_output(model.base_model, text_inputs())  # the tuner still runs (as for LoRA, PeftModel needs a config)


def test_add_existing_name_raises_and_failed_add_leaves_no_state():
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("default", GiftConfig(r=4))
    with pytest.raises(ValueError, match="in_features"):
        model.add_adapter("bad", GiftConfig(r=4, sharing="all", target_modules=["q_proj", "down_proj"]))
    assert "bad" not in model.peft_config and "bad" not in model.base_model.gift_phi
    assert all(not isinstance(m, GiftLayer) for n, m in model.named_modules() if n.endswith("down_proj"))
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def _failing_on_second_target(monkeypatch, tuner_cls):
    """Make ``tuner_cls._create_and_replace`` raise after it has adapted one module (an injection failing midway)."""
    original, calls = tuner_cls._create_and_replace, []

    def create_and_replace(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injection failed midway")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tuner_cls, "_create_and_replace", create_and_replace)


@pytest.mark.parametrize("method", ["gift", "lofit"])
def test_an_injection_failing_midway_is_rolled_back_in_both_tuners(monkeypatch, method):
    """A failure after some layers got the adapter leaves the model as it was: first adapter (the base model gets its
    own modules back) and added adapter (existing layers drop it, layers it created are unwrapped)."""
    from peft_gift import GiftModel, LofitConfig, LofitModel

    tuner_cls = {"gift": GiftModel, "lofit": LofitModel}[method]

    def config():
        return GiftConfig(r=4, target_modules=["q_proj", "v_proj"]) if method == "gift" else \
            LofitConfig(mode="scale", init_std=0.1)

    base = tiny_llama()
    types_before = {n: type(m) for n, m in base.named_modules()}
    state_before = {k: v.clone() for k, v in base.state_dict().items()}
    with monkeypatch.context() as patch:
        _failing_on_second_target(patch, tuner_cls)
        with pytest.raises(RuntimeError, match="midway"):
            get_peft_model(base, config())
    assert {n: type(m) for n, m in base.named_modules()} == types_before
    assert all(torch.equal(v, state_before[k]) for k, v in base.state_dict().items())

    model = get_peft_model(base, config())
    types_before = {n: type(m) for n, m in model.named_modules()}
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    second = GiftConfig(r=4, target_modules=["v_proj", "o_proj"]) if method == "gift" else \
        LofitConfig(mode="bias", heads=[[0, 1], [1, 2]])
    with monkeypatch.context() as patch:
        _failing_on_second_target(patch, tuner_cls)
        with pytest.raises(RuntimeError, match="midway"):
            model.add_adapter("new", second)
    assert "new" not in model.peft_config
    assert {n: type(m) for n, m in model.named_modules()} == types_before
    after = model.state_dict()
    assert set(after) == set(state_before) and all(torch.equal(after[k], state_before[k]) for k in after)
    assert all("new" not in m._all_available_adapter_names() for m in model.modules() if isinstance(m, BaseTunerLayer))


def _outcome(call):
    """``"ok"`` or the first line of the ValueError ``call()`` raised."""
    try:
        call()
        return "ok"
    except ValueError as e:
        return str(e).splitlines()[0]


WORDS = [f"w{i}" for i in range(60)]
ADAPTER_API_CONFIGS = {
    "lofit": lambda: LofitConfig(mode="scale", init_std=0.3),
    "lora": lambda: LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
}


@pytest.mark.parametrize("method", ["lofit", "lora"])
def test_transformers_adapter_api_hosts_lofit_as_it_hosts_lora(tmp_path, method):
    """transformers' own adapter API on this peft/transformers pair: `model.load_adapter(dir)` and
    `pipeline(model=adapter_dir)` give the PeftModel's outputs; `model.add_adapter(config)` does what it does for
    LoRA (transformers 5.24 refuses peft 0.21 for every method; 5.25 + peft 0.22 accept)."""
    from transformers import AutoModelForCausalLM, pipeline

    save_checkpoint(tiny_llama(), tmp_path / "base", WORDS)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), ADAPTER_API_CONFIGS[method]())
    pm.save_pretrained(tmp_path / "adapter")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model.load_adapter(str(tmp_path / "adapter"))
    torch.testing.assert_close(model_output(model, text_inputs()), model_output(pm, text_inputs()))
    pipe = pipeline("text-generation", model=str(tmp_path / "adapter"))
    ids = word_tokenizer(WORDS)("w1 w2 w3", return_tensors="pt")["input_ids"]
    expected = pm.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    got = pipe("w1 w2 w3", max_new_tokens=4, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    assert list(got) == expected[0].tolist()
    lora = _outcome(lambda: tiny_llama().add_adapter(ADAPTER_API_CONFIGS["lora"]()))
    assert _outcome(lambda: tiny_llama().add_adapter(ADAPTER_API_CONFIGS[method]())) == lora


def test_transformers_adapter_api_refuses_gift_and_leaves_the_model_untouched(tmp_path):
    """GIFT's Θ is shared by many layers and lives on the tuner, so transformers' adapter API (PEFT's
    `inject_adapter_in_model`) cannot host it: `load_adapter`, `add_adapter` and `pipeline(model=adapter_dir)` raise
    (PEFT's shared-state refusal, or transformers 5.24's refusal of peft 0.21) before changing the model; the calls that
    work are `PeftModel.from_pretrained` / `AutoPeftModelForCausalLM.from_pretrained` (README)."""
    from transformers import AutoModelForCausalLM, pipeline

    save_checkpoint(tiny_llama(), tmp_path / "base", WORDS)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), GiftConfig(r=4)).save_pretrained(
        tmp_path / "adapter")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shared_state = r"`inject_adapter_in_model` does not support PeftType\.GIFT because it uses shared state"
    with pytest.raises(ValueError, match=shared_state):
        model.load_adapter(str(tmp_path / "adapter"))
    with pytest.raises(ValueError, match=shared_state + "|version of PEFT you are using is not compatible"):
        model.add_adapter(GiftConfig(r=4))
    with pytest.raises(ValueError, match="Could not load model"):
        pipeline("text-generation", model=str(tmp_path / "adapter"))
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)


class _TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.l2(self.l1(x))


@pytest.mark.parametrize("method", ["gift", "lora"])
def test_second_adapter_with_a_regex_target_skips_the_first_adapters_modules(method):
    """``target_modules="l1.*"`` also matches what the first adapter put inside ``l1`` (``l1.gift_dropout``,
    ``l1.base_layer``); PEFT never targets a tuner layer's submodules (its ``test_self_targeting_is_ignored``), and
    GIFT's own check before injecting refused them."""
    def config():
        return (GiftConfig(r=2, target_modules="l1.*") if method == "gift"
                else LoraConfig(r=2, target_modules="l1.*", init_lora_weights=False))

    model = get_peft_model(_TwoLinears(), config())
    model.add_adapter("other", config())
    l1, l2 = model.base_model.model.l1, model.base_model.model.l2
    assert isinstance(l1, BaseTunerLayer) and type(l1.base_layer) is nn.Linear and type(l2) is nn.Linear
    assert {"default", "other"} <= set(l1._all_available_adapter_names())
    model.base_model.set_adapter(["default", "other"])
    model(torch.randn(2, 8))


def test_unload_gives_base_model():
    base = tiny_llama()
    expected = model_output(base, text_inputs())
    keys = set(base.state_dict())
    model = get_peft_model(base, GiftConfig(r=4))
    randomise_theta(model)
    unloaded = model.unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in unloaded.modules())
    assert set(unloaded.state_dict()) == keys
    assert torch.equal(model_output(unloaded, text_inputs()), expected)


# ---- dtypes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_base_keeps_fp32_theta(dtype, tmp_path):
    model = get_peft_model(tiny_llama().to(dtype), GiftConfig(r=4))
    assert {p.dtype for n, p in model.named_parameters() if "gift_" in n} == {torch.float32}
    randomise_theta(model, std=0.05)
    out = model_output(model, text_inputs())
    assert out.dtype == dtype and torch.isfinite(out).all()
    model.add_adapter("second", GiftConfig(r=2))
    assert {p.dtype for n, p in model.named_parameters() if "gift_" in n} == {torch.float32}
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama().to(dtype), tmp_path)
    assert {p.dtype for n, p in loaded.named_parameters() if "gift_" in n} == {torch.float32}
    loaded.load_adapter(tmp_path, adapter_name="again")
    assert {p.dtype for n, p in loaded.named_parameters() if "gift_" in n} == {torch.float32}
    no_cast = get_peft_model(tiny_llama().to(dtype), GiftConfig(r=4), autocast_adapter_dtype=False)
    assert {p.dtype for n, p in no_cast.named_parameters() if "gift_" in n} == {dtype}


# ---- save / load ----------------------------------------------------------------------------------------------
def test_save_load_round_trip_files_and_no_missing_keys(tmp_path):
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model)
    expected = model_output(model, text_inputs())
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json",
                                                          "adapter_model.safetensors"]
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(tensors) == ["base_model.gift_phi.model-layers-self_attn-q_proj",
                               "base_model.gift_phi.model-layers-self_attn-v_proj",
                               "base_model.gift_psi.model-layers-self_attn-q_proj",
                               "base_model.gift_psi.model-layers-self_attn-v_proj"]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "GIFT" and "base_model_name_or_path" in config
    card = (tmp_path / "README.md").read_text()
    assert "library_name: peft" in card and "- gift" in card

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]
    assert torch.equal(model_output(loaded, text_inputs()), expected)
    assert trainable_names(loaded) == []  # inference mode
    trainable = PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    assert trainable_names(trainable) == theta_names(trainable)
    cfg = GiftConfig.from_pretrained(tmp_path)
    with_cfg = PeftModel.from_pretrained(tiny_llama(), tmp_path, config=cfg)
    assert with_cfg.peft_config["default"] is cfg and cfg.inference_mode


def test_load_under_other_names_and_substring_names(tmp_path):
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model, seed=3)
    model.save_pretrained(tmp_path / "a")
    expected = model_output(model, text_inputs())
    twice = PeftModel.from_pretrained(tiny_llama(), tmp_path / "a", adapter_name="first")
    for name in ("second", "third"):
        assert twice.load_adapter(tmp_path / "a", adapter_name=name).missing_keys == []
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "a", adapter_name="default2")
    for name in ("other_default", "default"):
        loaded.load_adapter(tmp_path / "a", adapter_name=name)
    for name in ("default2", "other_default", "default"):
        loaded.set_adapter(name)
        assert torch.equal(model_output(loaded, text_inputs()), expected), name
    loaded.save_pretrained(tmp_path / "b")
    for sub in ("b", "b/other_default", "b/default2"):
        tensors = load_file(tmp_path / sub / "adapter_model.safetensors")
        assert len(tensors) == 4
        for k, v in load_file(tmp_path / "a" / "adapter_model.safetensors").items():
            assert torch.equal(tensors[k], v)
    loaded.save_pretrained(tmp_path / "c", selected_adapters=["other_default"])
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["README.md", "other_default"]


# per method: the config, and what a file of wrongly shaped tensors raises (PEFT's LoRA: torch's size mismatch)
_REFUSED_LOAD = {
    "gift": (lambda: GiftConfig(r=4), ValueError, r"Cannot load GIFT adapter 'new'.*shape"),
    "lofit": (lambda: LofitConfig(mode="bias", heads=[(0, 1), (1, 2)]), ValueError,
              r"Cannot load LoFiT adapter 'new'.*has shape \(3, 3\)"),
    "lora": (lambda: LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), (ValueError, RuntimeError),
             "shape|size mismatch"),
}


@pytest.mark.parametrize("method", list(_REFUSED_LOAD))
def test_refused_load_keeps_an_adapter_left_by_an_earlier_failed_load(tmp_path, method):
    """`load_adapter` from a folder without weights fails after creating the adapter (PEFT leaves it in place). A
    later load under that name that fails must keep it: it existed before that call. (The rollback must tell the call that
    created the adapter from a later one without comparing stack-frame ids, which CPython reuses.)"""
    config, error, message = _REFUSED_LOAD[method]
    model = get_peft_model(tiny_llama(), config())
    model.save_pretrained(tmp_path / "good")
    for folder in ("no_weights", "bad"):
        (tmp_path / folder).mkdir()
        shutil.copy(tmp_path / "good" / "adapter_config.json", tmp_path / folder)
    tensors = load_file(tmp_path / "good" / "adapter_model.safetensors")
    save_file({k: torch.zeros(3, 3) for k in tensors}, tmp_path / "bad" / "adapter_model.safetensors")
    with pytest.raises(ValueError):  # no adapter_model.* in the folder: PEFT looks for a Hub repo of that name
        model.load_adapter(str(tmp_path / "no_weights"), adapter_name="new")
    assert "new" in model.peft_config
    model.set_adapter("new")
    keys, before = set(model.state_dict()), model_output(model, text_inputs())
    with pytest.raises(error, match=message):
        model.load_adapter(str(tmp_path / "bad"), adapter_name="new")
    assert set(model.peft_config) == {"default", "new"} and set(model.state_dict()) == keys
    torch.testing.assert_close(model_output(model, text_inputs()), before, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["gift", "lofit", "lora"])
def test_load_onto_a_base_that_still_carries_lora_layers(tmp_path, method):
    """A base to which an earlier `get_peft_model(base, LoraConfig(...))` added LoRA layers (adapter 'default', B = 0;
    o_proj included) loads a saved adapter, and a refused file names only the tensors of the method being loaded (a
    GIFT file is not missing LoRA's ``lora_A.default.weight``)."""
    config = {"gift": lambda: GiftConfig(r=4),
              "lofit": lambda: LofitConfig(mode="bias", heads=[(0, 1), (1, 2)], init_std=0.3),
              "lora": lambda: LoraConfig(r=4, target_modules=["v_proj"], init_lora_weights=False)}[method]()
    saved = get_peft_model(tiny_llama(), config)
    if method == "gift":
        randomise_theta(saved)
    saved.save_pretrained(tmp_path / "adapter")
    expected = model_output(saved, text_inputs())
    base = tiny_llama()
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "o_proj"]))
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    torch.testing.assert_close(model_output(loaded, text_inputs()), expected, rtol=0, atol=1e-6)
    if method == "gift":  # PEFT loads a LoRA file with missing tensors (with a warning)
        tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
        missing = "base_model.gift_phi.model-layers-self_attn-v_proj"
        save_file({k: v for k, v in tensors.items() if k != missing}, tmp_path / "adapter/adapter_model.safetensors")
        base = tiny_llama()
        get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "o_proj"]))
        only_gift = r"missing tensors \['base_model.gift_phi.default.model-layers-self_attn-v_proj'\]\."
        with pytest.raises(ValueError, match=only_gift):
            PeftModel.from_pretrained(base, tmp_path / "adapter")


@pytest.mark.parametrize("method", ["gift", "lofit"])
def test_loading_refuses_another_adapters_head(method):
    """A state dict loaded into adapter "b" that carries adapter "default"'s modules_to_save head is refused (naming
    the unexpected tensors), and "default"'s head stays as it was, in both tuners."""
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


def test_low_cpu_mem_usage_and_device_map(tmp_path):
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model)
    expected = model_output(model, text_inputs())
    model.save_pretrained(tmp_path)
    for kwargs in ({"low_cpu_mem_usage": True}, {"torch_device": "cpu"}):
        loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, **kwargs)
        assert all(p.device.type == "cpu" for p in loaded.parameters())
        assert torch.equal(model_output(loaded, text_inputs()), expected)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    loaded.load_adapter(tmp_path, adapter_name="lazy", low_cpu_mem_usage=True)
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    loaded.set_adapter("lazy")
    assert torch.equal(model_output(loaded, text_inputs()), expected)


def test_fresh_process_load_and_auto_peft_model(tmp_path, fresh_process):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    base.name_or_path = str(tmp_path / "base")
    model = get_peft_model(base, GiftConfig(r=4))
    randomise_theta(model)
    expected = model_output(model, text_inputs())
    model.save_pretrained(tmp_path / "adapter")
    torch.save(expected, tmp_path / "expected.pt")
    out = fresh_process(f"""
        import torch, peft_gift
        from peft import AutoPeftModelForCausalLM, PeftModel
        from transformers import AutoModelForCausalLM
        from tiny_models import text_inputs, model_output
        expected = torch.load(r"{tmp_path / 'expected.pt'}")
        auto = AutoPeftModelForCausalLM.from_pretrained(r"{tmp_path / 'adapter'}")
        torch.testing.assert_close(model_output(auto, text_inputs()), expected, atol=1e-6, rtol=1e-6)
        base = AutoModelForCausalLM.from_pretrained(r"{tmp_path / 'base'}")
        peft = PeftModel.from_pretrained(base, r"{tmp_path / 'adapter'}")
        torch.testing.assert_close(model_output(peft, text_inputs()), expected, atol=1e-6, rtol=1e-6)
        merged = peft.merge_and_unload()
        torch.testing.assert_close(model_output(merged, text_inputs()), expected, atol=1e-4, rtol=1e-4)
        print("OK", type(auto.base_model).__name__)
    """)
    assert "OK GiftModel" in out


def test_merged_model_saves_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    model = get_peft_model(tiny_gpt2(), GiftConfig(r=4))
    randomise_theta(model)
    expected = model_output(model, text_inputs())
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(model_output(reloaded, text_inputs()), expected, atol=1e-4, rtol=1e-4)


# ---- generation, embeddings, Trainer --------------------------------------------------------------------------
def test_generate_and_inputs_embeds():
    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model)
    inputs = text_inputs(batch=1, seq=4)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(**inputs).logits)
    bf16 = get_peft_model(tiny_llama().to(torch.bfloat16), GiftConfig(r=4))
    assert bf16.generate(**inputs, max_new_tokens=2, do_sample=False).shape == (1, 6)


def test_hf_trainer_only_theta_and_modules_to_save_change(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    base = tiny_bert()
    model = get_peft_model(base, GiftConfig(r=4, task_type="SEQ_CLS"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = text_inputs(batch=16, seq=8)
    ds = Dataset.from_dict({"input_ids": data["input_ids"].tolist(), "attention_mask": data["attention_mask"].tolist(),
                            "labels": [i % 2 for i in range(16)]})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3,
                             learning_rate=1e-2, report_to=[], logging_steps=1, save_strategy="no", use_cpu=True)
    Trainer(model=model, args=args, train_dataset=ds).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(trainable_names(model))
    assert any("gift_phi" in n for n in changed) and any("gift_psi" in n for n in changed)
    assert any("classifier" in n and "modules_to_save" in n for n in changed)
    assert all(("gift_" in n) or ("modules_to_save" in n) for n in changed)
