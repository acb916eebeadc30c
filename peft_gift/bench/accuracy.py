"""Accuracy per trainable parameter, controlled (``scripts/bench_accuracy.py``): learning rate chosen on a dev split
per method, then several seeds at equal optimizer steps; GIFT / LoFiT vs PEFT baselines, CPU-sized.

    python scripts/bench_accuracy.py --parts glue --tasks sst2           # the study in docs/results.md (resumable)
    python scripts/bench_accuracy.py --parts glue --methods ia3,full     # add methods to the same study
    python scripts/bench_accuracy.py --parts lm                          # Commonsense-8 with SmolLM2-135M
    python scripts/bench_accuracy.py --parts vision                      # DINOv2-S/14 on CIFAR-10
    python scripts/bench_accuracy.py --report-only                       # rebuild accuracy.json/.md/.png
    python scripts/bench_accuracy.py --reproduce --parts glue,lm,vision  # re-run one stored run per row, compare
    python scripts/bench_accuracy.py --quick --out /tmp/b                # tiny random models, synthetic data
    python scripts/bench_accuracy.py --protocol released --tasks boolq   # LoFiT at its released settings

A thin driver over the training CLI's pipeline (``peft_gift.recipes``): every run is a job config (model, task,
method from the recipe method registry, data, TrainingArguments, seed) that is prepared, trained and evaluated by
the same code as ``python scripts/train.py CONFIG.yaml``; the config is stored with each run, so any number can be
reproduced with the CLI. Runs are appended to ``<out>/accuracy_runs.jsonl`` and skipped when the script starts again
with the same settings, so an interrupted study resumes.

Protocol, per (task, method):
1. **dev**: for every learning rate of the method's grid (``LR_GRID``, 4 log-spaced values), train with seed 0 on
   the training part minus a dev part carved from it (``DEV_FRACTION``) and evaluate on that dev part. The test part
   is never used here.
2. the learning rate with the best dev accuracy is chosen (ties: the smaller one); when it sits at an end of the
   grid, the grid is extended by one more step beyond that end (at most ``EDGE_EXTENSIONS`` times);
3. **test**: train on the whole training part at that learning rate with every seed, evaluate on the test part.
(``--protocol released``: LoFiT at its authors' settings on one task, per-stage rates, epochs instead of steps; see
``peft_gift/bench/accuracy_lofit.py``.) Every method gets the same budget: ``--steps`` optimizer steps at ``--batch-size`` (LoFiT: half for stage 1, half for
stage 2; its random-heads control ``lofit_random`` trains exactly LoFiT's stage 2 on K random heads), AdamW, linear
warm-up over 10% then linear decay, no weight decay. The report gives mean ± std over seeds, the majority-class
accuracy of the test part, and the paired per-seed differences GIFT − LoRA, LoFiT − LoRA, LoFiT − random heads,
GIFT − LoReFT, LP-FT − plain and GIFT variant − plain GIFT of the same rank (other targets or init) with a 95%
t-interval; a task where every method stays within one point of its majority class is left out of summaries.
A classification head (new, random) is trained with the method, at the method's chosen learning rate.

``--reproduce`` checks that the tables hold for the code checked out now: for every row (part, task, method) it
trains and evaluates again the stored config of one test run (the smallest seed at the chosen rate) and records both
evaluation results and both library commits in ``<out>/accuracy_reproduced.jsonl``; the report lists them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from .. import recipes
from ..recipes.data import resolve_model
from .accuracy_jobs import (
    COMMONSENSE8,
    DEV_FRACTION,
    EDGE_EXTENSIONS,
    GLUE_MAXLEN,
    GLUE_METHODS,
    GLUE_SIZES,
    GLUE_SPLIT,
    GLUE_TASKS,
    LM_METHODS,
    LR_GRID,
    METHOD_NAMES,
    PART_MODEL,
    REPO,
    VISION_IMAGE,
    VISION_METHODS,
    VISION_SIZES,
    code_version,
    grid_key,
    job_config,
    key_of,
    load_runs,
    method_entry,
    run_job,
)
from .accuracy_lofit import run_released
from .accuracy_report import aggregate, markdown, report
from .tiny import quick_assets

logger = logging.getLogger(__name__)


def _part_plan(part: str, args, quick: dict | None) -> tuple[list[tuple[str, str, dict]], list[str], dict]:
    """([(task, model, data of the final train/test split)], methods, settings) of a part."""
    if part == "glue":
        tasks = args.tasks.split(",") if args.tasks else (["synthetic"] if args.quick else ["sst2"])
        plan = []
        for task in tasks:
            if args.quick:
                plan.append((task, quick["bert"], {"dataset": quick["cls"], "train_split": "validation",
                                                   "eval_split": "validation", "train_size": 64, "eval_size": 64,
                                                   "max_length": 32}))
                continue
            if task not in GLUE_SIZES:
                raise SystemExit(f"unknown task {task!r}; known: {', '.join(GLUE_TASKS)}")
            n_train, n_test = GLUE_SIZES[task]
            plan.append((task, "minilm-l6", {"dataset": task, "train_split": GLUE_SPLIT[task],
                                             "eval_split": GLUE_SPLIT[task], "train_size": n_train,
                                             "eval_size": n_test, "seed": 0, "max_length": GLUE_MAXLEN[task]}))
        methods = args.methods.split(",") if args.methods else list(GLUE_METHODS)
        return plan, methods, dict(task_name="seq_cls", bs=args.batch_size, eval_bs=128, steps=args.steps)
    if part == "vision":
        if args.quick:
            raise SystemExit("--quick has no vision part (no tiny image model); run it without --quick")
        n_train, n_test = VISION_SIZES
        plan = [("cifar10", "dinov2-s14", {"dataset": "cifar10", "train_split": "test", "eval_split": "test",
                                           "train_size": n_train, "eval_size": n_test, "seed": 0,
                                           "image_size": VISION_IMAGE})]
        methods = args.methods.split(",") if args.methods else list(VISION_METHODS)
        return plan, methods, dict(task_name="image_cls", bs=args.batch_size, eval_bs=64, steps=args.vision_steps)
    if args.quick:
        plan = [("synthetic_mc", quick["llama"], {"dataset": quick["mc"], "max_length": 32})]
    else:
        tasks = args.lm_tasks.split(",")
        plan = [("commonsense8" if tasks == list(COMMONSENSE8) else "+".join(tasks), "smollm2-135m",
                 {"dataset": tasks if len(tasks) > 1 else tasks[0], "train_split": "train",
                  "eval_split": "validation", "train_size": args.lm_train, "eval_size": args.lm_test, "seed": 0,
                  "max_length": 128})]
    methods = args.methods.split(",") if args.methods else list(LM_METHODS)
    return plan, methods, dict(task_name="causal_lm_mc", bs=8, eval_bs=16, steps=args.lm_steps)


def dev_data(data: dict, train_examples: int) -> dict:
    """The dev phase's data: the training part minus its last DEV_FRACTION for training, that remainder for
    evaluation (same shuffle, so the test part is untouched)."""
    n_dev = max(1, round(DEV_FRACTION * train_examples))
    if data.get("train_split", "train") == data.get("eval_split", "validation"):
        return {**data, "train_size": train_examples - n_dev, "eval_size": n_dev}
    # separate train/eval splits: carve train and dev from the training split itself
    return {**data, "eval_split": data.get("train_split", "train"), "train_size": train_examples - n_dev,
            "eval_size": n_dev}


def run_part(part: str, args, runs_path: Path) -> None:
    quick = quick_assets(runs_path.parent / "_quick_assets") if args.quick else None
    plan, methods, st = _part_plan(part, args, quick)
    seeds = [int(x) for x in args.seeds.split(",")]

    def run(task, model, data, method, phase, lr, seed):
        done = {key_of(r): r for r in load_runs(runs_path)}
        key = (part, task, method, phase, lr, seed, st["steps"])
        if key in done:
            return done[key]
        model_path = resolve_model(model)
        entry = method_entry(method, model_path, lr, seed, st["steps"])
        cfg = job_config(model, st["task_name"], data, entry, lr, st["steps"], st["bs"], st["eval_bs"], seed)
        t0 = time.time()
        rec = {"part": part, "task": task, "method": method, "phase": phase, "lr": lr, "seed": seed,
               "steps": st["steps"], "batch_size": st["bs"], "code": code_version(), "config": cfg,
               **run_job(cfg, train=entry is not None)}
        rec["wall_s"] = round(time.time() - t0, 1)
        logger.info("%s %s %s %s lr=%s seed=%s: %s (%s params, %s s)", part, task, method, phase, lr, seed,
                    rec["result"], f"{rec['trainable_params']:,}", rec["wall_s"])
        with runs_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec

    for task, model, data in plan:
        train_examples = data.get("train_size") or len(recipes.prepare(job_config(
            model, st["task_name"], data, None, None, 1, 1, 1, 0)).train)
        for method in methods:
            if method == "zero_shot":
                run(task, model, data, method, "test", None, 0)
                continue
            grid = LR_GRID[grid_key(method)]
            grid = list(grid[1:3] if args.quick else grid)
            ratio = grid[1] / grid[0]

            dev_part = dev_data(data, train_examples)

            def dev_accuracy(lr, task=task, model=model, dev_part=dev_part, method=method):
                return run(task, model, dev_part, method, "dev", lr, 0)["result"]["accuracy"]

            dev = {lr: dev_accuracy(lr) for lr in grid}
            for _ in range(EDGE_EXTENSIONS):  # the best rate at an end of the grid: try one more step beyond it
                best = max(dev, key=lambda lr: (dev[lr], -lr))
                if best not in (min(dev), max(dev)):
                    break
                nxt = float(f"{(best / ratio if best == min(dev) else best * ratio):.3g}")
                dev[nxt] = dev_accuracy(nxt)
            best = max(dev, key=lambda lr: (dev[lr], -lr))
            for seed in seeds:
                run(task, model, data, method, "test", best, seed)


def reproduce(args, parts: list[str], out: Path) -> None:
    """Re-run, with the code of this process, one stored test run per (part, task, method) of the selected parts /
    tasks / methods and append the comparison to ``<out>/accuracy_reproduced.jsonl`` (skipped when this commit
    already reproduced that run)."""
    runs = load_runs(out / "accuracy_runs.jsonl")
    path = out / "accuracy_reproduced.jsonl"
    done = {(r["part"], r["task"], r["method"], r["seed"], r["code_now"]) for r in load_runs(path)}
    tasks = args.tasks.split(",") if args.tasks else None
    methods = args.methods.split(",") if args.methods else None
    for row in aggregate(runs)["rows"]:
        if (row["part"] not in parts or (tasks and row["task"] not in tasks)
                or (methods and row["method"] not in methods)):
            continue
        key, seed = (row["part"], row["task"], row["method"]), min(row["seeds"])
        if (*key, seed, code_version()) in done:
            continue
        stored = next(r for r in reversed(runs) if (r["part"], r["task"], r["method"]) == key
                      and r.get("phase") == "test" and r["seed"] == seed and r["lr"] == row["lr"])
        t0 = time.time()
        now = run_job(stored["config"], train=row["method"] != "zero_shot")
        rec = {"part": row["part"], "task": row["task"], "method": row["method"], "seed": seed, "lr": row["lr"],
               "code": stored.get("code") or "unrecorded", "code_now": code_version(),
               "result": stored["result"], "result_now": now["result"], "identical": now["result"] == stored["result"],
               "wall_s": round(time.time() - t0, 1)}
        logger.info("reproduce %s %s %s seed=%s: stored %s (%s), now %s (%s)", row["part"], row["task"],
                    row["method"], seed, stored["result"], rec["code"], now["result"], rec["code_now"])
        with path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Accuracy per trainable parameter, controlled: learning rate chosen on a "
                                            "dev split per method, then several seeds at equal optimizer steps.")
    p.add_argument("--quick", action="store_true", help="tiny random models on synthetic data, seconds")
    p.add_argument("--parts", default="glue", help="glue (MiniLM sequence classification), lm (SmolLM2 "
                                                   "multiple choice), vision (DINOv2 on CIFAR-10); comma list")
    p.add_argument("--tasks", default=None, help=f"MiniLM tasks, of {', '.join(GLUE_TASKS)} (default sst2)")
    p.add_argument("--methods", default=None, help=f"default {','.join(GLUE_METHODS)}; any of {METHOD_NAMES}")
    p.add_argument("--seeds", default=None, help="comma list of test seeds (default 0,1,2,3,4; 0,1 with --quick)")
    p.add_argument("--steps", type=int, default=80, help="optimizer steps of every MiniLM run")
    p.add_argument("--vision-steps", type=int, default=40, help="optimizer steps of every DINOv2 run")
    p.add_argument("--batch-size", type=int, default=16, help="batch size of the MiniLM and DINOv2 runs")
    p.add_argument("--lm-tasks", default=",".join(COMMONSENSE8), help="SmolLM2 multiple-choice tasks, mixed")
    p.add_argument("--lm-train", type=int, default=None, help="training questions per LM task (train split; "
                                                                "default 40, 128 with --protocol released)")
    p.add_argument("--lm-test", type=int, default=None, help="test questions per LM task (validation split; "
                                                               "default 40, 500 with --protocol released)")
    p.add_argument("--protocol", choices=("study", "released"), default="study",
                   help="study: the controlled study above; released: LoFiT at its released settings on one "
                        "SmolLM2 task (--tasks, default boolq) against random heads, LoRA r=8 and the untrained "
                        "model (peft_gift/bench/accuracy_lofit.py)")
    p.add_argument("--stage1-lr", type=float, default=None, help="released: LoFiT stage-1 rate (default 5e-3, "
                                                                   "within the released 5e-4…5e-3)")
    p.add_argument("--stage2-grid", default=None, help="released: stage-2 rates tried on the dev part "
                                                       "(default 5e-3,1e-2,2e-2)")
    p.add_argument("--epochs", type=int, default=None, help="released: epochs per stage (default 5)")
    p.add_argument("--lm-dev", type=int, default=None, help="released: dev questions, cut from the train split "
                                                            "after the training part (default 200)")
    p.add_argument("--lm-steps", type=int, default=40, help="optimizer steps of every SmolLM2 run (batch 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1 with --quick)")
    p.add_argument("--out", default=str(REPO / "benchmarks"))
    p.add_argument("--plot", default=None, help="PNG path (default docs/img/accuracy_vs_params.png; "
                                                  "<out>/accuracy_vs_params.png with --quick)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--reproduce", action="store_true", help="re-run one stored test run per row of the selected "
                                                             "--parts/--tasks/--methods with this code and compare")
    return p


def main(argv=None) -> int:
    """``scripts/bench_accuracy.py``: runs (or resumes) the study, writes the report and prints its markdown."""
    p = build_parser()
    a = p.parse_args(argv)
    code_version()  # the code this process imported
    if a.threads or a.quick:
        torch.set_num_threads(a.threads or 1)
    a.seeds = a.seeds or ("0,1" if a.quick else "0,1,2,3,4")
    if a.quick:
        a.steps, a.lm_steps = min(a.steps, 8), min(a.lm_steps, 6)
    import warnings

    warnings.filterwarnings("ignore")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_path = Path(a.plot) if a.plot else (out / "accuracy_vs_params.png" if a.quick else
                                             REPO / "docs" / "img" / "accuracy_vs_params.png")
    command = "python scripts/bench_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    parts = [x for x in a.parts.split(",") if x]
    for part in parts:
        if part not in PART_MODEL:
            p.error(f"unknown part {part!r}; known: {', '.join(PART_MODEL)}")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the runs' own progress goes through logging
    if a.reproduce:
        reproduce(a, parts, out)
    elif a.protocol == "released" and not a.report_only:
        run_released(a, out / "accuracy_runs.jsonl")
    elif not a.report_only:
        a.lm_train, a.lm_test = a.lm_train or 40, a.lm_test or 40
        for part in parts:
            run_part(part, a, out / "accuracy_runs.jsonl")
    rep = report(out, plot_path, a.quick, command)
    print(markdown(rep))
    return 0
