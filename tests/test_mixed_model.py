"""GIFT and LoFiT in PEFT's `PeftMixedModel` beside LoRA: outputs equal the formulas composed by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PeftMixedModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from tiny_models import model_output, randomise_theta, text_inputs, tiny_llama

import peft_gift  # noqa: F401
from peft_gift import GiftConfig, LofitConfig

ATOL = 1e-5
GIFT = dict(r=4, target_modules=["q_proj", "v_proj"])
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], init_lora_weights=False)


def _theta(model, adapter, group):
    params = dict(model.named_parameters())
    return (params[f"base_model.gift_phi.{adapter}.{group}"].detach(),
            params[f"base_model.gift_psi.{adapter}.{group}"].detach())


def _lora_delta(module, adapter, config):
    return (config.lora_alpha / config.r) * module.lora_B[adapter].weight.detach() @ module.lora_A[adapter].weight.detach()


def _find(model, path):
    """The module at ``path`` (``model.layers.0.self_attn.q_proj``) of a PEFT-wrapped model, outermost wrapper."""
    return model.base_model.model.get_submodule(path)


def _gift_lora_model(order):
    base = tiny_llama()
    reference = copy.deepcopy(base)
    configs = {"gift": GiftConfig(**GIFT), "lora": LoraConfig(**LORA)}
    first, second = order
    model = get_peft_model(base, configs[first], adapter_name=first, mixed=True)
    model.add_adapter(second, configs[second])
    model.set_adapter(["gift", "lora"])
    randomise_theta(model)
    return model, reference, configs


def _expected_gift_lora(model, reference, configs, order):
    """Copy of the base with W ← W(I + sφψ) for GIFT's targets and W ← W + (α/r)BA for LoRA's, composed in the order
    the adapters were added (the later one wraps the earlier one)."""
    expected = copy.deepcopy(reference)
    s = configs["gift"].scaling
    for layer in range(2):
        for proj in ("q_proj", "v_proj", "o_proj"):
            path = f"model.layers.{layer}.self_attn.{proj}"
            weight = expected.get_submodule(path).weight.detach().clone()
            steps = []
            if proj in GIFT["target_modules"]:
                phi, psi = _theta(model, "gift", f"model-layers-self_attn-{proj}")
                steps.append(("gift", lambda w, phi=phi, psi=psi: w @ (torch.eye(w.shape[1]) + s * phi @ psi)))
            if proj in LORA["target_modules"]:
                lora_layer = next(m for m in _find(model, path).modules() if hasattr(m, "lora_A"))
                delta = _lora_delta(lora_layer, "lora", configs["lora"])
                steps.append(("lora", lambda w, delta=delta: w + delta))
            # the adapter added first acts on W first; the later one composes on top of it
            for _, step in sorted(steps, key=lambda kv: order.index(kv[0])):
                weight = step(weight)
            with torch.no_grad():
                expected.get_submodule(path).weight.copy_(weight)
    return expected


@pytest.mark.parametrize("order", [("gift", "lora"), ("lora", "gift")])
def test_gift_with_lora_equals_both_formulas_and_merges(order):
    model, reference, configs = _gift_lora_model(order)
    assert isinstance(model, PeftMixedModel)
    inputs = text_inputs()
    expected = _expected_gift_lora(model, reference, configs, order)
    out = model_output(model, inputs)
    torch.testing.assert_close(out, model_output(expected, inputs), atol=ATOL, rtol=0)
    assert (out - model_output(reference, inputs)).abs().max() > 1e-2  # both adapters do something
    merged = model.merge_and_unload()
    assert not any("peft" in type(m).__module__ or "peft_gift" in type(m).__module__ for m in merged.modules())
    torch.testing.assert_close(model_output(merged, inputs), model_output(expected, inputs), atol=ATOL, rtol=0)


def _lora_in_lofit_model(mode):
    model = get_peft_model(tiny_llama(), LoraConfig(**LORA), adapter_name="lora", mixed=True)
    model.add_adapter("lofit", LofitConfig(mode=mode, heads=[[0, 1], [1, 3]], init_std=0.5))
    model.set_adapter(["lora", "lofit"])
    return model


def _loha_in_lora_model():
    """PEFT's own types nested (LoRA wraps LoHa): the reference."""
    from peft import LoHaConfig

    model = get_peft_model(tiny_llama(), LoHaConfig(r=4, target_modules=["q_proj", "v_proj"], init_weights=False),
                           adapter_name="loha", mixed=True)
    model.add_adapter("lora", LoraConfig(**LORA))
    model.set_adapter(["loha", "lora"])
    return model


