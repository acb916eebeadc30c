"""The accuracy study's report: mean ± std per row, paired per-seed differences with 95% t-intervals, the markdown
tables and the accuracy-vs-parameters plot, rebuilt from the stored runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import recipes
from .accuracy_jobs import (
    DEV_FRACTION,
    GIFT_NAME,
    GLUE_MAXLEN,
    GLUE_SIZES,
    L1_LAMBDA,
    LORA_NAME,
    LPFT,
    LR_GRID,
    PART_MODEL,
    load_runs,
)
from .accuracy_lofit import released_markdown, released_pairs, released_row

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """Mean of the per-seed differences a − b over the seeds both have, with a 95% t-interval."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = np.array([a[s] - b[s] for s in seeds])
    half = T95.get(len(seeds) - 1, 1.96) * d.std(ddof=1) / np.sqrt(len(seeds))
    return {"mean": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half), "n": len(seeds)}


def aggregate(runs: list[dict]) -> dict:
    rows, diffs = [], []
    tests = [r for r in runs if r.get("phase") == "test"]
    for key in dict.fromkeys((r["part"], r["task"], r["method"]) for r in tests):
        part, task, method = key
        rs = [r for r in tests if (r["part"], r["task"], r["method"]) == key]
        lr = rs[-1]["lr"]  # the chosen rate (a later, resumed study with another choice appends new test runs)
        rs = [r for r in rs if r["lr"] == lr]
        accs = {r["seed"]: r["result"]["accuracy"] for r in rs}
        dev = sorted([r["lr"], r["result"]["accuracy"]] for r in runs  # [[lr, dev accuracy], ...]
                     if r.get("phase") == "dev" and (r["part"], r["task"], r["method"]) == key)
        row = {"part": part, "task": task, "method": method, "lr": lr, "dev": dev, "seeds": sorted(accs),
               "accuracies": accs, "accuracy_mean": float(np.mean(list(accs.values()))),
               "accuracy_std": float(np.std(list(accs.values()), ddof=1)) if len(accs) > 1 else 0.0,
               "trainable_params": int(np.median([r["trainable_params"] for r in rs])),
               "head_params": int(np.median([r["head_params"] for r in rs])),
               "train_examples": rs[0]["train_examples"], "test_examples": rs[0]["test_examples"],
               "majority": rs[0].get("majority"), "steps": rs[0]["steps"],
               "train_time_s": float(np.mean([r.get("train", {}).get("train_time_s", 0.0) for r in rs])),
               "wall_s": float(sum(r.get("wall_s", 0.0) for r in runs if (r["part"], r["task"], r["method"]) == key))}
        if "heads" in rs[0]:
            row["heads"] = {r["seed"]: r["heads"] for r in rs}
        if rs[0].get("protocol"):  # LoFiT's released settings (accuracy_lofit): settings, stage-1 diagnostics
            row.update(released_row(rs))
        sources = sorted(k[len("accuracy_"):] for k in rs[0]["result"] if k.startswith("accuracy_"))
        if sources:  # a mix of tasks: mean test accuracy per task
            row["per_task"] = {s: float(np.mean([r["result"][f"accuracy_{s}"] for r in rs])) for s in sources}
        rows.append(row)
    by = {(r["part"], r["task"], r["method"]): r for r in rows}
    for part, task in dict.fromkeys((r["part"], r["task"]) for r in rows):
        loras = [r for r in rows if (r["part"], r["task"]) == (part, task) and LORA_NAME.fullmatch(r["method"])]
        for r in [r for r in rows if (r["part"], r["task"]) == (part, task)]:
            pairs = list(loras) if r["method"].startswith(("gift", "lofit")) else []  # against every LoRA rank run
            if r["method"] == "lofit" and (part, task, "lofit_random") in by:  # LoFiT's localisation claim
                pairs.append(by[(part, task, "lofit_random")])
            loreft = by.get((part, task, "loreft"))  # GIFT's main comparison in its paper
            if loreft is not None and r["method"].startswith("gift"):
                pairs.append(loreft)
            gift = GIFT_NAME.fullmatch(r["method"])
            if gift and (gift.group(2) or gift.group(3)) and (part, task, f"gift_r{gift.group(1)}") in by:
                pairs.append(by[(part, task, f"gift_r{gift.group(1)}")])  # a GIFT variant against plain GIFT
            plain = by.get((part, task, r["method"].removesuffix(LPFT)))
            if r["method"].endswith(LPFT) and plain is not None:  # LP-FT against the plain recipe
                pairs.append(plain)
            pairs += released_pairs(r["method"], {m: by[(p, t, m)] for p, t, m in by if (p, t) == (part, task)})
            for other in pairs:
                d = paired(r["accuracies"], other["accuracies"])
                if d is not None:
                    diffs.append({"part": part, "task": task, "a": r["method"], "b": other["method"], **d})
    informative = {}
    for part, task in dict.fromkeys((r["part"], r["task"]) for r in rows):
        trained = [r for r in rows if (r["part"], r["task"]) == (part, task) and r["method"] != "zero_shot"]
        maj = trained[0]["majority"] if trained else None
        informative[f"{part}/{task}"] = maj is None or any(r["accuracy_mean"] > maj + 0.01 for r in trained)
    return {"rows": rows, "paired": diffs, "informative": informative}


