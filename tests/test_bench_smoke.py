"""Smoke tests of the benchmarks' --quick modes (peft_gift.bench, behind scripts/bench_*.py): tiny random models,
synthetic data, no assets."""

from __future__ import annotations

import json

import pytest

from peft_gift import recipes
from peft_gift.bench import accuracy_report, tiny


@pytest.fixture(scope="module")
def bench_speed():
    from peft_gift.bench import speed

    return speed


@pytest.fixture(scope="module")
def bench_accuracy():
    from peft_gift.bench import accuracy

    return accuracy


def test_speed_quick(tmp_path, bench_speed):
    import torch

    threads = torch.get_num_threads()
    try:
        assert bench_speed.main(["--quick", "--no-memory", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "speed.json").read_text())
    md = (tmp_path / "speed.md").read_text()
    assert report["quick"] is True and set(report["models"]) == {"lm", "enc"}
    for res in report["models"].values():
        methods = res["methods"]
        assert set(methods) == set(bench_speed.METHODS)
        assert methods["floor"]["trainable_params"] == 0
        assert methods["full"]["trainable_params"] == res["total_params"]
        # GIFT with one shared Θ (sharing="all") has half the parameters of per-module Θ on q,v (both d_in = hidden)
        assert methods["gift_all"]["trainable_params"] < methods["gift_module"]["trainable_params"]
        for r in methods.values():
            assert r["step"]["n"] == 2 and r["step"]["min_s"] <= r["step"]["median_s"] <= r["step"]["max_s"]
            assert r["step_vs_floor"] > 0
        for m in bench_speed.PEFT_METHODS:
            assert methods[m]["file_bytes"] > 0 and methods[m]["merge_s"] >= 0
            assert methods[m]["merge_max_abs_diff"] < 1e-3, m  # merged == unmerged outputs
            assert methods[m]["infer_merged_vs_base"] > 0 and methods[m]["infer_unmerged_vs_base"] > 0
        names = [t["target"] for t in res["targets"]]
        assert "gift_module step ≤ 1.10× LoRA" in names and "lofit_bias step ≤ 1.03× floor" in names
        assert res["model"] in md
    assert "| gift_module |" in md and "| target | measured | met |" in md


def test_speed_memory_child(bench_speed):
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        mem = bench_speed.memory_child("enc", "lora", quick=True)
    finally:
        torch.set_num_threads(threads)
    assert mem["peak_rss_mib"] > 0 and mem["peak_delta_mib"] >= 0


def test_accuracy_quick_follows_the_protocol(tmp_path, bench_accuracy):
    import torch

    threads = torch.get_num_threads()
    try:
        assert bench_accuracy.main(["--quick", "--parts", "glue,lm", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "accuracy.json").read_text())
    runs, agg = report["runs"], report["aggregate"]
    rows = {(r["part"], r["method"]): r for r in agg["rows"]}
    for m in bench_accuracy.GLUE_METHODS:
        assert ("glue", m) in rows, m
    for m in bench_accuracy.LM_METHODS:
        assert ("lm", m) in rows, m
    for r in agg["rows"]:
        assert 0.0 <= r["accuracy_mean"] <= 1.0
        if r["method"] == "zero_shot":
            continue
        grid = bench_accuracy.LR_GRID[bench_accuracy.grid_key(r["method"])][1:3]
        dev = dict(r["dev"])
        assert set(grid) <= set(dev) and len(dev) <= len(grid) + bench_accuracy.EDGE_EXTENSIONS  # grid (+ ends)
        assert r["lr"] == max(dev, key=lambda lr: (dev[lr], -lr))  # the best dev rate, ties to the smaller
        assert r["seeds"] == [0, 1]
    for run in runs:  # dev runs never see the test part: they train and evaluate inside the training part
        data, n_train = run["config"]["data"], 64 if run["part"] == "glue" else None
        if run["phase"] == "dev" and n_train:
            assert data["train_size"] + data["eval_size"] == n_train
        assert run["config"]["training"]["max_steps"] == run["steps"]  # equal optimizer steps for every method
    assert {(d["a"], d["b"]) for d in agg["paired"] if d["part"] == "glue"} == {("gift_r32", "lora"), ("lofit", "lora")}
    assert {(d["a"], d["b"]) for d in agg["paired"] if d["part"] == "lm"} == {
        ("gift_r64", "lora"), ("lofit", "lora"), ("lofit_random", "lora"), ("lofit", "lofit_random")}
    assert rows[("glue", "linear_probe")]["trainable_params"] < rows[("glue", "lora")]["trainable_params"]
    assert rows[("lm", "zero_shot")]["trainable_params"] == 0
    md = (tmp_path / "accuracy.md").read_text()
    assert "| gift_r32 |" in md and "| lofit_random |" in md and "95% t-interval" in md
    png = tmp_path / "accuracy_vs_params.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second start resumes: every run is already in the runs file, nothing is trained again
    n = len((tmp_path / "accuracy_runs.jsonl").read_text().splitlines())
    assert bench_accuracy.main(["--quick", "--parts", "glue,lm", "--out", str(tmp_path)]) == 0
    assert len((tmp_path / "accuracy_runs.jsonl").read_text().splitlines()) == n


