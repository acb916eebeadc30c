"""Smoke test of ``scripts/bench_accuracy.py --protocol released`` (peft_gift.bench.accuracy_lofit): LoFiT at its
released settings on one task, with a tiny random Llama on synthetic BoolQ-like data (seconds, no assets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peft_gift import recipes
from peft_gift.bench import accuracy_lofit as lofit_protocol


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    """The whole protocol once (--quick: 16 train / 16 dev / 16 test questions, seeds 0,1), with every Trainer's
    stage, learning rates, epochs, steps and warm-up recorded as it trains."""
    import torch
    from transformers import Trainer

    from peft_gift.bench import accuracy

    out = tmp_path_factory.mktemp("released")
    seen, train = [], Trainer.train

    def recording_train(self, *a, **kw):
        result = train(self, *a, **kw)
        seen.append({"stage": Path(self.args.output_dir).name, "lr": self.args.learning_rate,
                     "optimizer_lr": [g["initial_lr"] for g in self.optimizer.param_groups],
                     "first_step_factor": self.lr_scheduler.lr_lambdas[0](0), "epoch": self.state.epoch,
                     "steps": self.state.global_step})
        return result

    threads = torch.get_num_threads()
    Trainer.train = recording_train
    try:
        assert accuracy.main(["--protocol", "released", "--quick", "--out", str(out)]) == 0
    finally:
        Trainer.train = train
        torch.set_num_threads(threads)
    return out, json.loads((out / "accuracy.json").read_text()), seen


def test_per_stage_rates_epochs_and_no_warmup(protocol_run):
    out, report, seen = protocol_run
    s = lofit_protocol.DEFAULTS
    lofit_runs = [r for r in report["runs"] if r["method"] == "lofit_released"]
    stage1 = [t for t in seen if t["stage"] == "stage1"]
    assert len(stage1) == len(lofit_runs) > 0  # one stage 1 per LoFiT run, each at the fixed released rate
    for t in seen:
        assert t["first_step_factor"] == 1.0  # no warm-up: the first step runs at the full rate
        assert t["epoch"] == pytest.approx(s["epochs"])  # 5 epochs per stage (16 questions, batch 8: 10 steps)
        assert t["steps"] == s["epochs"] * 2
        assert set(t["optimizer_lr"]) == {t["lr"]}  # the optimizer's rate is the stage's rate
    assert {t["lr"] for t in stage1} == {s["stage1_lr"]}
    stage2_lrs = {t["lr"] for t in seen if t["stage"] == "stage2"}
    assert stage2_lrs == {r["lr"] for r in report["runs"] if r["method"].startswith("lofit")}
    assert stage2_lrs - {s["stage1_lr"]}  # stage 2 trains at rates of its own grid, not stage 1's
    for r in lofit_runs:  # the stored config says what trained: separate per-stage rates, epochs, no warm-up
        m, tr = r["config"]["method"], r["config"]["training"]
        assert m["stage1_training"]["learning_rate"] == s["stage1_lr"] and m["stage1"]["l1_lambda"] == 1e-3
        assert m["stage2_training"]["learning_rate"] == r["lr"]
        assert m["stage1_training"]["num_train_epochs"] == m["stage2_training"]["num_train_epochs"] == 5
        assert tr["warmup_steps"] == 0 and tr["max_steps"] == -1
        assert r["protocol"] == "released" and r["settings"]["stage1_lr"] == s["stage1_lr"]
    lora = [r for r in report["runs"] if r["method"] == "lora_r8_released"]
    assert lora and all(r["config"]["training"]["num_train_epochs"] == 5 for r in lora)


def test_rates_chosen_on_the_dev_part(protocol_run):
    out, report, _ = protocol_run
    rows = {r["method"]: r for r in report["aggregate"]["rows"]}
    assert set(rows) == set(lofit_protocol.RELEASED_METHODS)
    assert {r["task"] for r in rows.values()} == {"synthetic_boolq@released"}
    for method, grid in (("lofit_released", "stage2_grid"), ("lofit_random_released", "stage2_grid"),
                         ("lora_r8_released", "lora_grid")):
        r, dev = rows[method], dict(rows[method]["dev"])
        assert set(lofit_protocol.DEFAULTS[grid]) <= set(dev) and max(dev) <= lofit_protocol.LR_CAP
        assert r["lr"] == max(dev, key=lambda lr: (dev[lr], -lr))  # the best dev rate, ties to the smaller
        assert r["seeds"] == [0, 1]
    runs = report["runs"]
    dev_cfg = next(r["config"] for r in runs if r["phase"] == "dev")
    test_cfg = next(r["config"] for r in runs if r["phase"] == "test" and r["method"] != "zero_shot")
    assert dev_cfg["data"]["eval_split"] == "train" and test_cfg["data"]["eval_split"] == "validation"
    dev_job, test_job = recipes.prepare(dev_cfg), recipes.prepare(test_cfg)
    assert dev_job.train["prompt"] == test_job.train["prompt"]  # dev runs train on exactly the final training part
    assert not set(dev_job.eval["prompt"]) & set(dev_job.train["prompt"])  # and score on questions never trained on
    assert len(dev_job.eval) == 16 and len(test_job.eval) == 16


def test_diagnostics_and_paired_differences(protocol_run):
    out, report, _ = protocol_run
    rows = {r["method"]: r for r in report["aggregate"]["rows"]}
    lofit = rows["lofit_released"]
    assert set(lofit["stage1"]) == {"0", "1"}  # per seed (JSON keys)
    for d in lofit["stage1"].values():
        assert d["heads_scored"] == 8 and d["k"] == 2 and len(d["selected"]) == 2
        assert d["min"] <= d["median"] <= d["max"] and d["kth"] >= d["next"] and d["gap"] >= 0
    ov = lofit["head_overlap"]
    assert 0 <= ov["min"] <= ov["mean"] <= ov["max"] <= 1 and ov["pairs"] == 1
    assert lofit["chance_overlap"] == pytest.approx(lofit_protocol.chance_jaccard(2, 8))
    pairs = {(d["a"], d["b"]): d for d in report["aggregate"]["paired"]}
    assert set(pairs) == {("lofit_released", "lora_r8_released"), ("lofit_released", "lofit_random_released")}
    for (a, b), d in pairs.items():
        diffs = [rows[a]["accuracies"][s] - rows[b]["accuracies"][s] for s in ("0", "1")]
        assert d["n"] == 2 and d["mean"] == pytest.approx(sum(diffs) / 2) and d["low"] <= d["mean"] <= d["high"]
    md = (out / "accuracy.md").read_text()
    assert "Protocol `released`" in md and "Jaccard" in md and "lofit_released − lora_r8_released" in md
    # a second start resumes: nothing is trained again
    n = len((out / "accuracy_runs.jsonl").read_text().splitlines())
    from peft_gift.bench import accuracy

    assert accuracy.main(["--protocol", "released", "--quick", "--out", str(out), "--report-only"]) == 0
    assert accuracy.main(["--protocol", "released", "--quick", "--out", str(out)]) == 0
    assert len((out / "accuracy_runs.jsonl").read_text().splitlines()) == n


def test_settings_overrides_and_refusals(tmp_path):
    from peft_gift.bench import accuracy

    args = accuracy.build_parser().parse_args(["--protocol", "released", "--epochs", "2", "--stage1-lr", "1e-3"])
    args.quick = False
    s = lofit_protocol.settings_of(args)
    assert s["epochs"] == 2 and s["stage1_lr"] == 1e-3 and s["test_questions"] == 500 and s["dev_questions"] == 200
    assert lofit_protocol.task_label("boolq", s, False) == "boolq@released[stage1_lr=0.001,epochs=2]"
    assert lofit_protocol.task_label("boolq", dict(lofit_protocol.DEFAULTS), False) == "boolq@released"
    cfg = lofit_protocol.released_config("m", {}, None, None, 0, s)
    assert cfg["training"]["num_train_epochs"] == 2 and cfg["training"]["warmup_steps"] == 0
    for bad in (["--stage1-lr", "0.02"], ["--stage2-grid", "0.01,0.3"]):
        a = accuracy.build_parser().parse_args(["--protocol", "released", *bad])
        a.quick = False
        with pytest.raises(SystemExit):
            lofit_protocol.settings_of(a)
    with pytest.raises(SystemExit, match="one task"):
        accuracy.main(["--protocol", "released", "--quick", "--tasks", "boolq,siqa", "--out", str(tmp_path)])


def test_rate_choice_never_goes_above_the_cap():
    calls = []

    def rising(lr):  # the higher the better: the grid would be extended upwards
        calls.append(lr)
        return lr

    best, dev = lofit_protocol.choose_lr([5e-3, 1e-2, 2e-2], rising)
    assert best == max(dev) == 0.08 and all(lr <= lofit_protocol.LR_CAP for lr in calls)
    best, dev = lofit_protocol.choose_lr([2.5e-2, 5e-2, 1e-1], rising)
    assert best == 0.1 and max(calls) == 0.1  # at the cap: no extension past 1e-1
    best, dev = lofit_protocol.choose_lr([5e-3, 1e-2, 2e-2], lambda lr: {1e-2: 0.6}.get(lr, 0.5))
    assert best == 1e-2 and set(dev) == {5e-3, 1e-2, 2e-2}  # an interior best: no extension