NESTINGS = {
    "lora-in-gift": lambda: _gift_lora_model(("lora", "gift"))[0],
    "gift-in-lora": lambda: _gift_lora_model(("gift", "lora"))[0],
    "lora-in-lofit-scale": lambda: _lora_in_lofit_model("scale"),
    "lora-in-lofit-bias": lambda: _lora_in_lofit_model("bias"),
    "loha-in-lora": _loha_in_lora_model,
}


@pytest.mark.parametrize("merges", ["all", "inner-first", "outer-first"])
@pytest.mark.parametrize("nesting", list(NESTINGS))
def test_merge_adapter_then_unmerge_adapter_is_exact(nesting, merges):
    """`merge_adapter` gives the unmerged outputs and `unmerge_adapter` the original base weights, whichever layer
    wraps the other and in whichever order the adapters are merged (PEFT's generic merge merged the outer layer
    first, into the inner layer's base weight: wrong outputs and a changed base after unmerging)."""
    model = NESTINGS[nesting]()
    inner, outer = model.peft_config  # the adapter added first is the inner one
    inputs = text_inputs()
    unmerged = model_output(model, inputs)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for names in {"all": [None], "inner-first": [[inner], [outer]], "outer-first": [[outer], [inner]]}[merges]:
        model.merge_adapter(names)
    torch.testing.assert_close(model_output(model, inputs), unmerged, atol=ATOL, rtol=0)
    model.unmerge_adapter()
    after = dict(model.named_parameters())
    assert set(base) <= set(after)
    for name, param in base.items():
        torch.testing.assert_close(after[name], param, atol=1e-6, rtol=0)
    torch.testing.assert_close(model_output(model, inputs), unmerged, atol=ATOL, rtol=0)


def test_active_set_disable_and_delete_in_a_mixed_model():
    order = ("gift", "lora")
    model, reference, configs = _gift_lora_model(order)
    inputs = text_inputs()
    lora_only = _expected_gift_lora(model, reference, configs, order)
    with torch.no_grad():  # the same composition without GIFT: undo by recomputing from the reference
        for layer in range(2):
            for proj in ("q_proj", "v_proj"):
                path = f"model.layers.{layer}.self_attn.{proj}"
                lora_layer = next((m for m in _find(model, path).modules() if hasattr(m, "lora_A")), None)
                weight = reference.get_submodule(path).weight.detach().clone()
                if lora_layer is not None:
                    weight = weight + _lora_delta(lora_layer, "lora", configs["lora"])
                lora_only.get_submodule(path).weight.copy_(weight)
    model.set_adapter("lora")
    torch.testing.assert_close(model_output(model, inputs), model_output(lora_only, inputs), atol=ATOL, rtol=0)
    model.set_adapter(["gift", "lora"])
    with model.disable_adapter():
        torch.testing.assert_close(model_output(model, inputs), model_output(reference, inputs), atol=ATOL, rtol=0)
    model.delete_adapter("gift")
    assert not any("gift" in name for name in model.state_dict())
    torch.testing.assert_close(model_output(model, inputs), model_output(lora_only, inputs), atol=ATOL, rtol=0)


def test_training_a_mixed_model_updates_theta_and_lora_only():
    model, reference, _ = _gift_lora_model(("gift", "lora"))
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    n_theta = 2 * 2 * 64 * GIFT["r"]  # (φ, ψ) for the q_proj group and the v_proj group, d_in = 64
    n_lora = 2 * 2 * (64 + 64) * LORA["r"]  # A, B for q_proj and o_proj in both layers
    assert sum(p.numel() for p in trainable.values()) == n_theta + n_lora
    assert {n.split(".")[1] for n in trainable if "gift" in n} == {"gift_phi", "gift_psi"}
    inputs = text_inputs()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n], before) for n, before in trainable.items())
    frozen = {n: p for n, p in model.base_model.model.named_parameters() if not p.requires_grad}
    ref = dict(reference.named_parameters())
    for name, param in frozen.items():
        key = name.replace(".base_layer", "")
        assert torch.equal(param, ref[key]), name


