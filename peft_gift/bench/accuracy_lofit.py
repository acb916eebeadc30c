"""LoFiT at its released settings (``scripts/bench_accuracy.py --protocol released``, issue 23).

    python scripts/bench_accuracy.py --protocol released --tasks boolq --threads 1   # 128 train / 200 dev / 500 test

The released LoFiT scripts (fc2869/lo-fit) train each stage for 5 epochs, without warm-up, at a rate per stage:
stage 1 (scales A_h on every head, L1 λ = 1e-3) at a rate of the released range 5e-4…5e-3, stage 2 (offsets v_h on
the top K heads by ‖A_h‖₂, from the base model) at a rate near 1e-2; one task per run. This protocol runs, on ONE
task of SmolLM2-135M multiple choice:

* ``zero_shot``: the untrained model;
* ``lofit_released``: stage 1 at ``--stage1-lr`` (fixed, inside the released range), stage 2's rate chosen on the dev
  part from ``--stage2-grid`` (default 5e-3, 1e-2, 2e-2; a best rate at an end of the grid extends it by one step,
  never above ``LR_CAP`` = 1e-1);
* ``lofit_random_released``: LoFiT's stage 2 alone (same epochs, same grid, chosen the same way) on K random heads;
* ``lora_r8_released``: LoRA r=8 (alpha 16) on q,v for the same number of epochs as one LoFiT stage, its rate chosen
  the same way from the study's LoRA grid.

Data: the task's train split shuffled with seed 0 gives the training part (its first ``--lm-train`` questions) and,
right after it, the dev part (``--lm-dev`` questions); the test part is ``--lm-test`` questions of the validation
split. Dev runs train on exactly the final training part (seed 0) and are scored on the dev part; the test part is
only used by the final runs (every seed, at the chosen rate). Every record carries ``protocol: "released"`` and the
``settings`` that produced it; rows live in the study's files under the task label ``<task>@released`` (plus any
setting that differs from the defaults), so they never mix with the short-budget rows of the Commonsense-8 study.
Per seed, LoFiT's stage-1 diagnostics are stored (spread of ‖A_h‖, the gap at K, the selected heads) and the report
gives the overlap (Jaccard) of the selected heads across seeds and the paired differences LoFiT − LoRA and
LoFiT − random heads with 95% t-intervals.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from ..recipes.data import resolve_model
from .accuracy_jobs import (
    EDGE_EXTENSIONS,
    LR_GRID,
    code_version,
    geometry,
    key_of,
    load_runs,
    lofit_k,
    random_heads,
    run_job,
)

logger = logging.getLogger(__name__)

PROTOCOL = "released"
RELEASED_METHODS = ("zero_shot", "lofit_released", "lofit_random_released", "lora_r8_released")
STAGE1_RANGE = (5e-4, 5e-3)  # the released stage-1 rates
DEFAULTS = {"stage1_lr": 5e-3, "l1_lambda": 1e-3, "stage2_grid": [5e-3, 1e-2, 2e-2],
            "lora_grid": list(LR_GRID["lora"]), "epochs": 5, "warmup_steps": 0, "batch_size": 8,
            "train_questions": 128, "dev_questions": 200, "test_questions": 500}
QUICK_SIZES = {"train_questions": 16, "dev_questions": 16, "test_questions": 16}
LR_CAP = 1e-1  # no rate above this, whatever the dev part says
# paired per-seed differences the report gives for this protocol
RELEASED_PAIRS = (("lofit_released", "lora_r8_released"), ("lofit_released", "lofit_random_released"))


def settings_of(args) -> dict:
    """The protocol's settings from the command line (defaults: ``DEFAULTS``; sizes ``QUICK_SIZES`` with --quick)."""
    s = {**DEFAULTS, **(QUICK_SIZES if args.quick else {})}
    for key, value in (("stage1_lr", args.stage1_lr), ("epochs", args.epochs), ("train_questions", args.lm_train),
                       ("dev_questions", args.lm_dev), ("test_questions", args.lm_test)):
        if value is not None:
            s[key] = value
    if args.stage2_grid:
        s["stage2_grid"] = sorted(float(x) for x in args.stage2_grid.split(","))
    if not STAGE1_RANGE[0] <= s["stage1_lr"] <= STAGE1_RANGE[1]:
        raise SystemExit(f"--stage1-lr {s['stage1_lr']:g} is outside the released range {STAGE1_RANGE[0]:g}…"
                         f"{STAGE1_RANGE[1]:g}")
    if max(s["stage2_grid"]) > LR_CAP:
        raise SystemExit(f"--stage2-grid goes above {LR_CAP:g}, past the released protocol")
    return s


