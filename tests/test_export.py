"""`peft_gift.export_lora`: a GIFT adapter (or a LoFiT offset adapter) written as a plain PEFT LoRA adapter that
PEFT loads without ``peft_gift`` and whose outputs equal the original's (fp32, atol 1e-5), on every architecture of
the workflow suite (GPT-2 Conv1D / fused c_attn, T5, ViT and BERT/RoBERTa heads via ``modules_to_save``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from test_workflows import ARCHS, make_config, make_inputs, perturb
from tiny_models import randomise_lofit, text_inputs, tiny_llama

from peft_gift import GiftConfig, LofitConfig, export_lora

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-5


def _outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _exported(tmp_path, arch, tuner="gift", **config_overrides):
    """A perturbed adapter of ``arch``, exported; returns (folder, expected outputs)."""
    config = make_config(tuner, arch, second=tuner == "lofit")
    for key, value in config_overrides.items():
        setattr(config, key, value)
    model = get_peft_model(ARCHS[arch].build(), config).eval()
    perturb(model)
    folder = tmp_path / f"{arch}-{tuner}"
    export_lora(model, str(folder))
    inputs = make_inputs(arch)
    torch.save(inputs, folder / "inputs.pt")
    torch.save(_outputs(model, inputs), folder / "expected.pt")
    return folder


_FRESH = r"""
import json, os, sys, torch
sys.path.insert(0, {tests!r})
import tiny_models
from peft import PeftModel
diffs = {{}}
for job in json.loads(sys.argv[1]):
    inputs = torch.load(os.path.join(job["folder"], "inputs.pt"))
    expected = torch.load(os.path.join(job["folder"], "expected.pt"))
    base = getattr(tiny_models, job["builder"])(seed=0)
    with torch.no_grad():
        plain = tiny_models.model_output(base, inputs)
    model = PeftModel.from_pretrained(base, job["folder"]).eval()
    got = tiny_models.model_output(model, inputs)
    key = job["arch"] + ":" + os.path.basename(job["folder"])
    diffs[key] = [float((got - expected).abs().max()), float((plain - expected).abs().max())]
assert "peft_gift" not in sys.modules, "peft_gift was imported"
print(json.dumps(diffs))
"""


def test_every_architecture_loads_with_plain_peft_in_a_fresh_process(tmp_path):
    jobs = []
    for arch in ARCHS:
        folder = _exported(tmp_path, arch)
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA", config
        jobs.append({"arch": arch, "builder": ARCHS[arch].builder, "folder": str(folder)})
    jobs.append({"arch": "llama", "builder": "tiny_llama", "folder": str(_exported(tmp_path, "llama", "lofit"))})
    code = _FRESH.format(tests=os.path.join(ROOT, "tests"))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    diffs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(diffs) == {f"{job['arch']}:{os.path.basename(job['folder'])}" for job in jobs}
    for key, (diff, effect) in diffs.items():
        assert diff <= ATOL, (key, diff)
        assert effect > 100 * ATOL, (key, effect)  # the adapter changes the outputs, so equality means something


def test_dropout_and_alpha_carry_over(tmp_path):
    model = get_peft_model(tiny_llama(), GiftConfig(r=4, alpha=8, dropout=0.1)).eval()
    perturb(model)
    config = export_lora(model, str(tmp_path))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    lora = PeftModel.from_pretrained(tiny_llama(), str(tmp_path)).eval()
    inputs = text_inputs(2, 8)
    torch.testing.assert_close(_outputs(lora, inputs), _outputs(model, inputs), atol=ATOL, rtol=0)


def test_one_of_several_adapters_and_a_merged_adapter(tmp_path):
    model = get_peft_model(tiny_llama(), GiftConfig(r=4)).eval()
    perturb(model)
    model.add_adapter("other", GiftConfig(r=2, target_modules=["q_proj", "o_proj"]))
    perturb(model, "other", seed=3)
    inputs = text_inputs(2, 8)
    expected = {}
    for name in ("default", "other"):
        model.set_adapter(name)
        expected[name] = _outputs(model, inputs)
    model.set_adapter("default")
    model.merge_adapter()  # exported from the original W, not the merged one
    for name in ("default", "other"):
        export_lora(model, str(tmp_path / name), adapter_name=name)
        lora = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / name)).eval()
        torch.testing.assert_close(_outputs(lora, inputs), expected[name], atol=ATOL, rtol=0)


def test_quantized_base_exports_b_from_the_dequantized_weight(tmp_path):
    from test_quantized import LLAMA, load_quantized  # a tiny Llama whose in/out features suit bnb's 4-bit blocks
    from transformers import AutoModelForCausalLM, LlamaConfig

    from peft_gift._bnb_cpu import keep_standard_4bit_layout

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA)).save_pretrained(tmp_path / "base")
    base = load_quantized("bnb4", tmp_path / "base")
    keep_standard_4bit_layout(base)  # the layers GIFT does not adapt too, as in the LoRA model below (bf16 otherwise)
    model = get_peft_model(base, GiftConfig(r=4)).eval()
    perturb(model)
    inputs = text_inputs(2, 8)
    expected = _outputs(model, inputs)
    export_lora(model, str(tmp_path / "lora"))
    base = load_quantized("bnb4", tmp_path / "base")
    keep_standard_4bit_layout(base)  # PEFT's LoRA leaves bitsandbytes' bf16 CPU repacking on (peft_gift._bnb_cpu)
    lora = PeftModel.from_pretrained(base, str(tmp_path / "lora")).eval()
    torch.testing.assert_close(_outputs(lora, inputs), expected, atol=1e-4, rtol=0)


def test_refusals(tmp_path):
    stage1 = get_peft_model(tiny_llama(), LofitConfig(mode="scale", init_std=0.1))
    with pytest.raises(ValueError, match="mode='scale'"):
        export_lora(stage1, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="no adapter 'nope'"):
        export_lora(stage1, str(tmp_path / "b"), adapter_name="nope")
    lora = get_peft_model(tiny_llama(), LoraConfig(r=2))
    with pytest.raises(ValueError, match="only GIFT and LoFiT"):
        export_lora(lora, str(tmp_path / "c"))
    with pytest.raises(TypeError, match="PeftModel"):
        export_lora(tiny_llama(), str(tmp_path / "d"))
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_lofit_offsets_with_a_merged_scale_adapter_on_the_same_layers_are_refused(tmp_path):
    """lora_bias = W_o·v needs the unscaled W_o: with a scale adapter merged into W_o's columns the export was off by
    0.19 where the offsets' effect is 0.62. Refused (naming the merged adapter and the fix) before anything is written;
    exact again after `unmerge_adapter`."""
    heads = [[0, 1], [1, 3]]
    model = get_peft_model(tiny_llama(), LofitConfig(mode="bias", heads=heads)).eval()
    model.add_adapter("scales", LofitConfig(mode="scale", heads=heads))
    randomise_lofit(model, std=0.5)
    inputs = text_inputs(2, 8)
    expected = _outputs(model, inputs)  # "default" (the offsets) alone
    model.merge_adapter(["scales"])
    with pytest.raises(ValueError, match=r"\['scales'\] are merged.*unmerge_adapter\(\)"):
        export_lora(model, str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()
    model.unmerge_adapter()
    export_lora(model, str(tmp_path / "lora"))
    lora = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "lora")).eval()
    torch.testing.assert_close(_outputs(lora, inputs), expected, atol=ATOL, rtol=0)
    assert (expected - _outputs(tiny_llama().eval(), inputs)).abs().max() > 100 * ATOL
