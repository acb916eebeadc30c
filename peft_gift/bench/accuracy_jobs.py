"""The accuracy study's settings and jobs: learning-rate grids, the study's method names, and one recipe config per
run, prepared, trained and evaluated by the training CLI's pipeline (``peft_gift.recipes``)."""

from __future__ import annotations

import functools
import json
import random
import re
import subprocess
from collections import Counter
from pathlib import Path

from .. import recipes

REPO = Path(__file__).resolve().parents[2]

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
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + ("+dirty" if git("status", "--porcelain", "peft_gift", "scripts/bench_accuracy.py") else "")


def majority_rate(dataset) -> float | None:
    """Accuracy of always answering the most frequent label of ``dataset`` (None without a ``label`` column)."""
    if "label" not in dataset.column_names or len(dataset) == 0:
        return None
    return max(Counter(dataset["label"]).values()) / len(dataset)


def run_job(cfg: dict, train: bool, stage1_scores: bool = False) -> dict:
    """Prepare, (train,) evaluate through the recipe pipeline; the record fields the report aggregates. With
    ``stage1_scores`` (LoFiT in two stages), also ``stage1_scores``: [[layer, head, ‖A_h‖₂], ...] of the trained
    stage-1 scales, read back from the stage-1 adapter the pipeline saves."""
    import tempfile

    from transformers import set_seed

    set_seed(cfg["seed"])
    job = recipes.prepare(cfg)
    set_seed(cfg["seed"])
    model = job.task.load_model()
    rec: dict = {}
    if train:
        with tempfile.TemporaryDirectory() as tmp:
            model, stats = recipes.fit(model, job, out=Path(tmp) if stage1_scores else None)
            if stage1_scores:
                rec["stage1_scores"] = _stage1_scores(job, Path(tmp) / "stage1_adapter")
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


def _stage1_scores(job, adapter_dir: Path) -> list[list]:
    """[[layer, head, ‖A_h‖₂], ...] of a saved LoFiT stage-1 (scale) adapter, on a fresh base model."""
    from peft import PeftModel

    from ..lofit.readout import head_scores

    scores = head_scores(PeftModel.from_pretrained(job.task.load_model(), str(adapter_dir)))
    return [[layer, head, round(v, 6)] for (layer, head), v in scores.items()]


def key_of(rec: dict) -> tuple:
    return (rec["part"], rec["task"], rec["method"], rec["phase"], rec["lr"], rec["seed"], rec["steps"])


def load_runs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