def test_accuracy_reproduce(tmp_path, bench_accuracy):
    """--reproduce trains one stored test run per row again with this code and says whether every metric is
    identical; a stored result that this code does not give is reported as such."""
    import torch

    args = ["--quick", "--parts", "glue", "--methods", "gift_r32,lora", "--seeds", "0", "--out", str(tmp_path)]
    threads = torch.get_num_threads()
    try:
        assert bench_accuracy.main(args) == 0
        runs_path = tmp_path / "accuracy_runs.jsonl"
        runs = [json.loads(line) for line in runs_path.read_text().splitlines()]
        for r in runs:  # falsify LoRA's stored test result
            if r["method"] == "lora" and r["phase"] == "test":
                r["result"] = {**r["result"], "accuracy": r["result"]["accuracy"] / 2}
        runs_path.write_text("".join(json.dumps(r) + "\n" for r in runs))
        assert bench_accuracy.main([*args, "--reproduce"]) == 0
        assert bench_accuracy.main([*args, "--reproduce"]) == 0  # already reproduced by this code: skipped
    finally:
        torch.set_num_threads(threads)
    rep = [json.loads(line) for line in (tmp_path / "accuracy_reproduced.jsonl").read_text().splitlines()]
    assert [(r["method"], r["seed"], r["identical"]) for r in rep] == [("gift_r32", 0, True), ("lora", 0, False)]
    assert rep[0]["result_now"] == rep[0]["result"]
    assert rep[1]["result_now"]["accuracy"] == 2 * rep[1]["result"]["accuracy"]
    md = (tmp_path / "accuracy.md").read_text()
    assert "1 of 2 give the same test accuracy, 1 of 2 an identical result" in md
    assert "| glue | synthetic | lora | 0 |" in md and md.count("| yes |") == 1 and md.count("| no |") == 1


def test_paired_difference_interval(bench_accuracy):
    d = accuracy_report.paired({0: 0.80, 1: 0.82, 2: 0.78}, {0: 0.75, 1: 0.80, 2: 0.74, 3: 0.9})
    diffs = [0.05, 0.02, 0.04]  # seed 3 is not paired
    half = 4.303 * float(torch_std(diffs)) / 3 ** 0.5
    assert d["n"] == 3 and d["mean"] == pytest.approx(sum(diffs) / 3)
    assert d["low"] == pytest.approx(d["mean"] - half) and d["high"] == pytest.approx(d["mean"] + half)


def torch_std(values):
    import statistics

    return statistics.stdev(values)