def task_label(task: str, settings: dict, quick: bool) -> str:
    """``<task>@released``, plus every setting that differs from the defaults (so rows of other settings never
    mix with the default ones)."""
    ref = {**DEFAULTS, **(QUICK_SIZES if quick else {})}
    extra = [f"{k}={_short(v)}" for k, v in settings.items() if ref.get(k) != v]
    return f"{task}@{PROTOCOL}" + (f"[{','.join(extra)}]" if extra else "")


def _short(v) -> str:
    return "/".join(f"{x:g}" for x in v) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) else str(v)


def released_entry(method: str, model_path: str, lr: float, seed: int, s: dict) -> dict | None:
    """The recipe method mapping of one run of the protocol (``lr``: stage 2's rate for LoFiT, LoRA's rate)."""
    if method == "zero_shot":
        return None
    layers, heads, qv, _ = geometry(model_path)
    k = lofit_k(layers, heads)
    stage2 = {"stage2": {"init_std": 1e-3},
              "stage2_training": {"learning_rate": lr, "num_train_epochs": s["epochs"], "max_steps": -1}}
    if method == "lofit_released":
        return {"name": "lofit", "k": k, "stage1": {"l1_lambda": s["l1_lambda"], "init_std": 1e-3},
                "stage1_training": {"learning_rate": s["stage1_lr"], "num_train_epochs": s["epochs"],
                                    "max_steps": -1}, **stage2}
    if method == "lofit_random_released":
        return {"name": "lofit", "heads": random_heads(layers, heads, k, seed), **stage2}
    if method == "lora_r8_released":
        return {"name": "lora", "r": 8, "lora_alpha": 16, "target_modules": qv}
    raise ValueError(f"unknown method {method!r} of --protocol {PROTOCOL}; known: {', '.join(RELEASED_METHODS)}")


def released_config(model: str, data: dict, entry: dict | None, lr: float | None, seed: int, s: dict) -> dict:
    """The recipe config of one run: ``epochs`` epochs (per stage), no warm-up, linear decay, no weight decay."""
    return {"model": model, "task": "causal_lm_mc", "method": entry or {"name": "full"}, "data": data, "seed": seed,
            "training": {"num_train_epochs": s["epochs"], "max_steps": -1, "per_device_train_batch_size":
                         s["batch_size"], "per_device_eval_batch_size": 16, "learning_rate": lr or 1e-3,
                         "warmup_steps": s["warmup_steps"], "lr_scheduler_type": "linear", "weight_decay": 0.0,
                         "logging_steps": 1000, "disable_tqdm": True}}


def choose_lr(grid, dev_accuracy, cap: float = LR_CAP) -> tuple[float, dict]:
    """(best rate, {rate: dev accuracy}): every rate of ``grid``, then, while the best (ties: the smaller rate)
    sits at an end, one more step beyond that end (at most ``EDGE_EXTENSIONS`` times, never above ``cap``)."""
    grid = sorted(grid)
    dev = {lr: dev_accuracy(lr) for lr in grid}
    ratio = grid[1] / grid[0] if len(grid) > 1 else None
    for _ in range(EDGE_EXTENSIONS if ratio else 0):
        best = max(dev, key=lambda lr: (dev[lr], -lr))
        if best not in (min(dev), max(dev)):
            break
        nxt = float(f"{(best / ratio if best == min(dev) else best * ratio):.3g}")
        if nxt > cap or nxt in dev:
            break
        dev[nxt] = dev_accuracy(nxt)
    return max(dev, key=lambda lr: (dev[lr], -lr)), dev


