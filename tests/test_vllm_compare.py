"""scripts/vllm_compare.py (peft_gift/bench/vllm_compare.py, vllm_prepare.py) without vLLM: the ``compare`` step on
synthetic outputs (its exit code gates scripts/check_vllm.sh), the ``prepare`` step on a tiny random Llama with a
word-level tokenizer, and the steps that run outside the project venv needing nothing of it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from peft_gift.bench.vllm_compare import compare, token_match
from peft_gift.bench.vllm_prepare import prepare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "vllm_compare.py")


def _write(folder, name, engine, dtype, outputs):
    (folder / f"{name}.json").write_text(json.dumps(
        {"engine": engine, "dtype": dtype, "max_new_tokens": 4, "versions": {"x": "1"}, "outputs": outputs}))


def _compare_cli(folder):
    """The step as check_vllm.sh runs it: a separate interpreter, stdlib only (``-S``: no site-packages, so neither
    peft_gift's dependencies nor an installed peft_gift)."""
    return subprocess.run([sys.executable, "-S", SCRIPT, "compare", "--out", str(folder)], capture_output=True,
                          text=True, timeout=60)


BASE = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]]
GIFT = [[1, 2, 30, 40], [5, 60, 7, 8], [9, 9, 9, 9]]


def test_match_counts_and_first_divergence():
    m = token_match(BASE, [[1, 2, 3, 4], [5, 6, 0, 8], [9, 9, 9]])
    assert m["exact"] == 1 and m["n"] == 3
    assert m["first_divergence"] == {"1": 2, "2": 3}  # a shorter sequence diverges where it ends
    assert (m["tokens_equal"], m["tokens"]) == (10, 12)


def test_compare_identical_outputs_exit_0(tmp_path):
    _write(tmp_path, "peft_float32", "transformers+peft", "float32", {"base": BASE, "gift": GIFT, "lora_peft": GIFT})
    _write(tmp_path, "vllm_float32", "vllm", "float32", {"base": BASE, "lora_vllm": GIFT})
    proc = _compare_cli(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    comps = json.loads((tmp_path / "summary.json").read_text())["comparisons"]
    assert comps["GIFT: vLLM LoRA float32 vs PEFT GIFT float32"]["exact"] == 3
    assert comps["base: vLLM float32 vs transformers float32"]["exact"] == 3
    assert comps["export check: PEFT LoRA export vs PEFT GIFT (float32)"]["exact"] == 3
    effect = [v for k, v in comps.items() if k.startswith("adapter effect")][0]
    assert effect["exact"] == 1 and effect["first_divergence"] == {"0": 2, "1": 1}
    assert "| GIFT: vLLM LoRA float32 vs PEFT GIFT float32 | 3/3 | 12/12 | – |" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("which", ["base", "lora_vllm"])
def test_compare_one_token_off_exit_1(tmp_path, which):
    _write(tmp_path, "peft_float32", "transformers+peft", "float32", {"base": BASE, "gift": GIFT, "lora_peft": GIFT})
    vllm = {"base": [list(s) for s in BASE], "lora_vllm": [list(s) for s in GIFT]}
    vllm[which][2][3] = 0
    _write(tmp_path, "vllm_float32", "vllm", "float32", vllm)
    proc = _compare_cli(tmp_path)
    assert proc.returncode == 1
    comps = json.loads((tmp_path / "summary.json").read_text())["comparisons"]
    label = "base: vLLM float32 vs transformers float32" if which == "base" else \
        "GIFT: vLLM LoRA float32 vs PEFT GIFT float32"
    assert comps[label]["exact"] == 2 and comps[label]["first_divergence"] == {"2": 3}


def test_compare_without_float32_vllm_run_exit_1(tmp_path):
    """Only float32 is gated: a bfloat16-only (or missing) vLLM run cannot pass; bf16 rows are still reported,
    also against the float32 reference."""
    _write(tmp_path, "peft_float32", "transformers+peft", "float32", {"base": BASE, "gift": GIFT, "lora_peft": GIFT})
    assert compare(argparse.Namespace(out=str(tmp_path))) == 1
    _write(tmp_path, "peft_bfloat16", "transformers+peft", "bfloat16", {"base": BASE, "gift": GIFT, "lora_peft": GIFT})
    _write(tmp_path, "vllm_bfloat16", "vllm", "bfloat16", {"base": BASE, "lora_vllm": GIFT})
    assert compare(argparse.Namespace(out=str(tmp_path))) == 1
    comps = json.loads((tmp_path / "summary.json").read_text())["comparisons"]
    assert comps["GIFT: vLLM LoRA bfloat16 vs PEFT GIFT float32"]["exact"] == 3
    assert comps["GIFT: vLLM LoRA bfloat16 vs PEFT GIFT bfloat16"]["exact"] == 3


def test_vllm_step_needs_only_vllm():
    """In vLLM's venv (no peft, no peft_gift) the ``vllm`` step gets as far as importing vLLM: here, with the standard
    library only (``-S``), that import is the first thing that fails."""
    proc = subprocess.run([sys.executable, "-S", SCRIPT, "vllm", "--out", "unused"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "No module named 'vllm'" in proc.stderr, proc.stderr[-2000:]


def _tiny_base(folder):
    """A tiny random Llama saved with a word-level tokenizer that has a chat template."""
    from tiny_models import tiny_llama
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for p in ("What is the capital of France?", "Write a haiku about the sea.")
                    for w in p.replace("?", " ?").replace(".", " .").split()} | {"user", "assistant"})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}<s> assistant{% endif %}")
    tiny_llama().save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


def test_prepare_on_tiny_llama_then_compare(tmp_path):
    base, out = tmp_path / "tiny", tmp_path / "out"
    _tiny_base(base)
    args = argparse.Namespace(out=str(out), base=str(base), n=2, r=4, std=0.5, seed=0, max_new_tokens=5,
                              dtypes="float32")
    prepare(args)
    assert (out / "base").resolve() == base.resolve()
    prompts = json.loads((out / "prompts.json").read_text())
    assert len(prompts["token_ids"]) == 2 and all(ids and 0 not in ids for ids in prompts["token_ids"])  # no <unk>
    cfg = json.loads((out / "lora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["base_model_name_or_path"] == str(base.resolve())
    assert sorted(m.rsplit(".", 1)[1] for m in cfg["target_modules"]) == ["q_proj"] * 2 + ["v_proj"] * 2  # 2 layers
    run = json.loads((out / "peft_float32.json").read_text())
    assert set(run["outputs"]) == {"base", "gift", "lora_peft"}
    assert all(len(s) == 5 for seqs in run["outputs"].values() for s in seqs)  # EOS does not stop generation
    assert run["outputs"]["lora_peft"] == run["outputs"]["gift"]  # the export, through plain PEFT
    # a vLLM run that reproduced PEFT exactly passes the gate
    _write(out, "vllm_float32", "vllm", "float32",
           {"base": run["outputs"]["base"], "lora_vllm": run["outputs"]["gift"]})
    assert compare(argparse.Namespace(out=str(out))) == 0


def test_prepare_step_runs_only_with_the_package(tmp_path, capsys):
    """The standalone module refuses ``prepare`` unless given the step (it must not import peft_gift itself);
    `vllm_prepare.main` is the whole command with it."""
    from peft_gift.bench import vllm_compare, vllm_prepare

    with pytest.raises(SystemExit) as exit_:
        vllm_compare.main(["prepare", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "vllm_prepare.main" in capsys.readouterr().err
    assert vllm_prepare.main(["compare", "--out", str(tmp_path)]) == 1  # no runs to compare: the gate fails
