"""Accuracy per trainable parameter on real data: GIFT vs LoFiT vs PEFT baselines, CPU-sized.

    python scripts/bench_accuracy.py                       # GLUE part (MiniLM) and LM part (SmolLM2-135M), then report
    python scripts/bench_accuracy.py --parts glue --seeds 0,1
    python scripts/bench_accuracy.py --parts lm
    python scripts/bench_accuracy.py --report-only         # rebuild accuracy.json/.md/.png from the runs file
    python scripts/bench_accuracy.py --quick --out /tmp/b  # tiny random models on synthetic data (smoke test)

A thin driver over the training CLI's pipeline (``peft_gift.recipes``): every run is a job config (model, task,
method from the recipe method registry, data, TrainingArguments, seed) that is prepared, trained and evaluated by
the same code as ``python scripts/train.py CONFIG.yaml`` — the config is stored with each run, so any number can be
reproduced with the CLI. Every finished run is appended to ``<out>/accuracy_runs.jsonl`` and skipped when the script
is started again with the same settings (so an interrupted study resumes). The report step aggregates the runs
(mean ± std over seeds) into ``accuracy.json``, ``accuracy.md`` and ``docs/img/accuracy_vs_params.png``.

GLUE part: all-MiniLM-L6-v2 (sequence classification, new linear head) on SST-2, RTE and MRPC. Only the GLUE
validation sets install offline, so each is shuffled (seed 0) and split into disjoint train / test parts of the
sizes in ``GLUE_SIZES``. Every method gets the same budget: the same examples, epochs, batch size, schedule (AdamW,
linear warm-up over 10% of the steps then linear decay, no weight decay) and seed; learning rates are fixed per
method (``LR``), GIFT's rank is the grid r ∈ {8, 32}. LoFiT: stage 1 learns a scale per head on all heads with an L1
penalty (1 epoch, extra), the top-K heads by ‖A‖ get offsets in stage 2 (the same budget as the other methods);
``lofit_random`` trains stage 2 on K random heads (localisation check).

LM part: SmolLM2-135M-Instruct on ARC-Easy multiple choice (answer-only SFT loss; accuracy = argmax of the summed
answer log-likelihood, acc_norm = the same per character), zero-shot vs GIFT vs LoRA vs LoFiT (selected heads) vs
LoFiT (random heads, same K).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft_gift import recipes  # noqa: E402
from peft_gift.recipes.data import resolve_model  # noqa: E402

GLUE_TASKS = ("sst2", "rte", "mrpc")
# (train, test) examples cut disjointly from the packaged validation split (872 / 277 / 408 rows)
GLUE_SIZES = {"sst2": (192, 256), "rte": (160, 117), "mrpc": (160, 200)}
GLUE_MAXLEN = {"sst2": 64, "rte": 128, "mrpc": 128}
GLUE_METHODS = ("gift_r8", "gift_r32", "lora", "vera", "ia3", "lofit", "lofit_random", "bitfit", "linear_probe",
                "lp_ft", "full")
LM_METHODS = ("zero_shot", "gift_r16", "lora", "lofit", "lofit_random")
# fixed learning rates (AdamW, linear warm-up 10% then linear decay, no weight decay)
LR = {"gift": 2e-3, "lora": 5e-3, "vera": 1e-2, "ia3": 1e-2, "lofit_scale": 5e-3, "lofit_bias": 1e-2,
      "bitfit": 5e-3, "linear_probe": 1e-2, "full": 1e-4}
LM_LR = {"gift": 1e-3, "lora": 1e-3, "lofit_scale": 5e-3, "lofit_bias": 1e-2}
L1_LAMBDA = 1e-3


def log(msg: str) -> None:
    print(f"[bench_accuracy {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# the jobs: one recipe config per (part, task, method, seed)


def geometry(model_path: str) -> tuple[int, int, list[str]]:
    """(layers, heads per layer, the q/v projection names) of a model directory."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    qv = ["q_proj", "v_proj"] if c.model_type in ("llama", "mistral", "qwen2", "gemma") else ["query", "value"]
    return c.num_hidden_layers, c.num_attention_heads, qv


def lofit_k(layers: int, heads: int) -> int:
    n = layers * heads
    return max(2, round(0.03 * n)) if n >= 200 else max(2, round(0.1 * n))