def stage1_diagnostics(scores: list[list], heads: list[list], k: int) -> dict:
    """Spread of the stage-1 head norms ‖A_h‖₂, the gap at K (K-th vs (K+1)-th norm) and the selected heads."""
    norms = sorted((float(v) for *_, v in scores), reverse=True)
    nxt = norms[k] if k < len(norms) else None
    return {"heads_scored": len(norms), "k": k, "min": norms[-1], "median": float(np.median(norms)),
            "max": norms[0], "kth": norms[k - 1], "next": nxt,
            "gap": None if nxt is None else norms[k - 1] - nxt,
            "gap_rel": None if nxt is None or norms[k - 1] == 0 else (norms[k - 1] - nxt) / norms[k - 1],
            "selected": [list(h) for h in heads]}


def head_overlap(selected: dict) -> dict | None:
    """Jaccard overlap of the selected head sets across seeds ({seed: [[layer, head], ...]}): mean, min, max over
    pairs of seeds, and what two random K-of-N choices would give on average (K²/N shared heads)."""
    sets = {s: {tuple(h) for h in hs} for s, hs in selected.items()}
    pairs = [len(a & b) / len(a | b) for a, b in combinations(sets.values(), 2)]
    if not pairs:
        return None
    return {"mean": float(np.mean(pairs)), "min": min(pairs), "max": max(pairs), "pairs": len(pairs)}


def chance_jaccard(k: int, n: int) -> float:
    shared = k * k / n
    return shared / (2 * k - shared)


def quick_boolq(root: Path, vocab: int = 64) -> str:
    """A synthetic BoolQ-like dataset for the tiny word-level Llama: a passage of words then a question word;
    the answer is ``w5`` ("yes") when that word occurs in the passage, else ``w6`` ("no")."""
    from datasets import Dataset, DatasetDict

    g = random.Random(1)

    def row():
        passage = [g.randrange(10, vocab) for _ in range(8)]
        label = g.randrange(2)
        asked = g.choice(passage) if label == 0 else g.choice([w for w in range(10, vocab) if w not in passage])
        return {"prompt": " ".join(f"w{i}" for i in [*passage, 7, asked, 8]), "choices": ["w5", "w6"], "label": label}

    path = root / "boolq_like"
    if not path.is_dir():
        DatasetDict({"train": Dataset.from_list([row() for _ in range(64)]),
                     "validation": Dataset.from_list([row() for _ in range(32)])}).save_to_disk(path)
    return str(path)


def released_data(dataset: str, s: dict) -> tuple[dict, dict]:
    """(data of the final runs, data of the dev runs): the same training part; dev right after it in the train
    split, test from the validation split."""
    common = {"dataset": dataset, "train_split": "train", "train_size": s["train_questions"], "seed": 0,
              "max_length": 128}
    return ({**common, "eval_split": "validation", "eval_size": s["test_questions"]},
            {**common, "eval_split": "train", "eval_size": s["dev_questions"]})


def _key(rec: dict) -> tuple:
    return (*key_of(rec), json.dumps(rec.get("settings"), sort_keys=True))


def run_released(args, runs_path: Path) -> None:
    """Run (or resume) the protocol on the one task of ``--tasks``: the dev runs, the rate choices, every seed."""
    tasks = (args.tasks or ("synthetic_boolq" if args.quick else "boolq")).split(",")
    if len(tasks) != 1:
        raise SystemExit(f"--protocol {PROTOCOL} runs one task per run (LoFiT selects heads per task), got {tasks}")
    s = settings_of(args)
    if args.quick:
        from .tiny import quick_assets

        model, dataset = quick_assets(runs_path.parent / "_quick_assets")["llama"], quick_boolq(runs_path.parent)
    else:
        model, dataset = "smollm2-135m", tasks[0]
    label = task_label(tasks[0], s, args.quick)
    data, dev_part = released_data(dataset, s)
    seeds = [int(x) for x in args.seeds.split(",")]
    methods = args.methods.split(",") if args.methods else list(RELEASED_METHODS)
    for method in methods:
        if method not in RELEASED_METHODS:
            raise SystemExit(f"unknown method {method!r} of --protocol {PROTOCOL}; known: {', '.join(RELEASED_METHODS)}")
    steps = s["epochs"] * math.ceil(s["train_questions"] / s["batch_size"])  # optimizer steps per stage

    def run(method, data, phase, lr, seed):
        rec = {"part": "lm", "task": label, "method": method, "phase": phase, "lr": lr, "seed": seed, "steps": steps,
               "batch_size": s["batch_size"], "protocol": PROTOCOL, "settings": s}
        done = {_key(r): r for r in load_runs(runs_path) if r.get("protocol") == PROTOCOL}
        if _key(rec) in done:
            return done[_key(rec)]
        model_path = resolve_model(model)
        entry = released_entry(method, model_path, lr, seed, s)
        cfg = released_config(model, data, entry, lr, seed, s)
        t0 = time.time()
        rec.update(code=code_version(), config=cfg,
                   **run_job(cfg, train=entry is not None, stage1_scores=method == "lofit_released"))
        if "stage1_scores" in rec:
            rec["stage1"] = stage1_diagnostics(rec["stage1_scores"], rec["heads"], entry["k"])
        rec["wall_s"] = round(time.time() - t0, 1)
        logger.info("%s %s %s lr=%s seed=%s: %s (%s params, %s s)", label, method, phase, lr, seed, rec["result"],
                    f"{rec['trainable_params']:,}", rec["wall_s"])
        with runs_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec

    for method in methods:
        if method == "zero_shot":
            run(method, data, "test", None, 0)
            continue
        grid = s["lora_grid"] if method == "lora_r8_released" else s["stage2_grid"]
        best, _ = choose_lr(grid, lambda lr, m=method: run(m, dev_part, "dev", lr, 0)["result"]["accuracy"])
        for seed in seeds:
            run(method, data, "test", best, seed)


