"""Speed / memory / size benchmark of GIFT, LoFiT and PEFT baselines, side by side in one process.

    python scripts/bench_speed.py                  # SmolLM2-135M shapes + MiniLM shapes, batch 8x128, CPU
    python scripts/bench_speed.py --quick          # tiny random models, seconds (smoke test)
    python scripts/bench_speed.py --models lm --reps 7

Models are random-init from configs with the real architectures' shapes (speed does not depend on the weights):
``lm`` = LlamaForCausalLM with SmolLM2-135M's config, ``enc`` = BertForSequenceClassification with
all-MiniLM-L6-v2's config. For each model every method is built once, in the same process, and timed in
interleaved rounds (round i runs one step of every method, in an order rotated each round); we report the median
and the spread (min..max) over rounds, and every ratio is a ratio of medians from this one run.

Figures per method:
* train step: forward + backward + AdamW step + zero_grad, on a fixed batch (causal-LM loss / classification loss);
* peak memory: in a fresh subprocess per method, the growth of the process' peak resident set size (VmHWM, reset
  through /proc/self/clear_refs after the model is built) over the first training step (gradients and AdamW state are allocated there), i.e. activations + gradients +
  optimizer state + allocator slack, measured as CPU RSS (not the torch profiler);
* trainable parameters; adapter file size (``save_pretrained``; the full model for full fine-tuning);
* merge time (``merge_and_unload``) and the max |logit| difference merged vs unmerged;
* inference (eval, no_grad forward) unmerged and merged, as ratios to the base model timed in the same rounds.

The "frozen floor" is the cheapest possible backward: every weight frozen, the loss back-propagated to
``inputs_embeds`` (a leaf that requires grad), no optimizer step.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft_gift.recipes import apply_method, machine_info  # noqa: E402
from peft_gift.recipes.tasks import TASKS  # noqa: E402

METHODS = ("floor", "gift_module", "gift_all", "lora", "vera", "ia3", "lofit_bias", "full")
PEFT_METHODS = ("gift_module", "gift_all", "lora", "vera", "ia3", "lofit_bias")


# ----------------------------------------------------------------------------------------------------------------
# models and methods


def model_spec(kind: str, quick: bool) -> dict:
    if kind == "lm":
        if quick:
            cfg = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
            batch, seq = 2, 16
        else:  # SmolLM2-135M
            cfg = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
            batch, seq = 8, 128
        return {"kind": "lm", "name": "SmolLM2-135M shapes (Llama)" if not quick else "tiny Llama", "config": cfg,
                "batch": batch, "seq": seq, "q": "q_proj", "v": "v_proj",
                "heads": cfg["num_hidden_layers"] * cfg["num_attention_heads"]}
    if quick:
        cfg = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   max_position_embeddings=64, num_labels=2)
        batch, seq = 2, 16
    else:  # all-MiniLM-L6-v2
        cfg = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536, max_position_embeddings=512, num_labels=2)
        batch, seq = 8, 128
    return {"kind": "enc", "name": "MiniLM-L6 shapes (BERT)" if not quick else "tiny BERT", "config": cfg,
            "batch": batch, "seq": seq, "q": "query", "v": "value",
            "heads": cfg["num_hidden_layers"] * cfg["num_attention_heads"]}


def build_base(spec: dict, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if spec["kind"] == "lm":
        model = LlamaForCausalLM(LlamaConfig(**spec["config"]))
    else:
        model = BertForSequenceClassification(BertConfig(**spec["config"]))
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def lofit_heads(spec: dict) -> list[tuple[int, int]]:
    """K ≈ 3% of all heads (at least 1), a fixed pseudo-random choice (speed does not depend on which heads)."""
    n_layers, n_heads = spec["config"]["num_hidden_layers"], spec["config"]["num_attention_heads"]
    k = max(1, round(0.03 * n_layers * n_heads))
    g = torch.Generator().manual_seed(0)
    flat = torch.randperm(n_layers * n_heads, generator=g)[:k].tolist()
    return sorted((i // n_heads, i % n_heads) for i in flat)


def method_config(method: str, spec: dict) -> dict:
    """The method's entry in the recipe registry (``peft_gift.recipes.methods``), as a training config would give it."""
    qv = [spec["q"], spec["v"]]
    return {
        "gift_module": {"name": "gift", "r": 64, "sharing": "module", "target_modules": qv},
        "gift_all": {"name": "gift", "r": 64, "sharing": "all", "target_modules": qv},
        "lora": {"name": "lora", "r": 8, "lora_alpha": 16, "target_modules": qv},
        "vera": {"name": "vera", "r": 256, "target_modules": qv},
        "ia3": {"name": "ia3"},  # PEFT's default targets: k, v and the MLP down projection
        "lofit_bias": {"name": "lofit", "heads": lofit_heads(spec), "stage2": {"init_std": 1e-3}},
        "full": {"name": "full"},
    }[method]


