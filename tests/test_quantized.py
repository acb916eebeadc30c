"""GIFT on quantized base layers (QGIFT) on CPU: bitsandbytes 4-bit / 8-bit, HQQ 4-bit, torchao int8 weight-only.

Per backend: a training step changes only Θ; outputs equal those of an fp32 model whose linear weights are the
dequantized ones (same adapter); save/load; `merge_and_unload` dequantizes → merges → requantizes (compared with the
unmerged model and with PEFT's LoRA merge on the same quantized model) or refuses naming the backend; unmerge restores
the quantized storage exactly; `interpret.cluster_vectors` read the dequantized W. LoFiT refuses quantized output
projections at `get_peft_model` time. `prepare_model_for_kbit_training` + gradient checkpointing train GIFT.

The tiny Llama has hidden size 128 (bnb's CPU 4-bit dequantization needs multiples of its block size, 64).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import resolve_quantization_backend
from torch import nn
from transformers import AutoModelForCausalLM

import peft_gift
from peft_gift._bnb_cpu import keep_standard_4bit_layout
from peft_gift.bench.tiny import tiny_causal_lm
from peft_gift.gift.layer import GiftLayer
from peft_gift.interpret.gift import cluster_vectors

pytestmark = pytest.mark.filterwarnings("ignore")

# bitsandbytes' CPU 4-bit path needs in/out features that are multiples of its block size (64)
LLAMA = dict(vocab_size=128, hidden_size=128, intermediate_size=256, head_dim=32)
TARGETS = ["q_proj", "v_proj", "o_proj"]
# fp32 reference vs quantized model with identical dequantized weights, max |Δ logits| measured: bnb4 0, hqq 0,
# torchao 6e-7 (they dequantize, then matmul in fp32), bnb8 9.7e-3 (its CPU matmul casts the input to fp16)
REFERENCE_ATOL = {"bnb4": 1e-5, "bnb8": 2e-2, "hqq": 1e-5, "torchao": 1e-5}
BACKEND_NAME = {"bnb4": "bnb 4bit", "bnb8": "bnb 8bit", "hqq": "hqq", "torchao": "torchao"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_causal_lm("llama", seed=0, **LLAMA)
    path = tmp_path_factory.mktemp("tiny_llama128")
    model.save_pretrained(path)
    return path


def _quantized_linears(model: nn.Module):
    for name, module in model.named_modules():
        if "layers." in name and resolve_quantization_backend(module, get_apply_tensor_subclass=lambda: None):
            yield name, module


def load_quantized(kind: str, path, **bnb_kwargs) -> nn.Module:
    """The tiny Llama with its decoder linears quantized by ``kind`` (lm_head stays fp32 for bnb/hqq/torchao alike)."""
    if kind in ("bnb4", "bnb8"):
        pytest.importorskip("bitsandbytes")
        from transformers import BitsAndBytesConfig

        if kind == "bnb4":
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_compute_dtype=torch.float32, **bnb_kwargs)
        else:
            config = BitsAndBytesConfig(load_in_8bit=True, **bnb_kwargs)
        return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, device_map="cpu").eval()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    if kind == "hqq":
        pytest.importorskip("hqq")
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        qcfg = BaseQuantizeConfig(nbits=4, group_size=64)
        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name, child in list(parent.named_children()):
                    if isinstance(child, nn.Linear):
                        setattr(parent, name, HQQLinear(child, qcfg, compute_dtype=torch.float32, device="cpu"))
        return model
    if kind == "torchao":
        pytest.importorskip("torchao")
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model.model.layers, Int8WeightOnlyConfig())
        return model
    raise ValueError(kind)


def dequantized_reference(kind: str, path) -> nn.Module:
    """An fp32 model whose decoder linear weights are the dequantized weights of ``load_quantized(kind)``."""
    quantized = load_quantized(kind, path)
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    modules = dict(reference.named_modules())
    for name, module in _quantized_linears(quantized):
        backend = resolve_quantization_backend(module, get_apply_tensor_subclass=lambda: None)
        modules[name].weight.data = backend.get_base_weight(module).detach().float().clone()
    return reference


def gift(model: nn.Module, seed: int = 1) -> nn.Module:
    """GIFT r=8 on q/v/o with a non-zero Θ (so merges and references have something to check)."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, peft_gift.GiftConfig(r=8, target_modules=TARGETS))
    with torch.no_grad():
        for param in peft_model.base_model.gift_psi.parameters():
            param.normal_(0.0, 0.05)
    return peft_model