def random_heads(layers: int, heads: int, k: int, seed: int) -> list[list[int]]:
    flat = random.Random(10_000 + seed).sample(range(layers * heads), k)
    return [list(divmod(i, heads)) for i in sorted(flat)]


def method_entry(method: str, model_path: str, lrs: dict, seed: int) -> tuple[dict | None, float | None]:
    """``(method mapping of the recipe registry, learning rate)``; ``(None, None)`` for the untrained model."""
    layers, heads, qv = geometry(model_path)
    if method == "zero_shot":
        return None, None
    if method.startswith("gift_r"):
        return {"name": "gift", "r": int(method[6:]), "sharing": "module", "target_modules": qv}, lrs["gift"]
    if method == "lora":
        return {"name": "lora", "r": 8, "lora_alpha": 16, "target_modules": qv}, lrs["lora"]
    if method == "vera":
        return {"name": "vera", "r": 256, "target_modules": qv}, lrs["vera"]
    if method == "ia3":
        return {"name": "ia3"}, lrs["ia3"]
    k = lofit_k(layers, heads)
    stage2 = {"stage2": {"init_std": 1e-3}, "stage2_training": {"learning_rate": lrs["lofit_bias"]}}
    if method == "lofit":
        return {"name": "lofit", "k": k, "stage1": {"l1_lambda": L1_LAMBDA, "init_std": 1e-3},
                "stage1_training": {"learning_rate": lrs["lofit_scale"], "num_train_epochs": 1}, **stage2}, \
            lrs["lofit_bias"]
    if method == "lofit_random":
        return {"name": "lofit", "heads": random_heads(layers, heads, k, seed), **stage2}, lrs["lofit_bias"]
    if method == "lp_ft":
        return {"name": "lp_ft", "stage1_training": {"learning_rate": lrs["linear_probe"]},
                "stage2_training": {"learning_rate": lrs["full"]}}, lrs["full"]
    if method in ("bitfit", "linear_probe", "full"):
        return {"name": method}, lrs[method]
    raise ValueError(f"unknown method {method!r}")


def job_config(model_path: str, task: str, data: dict, method: dict | None, lr: float | None, epochs: int, bs: int,
               eval_bs: int, seed: int) -> dict:
    """The recipe config of one run: what ``python scripts/train.py`` would be given to reproduce it."""
    return {"model": model_path, "task": task, "method": method or {"name": "full"}, "data": data, "seed": seed,
            "training": {"num_train_epochs": epochs, "per_device_train_batch_size": bs,
                         "per_device_eval_batch_size": eval_bs, "learning_rate": lr or 1e-3, "warmup_steps": 0.1,
                         "lr_scheduler_type": "linear", "weight_decay": 0.0, "logging_steps": 1000,
                         "disable_tqdm": True}}


def run_job(cfg: dict, train: bool) -> dict:
    """Prepare, (train,) evaluate through the recipe pipeline; the record fields the report aggregates."""
    from transformers import set_seed

    set_seed(cfg["seed"])
    job = recipes.prepare(cfg)
    set_seed(cfg["seed"])
    model = job.task.load_model()
    rec: dict = {}
    if train:
        model, stats = recipes.fit(model, job, out=None, log=log)
        rec["train"] = {"train_time_s": round(stats["train_time_s"], 1)}
        if "stages" in stats:
            rec["stages"] = stats["stages"]
            if "heads" in stats["stages"].get("stage2", {}):
                rec["heads"] = stats["stages"]["stage2"]["heads"]
        rec.update(recipes.param_counts(model))
    else:
        rec.update(recipes.param_counts(model) | {"trainable_params": 0, "head_params": 0})
    rec["result"] = recipes.evaluate(model, job)
    rec["train_examples"], rec["test_examples"] = len(job.train), len(job.eval)
    return rec


# ----------------------------------------------------------------------------------------------------------------
# quick mode: tiny random models and synthetic data written to disk, run through the same pipeline