@pytest.mark.parametrize("mode", ["scale", "bias"])
def test_lofit_with_lora_equals_both_formulas(mode):
    """LoRA on o_proj first, then LoFiT on two heads (LoFiT wraps LoRA): stage 1 (scales) y = (W + ΔW)(z ⊙ (1 + A)),
    stage 2 (offsets) y = (W + ΔW)(z + v)."""
    base = tiny_llama()
    reference = copy.deepcopy(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj", "o_proj"], init_lora_weights=False)
    heads = [[0, 1], [1, 3]]
    model = get_peft_model(base, lora, adapter_name="lora", mixed=True)
    model.add_adapter("lofit", LofitConfig(mode=mode, heads=heads, init_std=0.5))
    model.set_adapter(["lora", "lofit"])
    expected = copy.deepcopy(reference)
    with torch.no_grad():
        for layer in range(2):
            for proj in ("v_proj", "o_proj"):
                path = f"model.layers.{layer}.self_attn.{proj}"
                lora_layer = next(m for m in _find(model, path).modules() if hasattr(m, "lora_A"))
                weight = reference.get_submodule(path).weight + _lora_delta(lora_layer, "lora", lora)
                expected.get_submodule(path).weight.copy_(weight)
            lofit_layer = _find(model, f"model.layers.{layer}.self_attn.o_proj")
            (head,) = [h for layer_, h in heads if layer_ == layer]
            cols = slice(16 * head, 16 * (head + 1))
            o_proj = expected.get_submodule(f"model.layers.{layer}.self_attn.o_proj")
            if mode == "scale":
                o_proj.weight[:, cols] *= 1 + lofit_layer.lofit_head_scale["lofit"].weight[0]
            else:
                offset = torch.zeros(64)
                offset[cols] = lofit_layer.lofit_head_offset["lofit"].weight[0]
                o_proj.bias = torch.nn.Parameter(o_proj.weight @ offset)
    inputs = text_inputs()
    out = model_output(model, inputs)
    torch.testing.assert_close(out, model_output(expected, inputs), atol=ATOL, rtol=0)
    assert (out - model_output(reference, inputs)).abs().max() > 1e-2
    merged = model.merge_and_unload()
    torch.testing.assert_close(model_output(merged, inputs), model_output(expected, inputs), atol=ATOL, rtol=0)
    # merged offsets live in o_proj's bias: the config says so, so that the saved model reloads them
    assert merged.config.attention_bias == (mode == "bias")


def test_peft_mixed_model_from_pretrained_loads_saved_gift_and_lora(tmp_path):
    """Adapters trained separately and saved with `PeftModel.save_pretrained` combine in `PeftMixedModel`."""
    gift = get_peft_model(tiny_llama(), GiftConfig(**GIFT))
    randomise_theta(gift)
    gift.save_pretrained(tmp_path / "gift")
    lora = get_peft_model(tiny_llama(), LoraConfig(**LORA))
    lora.save_pretrained(tmp_path / "lora")

    mixed = PeftMixedModel.from_pretrained(tiny_llama(), tmp_path / "gift", adapter_name="gift")
    mixed.load_adapter(tmp_path / "lora", adapter_name="lora")
    mixed.set_adapter(["gift", "lora"])
    built, reference, configs = _gift_lora_model(("gift", "lora"))
    with torch.no_grad():  # the same adapter values in the model built in memory
        own = dict(mixed.named_parameters())
        for name, param in built.named_parameters():
            if param.requires_grad:
                param.copy_(own[name])
    inputs = text_inputs()
    torch.testing.assert_close(model_output(mixed, inputs), model_output(built, inputs), atol=ATOL, rtol=0)
    expected = _expected_gift_lora(built, reference, configs, ("gift", "lora"))
    torch.testing.assert_close(model_output(mixed, inputs), model_output(expected, inputs), atol=ATOL, rtol=0)


def test_a_refused_file_leaves_no_adapter_in_the_mixed_model(tmp_path):
    gift = get_peft_model(tiny_llama(), GiftConfig(**GIFT))
    gift.save_pretrained(tmp_path / "gift")
    weights = tmp_path / "gift" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, weights)
    lora = get_peft_model(tiny_llama(), LoraConfig(**LORA))
    lora.save_pretrained(tmp_path / "lora")

    mixed = PeftMixedModel.from_pretrained(tiny_llama(), tmp_path / "lora", adapter_name="lora")
    before = model_output(mixed, text_inputs())
    with pytest.raises(ValueError, match="NaN"):
        mixed.load_adapter(tmp_path / "gift", adapter_name="gift")
    assert set(mixed.peft_config) == {"lora"}
    assert not any("gift" in name for name in mixed.state_dict())
    torch.testing.assert_close(model_output(mixed, text_inputs()), before, atol=0, rtol=0)

    base = tiny_llama()
    with pytest.raises(ValueError, match="NaN"):
        PeftMixedModel.from_pretrained(base, tmp_path / "gift", adapter_name="gift")
    assert not any("peft" in type(m).__module__ for m in base.modules())