def _pct(m, s=None):
    return f"{100 * m:.1f}" + ("" if s is None else f" ± {100 * s:.1f}")


def _sameness(rec: dict) -> str:
    """How a reproduced result compares with the stored one: "yes" (every metric identical), or the largest
    difference of another metric when the accuracy is the same, or "no"."""
    if rec["identical"]:
        return "yes"
    if rec["result_now"]["accuracy"] != rec["result"]["accuracy"]:
        return "no"
    diff = max(abs(rec["result_now"][k] - v) for k, v in rec["result"].items() if isinstance(v, float))
    return f"accuracy yes; other metrics within {diff:.1e}"


def markdown(report: dict) -> str:
    agg = report["aggregate"]
    rows = agg["rows"]
    lines = [f"# Accuracy study ({'quick' if report['quick'] else 'full'})", "",
             f"Machine: {report['machine']}. Command(s): {report['commands']}", "",
             "Accuracy in % on the test part, mean ± std over seeds at the learning rate chosen on the dev part "
             "(dev accuracy per grid rate in the last column); trainable parameters include the classification head "
             "where there is one (head size in brackets).", ""]
    for part, task in dict.fromkeys((r["part"], r["task"]) for r in rows):
        trow = [r for r in rows if (r["part"], r["task"]) == (part, task)]
        first = trow[0]
        maj = "—" if first["majority"] is None else _pct(first["majority"])
        note = "" if agg["informative"][f"{part}/{task}"] else " **(every method at the majority class: left out)**"
        budget = (f"{first['steps']} optimizer steps per stage (LoFiT: two stages)" if first.get("protocol") else
                  f"{first['steps']} optimizer steps for every method")
        lines += [f"## {task} ({PART_MODEL[part]}){note}", "",
                  f"{first['train_examples']} training / {first['test_examples']} test examples; {budget}; majority "
                  f"class {maj}%.", "", *released_markdown(trow),
                  "| method | trainable params (head) | chosen lr | test accuracy | seeds | dev accuracy per lr | "
                  "run cost (s) |", "|---|---|---|---|---|---|---|"]
        for r in sorted(trow, key=lambda r: r["trainable_params"]):
            lr = "—" if r["lr"] is None else f"{r['lr']:g}"
            dev = ", ".join(f"{k:g}: {100 * v:.1f}" for k, v in r["dev"]) or "—"
            lines.append(f"| {r['method']} | {r['trainable_params']:,} ({r['head_params']:,}) | {lr} | "
                         f"{_pct(r['accuracy_mean'], r['accuracy_std'])} | {len(r['seeds'])} | {dev} | "
                         f"{r['wall_s']:.0f} |")
        pd = [d for d in agg["paired"] if (d["part"], d["task"]) == (part, task)]
        if pd:
            lines += ["", "Paired per-seed differences (points, 95% t-interval):", ""]
            lines += [f"- {d['a']} − {d['b']}: {100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
                      f" over {d['n']} seeds" for d in pd]
        per_task = [r for r in sorted(trow, key=lambda r: r["trainable_params"]) if "per_task" in r]
        if per_task:
            names = list(per_task[0]["per_task"])
            lines += ["", "Test accuracy per task (%, mean over the seeds):", "",
                      "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            lines += [f"| {r['method']} | " + " | ".join(f"{100 * r['per_task'].get(n, float('nan')):.1f}" for n in names)
                      + " |" for r in per_task]
        heads = [r for r in trow if "heads" in r and "stage1" not in r]
        lines += [""] + [f"- {r['method']} heads: " + "; ".join(f"seed {s}: {h}" for s, h in r["heads"].items())
                         for r in heads]
        lines.append("")
    if report.get("reproduced"):
        rep = report["reproduced"]
        same_acc = sum(r["result_now"]["accuracy"] == r["result"]["accuracy"] for r in rep)
        lines += ["## Stored runs trained again (`--reproduce`)", "",
                  f"Stored test runs trained and evaluated again from their stored config with the library commit(s) "
                  f"{', '.join(sorted({r['code_now'] for r in rep}))}: {same_acc} of {len(rep)} give the same test "
                  f"accuracy, {sum(r['identical'] for r in rep)} of {len(rep)} an identical result in every metric "
                  f"and digit.", "",
                  "| part | task | method | seed | test accuracy stored (commit) | again (commit) | identical |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['part']} | {r['task']} | {r['method']} | {r['seed']} | {_pct(r['result']['accuracy'])} "
                  f"({r['code']}) | {_pct(r['result_now']['accuracy'])} ({r['code_now']}) | {_sameness(r)} |"
                  for r in rep]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["aggregate"]["rows"]
    groups = list(dict.fromkeys((r["part"], r["task"]) for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.8), squeeze=False)
    for ax, (part, task) in zip(axes[0], groups):
        trow = [r for r in rows if (r["part"], r["task"]) == (part, task)]
        for r in trow:
            x = max(r["trainable_params"], 1)
            ax.errorbar([x], [100 * r["accuracy_mean"]], yerr=[100 * r["accuracy_std"]], fmt="o", capsize=3,
                        color="C3" if r["method"].startswith(("gift", "lofit")) else "C0")
            ax.annotate(r["method"], (x, 100 * r["accuracy_mean"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        if trow[0]["majority"] is not None:
            ax.axhline(100 * trow[0]["majority"], color="grey", ls="--", lw=0.8, label="majority class")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel("test accuracy % (mean ± std over seeds)")
        ax.set_title(f"{PART_MODEL[part]}: {task}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(out: Path, plot_path: Path, quick: bool, command: str) -> dict:
    runs = load_runs(out / "accuracy_runs.jsonl")
    rep = {"quick": quick, "machine": recipes.describe_machine(recipes.machine_info()), "commands": f"`{command}`",
           "settings": {"sizes": GLUE_SIZES, "max_length": GLUE_MAXLEN, "dev_fraction": DEV_FRACTION,
                        "lr_grid": LR_GRID, "l1_lambda": L1_LAMBDA},
           "aggregate": aggregate(runs), "reproduced": load_runs(out / "accuracy_reproduced.jsonl"), "runs": runs}
    (out / "accuracy.json").write_text(json.dumps(rep, indent=2))
    (out / "accuracy.md").write_text(markdown(rep) + f"\n![accuracy vs parameters]({os.path.relpath(plot_path, out)})\n")
    if rep["aggregate"]["rows"]:
        plot(rep, plot_path)
    return rep
