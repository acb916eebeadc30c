"""scripts/quant_memory.py (peft_gift/bench/quant_memory.py) on a tiny local Llama: each variant measured in its own
``python -m peft_gift.bench.quant_memory --variant ...`` process, the JSON and the markdown table written."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("bitsandbytes")

from peft_gift.bench import quant_memory  # noqa: E402
from peft_gift.bench.tiny import tiny_causal_lm  # noqa: E402


def test_both_variants_measured_in_fresh_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tiny_causal_lm("llama").save_pretrained(tmp_path / "tiny")  # hidden 64: whole 4-bit blocks
    argv = ["--model", str(tmp_path / "tiny"), "--out", str(tmp_path / "out"), "--batch", "1", "--seq", "8"]
    assert quant_memory.main(argv) == 0
    report = json.loads((tmp_path / "out" / "quant_memory.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == list(quant_memory.VARIANTS) and report["meta"]["command"].endswith(" ".join(argv))
    # GIFT r=64 on q/v: one Θ pair per module type, φ and ψ of 64·64 each; the same on either base
    assert rows["fp32"]["trainable_params"] == rows["nf4"]["trainable_params"] == 2 * 2 * 64 * 64
    assert rows["nf4"]["decoder_linear_weights_mib"] < rows["fp32"]["decoder_linear_weights_mib"] / 4
    table = (tmp_path / "out" / "quant_memory.md").read_text()
    assert table in capsys.readouterr().out and "| nf4 | " in table and "| 16,384 |" in table