def make_method(method: str, base, spec: dict):
    """Return (model, list of trainable parameters), built by the recipe method registry. PEFT adapters get small
    random values (so that merging is not a no-op and the merge check is meaningful); speed does not depend on the
    values."""
    model = copy.deepcopy(base)
    if method == "floor":
        return model, []
    task = TASKS["causal_lm_mc" if spec["kind"] == "lm" else "seq_cls"]
    model = apply_method(model, method_config(method, spec), task)
    if method in PEFT_METHODS:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad and "classifier" not in n:
                    p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 1e-2)
    return model, [p for p in model.parameters() if p.requires_grad]


def make_batch(spec: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, spec["config"]["vocab_size"], (spec["batch"], spec["seq"]), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["labels"] = ids.clone() if spec["kind"] == "lm" else torch.randint(0, 2, (spec["batch"],), generator=g)
    return batch


def embed_layer(model):
    return model.get_input_embeddings()


class Runner:
    """One method on one model: a training step and an inference forward."""

    def __init__(self, method: str, base, spec: dict, batch: dict):
        self.method, self.spec, self.batch = method, spec, batch
        self.model, self.params = make_method(method, base, spec)
        self.model.train()
        self.opt = torch.optim.AdamW(self.params, lr=1e-4) if self.params else None
        if method == "floor":
            with torch.no_grad():
                self.embeds = embed_layer(self.model)(batch["input_ids"])

    def step(self) -> None:
        b = self.batch
        if self.method == "floor":
            x = self.embeds.detach().requires_grad_(True)
            out = self.model(inputs_embeds=x, attention_mask=b["attention_mask"], labels=b["labels"])
            out.loss.backward()
            return
        out = self.model(**b)
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def infer(self, model=None) -> torch.Tensor:
        model = model or self.model
        model.eval()
        b = self.batch
        with torch.no_grad():
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        model.train()
        return logits

    def trainable(self) -> int:
        if self.method == "floor":
            return 0
        return sum(p.numel() for p in self.params)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict, reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every fn once per round (order rotated each round), `reps` rounds after `warmup` untimed rounds."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for i in range(reps):
        order = names[i % len(names):] + names[: i % len(names)]
        for n in order:
            times[n].append(timed(fns[n]))
    return times


def summary(ts: list[float]) -> dict:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "n": len(ts),
            "all_s": [round(t, 5) for t in ts]}


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin"))


# ----------------------------------------------------------------------------------------------------------------
# memory: one method per fresh process


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def memory_child(kind: str, method: str, quick: bool) -> dict:
    spec = model_spec(kind, quick)
    base = build_base(spec)
    runner = Runner(method, base, spec, make_batch(spec))
    del base
    import gc

    gc.collect()
    before = _rss_kib("VmRSS")
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    start_hwm = _rss_kib("VmHWM")
    runner.step()  # the first step allocates gradients and the optimizer state: the training peak
    peak = _rss_kib("VmHWM")
    return {"rss_before_mib": before / 1024, "peak_rss_mib": peak / 1024,
            "peak_delta_mib": (peak - (before if reset else start_hwm)) / 1024, "hwm_reset": reset}


def measure_memory(kind: str, methods: list[str], quick: bool) -> dict:
    out = {}
    for m in methods:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", kind, m,
               "--threads", str(torch.get_num_threads())] + (["--quick"] if quick else [])
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
        if res.returncode != 0:
            out[m] = {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.returncode}"}
            continue
        out[m] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ----------------------------------------------------------------------------------------------------------------
# the benchmark


