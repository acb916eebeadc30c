"""Accuracy per trainable parameter on real data: GIFT vs LoFiT vs PEFT baselines, CPU-sized.

    python scripts/bench_accuracy.py                       # GLUE part (MiniLM) and LM part (SmolLM2-135M), then report
    python scripts/bench_accuracy.py --parts glue --seeds 0,1
    python scripts/bench_accuracy.py --parts lm
    python scripts/bench_accuracy.py --report-only         # rebuild accuracy.json/.md/.png from the runs file
    python scripts/bench_accuracy.py --quick --out /tmp/b  # tiny random models on synthetic data (smoke test)

Every finished run is appended to ``<out>/accuracy_runs.jsonl`` and skipped when the script is started again with
the same settings (so an interrupted study resumes). The report step aggregates the runs (mean ± std over seeds)
into ``accuracy.json``, ``accuracy.md`` and ``docs/img/accuracy_vs_params.png`` (accuracy vs trainable parameters,
log x; ``--plot`` to change where).

GLUE part: all-MiniLM-L6-v2 (sequence classification, new linear head) on SST-2, RTE and MRPC. Only the GLUE
validation sets install offline, so each is shuffled (seed 0) and split into disjoint train / test parts of the
sizes in ``GLUE_SIZES``. Every method gets the same budget: the same examples, epochs, batch size, schedule and
seed; learning rates are fixed per method (``LR``), GIFT's rank is the grid r ∈ {8, 32}. LoFiT: stage 1 learns a
scale per head on all heads with an L1 penalty (1 epoch, extra), the top-K heads by ‖A‖ get offsets in stage 2
(the same budget as the other methods); ``lofit_random`` trains stage 2 on K random heads (localisation check).

LM part: SmolLM2-135M-Instruct on ARC-Easy multiple choice (answer-only SFT loss; accuracy = argmax of the summed
answer log-likelihood), zero-shot vs GIFT vs LoRA vs LoFiT (selected heads) vs LoFiT (random heads, same K).
"""

from __future__ import annotations

import argparse
import dataclasses
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

from peft_gift.training import describe_machine, machine_info  # noqa: E402

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
# data: lists of encoded examples


@dataclasses.dataclass
class ClsData:
    train: list  # [{"input_ids": [...], "labels": int}]
    test: list
    pad_id: int
    num_labels: int


@dataclasses.dataclass
class MCData:
    train: list  # [{"prompt": [...ids], "choices": [[...ids], ...], "label": int}]
    test: list
    pad_id: int
    eos_id: int | None


def glue_data(task: str, seed_data: int = 0) -> tuple[ClsData, str]:
    from peft_gift import training

    n_train, n_test = GLUE_SIZES[task]
    cfg = training.validate_config({
        "model": "minilm-l6", "task": "seq_cls", "method": "full",
        "data": {"dataset": task, "train_split": "validation", "eval_split": "validation", "train_size": n_train,
                 "eval_size": n_test, "seed": seed_data, "max_length": GLUE_MAXLEN[task]},
    })
    prep = training.prepare(cfg)
    t = prep["task"]
    enc = lambda ds: [{"input_ids": r["input_ids"], "labels": int(r["labels"])} for r in t.encode(ds)]  # noqa: E731
    return ClsData(enc(prep["train"]), enc(prep["eval"]), t.tokenizer.pad_token_id, t.num_labels), prep["model_path"]


def arc_data(n_train: int, n_test: int, max_length: int = 128) -> tuple[MCData, str]:
    from peft_gift import training

    cfg = training.validate_config({
        "model": "smollm2-135m", "task": "causal_lm_mc", "method": "full",
        "data": {"dataset": "arc_easy", "train_split": "train", "eval_split": "validation", "train_size": n_train,
                 "eval_size": n_test, "seed": 0, "max_length": max_length},
    })
    prep = training.prepare(cfg)
    t, cols = prep["task"], prep["columns"]
    tok = t.tokenizer

    def enc(ds):
        rows = []
        for r in ds:
            prompt = tok(r[cols["prompt"]], add_special_tokens=True)["input_ids"]
            choices = [tok(" " + str(c), add_special_tokens=False)["input_ids"] for c in r["choices"]]
            rows.append({"prompt": prompt[-(max_length - 16):], "choices": [c[:15] for c in choices],
                         "label": int(r[cols["label"]])})
        return rows

    return MCData(enc(prep["train"]), enc(prep["eval"]), tok.pad_token_id, tok.eos_token_id), prep["model_path"]