@pytest.mark.parametrize("part", ["glue", "lm"])
def test_accuracy_benchmark_measures_what_the_cli_reports(tmp_path, bench_accuracy, part):
    """A benchmark run is a CLI job: the same config through scripts/train.py gives the same metrics, and the saved
    adapter re-evaluated by the benchmark's evaluator gives the CLI's numbers."""
    import yaml
    from peft import PeftModel

    from peft_gift.recipes import cli

    quick = tiny.quick_assets(tmp_path / "assets")
    if part == "glue":
        model, task, data = quick["bert"], "seq_cls", {"dataset": quick["cls"], "train_size": 32, "eval_size": 32,
                                                        "max_length": 32}
    else:
        model, task, data = quick["llama"], "causal_lm_mc", {"dataset": quick["mc"], "max_length": 32}
    lr = 1e-2
    entry = bench_accuracy.method_entry("lofit" if part == "lm" else "gift_r8", model, lr, seed=0, steps=4)
    cfg = bench_accuracy.job_config(model, task, data, entry, lr, steps=4, bs=8, eval_bs=16, seed=0)
    bench = bench_accuracy.run_job(cfg, train=True)

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main([str(path), "--output-dir", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert bench["result"] == pytest.approx(results["after"], rel=1e-4)  # same pipeline; float summation order only
    assert bench["trainable_params"] == results["trainable_params"]

    job = recipes.prepare(results["config"])
    reloaded = PeftModel.from_pretrained(job.task.load_model(), str(tmp_path / "out" / "adapter"))
    assert recipes.evaluate(reloaded, job) == pytest.approx(results["after"], rel=1e-5)


def test_accuracy_method_names(tmp_path, bench_accuracy):
    """gift_r<rank>[_o][_wegeft]: rank, targets (q,v or the attention output projection) and init from the name;
    a misspelt name is refused, not run as something else."""
    assets = tiny.quick_assets(tmp_path)
    bert, llama = assets["bert"], assets["llama"]
    assert bench_accuracy.method_entry("gift_r8", bert, 1e-3, 0, 8) == {
        "name": "gift", "r": 8, "sharing": "module", "target_modules": ["query", "value"]}
    assert bench_accuracy.method_entry("gift_r16_o", bert, 1e-3, 0, 8)["target_modules"] == ["attention.output.dense"]
    entry = bench_accuracy.method_entry("gift_r4_o_wegeft", llama, 1e-3, 0, 8)
    assert (entry["r"], entry["target_modules"], entry["init"]) == (4, ["o_proj"], "wegeft")
    assert bench_accuracy.method_entry("lora", llama, 1e-3, 0, 8) == {
        "name": "lora", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    assert bench_accuracy.method_entry("lora_r32", llama, 1e-3, 0, 8) == {
        "name": "lora", "r": 32, "lora_alpha": 64, "target_modules": ["q_proj", "v_proj"]}
    assert bench_accuracy.grid_key("gift_r4_o_wegeft_lpft") == "gift"
    assert [bench_accuracy.grid_key(m) for m in ("lora_r32_lpft", "lofit_random", "ia3")] == ["lora", "lofit", "ia3"]
    with pytest.raises(SystemExit):  # argparse error naming the known parts, also for --reproduce
        bench_accuracy.main(["--reproduce", "--parts", "visoin", "--out", str(tmp_path)])
    for bad in ("gift_r8_x", "gift_rx", "gift_r8_wegeft_o", "lora_r", "lora_32"):
        with pytest.raises(ValueError, match="gift_r<rank>"):
            bench_accuracy.method_entry(bad, bert, 1e-3, 0, 8)
        with pytest.raises(ValueError, match="gift_r<rank>"):  # refused before its learning-rate grid is looked up
            bench_accuracy.grid_key(bad)
    with pytest.raises(ValueError, match="gift_r<rank>"):
        bench_accuracy.grid_key("lora_x_lpft")


def test_reproduced_result_comparison(bench_accuracy):
    rec = {"identical": False, "result": {"accuracy": 0.5, "loss": 1.0},
           "result_now": {"accuracy": 0.5, "loss": 1.0 + 6e-8}}
    assert accuracy_report._sameness(rec) == "accuracy yes; other metrics within 6.0e-08"
    assert accuracy_report._sameness({**rec, "result_now": {"accuracy": 0.25, "loss": 1.0}}) == "no"
    assert accuracy_report._sameness({**rec, "identical": True}) == "yes"


def test_gift_and_lofit_are_paired_against_every_lora_rank(bench_accuracy):
    """With lora (r=8) and lora_r32 in one task, GIFT and LoFiT rows get a paired difference against each; LoRA
    ranks are not paired with each other and other methods against none."""
    def run(method, seed, acc):
        return {"part": "lm", "task": "t", "method": method, "phase": "test", "lr": 1e-3, "seed": seed,
                "result": {"accuracy": acc}, "trainable_params": 1, "head_params": 0, "train_examples": 8,
                "test_examples": 8, "majority": 0.25, "steps": 2}

    runs = [run(m, s, acc + 0.01 * s * (i + 1)) for i, (m, acc) in enumerate(
        [("gift_r16", 0.5), ("lora", 0.4), ("lora_r32", 0.45), ("lofit", 0.3), ("ia3", 0.42)]) for s in range(3)]
    pairs = {(d["a"], d["b"]): d["mean"] for d in accuracy_report.aggregate(runs)["paired"]}
    assert set(pairs) == {("gift_r16", "lora"), ("gift_r16", "lora_r32"), ("lofit", "lora"), ("lofit", "lora_r32")}
    assert pairs[("gift_r16", "lora_r32")] == pytest.approx(0.5 + 0.01 - (0.45 + 0.03), abs=1e-9)


def test_eval_speed_quick(tmp_path):
    from peft_gift.bench import eval_speed

    assert eval_speed.main(["--quick", "--out", str(tmp_path / "eval_speed")]) == 0
    res = json.loads((tmp_path / "eval_speed.json").read_text())
    assert res["max_abs_loglik_difference"] < 1e-4 and res["questions"] == 8
    assert res["train_batch_width"]["padded_to_longest"] < res["train_batch_width"]["padded_to_max_length"]
    assert "| eval s / question |" in (tmp_path / "eval_speed.md").read_text()
