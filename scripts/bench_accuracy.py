"""Accuracy per trainable parameter, controlled: learning rate chosen on a dev split per method, then several seeds
at equal optimizer steps; GIFT / LoFiT vs PEFT baselines, CPU-sized.

    python scripts/bench_accuracy.py --parts glue --tasks sst2           # the study in docs/results.md (resumable)
    python scripts/bench_accuracy.py --parts glue --methods ia3,full     # add methods to the same study
    python scripts/bench_accuracy.py --parts lm                          # Commonsense-8 with SmolLM2-135M
    python scripts/bench_accuracy.py --parts vision                      # DINOv2-S/14 on CIFAR-10
    python scripts/bench_accuracy.py --report-only                       # rebuild accuracy.json/.md/.png
    python scripts/bench_accuracy.py --reproduce --parts glue,lm,vision  # re-run one stored run per row, compare
    python scripts/bench_accuracy.py --quick --out /tmp/b                # tiny random models, synthetic data

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
Every method gets the same budget: ``--steps`` optimizer steps at ``--batch-size`` (LoFiT: half for stage 1, half for
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
import functools
import json
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft_gift import recipes  # noqa: E402
from peft_gift.recipes.data import resolve_model  # noqa: E402

GLUE_TASKS = ("sst2", "rte", "mrpc", "twitter")
# (train, test) examples cut disjointly from one split: the packaged GLUE validation sets (872 / 277 / 408 rows) and
# the 37,243 distinct tweets
GLUE_SIZES = {"sst2": (600, 272), "rte": (160, 117), "mrpc": (160, 200), "twitter": (2000, 1000)}
GLUE_SPLIT = {"sst2": "validation", "rte": "validation", "mrpc": "validation", "twitter": "train"}
GLUE_MAXLEN = {"sst2": 64, "rte": 128, "mrpc": 128, "twitter": 48}
DEV_FRACTION = 0.2  # of the training part, for choosing the learning rate
GLUE_METHODS = ("gift_r32", "lora", "lofit", "linear_probe")  # the default study; any key of LR_GRID can be added
# the GIFT paper's commonsense mix as packaged offline; CommonsenseQA stands in for WinoGrande, whose choices change
# the context rather than the answer (the multiple-choice task scores answers after one shared prompt)
COMMONSENSE8 = ("boolq", "piqa", "siqa", "hellaswag", "arc_easy", "arc_challenge", "openbookqa", "csqa")
LM_METHODS = ("zero_shot", "gift_r64", "lora", "lofit", "lofit_random")
# DINOv2-S/14 on CIFAR-10: the 10,000 images that install offline form one split, cut into disjoint train / test
# parts; images at 112 px (8x8 patches) for CPU. GIFT r=16 on the attention output projection is the paper's ViT
# setting, on q,v its LLM one.
VISION_SIZES, VISION_IMAGE = (1000, 500), 112
VISION_METHODS = ("gift_r16_o", "gift_r16", "lora", "linear_probe")
PART_MODEL = {"glue": "MiniLM-L6", "lm": "SmolLM2-135M", "vision": "DINOv2-S/14"}
# 4 log-spaced learning rates per method, centred on the values the papers and PEFT's examples use
LR_GRID = {
    "gift": (1e-3, 3e-3, 1e-2, 3e-2), "lora": (1e-3, 3e-3, 1e-2, 3e-2), "vera": (3e-3, 1e-2, 3e-2, 1e-1),
    "ia3": (3e-3, 1e-2, 3e-2, 1e-1), "miss": (1e-3, 3e-3, 1e-2, 3e-2), "lofit": (3e-3, 1e-2, 3e-2, 1e-1),
    "bitfit": (1e-3, 3e-3, 1e-2, 3e-2), "linear_probe": (1e-3, 3e-3, 1e-2, 3e-2), "full": (1e-5, 3e-5, 1e-4, 3e-4),
    "lp_ft": (1e-5, 3e-5, 1e-4, 3e-4), "loreft": (1e-3, 3e-3, 1e-2, 3e-2),
}
L1_LAMBDA = 1e-3
LPFT = "_lpft"  # suffix of a PEFT method name: the same method trained as LP-FT (``gift_r32_lpft``)
EDGE_EXTENSIONS = 2  # grid steps added beyond an end of the grid when the best dev rate sits there


def log(msg: str) -> None:
    print(f"[bench_accuracy {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# the jobs: one recipe config per (part, task, method, seed)


def geometry(model_path: str) -> tuple[int, int, list[str], str]:
    """(layers, heads per layer, the q/v projection names, the attention output projection's name) of a model."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    if c.model_type in ("bert", "roberta"):
        return c.num_hidden_layers, c.num_attention_heads, ["query", "value"], "attention.output.dense"
    return c.num_hidden_layers, c.num_attention_heads, ["q_proj", "v_proj"], "o_proj"


def lofit_k(layers: int, heads: int) -> int:
    n = layers * heads
    return max(2, round(0.03 * n)) if n >= 200 else max(2, round(0.1 * n))


def random_heads(layers: int, heads: int, k: int, seed: int) -> list[list[int]]:
    flat = random.Random(10_000 + seed).sample(range(layers * heads), k)
    return [list(divmod(i, heads)) for i in sorted(flat)]


# gift_r<rank>, then optional suffixes: _o = on the attention output projection (default: q and v), _wegeft = the
# WeGeFT initialisation (φ = 0, ψ random; default GIFT's ψ = 0, φ random)
GIFT_NAME = re.compile(r"gift_r(\d+)(_o)?(_wegeft)?")
# lora = rank 8 on q and v; lora_r<rank> another rank (alpha = 2 * rank, the same scaling)
LORA_NAME = re.compile(r"lora(?:_r(\d+))?")
# every method name the study knows, for help texts and errors
METHOD_NAMES = (f"gift_r<rank>[_o][_wegeft], lora[_r<rank>], {', '.join(sorted(LR_GRID))}, lofit_random, "
                f"<PEFT method>{LPFT}")


def grid_key(method: str) -> str:
    """The LR_GRID entry of a method name of the study (``gift_r32`` → ``gift``, ``lofit_random`` → ``lofit``,
    ``lora_r32_lpft`` → ``lora``)."""
    base = method.removesuffix(LPFT)
    key = ("gift" if GIFT_NAME.fullmatch(base) else "lora" if LORA_NAME.fullmatch(base)
           else "lofit" if base == "lofit_random" else base)
    if key not in LR_GRID:
        raise ValueError(f"unknown method {method!r}; known: {METHOD_NAMES}")
    return key


def method_entry(method: str, model_path: str, lr: float, seed: int, steps: int) -> dict | None:
    """The method mapping of the recipe registry for one run (``None`` for the untrained model). LoFiT gets half of
    the ``steps`` for stage 1 and half for stage 2, both at ``lr``, so every method trains ``steps`` steps."""
    layers, heads, qv, o_proj = geometry(model_path)
    if method == "zero_shot":
        return None
    if method.endswith(LPFT):  # LP-FT of a PEFT method: head alone (half the steps, 10x the rate), then head + adapter
        half = max(1, steps // 2)
        return {**method_entry(method.removesuffix(LPFT), model_path, lr, seed, steps), "linear_probe_first": True,
                "stage1_training": {"max_steps": half, "learning_rate": 10 * lr}, "stage2_training": {"max_steps": half}}
    if gift := GIFT_NAME.fullmatch(method):
        rank, on_o, wegeft = gift.groups()
        return {"name": "gift", "r": int(rank), "sharing": "module", "target_modules": [o_proj] if on_o else qv,
                **({"init": "wegeft"} if wegeft else {})}
    if lora := LORA_NAME.fullmatch(method):
        rank = int(lora.group(1) or 8)
        return {"name": "lora", "r": rank, "lora_alpha": 2 * rank, "target_modules": qv}
    if method == "vera":
        return {"name": "vera", "r": 256, "target_modules": qv}
    if method == "miss":
        return {"name": "miss", "r": 64, "target_modules": qv}
    if method == "ia3":
        return {"name": "ia3"}
    if method == "loreft":  # rank 1 on the first and last token of every layer (the ReFT paper's GLUE rank)
        return {"name": "loreft", "r": 1}
    k = lofit_k(layers, heads)
    half = {"max_steps": max(1, steps // 2), "learning_rate": lr}
    stage2 = {"stage2": {"init_std": 1e-3}, "stage2_training": half}
    if method == "lofit":
        return {"name": "lofit", "k": k, "stage1": {"l1_lambda": L1_LAMBDA, "init_std": 1e-3},
                "stage1_training": half, **stage2}
    if method == "lofit_random":  # the localisation check: LoFiT's stage 2 exactly, on K random heads
        return {"name": "lofit", "heads": random_heads(layers, heads, k, seed), **stage2}
    if method == "lp_ft":  # head first (half the steps, 10x the rate), then head + model
        return {"name": "lp_ft", "stage1_training": {"max_steps": max(1, steps // 2), "learning_rate": 10 * lr},
                "stage2_training": half}
    if method in ("bitfit", "linear_probe", "full"):
        return {"name": method}
    raise ValueError(f"unknown method {method!r}; known: {METHOD_NAMES}")


def job_config(model_path: str, task: str, data: dict, method: dict | None, lr: float | None, steps: int, bs: int,
               eval_bs: int, seed: int) -> dict:
    """The recipe config of one run: what ``python scripts/train.py`` would be given to reproduce it."""
    return {"model": model_path, "task": task, "method": method or {"name": "full"}, "data": data, "seed": seed,
            "training": {"max_steps": steps, "per_device_train_batch_size": bs, "per_device_eval_batch_size": eval_bs,
                         "learning_rate": lr or 1e-3, "warmup_steps": 0.1, "lr_scheduler_type": "linear",
                         "weight_decay": 0.0, "logging_steps": 1000, "disable_tqdm": True}}


@functools.cache
def code_version() -> str:
    """The git commit this process runs (read once, at start: ``+dirty`` when the library or this script had
    uncommitted changes then)."""
    import subprocess

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + ("+dirty" if git("status", "--porcelain", "peft_gift", "scripts/bench_accuracy.py") else "")


def majority_rate(dataset) -> float | None:
    """Accuracy of always answering the most frequent label of ``dataset`` (None without a ``label`` column)."""
    if "label" not in dataset.column_names or len(dataset) == 0:
        return None
    return max(Counter(dataset["label"]).values()) / len(dataset)


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
    rec["majority"] = majority_rate(job.eval)
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
    return (rec["part"], rec["task"], rec["method"], rec["phase"], rec["lr"], rec["seed"], rec["steps"])


def load_runs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
        log(f"{part} {task} {method} {phase} lr={lr} seed={seed}: {rec['result']} ({rec['trainable_params']:,} "
            f"params, {rec['wall_s']} s)")
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
        log(f"reproduce {row['part']} {row['task']} {row['method']} seed={seed}: stored {stored['result']} "
            f"({rec['code']}), now {now['result']} ({rec['code_now']})")
        with path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# report

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
        lines += [f"## {task} ({PART_MODEL[part]}){note}", "",
                  f"{first['train_examples']} training / {first['test_examples']} test examples; {first['steps']} "
                  f"optimizer steps for every method; majority class {maj}%.", "",
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
        heads = [r for r in trow if "heads" in r]
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    p.add_argument("--lm-train", type=int, default=40, help="training questions per LM task (train split)")
    p.add_argument("--lm-test", type=int, default=40, help="test questions per LM task (validation split)")
    p.add_argument("--lm-steps", type=int, default=40, help="optimizer steps of every SmolLM2 run (batch 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1 with --quick)")
    p.add_argument("--out", default=str(ROOT / "benchmarks"))
    p.add_argument("--plot", default=None, help="PNG path (default docs/img/accuracy_vs_params.png; "
                                                  "<out>/accuracy_vs_params.png with --quick)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--reproduce", action="store_true", help="re-run one stored test run per row of the selected "
                                                             "--parts/--tasks/--methods with this code and compare")
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
                                             ROOT / "docs" / "img" / "accuracy_vs_params.png")
    command = "python scripts/bench_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    parts = [x for x in a.parts.split(",") if x]
    for part in parts:
        if part not in PART_MODEL:
            p.error(f"unknown part {part!r}; known: {', '.join(PART_MODEL)}")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the runs' own progress goes through log()
    if a.reproduce:
        reproduce(a, parts, out)
    elif not a.report_only:
        for part in parts:
            run_part(part, a, out / "accuracy_runs.jsonl")
    rep = report(out, plot_path, a.quick, command)
    print(markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