def synthetic_cls(n_train: int, n_test: int, vocab: int, seed: int = 0) -> ClsData:
    """Label = whether token 5 occurs more often than token 6 (learnable by a tiny model)."""
    g = random.Random(seed)

    def row():
        ids = [g.randrange(7, vocab) for _ in range(g.randrange(6, 14))]
        for _ in range(g.randrange(0, 4)):
            ids[g.randrange(len(ids))] = g.choice((5, 6))
        return {"input_ids": [1] + ids, "labels": int(ids.count(5) > ids.count(6))}

    return ClsData([row() for _ in range(n_train)], [row() for _ in range(n_test)], 0, 2)


def synthetic_mc(n_train: int, n_test: int, vocab: int, seed: int = 0) -> MCData:
    """Prompt ends with token k; the right choice starts with token k+1 (a tiny model can learn it)."""
    g = random.Random(seed)

    def row():
        k = g.randrange(10, vocab - 2)
        label = g.randrange(3)
        choices = [[g.randrange(10, vocab), g.randrange(10, vocab)] for _ in range(3)]
        choices[label][0] = k + 1
        return {"prompt": [1] + [g.randrange(10, vocab) for _ in range(5)] + [k], "choices": choices, "label": label}

    return MCData([row() for _ in range(n_train)], [row() for _ in range(n_test)], 0, 2)


# ----------------------------------------------------------------------------------------------------------------
# batching, training, evaluation