def released_row(rs: list[dict]) -> dict:
    """Fields a report row of this protocol adds: its settings and, for LoFiT, the stage-1 diagnostics per seed and
    the overlap of the selected heads across seeds (with what chance would give)."""
    extra = {"protocol": PROTOCOL, "settings": rs[0]["settings"]}
    diag = {r["seed"]: r["stage1"] for r in rs if "stage1" in r}
    if diag:
        extra["stage1"] = diag
        extra["head_overlap"] = head_overlap({seed: d["selected"] for seed, d in diag.items()})
        first = next(iter(diag.values()))
        extra["chance_overlap"] = chance_jaccard(first["k"], first["heads_scored"])
    return extra


def released_pairs(method: str, others: dict) -> list[dict]:
    """The rows (of the same task) a row of this protocol is paired with: ``RELEASED_PAIRS``."""
    return [others[b] for a, b in RELEASED_PAIRS if a == method and b in others]


def released_markdown(trow: list[dict]) -> list[str]:
    """The settings line and the stage-1 diagnostics of a task of this protocol (``[]`` for other tasks)."""
    if not trow or trow[0].get("protocol") != PROTOCOL:
        return []
    s = trow[0]["settings"]
    lines = [f"Protocol `{PROTOCOL}` (LoFiT's released settings): {s['epochs']} epochs per stage, batch "
             f"{s['batch_size']}, warm-up {s['warmup_steps']}, linear decay; LoFiT stage 1 at {s['stage1_lr']:g} "
             f"(L1 λ {s['l1_lambda']:g}), stage 2 rate chosen on {s['dev_questions']} dev questions from "
             f"{_short(s['stage2_grid'])} (never above {LR_CAP:g}), the random-heads control likewise (stage 2 "
             f"only); LoRA r=8 q,v for {s['epochs']} epochs, rate chosen from {_short(s['lora_grid'])}; "
             f"{s['train_questions']} training / {s['test_questions']} test questions.", ""]
    for r in trow:
        if "stage1" not in r:
            continue
        lines += ["LoFiT stage 1, ‖A_h‖₂ per seed (min / median / max; K-th vs (K+1)-th norm, relative gap):", ""]
        lines += [f"- seed {seed}: {d['min']:.3f} / {d['median']:.3f} / {d['max']:.3f}; K={d['k']}: {d['kth']:.3f} vs "
                  f"{d['next'] if d['next'] is None else round(d['next'], 3)} ({100 * (d['gap_rel'] or 0):.1f}%); "
                  f"heads {d['selected']}"
                  for seed, d in r["stage1"].items()]
        ov = r.get("head_overlap")
        if ov:
            lines += ["", f"Selected heads across seeds: Jaccard {ov['mean']:.2f} (min {ov['min']:.2f}, max "
                          f"{ov['max']:.2f}, {ov['pairs']} pairs); two random K-head choices: "
                          f"{r['chance_overlap']:.2f}."]
        lines.append("")
    return lines