def test_peft_own_types_mix_as_before():
    """`import peft_gift` swaps in our `MixedModel`; PEFT's own types still go through PEFT's code: LoRA alone in a
    mixed model equals `PeftModel` LoRA, and LoRA + LoHa merge to what they compute unmerged."""
    from peft import LoHaConfig

    inputs = text_inputs()
    plain = get_peft_model(tiny_llama(), LoraConfig(**LORA))
    mixed = get_peft_model(tiny_llama(), LoraConfig(**LORA), mixed=True)
    with torch.no_grad():
        own = dict(plain.named_parameters())
        for name, param in mixed.named_parameters():
            if param.requires_grad:
                param.copy_(own[name])
    torch.testing.assert_close(model_output(mixed, inputs), model_output(plain, inputs), atol=0, rtol=0)
    mixed.add_adapter("loha", LoHaConfig(r=4, target_modules=["q_proj", "v_proj"], init_weights=False))
    mixed.set_adapter(["default", "loha"])
    out = model_output(mixed, inputs)
    torch.testing.assert_close(model_output(mixed.merge_and_unload(), inputs), out, atol=ATOL, rtol=0)


def _nest(*adapters):
    """A mixed model with ``adapters`` ((name, config), ...) added in order on the same modules, all active: each
    later adapter wraps the earlier ones (the first is innermost)."""
    (name, config), *rest = adapters
    model = get_peft_model(tiny_llama(), config, adapter_name=name, mixed=True)
    for name, config in rest:
        model.add_adapter(name, config)
    model.set_adapter([name for name, _ in adapters])
    randomise_theta(model, std=0.3)
    return model


def _lora_on(*targets, seed):
    torch.manual_seed(seed)  # init_lora_weights=False draws B from the global generator
    return LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)


def _depth(layer) -> int:
    """How many tuner layers are nested from ``layer`` inwards, ``layer`` included."""
    return 1 + _depth(layer.base_layer) if isinstance(layer.base_layer, BaseTunerLayer) else 1


DEEP_NESTS = {
    "lora-gift-lora": lambda: _nest(("lora1", _lora_on("q_proj", seed=1)), ("gift", GiftConfig(r=4, target_modules=["q_proj"])),
                                    ("lora2", _lora_on("q_proj", seed=2))),
    "gift-lora-lofit": lambda: _nest(("gift", GiftConfig(r=4, target_modules=["o_proj"])), ("lora", _lora_on("o_proj", seed=1)),
                                     ("lofit", LofitConfig(mode="scale", heads=[[0, 1], [1, 3]], init_std=0.5))),
    "gift-lora": lambda: _nest(("gift", GiftConfig(r=4, target_modules=["q_proj"])), ("lora", _lora_on("q_proj", seed=1))),
}


@pytest.mark.parametrize("nest", list(DEEP_NESTS))
def test_merge_and_unload_of_nests_of_any_depth_equals_the_unmerged_model(nest):
    """`merge_and_unload` merges every nest holding a GIFT/LoFiT layer inside out, as `merge_adapter` does (PEFT's
    unloading merged the middle layer of a three-deep nest before the innermost one: max |Δ logits| 0.09 where the
    adapters' effect is 0.11 (LoRA→GIFT→LoRA), 0.86 where it is 0.82 (GIFT→LoRA→LoFiT); two-deep nests were exact)."""
    model = DEEP_NESTS[nest]()
    depth = max(_depth(m) for m in model.modules() if isinstance(m, BaseTunerLayer))
    assert depth == len(model.peft_config)  # every adapter wraps the previous one on at least one module
    inputs = text_inputs()
    unmerged = model_output(model, inputs)
    with model.disable_adapter():
        effect = float((model_output(model, inputs) - unmerged).abs().max())
    merged = model.merge_and_unload()
    assert not any("peft" in type(m).__module__ for m in merged.modules())
    assert effect > 1e-2  # 1000 × ATOL: equality means something
    torch.testing.assert_close(model_output(merged, inputs), unmerged, atol=ATOL, rtol=0)