def bench_model(kind: str, methods: list[str], reps: int, quick: bool, memory: bool, log) -> dict:
    import peft_gift  # noqa: F401 - registers GIFT / LoFiT

    spec = model_spec(kind, quick)
    log(f"[{kind}] {spec['name']}: building {len(methods)} methods ...")
    base = build_base(spec)
    batch = make_batch(spec)
    runners = {m: Runner(m, base, spec, batch) for m in methods}
    res: dict = {"reps": reps, "model": spec["name"], "config": spec["config"], "batch": spec["batch"], "seq": spec["seq"],
                 "total_params": sum(p.numel() for p in base.parameters()), "methods": {}}
    if "lofit_bias" in methods:
        res["lofit_heads"] = [list(h) for h in lofit_heads(spec)]
    for m, r in runners.items():
        res["methods"][m] = {"trainable_params": r.trainable()}

    log(f"[{kind}] train steps: {reps} interleaved rounds ...")
    t = interleaved({m: r.step for m, r in runners.items()}, reps)
    for m in methods:
        res["methods"][m]["step"] = summary(t[m])

    # inference: base (the floor's untouched model) vs unmerged adapters, interleaved
    base_runner = runners.get("floor") or Runner("floor", base, spec, batch)
    log(f"[{kind}] unmerged inference ...")
    inf = {"base": base_runner.infer}
    inf.update({m: runners[m].infer for m in methods if m in PEFT_METHODS})
    t = interleaved(inf, reps)
    res["inference_base"] = summary(t["base"])
    for m in methods:
        if m in PEFT_METHODS:
            res["methods"][m]["infer_unmerged"] = summary(t[m])

    # adapter files, merge, merged inference
    merged = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            if m == "floor":
                continue
            d = Path(tmp) / m
            runners[m].model.save_pretrained(str(d))
            res["methods"][m]["file_bytes"] = dir_size(d)
    for m in methods:
        if m not in PEFT_METHODS:
            continue
        r = runners[m]
        ref = r.infer()
        r.model.eval()
        t0 = time.perf_counter()
        mm = r.model.merge_and_unload()
        res["methods"][m]["merge_s"] = time.perf_counter() - t0
        merged[m] = mm
        out = r.infer(mm)
        res["methods"][m]["merge_max_abs_diff"] = float((out - ref).abs().max())
    if merged:
        log(f"[{kind}] merged inference ...")
        inf = {"base": base_runner.infer}
        inf.update({m: (lambda mm=mm, r=runners[m]: r.infer(mm)) for m, mm in merged.items()})
        t = interleaved(inf, reps)
        res["inference_base_merged_round"] = summary(t["base"])
        for m in merged:
            res["methods"][m]["infer_merged"] = summary(t[m])
    del runners, merged

    if memory:
        log(f"[{kind}] peak memory, one fresh process per method ...")
        mem = measure_memory(kind, methods, quick)
        for m in methods:
            res["methods"][m]["memory"] = mem[m]
    add_ratios(res)
    return res


def _med(res, m, key):
    v = res["methods"].get(m, {}).get(key)
    return None if v is None else v["median_s"]


def add_ratios(res: dict) -> None:
    floor = _med(res, "floor", "step")
    lora = _med(res, "lora", "step")
    ib, ibm = res["inference_base"]["median_s"], res.get("inference_base_merged_round", {}).get("median_s")
    for r in res["methods"].values():
        s = r["step"]["median_s"]
        r["step_vs_floor"] = s / floor if floor else None
        r["step_vs_lora"] = s / lora if lora else None
        if "infer_unmerged" in r:
            r["infer_unmerged_vs_base"] = r["infer_unmerged"]["median_s"] / ib
        if "infer_merged" in r and ibm:
            r["infer_merged_vs_base"] = r["infer_merged"]["median_s"] / ibm


def targets(res: dict) -> list[dict]:
    """The issue's targets, evaluated on this run's medians."""
    M = res["methods"]
    out = []

    def add(name, value, limit, ok, unit="×"):
        out.append({"target": name, "measured": value, "limit": limit, "met": bool(ok) if value is not None else None,
                    "unit": unit})

    for g in ("gift_module", "gift_all"):
        if g in M:
            v = M[g].get("step_vs_lora")
            add(f"{g} step ≤ 1.10× LoRA", v, 1.10, v is not None and v <= 1.10)
            v = M[g].get("step_vs_floor")
            add(f"{g} step ≤ 1.15× floor", v, 1.15, v is not None and v <= 1.15)
            mg, ml = M[g].get("memory", {}).get("peak_delta_mib"), M.get("lora", {}).get("memory", {}).get("peak_delta_mib")
            if mg is not None and ml is not None:
                add(f"{g} peak memory ≤ LoRA's", mg / ml, 1.0, mg <= ml)
    if "lofit_bias" in M:
        v = M["lofit_bias"].get("step_vs_floor")
        add("lofit_bias step ≤ 1.03× floor", v, 1.03, v is not None and v <= 1.03)
    for m in PEFT_METHODS:
        if m in M and "infer_merged_vs_base" in M[m]:
            v = M[m]["infer_merged_vs_base"]
            add(f"{m} merged inference = base (within ±5%)", v, 1.05, abs(v - 1) <= 0.05)
        if m in M and "merge_s" in M[m]:
            v = M[m]["merge_s"]
            add(f"{m} merge < 2 s", v, 2.0, v < 2.0, unit="s")
    return out