def cls_batches(rows, bs, pad_id, shuffle_seed=None):
    idx = list(range(len(rows)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(idx)
    for s in range(0, len(idx), bs):
        chunk = [rows[i] for i in idx[s:s + bs]]
        n = max(len(r["input_ids"]) for r in chunk)
        ids = torch.full((len(chunk), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        for j, r in enumerate(chunk):
            ids[j, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[j, : len(r["input_ids"])] = 1
        yield {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in chunk])}


def mc_train_batches(data: MCData, bs, shuffle_seed):
    """Prompt + right answer (+ EOS); loss on the answer tokens only."""
    idx = list(range(len(data.train)))
    random.Random(shuffle_seed).shuffle(idx)
    for s in range(0, len(idx), bs):
        seqs = []
        for i in idx[s:s + bs]:
            r = data.train[i]
            ans = r["choices"][r["label"]] + ([data.eos_id] if data.eos_id is not None else [])
            seqs.append((r["prompt"] + ans, len(r["prompt"])))
        n = max(len(q) for q, _ in seqs)
        ids = torch.full((len(seqs), n), data.pad_id, dtype=torch.long)
        labels = torch.full((len(seqs), n), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for j, (q, p) in enumerate(seqs):
            ids[j, : len(q)] = torch.tensor(q)
            labels[j, p: len(q)] = torch.tensor(q[p:])
            mask[j, : len(q)] = 1
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train(model, batches_fn, epochs: int, lr: float, seed: int, l1_model=None) -> dict:
    """AdamW, linear warm-up (10%) and decay; returns the time and the number of steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    n_steps = epochs * sum(1 for _ in batches_fn(0))
    warm = max(1, n_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (n_steps - s) / max(1, n_steps - warm)))
    model.train()
    t0, step, losses = time.time(), 0, []
    torch.manual_seed(seed)
    for ep in range(epochs):
        for batch in batches_fn(seed * 1000 + ep):
            loss = model(**batch).loss  # LoFiT's scale adapters add their L1 term to the loss via a hook
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
            step += 1
    model.eval()
    return {"train_time_s": round(time.time() - t0, 1), "steps": step,
            "final_loss": round(float(np.mean(losses[-5:])), 4) if losses else None}


@torch.no_grad()
def eval_cls(model, data: ClsData) -> dict:
    from peft_gift.training import accuracy, f1

    model.eval()
    preds, labels = [], []
    for b in cls_batches(data.test, 64, data.pad_id):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        preds += logits.argmax(-1).tolist()
        labels += b["labels"].tolist()
    return {"accuracy": accuracy(np.array(preds), np.array(labels)),
            "f1": f1(np.array(preds), np.array(labels), data.num_labels)}


@torch.no_grad()
def eval_mc(model, data: MCData, bs: int = 16) -> dict:
    """Pick the choice with the highest summed log-likelihood (``accuracy``) or per-token mean (``acc_norm``)."""
    model.eval()
    items = [(qi, ci, r["prompt"] + c, len(r["prompt"])) for qi, r in enumerate(data.test)
             for ci, c in enumerate(r["choices"])]
    order = sorted(range(len(items)), key=lambda i: -len(items[i][2]))
    scores = {}
    for s in range(0, len(order), bs):
        chunk = [items[i] for i in order[s:s + bs]]
        n = max(len(it[2]) for it in chunk)
        ids = torch.full((len(chunk), n), data.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        for j, it in enumerate(chunk):
            ids[j, : len(it[2])] = torch.tensor(it[2])
            mask[j, : len(it[2])] = 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float()[:, :-1], -1)
        tok = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        for j, (qi, ci, seq, p) in enumerate(chunk):
            ll = float(tok[j, p - 1: len(seq) - 1].sum())
            scores[(qi, ci)] = (ll, ll / max(1, len(seq) - p))
    acc = np.mean([max(range(len(r["choices"])), key=lambda c: scores[(q, c)][0]) == r["label"]
                   for q, r in enumerate(data.test)])
    acc_n = np.mean([max(range(len(r["choices"])), key=lambda c: scores[(q, c)][1]) == r["label"]
                     for q, r in enumerate(data.test)])
    return {"accuracy": float(acc), "acc_norm": float(acc_n)}


# ----------------------------------------------------------------------------------------------------------------
# methods


def count(model) -> dict:
    from peft_gift.training import param_counts

    c = param_counts(model)
    return {"trainable_params": c["trainable_params"], "head_params": c["head_params"],
            "total_params": c["total_params"]}


def qv_names(model) -> list[str]:
    return ["q_proj", "v_proj"] if getattr(model.config, "model_type", "") == "llama" else ["query", "value"]


def apply(model, method: str, task: str, lm: bool):
    """Wrap/freeze ``model`` for a single-stage method."""
    from peft import IA3Config, LoraConfig, VeraConfig, get_peft_model

    import peft_gift
    from peft_gift.training import apply_method

    tt = "CAUSAL_LM" if lm else "SEQ_CLS"
    if method.startswith("gift_r"):
        cfg = peft_gift.GiftConfig(r=int(method[6:]), sharing="module", target_modules=qv_names(model), task_type=tt)
        return get_peft_model(model, cfg)
    if method == "lora":
        return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=qv_names(model), task_type=tt))
    if method == "vera":
        return get_peft_model(model, VeraConfig(r=256, target_modules=qv_names(model), task_type=tt))
    if method == "ia3":
        return get_peft_model(model, IA3Config(task_type=tt))
    if method in ("bitfit", "linear_probe", "full"):
        return apply_method(model, {"name": method}, "seq_cls")
    raise ValueError(method)


def lofit_k(model) -> int:
    n = model.config.num_hidden_layers * model.config.num_attention_heads
    return max(2, round(0.03 * n)) if n >= 200 else max(2, round(0.1 * n))


def random_heads(model, k: int, seed: int) -> list[tuple[int, int]]:
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    flat = random.Random(10_000 + seed).sample(range(L * H), k)
    return sorted((i // H, i % H) for i in flat)


def lofit_stage2(model, heads, lm: bool):
    import peft_gift
    from peft import get_peft_model

    cfg = peft_gift.LofitConfig(mode="bias", heads=[tuple(h) for h in heads], init_std=1e-3,
                                task_type="CAUSAL_LM" if lm else "SEQ_CLS")
    return get_peft_model(model, cfg)


# ----------------------------------------------------------------------------------------------------------------
# one run


def run_one(part: str, task: str, method: str, seed: int, load_model, data, epochs: int, lrs: dict,
            bs: int, lm: bool) -> dict:
    from transformers import set_seed

    import peft_gift
    from peft import get_peft_model

    batches = (lambda s: mc_train_batches(data, bs, s)) if lm else (lambda s: cls_batches(data.train, bs, data.pad_id, s))
    evaluate = (lambda m: eval_mc(m, data)) if lm else (lambda m: eval_cls(m, data))
    set_seed(seed)
    model = load_model()
    rec = {"part": part, "task": task, "method": method, "seed": seed, "epochs": epochs, "batch_size": bs,
           "train_examples": len(data.train), "test_examples": len(data.test)}
    t0 = time.time()
    if method == "zero_shot":
        rec.update(count(model) | {"trainable_params": 0, "head_params": 0})
        rec["lr"] = None
    elif method in ("lofit", "lofit_random"):
        k = lofit_k(model)
        rec["k"] = k
        if method == "lofit":
            m1 = get_peft_model(model, peft_gift.LofitConfig(
                mode="scale", l1_lambda=L1_LAMBDA, init_std=1e-3, task_type="CAUSAL_LM" if lm else "SEQ_CLS"))
            rec["stage1"] = train(m1, batches, 1, lrs["lofit_scale"], seed) | {"lr": lrs["lofit_scale"],
                                                                              "epochs": 1} | count(m1)
            heads = peft_gift.select_heads(m1, k=k)
            del m1, model
            set_seed(seed)
            model = load_model()
        else:
            heads = random_heads(model, k, seed)
        rec["heads"] = [list(h) for h in heads]
        model = lofit_stage2(model, heads, lm)
        rec["lr"] = lrs["lofit_bias"]
        rec.update(count(model))
        rec["train"] = train(model, batches, epochs, rec["lr"], seed)
    elif method == "lp_ft":
        model = apply(model, "linear_probe", task, lm)
        rec["stage1"] = train(model, batches, epochs, lrs["linear_probe"], seed) | {"lr": lrs["linear_probe"]}
        for p in model.parameters():
            p.requires_grad_(True)
        rec["lr"] = lrs["full"]
        rec.update(count(model))
        rec["train"] = train(model, batches, epochs, rec["lr"], seed)
    else:
        family = method.split("_r")[0] if method.startswith("gift_r") else method
        model = apply(model, method, task, lm)
        rec["lr"] = lrs[family]
        rec.update(count(model))
        rec["train"] = train(model, batches, epochs, rec["lr"], seed)
    rec["result"] = evaluate(model)
    rec["wall_s"] = round(time.time() - t0, 1)
    return rec


def key_of(rec: dict) -> tuple:
    return (rec["part"], rec["task"], rec["method"], rec["seed"], rec["train_examples"], rec["epochs"])


def load_runs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_part(part: str, args, runs_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    import peft_gift  # noqa: F401

    hf_logging.set_verbosity_error()
    done = {key_of(r) for r in load_runs(runs_path)}
    seeds = [int(s) for s in args.seeds.split(",")]
    if part == "glue":
        tasks = args.tasks.split(",") if args.tasks else (["synthetic"] if args.quick else list(GLUE_TASKS))
        methods = args.methods.split(",") if args.methods else list(GLUE_METHODS)
        for task in tasks:
            if args.quick:
                from transformers import BertConfig

                data = synthetic_cls(64, 64, 64)
                cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=32, num_labels=2)
                load = lambda cfg=cfg: AutoModelForSequenceClassification.from_config(cfg)  # noqa: E731
            else:
                data, path = glue_data(task)
                load = lambda path=path, n=data.num_labels: AutoModelForSequenceClassification.from_pretrained(  # noqa: E731
                    path, num_labels=n)
            for seed in seeds:
                for method in methods:
                    rec_key = ("glue", task, method, seed, len(data.train), args.epochs)
                    if rec_key in done:
                        continue
                    rec = run_one("glue", task, method, seed, load, data, args.epochs, LR, args.batch_size, lm=False)
                    log(f"glue {task} seed {seed} {method}: {rec['result']} ({rec['trainable_params']:,} params, "
                        f"{rec['wall_s']} s)")
                    with runs_path.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
    else:
        methods = args.methods.split(",") if args.methods else list(LM_METHODS)
        if args.quick:
            from transformers import LlamaConfig

            data = synthetic_mc(48, 32, 64)
            cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
            load = lambda: AutoModelForCausalLM.from_config(cfg)  # noqa: E731
            task = "synthetic_mc"
        else:
            data, path = arc_data(args.lm_train, args.lm_test)
            load = lambda: AutoModelForCausalLM.from_pretrained(path)  # noqa: E731
            task = "arc_easy"
        for seed in seeds[: args.lm_seeds]:
            for method in methods:
                rec_key = ("lm", task, method, seed, len(data.train), args.lm_epochs)
                if rec_key in done:
                    continue
                rec = run_one("lm", task, method, seed, load, data, args.lm_epochs, LM_LR, 8, lm=True)
                log(f"lm {task} seed {seed} {method}: {rec['result']} ({rec['trainable_params']:,} params, "
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
    rep = {"quick": quick, "machine": describe_machine(machine_info()), "commands": f"`{command}`", "settings": {
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
