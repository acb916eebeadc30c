"""Speed / memory / size benchmark of GIFT, LoFiT and PEFT baselines, side by side in one process
(``scripts/bench_speed.py``).

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
  through /proc/self/clear_refs after the model is built) over the first training step (gradients and AdamW state
  are allocated there), i.e. activations + gradients + optimizer state + allocator slack, measured as CPU RSS (not
  the torch profiler);
* trainable parameters; adapter file size (``save_pretrained``; the full model for full fine-tuning);
* merge time (``merge_and_unload``) and the max |logit| difference merged vs unmerged;
* inference (eval, no_grad forward) unmerged and merged, as ratios to the base model timed in the same rounds.

The "frozen floor" is the cheapest possible backward: every weight frozen, the loss back-propagated to
``inputs_embeds`` (a leaf that requires grad), no optimizer step.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..recipes import machine_info
from .speed_models import METHODS, PEFT_METHODS, Runner, build_base, lofit_heads, make_batch, model_spec
from .speed_report import _x, add_ratios, markdown, targets

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


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
    """:func:`memory_child` of every method, each in a fresh Python process."""
    out = {}
    for m in methods:
        code = (f"import json, torch; torch.set_num_threads({torch.get_num_threads()}); "
                f"from peft_gift.bench.speed import memory_child; "
                f"print(json.dumps(memory_child({kind!r}, {m!r}, {quick!r})))")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
        if res.returncode != 0:
            out[m] = {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.returncode}"}
            continue
        out[m] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def _timed_inference(kind: str, res: dict, runners: dict, base_runner, reps: int) -> None:
    """Unmerged inference against the base model (the floor's untouched model), interleaved; then the adapter files,
    merge time and merged-vs-unmerged difference, and merged inference against the base."""
    logger.info("[%s] unmerged inference ...", kind)
    peft = [m for m in runners if m in PEFT_METHODS]
    t = interleaved({"base": base_runner.infer, **{m: runners[m].infer for m in peft}}, reps)
    res["inference_base"] = summary(t["base"])
    for m in peft:
        res["methods"][m]["infer_unmerged"] = summary(t[m])
    with tempfile.TemporaryDirectory() as tmp:
        for m, r in runners.items():
            if m != "floor":
                r.model.save_pretrained(str(Path(tmp) / m))
                res["methods"][m]["file_bytes"] = dir_size(Path(tmp) / m)
    merged = {}
    for m in peft:
        r = runners[m]
        ref = r.infer()
        r.model.eval()
        t0 = time.perf_counter()
        merged[m] = r.model.merge_and_unload()
        res["methods"][m]["merge_s"] = time.perf_counter() - t0
        res["methods"][m]["merge_max_abs_diff"] = float((r.infer(merged[m]) - ref).abs().max())
    if merged:
        logger.info("[%s] merged inference ...", kind)
        inf = {"base": base_runner.infer}
        inf.update({m: (lambda mm=mm, r=runners[m]: r.infer(mm)) for m, mm in merged.items()})
        t = interleaved(inf, reps)
        res["inference_base_merged_round"] = summary(t["base"])
        for m in merged:
            res["methods"][m]["infer_merged"] = summary(t[m])


def bench_model(kind: str, methods: list[str], reps: int, quick: bool, memory: bool) -> dict:
    """Every figure of every method on one model (see the module docstring)."""
    import peft_gift  # noqa: F401 - registers GIFT / LoFiT

    spec = model_spec(kind, quick)
    logger.info("[%s] %s: building %d methods ...", kind, spec["name"], len(methods))
    base = build_base(spec)
    batch = make_batch(spec)
    runners = {m: Runner(m, base, spec, batch) for m in methods}
    res: dict = {"reps": reps, "model": spec["name"], "config": spec["config"], "batch": spec["batch"], "seq": spec["seq"],
                 "total_params": sum(p.numel() for p in base.parameters()), "methods": {}}
    if "lofit_bias" in methods:
        res["lofit_heads"] = [list(h) for h in lofit_heads(spec)]
    for m, r in runners.items():
        res["methods"][m] = {"trainable_params": r.trainable()}
    logger.info("[%s] train steps: %d interleaved rounds ...", kind, reps)
    t = interleaved({m: r.step for m, r in runners.items()}, reps)
    for m in methods:
        res["methods"][m]["step"] = summary(t[m])
    _timed_inference(kind, res, runners, runners.get("floor") or Runner("floor", base, spec, batch), reps)
    del runners
    if memory:
        logger.info("[%s] peak memory, one fresh process per method ...", kind)
        mem = measure_memory(kind, methods, quick)
        for m in methods:
            res["methods"][m]["memory"] = mem[m]
    add_ratios(res)
    return res


def profile(kind: str, methods: list[str], quick: bool, out: Path, name: str) -> None:
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
        logger.info("[profile] %s ...", m)
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            r.step()
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
        lines += [f"## {m}: total self CPU {total:.0f} ms", "", "```",
                  prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40),
                  "```", ""]
        del r
    (out / f"{name}_profile_{kind}.md").write_text("\n".join(lines))
    logger.info("wrote %s", out / f"{name}_profile_{kind}.md")


def count_flops(kinds: list[str], methods: list[str], quick: bool, out: Path, name: str) -> dict:
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
            logger.info("[flops] %s %s ...", kind, m)
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
    logger.info("wrote %s", out / f"{name}_flops.md")
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Speed / memory / size benchmark of GIFT, LoFiT and PEFT baselines, side "
                                            "by side in one process.")
    p.add_argument("--quick", action="store_true", help="tiny random models, 2 rounds (smoke test)")
    p.add_argument("--models", default="lm,enc", help="comma list of lm (SmolLM2-135M shapes), enc (MiniLM shapes)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--reps", type=int, default=None, help="timed interleaved rounds (default 5, quick 2)")
    p.add_argument("--lm-reps", type=int, default=None, help="rounds for the lm model (default: --reps)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method subprocess memory measurement")
    p.add_argument("--out", default=str(REPO / "benchmarks"), help="directory for speed.json / speed.md")
    p.add_argument("--name", default="speed", help="output file stem")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 with --quick, else torch's default = cores)")
    p.add_argument("--flops", action="store_true", help="only count the FLOPs of one step per method")
    p.add_argument("--profile", action="store_true", help="only profile one step of each method (torch.profiler)")
    return p


def main(argv=None) -> int:
    """``scripts/bench_speed.py``: writes <out>/<name>.json and .md and prints the markdown tables."""
    p = build_parser()
    a = p.parse_args(argv)
    if a.threads or a.quick:
        torch.set_num_threads(a.threads or 1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore")
    reps = a.reps or (2 if a.quick else 5)
    methods = [m for m in a.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    kinds, out = [k for k in a.models.split(",") if k], Path(a.out)
    if a.flops:
        out.mkdir(parents=True, exist_ok=True)
        count_flops(kinds, methods, a.quick, out, a.name)
        return 0
    if a.profile:
        out.mkdir(parents=True, exist_ok=True)
        for kind in kinds:
            profile(kind, methods, a.quick, out, a.name)
        return 0
    t0 = time.time()
    report = {"quick": a.quick, "reps": reps, "machine": machine_info(),
              "command": "python scripts/bench_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "memory_method": "peak RSS growth (VmHWM after reset via /proc/self/clear_refs) over the first train step, "
                               "fresh process per method",
              "models": {}}
    for kind in kinds:
        res = bench_model(kind, methods, (a.lm_reps or reps) if kind == "lm" else reps, a.quick, not a.no_memory)
        res["targets"] = targets(res)
        report["models"][kind] = res
    report["wall_s"] = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{a.name}.md").write_text(markdown(report))
    print(markdown(report))
    logger.info("wrote %s and %s in %.0f s", out / f"{a.name}.json", out / f"{a.name}.md", report["wall_s"])
    return 0