# ----------------------------------------------------------------------------------------------------------------
# output


def _ms(r, key):
    v = r.get(key)
    return "—" if v is None else f"{1e3 * v['median_s']:.0f} ({1e3 * v['min_s']:.0f}–{1e3 * v['max_s']:.0f})"


def _x(v, nd=3):
    return "—" if v is None else f"{v:.{nd}f}×"


def _size(b):
    if b is None:
        return "—"
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 2**10:.1f} KiB"


def markdown(report: dict) -> str:
    lines = [f"# Speed benchmark ({'quick' if report['quick'] else 'full'})", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, torch "
             f"{report['machine']['torch']}, peft {report['machine']['peft']}, {report['machine']['torch_threads']} torch "
             f"thread(s); interleaved rounds after 1 warm-up round (see each model); times are median (min–max) in ms. Command: `{report['command']}`", ""]
    for res in report["models"].values():
        lines += [f"## {res['model']}: batch {res['batch']}×{res['seq']}, {res['total_params']:,} parameters, "
                  f"{res['reps']} rounds", ""]
        if "lofit_heads" in res:
            lines += [f"LoFiT bias heads (K={len(res['lofit_heads'])}): {res['lofit_heads']}", ""]
        lines += ["| method | trainable | train step ms | ×floor | ×LoRA | peak mem Δ MiB | adapter file | merge s | "
                  "unmerged inf. ×base | merged inf. ×base | merge max abs diff |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, r in res["methods"].items():
            mem = r.get("memory", {})
            memv = "—" if "peak_delta_mib" not in mem else f"{mem['peak_delta_mib']:.0f}"
            if "error" in mem:
                memv = "error"
            lines.append(
                f"| {m} | {r['trainable_params']:,} | {_ms(r, 'step')} | {_x(r.get('step_vs_floor'))} | "
                f"{_x(r.get('step_vs_lora'))} | {memv} | {_size(r.get('file_bytes'))} | "
                f"{'—' if 'merge_s' not in r else format(r['merge_s'], '.3f')} | {_x(r.get('infer_unmerged_vs_base'))} | "
                f"{_x(r.get('infer_merged_vs_base'))} | "
                f"{'—' if 'merge_max_abs_diff' not in r else format(r['merge_max_abs_diff'], '.1e')} |")
        lines += ["", f"Base inference: {_ms(res, 'inference_base')} ms (unmerged round), "
                  f"{_ms(res, 'inference_base_merged_round')} ms (merged round).", "",
                  "| target | measured | met |", "|---|---|---|"]
        for t in res["targets"]:
            v = "—" if t["measured"] is None else (f"{t['measured']:.3f}{t['unit']}")
            lines.append(f"| {t['target']} | {v} | {'yes' if t['met'] else ('no' if t['met'] is False else '—')} |")
        lines.append("")
    return "\n".join(lines)


def profile(kind: str, methods: list[str], quick: bool, out: Path, name: str, log) -> None:
    """torch.profiler on one training step per method (after a warm-up step): where the time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    import peft_gift  # noqa: F401

    spec = model_spec(kind, quick)
    base = build_base(spec)
    batch = make_batch(spec)
    lines = [f"# Profile of one training step, {spec['name']}, batch {spec['batch']}x{spec['seq']}, "
             f"{torch.get_num_threads()} thread(s)", ""]
    for m in methods:
        r = Runner(m, base, spec, batch)
        r.step()
        log(f"[profile] {m} ...")
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            r.step()
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
        lines += [f"## {m}: total self CPU {total:.0f} ms", "", "```",
                  prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40),
                  "```", ""]
        del r
    (out / f"{name}_profile_{kind}.md").write_text("\n".join(lines))
    log(f"wrote {out / (name + '_profile_' + kind + '.md')}")


def count_flops(kinds: list[str], methods: list[str], quick: bool, out: Path, name: str, log) -> dict:
    """FLOPs of one training step per method (torch.utils.flop_counter: matmuls / attention only), a
    contention-free complement to the wall-clock timings."""
    from torch.utils.flop_counter import FlopCounterMode

    import peft_gift  # noqa: F401

    res = {}
    for kind in kinds:
        spec = model_spec(kind, quick)
        base = build_base(spec)
        batch = make_batch(spec)
        res[kind] = {"model": spec["name"], "methods": {}}
        for m in methods:
            log(f"[flops] {kind} {m} ...")
            r = Runner(m, base, spec, batch)
            with FlopCounterMode(display=False) as fc:
                r.step()
            res[kind]["methods"][m] = {"train_step_flops": fc.get_total_flops()}
            with FlopCounterMode(display=False) as fc:
                r.infer()
            res[kind]["methods"][m]["infer_flops"] = fc.get_total_flops()
            del r
        f = res[kind]["methods"]
        for m in f:
            f[m]["vs_floor"] = f[m]["train_step_flops"] / f["floor"]["train_step_flops"] if "floor" in f else None
            f[m]["vs_lora"] = f[m]["train_step_flops"] / f["lora"]["train_step_flops"] if "lora" in f else None
    lines = ["# FLOPs of one training step (fwd + bwd) and one inference forward, torch.utils.flop_counter", ""]
    for r in res.values():
        lines += [f"## {r['model']}", "", "| method | train step GFLOP | ×floor | ×LoRA | inference GFLOP |",
                  "|---|---|---|---|---|"]
        for m, v in r["methods"].items():
            lines.append(f"| {m} | {v['train_step_flops'] / 1e9:.1f} | {_x(v['vs_floor'])} | {_x(v['vs_lora'])} | "
                         f"{v['infer_flops'] / 1e9:.1f} |")
        lines.append("")
    (out / f"{name}_flops.json").write_text(json.dumps(res, indent=2))
    (out / f"{name}_flops.md").write_text("\n".join(lines))
    log(f"wrote {out / (name + '_flops.md')}")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random models, 2 rounds (smoke test)")
    p.add_argument("--models", default="lm,enc", help="comma list of lm (SmolLM2-135M shapes), enc (MiniLM shapes)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--reps", type=int, default=None, help="timed interleaved rounds (default 5, quick 2)")
    p.add_argument("--lm-reps", type=int, default=None, help="rounds for the lm model (default: --reps)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method subprocess memory measurement")
    p.add_argument("--out", default=str(ROOT / "benchmarks"), help="directory for speed.json / speed.md")
    p.add_argument("--name", default="speed", help="output file stem")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 with --quick, else torch's default = cores)")
    p.add_argument("--flops", action="store_true", help="only count the FLOPs of one step per method")
    p.add_argument("--profile", action="store_true", help="only profile one step of each method (torch.profiler)")
    p.add_argument("--_memory-child", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads or a.quick:
        torch.set_num_threads(a.threads or 1)
    if a._memory_child:
        print(json.dumps(memory_child(a._memory_child[0], a._memory_child[1], a.quick)))
        return 0
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore")
    reps = a.reps or (2 if a.quick else 5)
    methods = [m for m in a.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if a.flops:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        count_flops([k for k in a.models.split(",") if k], methods, a.quick, Path(a.out), a.name, log)
        return 0
    if a.profile:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        for kind in [k for k in a.models.split(",") if k]:
            profile(kind, methods, a.quick, Path(a.out), a.name, log)
        return 0
    t0 = time.time()
    report = {"quick": a.quick, "reps": reps, "machine": machine_info(),
              "command": "python scripts/bench_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "memory_method": "peak RSS growth (VmHWM after reset via /proc/self/clear_refs) over the first train step, "
                               "fresh process per method",
              "models": {}}
    for kind in [k for k in a.models.split(",") if k]:
        res = bench_model(kind, methods, (a.lm_reps or reps) if kind == "lm" else reps, a.quick, not a.no_memory, log)
        res["targets"] = targets(res)
        report["models"][kind] = res
    report["wall_s"] = time.time() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{a.name}.md").write_text(markdown(report))
    print(markdown(report))
    log(f"wrote {out / (a.name + '.json')} and {out / (a.name + '.md')} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