def _word_tokenizer(vocab_size: int, bert: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "</s>": 4, **{f"w{i}": i for i in range(5, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bert:
        from tokenizers.processors import TemplateProcessing

        tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>",
                                   model_input_names=["input_ids", "attention_mask"])


def quick_assets(root: Path, vocab: int = 64) -> dict:
    """Tiny BERT / Llama checkpoints with word tokenizers and synthetic datasets under ``root``."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, LlamaConfig

    g = random.Random(0)
    torch.manual_seed(0)
    bert = AutoModelForSequenceClassification.from_config(BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, num_labels=2))
    bert.save_pretrained(root / "bert")
    _word_tokenizer(vocab, bert=True).save_pretrained(root / "bert")
    llama = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=4))
    llama.save_pretrained(root / "llama")
    _word_tokenizer(vocab, bert=False).save_pretrained(root / "llama")

    def cls_row():  # label = whether word w5 occurs more often than w6 (learnable by a tiny model)
        ids = [g.randrange(7, vocab) for _ in range(g.randrange(6, 14))]
        for _ in range(g.randrange(0, 4)):
            ids[g.randrange(len(ids))] = g.choice((5, 6))
        return {"sentence": " ".join(f"w{i}" for i in ids), "label": int(ids.count(5) > ids.count(6))}

    def mc_row():  # the prompt ends with word k; the right choice starts with word k+1
        k, label = g.randrange(10, vocab - 2), g.randrange(3)
        choices = [[g.randrange(10, vocab), g.randrange(10, vocab)] for _ in range(3)]
        choices[label][0] = k + 1
        prompt = [g.randrange(10, vocab) for _ in range(5)] + [k]
        return {"prompt": " ".join(f"w{i}" for i in prompt), "choices": [" ".join(f"w{i}" for i in c) for c in choices],
                "label": label}

    DatasetDict({"validation": Dataset.from_list([cls_row() for _ in range(128)])}).save_to_disk(root / "cls")
    DatasetDict({"train": Dataset.from_list([mc_row() for _ in range(48)]),
                 "validation": Dataset.from_list([mc_row() for _ in range(32)])}).save_to_disk(root / "mc")
    return {"bert": str(root / "bert"), "llama": str(root / "llama"), "cls": str(root / "cls"), "mc": str(root / "mc")}


# ----------------------------------------------------------------------------------------------------------------
# one part


def key_of(rec: dict) -> tuple:
    return (rec["part"], rec["task"], rec["method"], rec["seed"], rec["train_examples"], rec["epochs"])


def load_runs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_part(part: str, args, runs_path: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    done = {key_of(r) for r in load_runs(runs_path)}
    seeds = [int(s) for s in args.seeds.split(",")]
    quick = quick_assets(runs_path.parent / "_quick_assets") if args.quick else None
    if part == "glue":
        tasks = args.tasks.split(",") if args.tasks else (["synthetic"] if args.quick else list(GLUE_TASKS))
        methods = args.methods.split(",") if args.methods else list(GLUE_METHODS)
        plan = []
        for task in tasks:
            if args.quick:
                model, data = quick["bert"], {"dataset": quick["cls"], "train_split": "validation",
                                              "eval_split": "validation", "train_size": 64, "eval_size": 64,
                                              "max_length": 32}
            else:
                model = "minilm-l6"
                n_train, n_test = GLUE_SIZES[task]
                data = {"dataset": task, "train_split": "validation", "eval_split": "validation",
                        "train_size": n_train, "eval_size": n_test, "seed": 0, "max_length": GLUE_MAXLEN[task]}
            plan += [(task, model, data, seed, m) for seed in seeds for m in methods]
        settings = dict(task_name="seq_cls", epochs=args.epochs, bs=args.batch_size, eval_bs=64, lrs=LR)
    else:
        methods = args.methods.split(",") if args.methods else list(LM_METHODS)
        if args.quick:
            task, model, data = "synthetic_mc", quick["llama"], {"dataset": quick["mc"], "max_length": 32}
        else:
            task, model = "arc_easy", "smollm2-135m"
            data = {"dataset": "arc_easy", "train_split": "train", "eval_split": "validation",
                    "train_size": args.lm_train, "eval_size": args.lm_test, "seed": 0, "max_length": 128}
        plan = [(task, model, data, seed, m) for seed in seeds[: args.lm_seeds] for m in methods]
        settings = dict(task_name="causal_lm_mc", epochs=args.lm_epochs, bs=8, eval_bs=16, lrs=LM_LR)
    for task, model, data, seed, method in plan:
        n_train = data.get("train_size") or (48 if args.quick else None)
        if (part, task, method, seed, n_train, settings["epochs"]) in done:
            continue
        model_path = resolve_model(model)
        entry, lr = method_entry(method, model_path, settings["lrs"], seed)
        cfg = job_config(model, settings["task_name"], data, entry, lr, settings["epochs"], settings["bs"],
                         settings["eval_bs"], seed)
        t0 = time.time()
        rec = {"part": part, "task": task, "method": method, "seed": seed, "epochs": settings["epochs"],
               "batch_size": settings["bs"], "lr": lr, "config": cfg, **run_job(cfg, train=entry is not None)}
        if entry is not None and entry["name"] == "lofit":
            rec["k"] = len(rec.get("heads", []))
        rec["wall_s"] = round(time.time() - t0, 1)
        log(f"{part} {task} seed {seed} {method}: {rec['result']} ({rec['trainable_params']:,} params, "
            f"{rec['wall_s']} s)")
        with runs_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# report


def aggregate(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["part"], r["task"], r["method"]), []).append(r)
    rows = []
    for (part, task, method), rs in groups.items():
        accs = [r["result"]["accuracy"] for r in rs]
        row = {"part": part, "task": task, "method": method, "seeds": sorted(r["seed"] for r in rs),
               "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)) if len(accs) > 1 else 0.0,
               "accuracies": accs, "trainable_params": int(np.median([r["trainable_params"] for r in rs])),
               "head_params": int(np.median([r["head_params"] for r in rs])),
               "train_examples": rs[0]["train_examples"], "test_examples": rs[0]["test_examples"],
               "epochs": rs[0]["epochs"], "lr": rs[0]["lr"],
               "train_time_s": float(np.mean([r.get("train", {}).get("train_time_s", 0.0) for r in rs]))}
        if "f1" in rs[0]["result"]:
            row["f1_mean"] = float(np.mean([r["result"]["f1"] for r in rs]))
        if "acc_norm" in rs[0]["result"]:
            row["acc_norm_mean"] = float(np.mean([r["result"]["acc_norm"] for r in rs]))
        if "heads" in rs[0]:
            row["heads"] = {r["seed"]: r["heads"] for r in rs}
        rows.append(row)
    return rows


def _pct(m, s=None):
    return f"{100 * m:.1f}" + ("" if s is None else f" ± {100 * s:.1f}")


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [f"# Accuracy benchmark ({'quick' if report['quick'] else 'full'})", "",
             f"Machine: {report['machine']}. Command(s): {report['commands']}", "",
             "Accuracy in % on the held-out part, mean ± std over seeds; trainable parameters include the "
             "classification head where there is one (head size in brackets).", ""]
    for part in ("glue", "lm"):
        prow = [r for r in rows if r["part"] == part]
        if not prow:
            continue
        tasks = list(dict.fromkeys(r["task"] for r in prow))
        methods = list(dict.fromkeys(r["method"] for r in prow))
        by = {(r["task"], r["method"]): r for r in prow}
        lines += [f"## {'MiniLM-L6 sequence classification' if part == 'glue' else 'SmolLM2-135M multiple choice'}", ""]
        sizes = ", ".join(f"{t} {by[(t, methods[0])]['train_examples']}/{by[(t, methods[0])]['test_examples']}"
                          for t in tasks if (t, methods[0]) in by)
        lines += [f"train/test examples: {sizes}; epochs {prow[0]['epochs']}.", ""]
        head = "| method | trainable params (head) | lr | " + " | ".join(tasks) + (" | mean |" if len(tasks) > 1 else " |")
        lines += [head, "|" + "---|" * (3 + len(tasks) + (1 if len(tasks) > 1 else 0))]
        for m in methods:
            cells, means = [], []
            ref = next(by[(t, m)] for t in tasks if (t, m) in by)
            for t in tasks:
                r = by.get((t, m))
                if r is None:
                    cells.append("—")
                    continue
                extra = f" (F1 {100 * r['f1_mean']:.1f})" if t == "mrpc" and "f1_mean" in r else ""
                cells.append(_pct(r["accuracy_mean"], r["accuracy_std"]) + f" [n={len(r['seeds'])}]" + extra)
                means.append(r["accuracy_mean"])
            lr = "—" if ref["lr"] is None else f"{ref['lr']:g}"
            line = f"| {m} | {ref['trainable_params']:,} ({ref['head_params']:,}) | {lr} | " + " | ".join(cells)
            if len(tasks) > 1:
                line += " | " + (_pct(np.mean(means)) if len(means) == len(tasks) else "—")
            lines.append(line + " |")
        lines.append("")
        for r in prow:
            if "heads" in r and r["method"] in ("lofit", "lofit_random"):
                lines.append(f"- {r['task']} {r['method']} heads: " + "; ".join(f"seed {s}: {h}" for s, h in r["heads"].items()))
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    groups = [(p, t) for p, t in dict.fromkeys((r["part"], r["task"]) for r in rows)]
    n = len(groups)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    for ax, (part, task) in zip(axes[0], groups):
        for r in [r for r in rows if r["part"] == part and r["task"] == task]:
            x = max(r["trainable_params"], 1)
            ax.errorbar([x], [100 * r["accuracy_mean"]], yerr=[100 * r["accuracy_std"]], fmt="o", capsize=3,
                        color="C3" if r["method"].startswith(("gift", "lofit")) else "C0")
            ax.annotate(r["method"], (x, 100 * r["accuracy_mean"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel("accuracy %")
        ax.set_title(f"{'MiniLM' if part == 'glue' else 'SmolLM2-135M'}: {task}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(out: Path, plot_path: Path, quick: bool, command: str) -> dict:
    runs = load_runs(out / "accuracy_runs.jsonl")
    rep = {"quick": quick, "machine": recipes.describe_machine(recipes.machine_info()), "commands": f"`{command}`", "settings": {
        "glue_sizes": GLUE_SIZES, "glue_max_length": GLUE_MAXLEN, "lr": LR, "lm_lr": LM_LR, "l1_lambda": L1_LAMBDA},
        "rows": aggregate(runs), "runs": runs}
    (out / "accuracy.json").write_text(json.dumps(rep, indent=2))
    (out / "accuracy.md").write_text(markdown(rep) + f"\n![accuracy vs parameters]({os.path.relpath(plot_path, out)})\n")
    if rep["rows"]:
        plot(rep, plot_path)
    return rep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random models on synthetic data, seconds")
    p.add_argument("--parts", default="glue,lm", help="glue (MiniLM on SST-2/RTE/MRPC) and/or lm (SmolLM2 ARC-Easy)")
    p.add_argument("--tasks", default=None, help=f"GLUE tasks (default {','.join(GLUE_TASKS)})")
    p.add_argument("--methods", default=None, help="restrict the methods of the selected parts")
    p.add_argument("--seeds", default=None, help="comma list (default 0,1; 0 with --quick)")
    p.add_argument("--epochs", type=int, default=3, help="GLUE epochs (every method; LoFiT stage 1 adds 1)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lm-train", type=int, default=96, help="ARC-Easy training questions")
    p.add_argument("--lm-test", type=int, default=100, help="ARC-Easy test questions (from the validation split)")
    p.add_argument("--lm-epochs", type=int, default=1)
    p.add_argument("--lm-seeds", type=int, default=1, help="how many of --seeds the LM part uses")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1 with --quick)")
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--plot", default=None, help="PNG path (default docs/img/accuracy_vs_params.png; "
                                                  "<out>/accuracy_vs_params.png with --quick)")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    if a.threads or a.quick:
        torch.set_num_threads(a.threads or 1)
    a.seeds = a.seeds or ("0" if a.quick else "0,1")
    import warnings

    warnings.filterwarnings("ignore")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_path = Path(a.plot) if a.plot else (out / "accuracy_vs_params.png" if a.quick else
                                             ROOT / "docs" / "img" / "accuracy_vs_params.png")
    command = "python scripts/bench_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if not a.report_only:
        for part in [x for x in a.parts.split(",") if x]:
            if part not in ("glue", "lm"):
                p.error(f"unknown part {part!r}")
            run_part(part, a, out / "accuracy_runs.jsonl")
    rep = report(out, plot_path, a.quick, command)
    print(markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