_WITHOUT_A_PEFT_NAME = """
import tempfile, warnings
import peft, peft.tuners.mixed.model as mixed_model
{change}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import peft_gift
ours = [str(w.message) for w in caught if "PeftMixedModel" in str(w.message)]
assert len(ours) == 1, ours
print("WARNING:", ours[0])
import torch
import peft.mixed_model, peft.tuners.mixed
from peft import PeftModel, get_peft_model
from tiny_models import model_output, randomise_lofit, randomise_theta, text_inputs, tiny_llama
for config, randomise in ((peft_gift.GiftConfig(r=4), randomise_theta),
                          (peft_gift.LofitConfig(mode="bias", heads=[[0, 1]]), randomise_lofit)):
    model = get_peft_model(tiny_llama(), config)
    randomise(model)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = PeftModel.from_pretrained(tiny_llama(), folder)
    out = model_output(loaded, text_inputs())
    assert torch.equal(out, model_output(model, text_inputs()))
    assert (out - model_output(tiny_llama(), text_inputs())).abs().max() > 1e-3
    merged = model_output(loaded.merge_and_unload(), text_inputs())
    assert (merged - out).abs().max() < 1e-5
try:
    get_peft_model(tiny_llama(), peft_gift.GiftConfig(r=4), mixed=True)
except ValueError as error:
    print("REFUSED:", error)
# PEFT's mixed models as PEFT made them
assert peft.mixed_model.MixedModel is peft.tuners.mixed.MixedModel
assert not {{"GIFT", "LOFIT"}} & {{t.value for t in peft.tuners.mixed.COMPATIBLE_TUNER_TYPES}}
"""


@pytest.mark.parametrize("change", ["del mixed_model.PREFIXES", "mixed_model.Layers2 = mixed_model.Layers; del mixed_model.Layers"],
                         ids=["PREFIXES-removed", "Layers-renamed"])
def test_a_peft_without_a_name_mixed_support_uses_only_switches_mixed_support_off(fresh_process, change):
    """``import peft_gift`` with a PEFT that lacks a name of its mixed-model internals: one warning naming the PEFT
    version and the name, GIFT/LoFiT train-free round trips (save, load, merge) work through `PeftModel`, and
    ``get_peft_model(..., mixed=True)`` with our config raises a ValueError naming the PEFT version; PEFT's mixed
    model is left as PEFT made it. (It failed at import before.)"""
    import peft

    out = fresh_process(_WITHOUT_A_PEFT_NAME.format(change=change))
    missing = "peft.tuners.mixed.model." + ("PREFIXES" if "PREFIXES" in change else "Layers")
    warning = next(line for line in out.splitlines() if line.startswith("WARNING:"))
    assert f"peft {peft.__version__}" in warning and missing in warning
    refused = next(line for line in out.splitlines() if line.startswith("REFUSED:"))
    assert f"peft {peft.__version__}" in refused and missing in refused and "PeftModel" in refused


def test_a_nest_of_peft_types_beside_gift_merges_exactly_as_peft_merges_it():
    """A three-deep nest of PEFT's own types (LoRA→LoHa→LoRA on k_proj) in a model that also holds GIFT (q_proj) is
    merged by PEFT's own code: the merged k_proj weights are bit-identical to PEFT's `merge_and_unload`."""
    from peft import LoHaConfig

    from peft_gift.mixed import PeftMixedTuner

    def build():
        return _nest(("lora1", _lora_on("k_proj", seed=1)),
                     ("loha", LoHaConfig(r=4, target_modules=["k_proj"], init_weights=False)),
                     ("lora2", _lora_on("k_proj", seed=2)), ("gift", GiftConfig(r=4, target_modules=["q_proj"])))

    torch.manual_seed(0)
    ours = build().merge_and_unload()
    torch.manual_seed(0)
    model = build()
    assert _depth(model.base_model.model.model.layers[0].self_attn.k_proj) == 3
    peft_merged = PeftMixedTuner._unload_and_optionally_merge(model.base_model, merge=True)
    for layer in range(2):
        got = ours.model.layers[layer].self_attn.k_proj.weight
        assert torch.equal(got, peft_merged.model.layers[layer].self_attn.k_proj.weight)
        assert not torch.equal(got, tiny_llama().model.layers[layer].self_attn.k_proj.weight)