def theta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "gift_phi" in k or "gift_psi" in k}


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def _plain(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor to compare (torchao's quantized tensors implement no aten.equal)."""
    value = value.detach()
    if type(value) is not torch.Tensor and type(value).__module__.startswith("torchao"):
        return value.dequantize().clone()
    return value.clone()


IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
KINDS = ["bnb4", "bnb8", "hqq", "torchao"]


@pytest.mark.parametrize("kind", KINDS)
def test_train_step_changes_only_theta_and_matches_dequantized_reference(kind, checkpoint):
    base = load_quantized(kind, checkpoint)
    # bitsandbytes' bf16 CPU inference layout of the 4-bit layers GIFT does not adapt differs from the fp32 reference
    # by ~1e-3 (AVX512-BF16 CPUs; peft_gift._bnb_cpu): compare in the standard layout
    keep_standard_4bit_layout(base)
    model = gift(base)
    assert all(isinstance(m, GiftLayer) and m.quantization_backend is not None
               for n, m in model.named_modules() if n.endswith(tuple(TARGETS)))
    before = {k: _plain(v) for k, v in model.state_dict().items()}
    theta0 = theta_state(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for n, p in model.named_parameters() if n in theta0}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    loss = model(IDS, labels=IDS).loss
    loss.backward()
    optimizer.step()
    model.eval()
    after = {k: _plain(v) for k, v in model.state_dict().items()}
    changed = {k for k in before if before[k].shape != after[k].shape or not torch.equal(before[k], after[k])}
    assert changed == set(theta0), changed
    assert all((after[k] - theta0[k]).abs().max() > 1e-4 for k in theta0)

    # the same adapter on the fp32 model with the dequantized weights gives the same outputs
    reference = gift(dequantized_reference(kind, checkpoint))
    reference.load_state_dict(theta_state(model), strict=False)
    expected, got = logits(reference, IDS), logits(model, IDS)
    with model.disable_adapter():
        effect = (logits(model, IDS) - got).abs().max()
    assert effect > 1e-2
    torch.testing.assert_close(got, expected, atol=REFERENCE_ATOL[kind], rtol=0)


# reason for slow: HQQ quantizes on load in pure torch (~10 s for this pair of loads on the shared 2-core box)
@pytest.mark.parametrize("kind", ["bnb4", "bnb8", pytest.param("hqq", marks=pytest.mark.slow), "torchao"])
def test_save_load_and_cluster_vectors_read_dequantized_weight(kind, checkpoint, tmp_path):
    model = gift(load_quantized(kind, checkpoint))
    out = logits(model, IDS)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(load_quantized(kind, checkpoint), tmp_path)
    torch.testing.assert_close(logits(loaded, IDS), out, atol=0, rtol=0)

    reference = gift(dequantized_reference(kind, checkpoint))
    reference.load_state_dict(theta_state(model), strict=False)
    got, expected = cluster_vectors(model), cluster_vectors(reference)
    assert got.keys() == expected.keys() and len(got) == 6
    for name in got:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5)


def _merge_error(model: nn.Module) -> tuple[float, float, torch.Tensor]:
    """(max |merged - unmerged| logits, max |adapter effect|, the unmerged logits)."""
    unmerged = logits(model, IDS)
    with model.disable_adapter():
        effect = float((logits(model, IDS) - unmerged).abs().max())
    model.merge_adapter()
    error = float((logits(model, IDS) - unmerged).abs().max())
    return error, effect, unmerged


# measured max|merged - unmerged| / max|adapter effect| on this tiny Llama: GIFT bnb4 0.31, bnb8 0.038, hqq 0.28 (the
# absolute error, 0.128 / 0.017 / 0.128, is that of requantizing any changed weight: LoRA's is 0.145 / 0.018 / 0.148).
MERGE_RATIO = {"bnb4": 0.5, "bnb8": 0.1, "hqq": 0.5}


@pytest.mark.parametrize("kind", ["bnb4", "bnb8", "hqq"])
def test_merge_requantizes_and_unmerge_restores_storage_exactly(kind, checkpoint):
    base = load_quantized(kind, checkpoint)
    keep_standard_4bit_layout(base)  # merge_and_unload gives the merged layers bitsandbytes' CPU repacking back
    model = gift(base)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    base_type = type(layer.get_base_layer())
    w0 = layer.get_base_weight().clone()
    c0 = cluster_vectors(model)
    error, effect, unmerged = _merge_error(model)
    assert effect > 1e-2 and error < MERGE_RATIO[kind] * effect, (error, effect)
    assert type(layer.get_base_layer()) is base_type  # still quantized
    assert not torch.equal(layer.get_base_weight(), w0)
    # while merged, W (interpret, get_delta_weight) is the original dequantized weight, not the requantized one
    torch.testing.assert_close(layer.unmerged_weight(), w0.double(), atol=0, rtol=0)
    for name, value in cluster_vectors(model).items():
        torch.testing.assert_close(value, c0[name], atol=0, rtol=0)
    model.unmerge_adapter()
    torch.testing.assert_close(layer.get_base_weight(), w0, atol=0, rtol=0)
    torch.testing.assert_close(logits(model, IDS), unmerged, atol=0, rtol=0)

    merged = model.merge_and_unload()
    assert not any(isinstance(m, GiftLayer) for m in merged.modules())
    q_proj = merged.model.layers[0].self_attn.q_proj
    assert type(q_proj) is base_type
    assert float((logits(merged, IDS) - unmerged).abs().max()) == pytest.approx(error, abs=1e-6)


@pytest.mark.slow  # reason: a reference measurement (4 quantized loads, ~8 s); the merge test above checks GIFT itself
@pytest.mark.parametrize("kind", ["bnb4", "bnb8"])
def test_gift_merge_error_is_comparable_to_lora(kind, checkpoint):
    """PEFT's LoRA merge on the same quantized model is the reference for what requantization costs."""
    gift_error, gift_effect, _ = _merge_error(gift(load_quantized(kind, checkpoint)))
    lora = get_peft_model(load_quantized(kind, checkpoint), LoraConfig(r=8, target_modules=TARGETS, init_lora_weights=False))
    lora_error, lora_effect, _ = _merge_error(lora)
    # both cost about one requantization of the merged weights (measured: bnb4 GIFT 0.128 vs LoRA 0.145, bnb8 0.017 vs
    # 0.018 max |Δ logits|); a merge reading the packed storage as W (the old bug) was off by ~3x the adapter's effect
    assert gift_effect > 1e-2 and lora_effect > 1e-2
    assert gift_error < 2 * lora_error, (gift_error, gift_effect, lora_error, lora_effect)


def test_torchao_merge_refuses_naming_backend(checkpoint):
    model = gift(load_quantized("torchao", checkpoint))
    before = logits(model, IDS)
    with pytest.raises(ValueError, match="torchao"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="torchao"):
        model.merge_adapter()
    torch.testing.assert_close(logits(model, IDS), before, atol=0, rtol=0)


def test_forward_only_backend_merge_refuses_naming_backend(checkpoint):
    """Backends PEFT cannot dequantize (GPTQ, AWQ, AQLM, EETQ, ...): a ValueError naming the backend."""
    from peft.utils.quantization_utils import ForwardOnlyQuantizationBackend

    model = gift(load_quantized("bnb4", checkpoint))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    layer.quantization_backend = ForwardOnlyQuantizationBackend("gptq")
    with pytest.raises(ValueError, match="gptq"):
        layer.merge()
    assert not layer.merged


@pytest.mark.parametrize("kind", ["bnb4", "bnb8", "torchao"])
def test_lofit_refuses_quantized_o_proj_at_get_peft_model(kind, checkpoint):
    config = peft_gift.LofitConfig(mode="scale", target_modules=["o_proj"])
    with pytest.raises(ValueError, match=r"LoFiT cannot adapt the quantized .*(Linear4bit|Linear8bitLt|Linear)"):
        get_peft_model(load_quantized(kind, checkpoint), config)


def test_lofit_trains_with_unquantized_o_proj_on_4bit_model(checkpoint):
    """The workaround the refusal names: keep o_proj unquantized (llm_int8_skip_modules)."""
    model = load_quantized("bnb4", checkpoint, llm_int8_skip_modules=["o_proj", "lm_head"])
    peft_model = get_peft_model(model, peft_gift.LofitConfig(mode="scale", target_modules=["o_proj"]))
    loss = peft_model(IDS, labels=IDS).loss
    loss.backward()
    grads = [p.grad for p in peft_model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_prepare_model_for_kbit_training_with_gradient_checkpointing(checkpoint):
    """QLoRA-style preparation + gradient checkpointing: Θ gets the same gradient as without checkpointing."""
    grads = []
    for checkpointing in (True, False):
        model = load_quantized("bnb4", checkpoint)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": True})
        peft_model = gift(model)
        assert peft_model.base_model.model.is_gradient_checkpointing is checkpointing
        peft_model.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model(IDS, labels=IDS).loss.backward()
        grads.append({k: p.grad.clone() for k, p in peft_model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for key in grads[0]:
        assert grads[0][key].abs().max() > 0
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5)


def test_copy_of_quantized_gift_model_keeps_backend(checkpoint):
    model = gift(load_quantized("bnb4", checkpoint))
    clone = copy.deepcopy(model)
    torch.testing.assert_close(logits(clone, IDS), logits(model, IDS), atol=0, rtol=0)


def test_recipe_quantization_option(checkpoint):
    """configs/qgift_smollm2_commonsense.yaml validates; bad `quantization` entries raise one-line ConfigErrors; the
    causal-LM task loads a 4-bit base from it."""
    from pathlib import Path

    from peft_gift.recipes.config import ConfigError, load_config, validate_config
    from peft_gift.recipes.tasks import MultipleChoice

    path = Path(__file__).resolve().parents[1] / "configs" / "qgift_smollm2_commonsense.yaml"
    cfg = validate_config(load_config(path))
    assert cfg["quantization"]["load_in_4bit"] is True and cfg["method"]["r"] == 64
    bad = [
        ({"load_in_4bit": True, "load_in_8bit": True}, "exactly one"),
        ({}, "exactly one"),
        ({"load_in_4bit": True, "bnb_4bit_quant_typo": "nf4"}, "bnb_4bit_quant_typo"),
        ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "float64"}, "bnb_4bit_compute_dtype"),
        ("4bit", "mapping"),
    ]
    for quant, message in bad:
        with pytest.raises(ConfigError, match=message):
            validate_config({**load_config(path), "quantization": quant})
    with pytest.raises(ConfigError, match="causal_lm_mc"):
        validate_config({**load_config(path), "task": "seq_cls"})

    task = MultipleChoice.__new__(MultipleChoice)
    task.model_path, task.quantization = str(checkpoint), cfg["quantization"]
    model = task.load_model()
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"


# ---- the training CLI (peft_gift.recipes) on a 4-bit base: before/after evaluation, training, save and reload


@pytest.fixture(scope="module")
def mc_job(checkpoint, tmp_path_factory):
    """The tiny Llama with a word tokenizer, and a memorisable multiple-choice dataset (thing → colour), on disk."""
    import shutil

    from datasets import Dataset, DatasetDict
    from tiny_models import word_tokenizer

    d = tmp_path_factory.mktemp("qcli")
    shutil.copytree(checkpoint, d / "llama")
    words = ["red", "blue", "green", "cat", "dog", "sky", "grass", "color", "what", "of", "Question", "Answer"]
    word_tokenizer(words + [":", "?", "\n"]).save_pretrained(d / "llama")
    colors = {"sky": "blue", "grass": "green", "cat": "red", "dog": "blue"}

    def split(n):
        return Dataset.from_list([{"prompt": f"Question: what color of {thing}?\nAnswer:", "choices": ["red", "blue", "green"],
                                   "label": ["red", "blue", "green"].index(colors[thing])}
                                  for thing in (list(colors)[i % 4] for i in range(n))])

    DatasetDict({"train": split(24), "validation": split(8)}).save_to_disk(d / "mc")
    return d


@pytest.mark.parametrize("method", [
    {"name": "gift", "r": 8, "target_modules": ["q_proj", "v_proj"]},
    {"name": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]},
], ids=["gift", "lora"])
def test_cli_trains_a_4bit_base_end_to_end(mc_job, tmp_path, method):
    """A job with a `quantization:` block trains through the CLI (its "before" evaluation once built a Trainer on the
    bare 4-bit base, which transformers refuses); "before" is the untrained base's metric, and the saved adapter on a
    freshly quantized base reproduces "after"."""
    import json

    import yaml

    from peft_gift import recipes
    from peft_gift.recipes import cli

    cfg = {"model": str(mc_job / "llama"), "task": "causal_lm_mc", "method": method,
           "quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"},
           "data": {"dataset": str(mc_job / "mc"), "max_length": 32},
           "training": {"num_train_epochs": 2, "per_device_train_batch_size": 8, "learning_rate": 3e-2,
                        "logging_steps": 100, "disable_tqdm": True}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert cli.main([str(tmp_path / "job.yaml"), "--output-dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["optimizer_steps"] == 6 and 0 < res["trainable_params"] < res["total_params"]

    job = recipes.prepare(res["config"])
    base = job.task.load_model()
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert recipes.evaluate(base, job) == res["before"]
    reloaded = PeftModel.from_pretrained(job.task.load_model(), str(out / "adapter"))
    assert recipes.evaluate(reloaded, job) == res["after"]
    ids = torch.tensor([job.train_enc[0]["input_ids"]])
    with reloaded.disable_adapter():
        untrained = logits(reloaded, ids)
    assert (logits(reloaded, ids) - untrained).abs().max() > 1e-3  # trained: the adapter is the identity at init


# ---- bitsandbytes' CPU inference layout (AVX512-BF16 CPUs; see peft_gift._bnb_cpu)


def _repack_for_cpu_inference(layer: nn.Module) -> None:
    """What bitsandbytes does to a Linear4bit weight at its first eval-mode forward without grad on an AVX512-BF16
    CPU (the conversion itself is plain torch and runs on any CPU)."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(layer.weight.data,
                                                                                 layer.weight.quant_state)




def _flags(model: nn.Module) -> dict[str, bool]:
    return {n: m.support_avx512bf16_for_cpu for n, m in model.named_modules() if hasattr(m, "support_avx512bf16_for_cpu")}


def _base_name(name: str) -> str:
    return name.replace("base_model.model.", "").replace(".base_layer", "")


@pytest.mark.parametrize("removal", ["unload", "merge_and_unload", "delete_adapter"])
def test_adapter_switches_bnb_cpu_repacking_off_in_its_model_until_its_last_adapter_is_removed(removal, checkpoint):
    """While the model carries a GIFT adapter, no 4-bit layer of it is repacked (the gradient must pass through every
    one of them, adapted or not); removing its last GIFT adapter gives every layer its previous flag back, and a model
    without our adapters is never touched."""
    base = load_quantized("bnb4", checkpoint)
    for module in base.modules():  # as on an AVX512-BF16 CPU, where bitsandbytes switches it on
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True
    base.model.layers[0].self_attn.q_proj.support_avx512bf16_for_cpu = False  # the user's own choice, kept
    before = _flags(base)
    assert len(before) == 14  # 2 decoder layers x (q, k, v, o, gate, up, down)
    other = load_quantized("bnb4", checkpoint)
    other_flags = _flags(other)
    model = get_peft_model(base, peft_gift.GiftConfig(r=4, target_modules=["q_proj"]))
    model.add_adapter("other", peft_gift.GiftConfig(r=4, target_modules=["q_proj", "k_proj"]))
    assert not any(_flags(model).values()) and _flags(other) == other_flags
    if removal == "delete_adapter":
        model.delete_adapter("other")
        assert not any(_flags(model).values())  # "default" is still there
        model.base_model.delete_adapter("default")  # the last one: layers without adapters
        assert {_base_name(n): v for n, v in _flags(model).items()} == before
        return
    restored = getattr(model, removal)()
    assert _flags(restored) == before
    assert not any("_peft_gift" in key for m in restored.modules() for key in vars(m))


def test_mixed_model_gives_the_repacking_flag_back_when_unloaded(checkpoint):
    base = load_quantized("bnb4", checkpoint)
    for module in base.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True
    model = get_peft_model(base, peft_gift.GiftConfig(r=4, target_modules=["q_proj"]), mixed=True)
    model.add_adapter("other", peft_gift.GiftConfig(r=4, target_modules=["k_proj"]))  # (mixed LoRA refuses 4-bit)
    assert not any(_flags(model).values())
    assert all(_flags(model.unload()).values())


@pytest.mark.parametrize("layer", ["self_attn.v_proj", "mlp.down_proj"], ids=["adapted", "not-adapted"])
def test_adapter_refuses_a_model_with_a_layer_already_repacked_for_cpu_inference(layer, checkpoint):
    """A repacked weight has bf16 scales (bitsandbytes' inverse leaves them so), passes no gradient to its input (the
    adapters before it would not train) and is misread by PEFT's dequantization: refuse, naming the layer, and change
    nothing. (LoFiT adapts unquantized output projections only: it refuses a 4-bit one.)"""
    base = load_quantized("bnb4", checkpoint)
    _repack_for_cpu_inference(base.model.layers[1].get_submodule(layer))
    flags = _flags(base)
    with pytest.raises(ValueError, match=rf"1 4-bit layers .*'model.layers.1.{layer}'.*Load the model again"):
        get_peft_model(base, peft_gift.GiftConfig(r=4))
    assert not any(isinstance(m, BaseTunerLayer) for m in base.modules()) and not hasattr(base, "peft_config")
    assert flags == _flags(base)


def test_peft_lora_reads_a_repacked_weight_as_the_standard_layout(checkpoint):
    """PEFT's behaviour, left as it is (bitsandbytes 0.50, PEFT 0.21): LoRA does not switch the repacking off, and its
    dequantization of a repacked weight (what merging reads) is far from W. If this starts failing, PEFT handles it."""
    from peft.utils.integrations import dequantize_bnb_weight

    model = get_peft_model(load_quantized("bnb4", checkpoint), LoraConfig(r=4, target_modules=["q_proj"]))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert layer.support_avx512bf16_for_cpu == __import__("bitsandbytes").functional.has_avx512bf16()
    w = dequantize_bnb_weight(layer.weight)
    _repack_for_cpu_inference(layer)
    assert float((dequantize_bnb_weight(layer.weight) - w).abs().max()) > 0.1 * float(w.abs().max())


def test_evaluate_then_train_a_4bit_gift_model_trains_every_layer(checkpoint):
    """On an AVX512-BF16 CPU an eval-mode forward repacks every 4-bit layer whose repacking is on, after which Θ of the
    first decoder layer got no gradient (it flows back through layer 2's 4-bit projections): with
    `keep_standard_4bit_layout` first, every layer trains. Elsewhere this checks the plain path."""
    torch.manual_seed(1)
    base = load_quantized("bnb4", checkpoint)
    keep_standard_4bit_layout(base)  # the documented way to evaluate, then train (the training CLI does it)
    model = get_peft_model(base, peft_gift.GiftConfig(r=8, sharing="layer"))
    with torch.no_grad():
        for param in model.base_model.gift_psi.parameters():
            param.normal_(0.0, 0.05)
    logits(model.eval(), IDS)  # eval, no grad: where bitsandbytes would repack
    assert not any(_repacked_any(m) for m in model.modules())
    model.train()
    model(IDS, labels=IDS).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().max() > 0 for g in grads.values()), grads.keys()


def _repacked_any(module: nn.Module) -> bool:
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))
