"""scripts/gpu_check.py (peft_gift/bench/gpu_check.py): the CPU smoke run (``--device cpu --tiny``) passes every
check that runs on the CPU and records the CUDA-only one as skipped; the checks record failures without stopping the
others, and detect a broken merge; the device-map split code runs with both halves on the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from peft_gift.bench.gpu_check import markdown, run_checks
from peft_gift.bench.gpu_checks import check_device_map_split, check_merge
from peft_gift.bench.gpu_setup import CHECKS, Setup, Skip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.py")
CUDA_ONLY = {"device_map_split"}


def _tiny_setup():
    return Setup("cpu", tiny=True, reps=1, warmup=0)


def test_cpu_tiny_run_passes_every_cpu_check(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, SCRIPT, "--device", "cpu", "--tiny", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = report["checks"]
    assert set(checks) == set(CHECKS)
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    for name, result in checks.items():
        if name in CUDA_ONLY:
            assert result["status"] == "skip" and "CUDA" in result["reason"], result
        elif name == "qgift_4bit" and not has_bnb:
            assert result["status"] == "skip", result
        else:
            assert result["status"] == "pass", (name, result)
    bench = checks["bench"]["methods"]
    assert list(bench) == ["floor", "gift", "lofit2", "lora"]
    # tiny Llama: GIFT r=8 on q/v = 2 groups · 2·8·128; LoFiT 1 head of 32; LoRA r=8 on q (128→128) and v (128→64)
    assert [bench[m]["trainable_params"] for m in bench] == [0, 4096, 32, 2 * (8 * 256 + 8 * 192)]
    assert all(r["step_ms_median"] > 0 and r["loss_finite"] and r["peak_mib"] is None for r in bench.values())
    assert checks["compile"]["graph_breaks"] == 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| merge | pass |" in table and "| device_map_split | skip |" in table
    assert "| gift | 4,096 |" in table


def test_failing_check_does_not_stop_the_others():
    def boom(setup):
        raise RuntimeError("broken on purpose")

    def skipped(setup):
        raise Skip("not here")

    checks = {"a": boom, "b": skipped, "c": lambda setup: {"passed": True, "x": 1.0},
              "d": lambda setup: {"passed": False}}
    results = run_checks(_tiny_setup(), list(checks), functions=checks, log=lambda *a: None)
    assert [results[n]["status"] for n in checks] == ["fail", "skip", "pass", "fail"]
    assert results["a"]["error"] == "RuntimeError: broken on purpose" and "boom" in results["a"]["traceback"]
    assert results["b"]["reason"] == "not here" and results["c"]["x"] == 1.0
    assert "| a | fail | RuntimeError: broken on purpose |" in markdown(
        {"machine": {}, "seconds": 0.0, "checks": results})


def test_merge_check_detects_a_merge_that_does_not_change_the_weights(monkeypatch):
    from peft.tuners.tuners_utils import check_adapters_to_merge

    from peft_gift.gift.layer import GiftLayer

    def no_op_merge(self, safe_merge=False, adapter_names=None):
        self.merged_adapters.extend(check_adapters_to_merge(self, adapter_names))

    monkeypatch.setattr(GiftLayer, "merge", no_op_merge)
    result = check_merge(_tiny_setup())
    gift = result["methods"]["gift"]
    assert not result["passed"] and not gift["passed"]
    assert gift["merged_vs_unmerged"] == pytest.approx(gift["adapter_effect"]) and gift["adapter_effect"] > 0.01
    assert result["methods"]["lofit2"]["passed"]


def test_device_map_split_code_runs_with_both_halves_on_cpu():
    """The CUDA check's code (dispatch_model with hooks, forward, backward to Θ, merge) with cpu for both devices."""
    result = check_device_map_split(_tiny_setup(), devices=("cpu", "cpu"))
    assert result["passed"], result
    assert result["theta_grads_nonzero"] and result["theta_devices"] == ["cpu"]
    assert result["logits_max_diff"] == 0.0 and result["merged_vs_unmerged"] < 1e-4
    assert torch.device(result["devices"][0]).type == "cpu"
