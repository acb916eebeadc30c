"""Cost of one multiple-choice test question and of one training step (``scripts/bench_eval_speed.py``).

    python scripts/bench_eval_speed.py                       # SmolLM2-135M on BoolQ, 64 questions, 3 rounds
    python scripts/bench_eval_speed.py --quick               # a tiny random Llama, seconds (smoke test)

Side by side in one process, in interleaved rounds (``speed.interleaved``): the evaluator scoring every choice as
its own ``prompt + choice`` sequence (``shared_prompt=False``, one forward per choice) and scoring a question's
choices from one pass over its prompt (the default), with the largest log-likelihood difference between the two;
and one training step (forward, backward, AdamW step at batch 8 with a LoFiT scale adapter on every head, as in
LoFiT's stage 1) on batches padded by the task's collator (to the batch's longest example) and padded to
``max_length``. Writes ``benchmarks/eval_speed.{json,md}`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from ..recipes.report import machine_info
from . import tiny
from .speed import REPO, interleaved, summary

logger = logging.getLogger(__name__)


def _rows(dataset: str, split: str, n: int) -> list[dict]:
    """The first ``n`` rows of ``split`` of a dataset asset (or a ``save_to_disk`` folder)."""
    from datasets import load_from_disk

    from ..recipes import assets

    path = dataset if Path(dataset).is_dir() else assets.dataset_path(dataset)
    return load_from_disk(path)[split].select(range(n)).to_list()


def measure(model_path: str, eval_rows: list[dict], train_rows: list[dict], reps: int, max_length: int) -> dict:
    from peft import get_peft_model

    from .. import LofitConfig
    from ..recipes.multiple_choice import score_choices
    from ..recipes.tasks import MultipleChoice

    task = MultipleChoice(model_path, {"max_length": max_length}, {"prompt": "prompt", "label": "label"}, None, None)
    model, tok, cols = task.load_model(), task.tokenizer, task.columns
    scores = {}

    def evaluate(shared):
        return lambda: scores.__setitem__(shared, score_choices(model, tok, eval_rows, cols, max_length, 16, shared)[0])

    evals = interleaved({"per_choice": evaluate(False), "shared_prompt": evaluate(True)}, reps)
    diff = max(abs(scores[True][k] - scores[False][k]) for k in scores[True])

    peft_model = get_peft_model(model, LofitConfig(mode="scale", l1_lambda=1e-3))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    features = [dict(x) for x in task.encode(__import__("datasets").Dataset.from_list(train_rows))]
    collate, batch = task.collator(), features[:8]
    longest = collate(batch)
    full = collate([{**f, "input_ids": f["input_ids"] + [tok.pad_token_id] * (max_length - len(f["input_ids"])),
                     "labels": f["labels"] + [-100] * (max_length - len(f["labels"]))} for f in batch])
    full["attention_mask"] = (torch.arange(max_length) < torch.tensor([len(f["input_ids"]) for f in batch])[:, None])

    def step(b):
        def run():
            peft_model.train()
            peft_model(**{k: v.long() for k, v in b.items()}).loss.backward()
            opt.step()
            opt.zero_grad()
        return run

    steps = interleaved({"padded_to_longest": step(longest), "padded_to_max_length": step(full)}, reps)
    return {"questions": len(eval_rows), "choices": sum(len(r["choices"]) for r in eval_rows),
            "max_abs_loglik_difference": diff,
            "eval_s_per_question": {k: summary([t / len(eval_rows) for t in v]) for k, v in evals.items()},
            "train_step_s": {k: summary(v) for k, v in steps.items()},
            "train_batch_width": {"padded_to_longest": int(longest["input_ids"].shape[1]),
                                  "padded_to_max_length": max_length}}


def markdown(res: dict) -> str:
    e, s = res["eval_s_per_question"], res["train_step_s"]
    r = e["per_choice"]["median_s"] / e["shared_prompt"]["median_s"]
    t = s["padded_to_max_length"]["median_s"] / s["padded_to_longest"]["median_s"]
    return "\n".join([
        f"Model `{res['model']}`, {res['questions']} questions ({res['choices']} choices) of `{res['task']}`, "
        f"median of {res['reps']} interleaved rounds, {res['machine']['torch_threads']} torch thread(s).", "",
        "| measured | per choice (one forward each) | shared prompt | ratio |", "|---|---|---|---|",
        f"| eval s / question | {e['per_choice']['median_s']:.3f} | {e['shared_prompt']['median_s']:.3f} | {r:.2f}x |",
        "", f"Largest |log-likelihood difference| between the two: {res['max_abs_loglik_difference']:.2e}.", "",
        "| measured | padded to max_length | padded to the batch's longest (the collator) | ratio |",
        "|---|---|---|---|",
        f"| train step s (batch 8, width {res['train_batch_width']['padded_to_max_length']} vs "
        f"{res['train_batch_width']['padded_to_longest']}) | {s['padded_to_max_length']['median_s']:.2f} | "
        f"{s['padded_to_longest']['median_s']:.2f} | {t:.2f}x |", ""])


def main(argv=None) -> int:
    import tempfile

    from ..recipes.data import resolve_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="asset name, local directory or Hub id")
    p.add_argument("--task", default="boolq", help="multiple-choice dataset asset (prompt, choices, label)")
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    p.add_argument("--quick", action="store_true", help="tiny random Llama and synthetic rows (smoke test)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "eval_speed"), help="output path without suffix")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    reps = 1 if a.quick else a.reps
    with tempfile.TemporaryDirectory() as tmp:
        if a.quick:
            quick = tiny.quick_assets(Path(tmp))
            model, task = quick["llama"], "quick"
            ev, tr = _rows(quick["mc"], "validation", 8), _rows(quick["mc"], "train", 8)
        else:
            model, task = resolve_model(a.model), a.task
            ev, tr = _rows(task, "validation", a.questions), _rows(task, "train", 8)
        res = {"model": a.model if not a.quick else "tiny random Llama", "task": task, "reps": reps,
               **measure(model, ev, tr, reps, a.max_length), "machine": machine_info()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    logger.info(markdown(res))
    return 0
