"""One command that checks peft-gift on a GPU: speed and memory of a training step, and correctness on CUDA.

    python scripts/gpu_check.py --out /tmp/gpu_check                       # CUDA, ~1B Llama shapes (≤ 8 min, one H100/H200)
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/gpu_check   # tiny Llama on CPU (seconds; the test suite)

Writes ``<out>/gpu_check.json`` (everything measured) and ``<out>/gpu_check.md`` (the same as tables). Every check
records ``status`` (pass / fail / skip), its numbers and, if it failed, the error; a failing check does not stop the
others. The exit status is 1 if any check failed.

Models are random-init from a ``LlamaConfig`` (nothing is downloaded): on CUDA a ~1B shape (hidden 2048, 16 layers,
32 heads, 8 KV heads, intermediate 5632, vocab 32000) for the benchmark, and the same shape with 4 layers for the
correctness checks; ``--tiny``: hidden 128, 2 layers, 4 heads of 32 (bitsandbytes' 4-bit blocks need a multiple of 64).

Checks:

* ``bench``: one training step (forward, backward, AdamW step, zero_grad) on a fixed batch (4×512 tokens on CUDA) in
  bf16 — GIFT r=64 on q/v, LoFiT stage 2 (offsets on 3% of the heads), PEFT LoRA r=8 on q/v, and the frozen floor
  (every weight frozen, the loss back-propagated to ``inputs_embeds``, no optimizer): median step time over timed
  steps after warm-up steps (``torch.cuda.synchronize`` around each) and the peak of
  ``torch.cuda.max_memory_allocated`` over the timed steps (weights, gradients, optimizer state, activations);
* ``merge``: merged vs unmerged logits of GIFT and LoFiT with adapters of a visible effect, in the benchmark's dtype
  (16-bit: at most twice the error of PEFT's LoRA merged into the same base, which measures what rounding merged
  weights costs); unmerge restores the base weights (16-bit: bit for bit); ``merge_and_unload`` gives the merged
  logits;
* ``save_load``: ``save_pretrained`` → ``PeftModel.from_pretrained`` onto a fresh base on the device: same tensors,
  same logits, adapter on the device;
* ``device_map_split``: a GIFT model dispatched with accelerate's ``dispatch_model`` over cuda:0 (embeddings, the
  first half of the decoder layers, LM head, Θ) and the CPU (the other layers, final norm): forward, backward
  (gradient reaching Θ) and merge, against the same model on one device (CUDA only);
* ``qgift_4bit``: GIFT on a bitsandbytes 4-bit (NF4) base: a training step changes only Θ; merge (dequantize → merge
  → requantize) against the unmerged model; unmerge restores the 4-bit storage exactly (needs bitsandbytes);
* ``compile``: ``torch.compile`` of a GIFT model (inductor on CUDA, ``aot_eager`` on CPU): no graph breaks, forward
  and backward (loss, logits, Θ's gradient) match eager.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
import traceback

import torch

from .gpu_bench import check_bench
from .gpu_checks import check_compile, check_device_map_split, check_merge, check_qgift_4bit, check_save_load
from .gpu_setup import CHECKS, Setup, Skip, free

logger = logging.getLogger(__name__)

CHECK_FUNCTIONS = {"bench": check_bench, "merge": check_merge, "save_load": check_save_load,
                   "device_map_split": check_device_map_split, "qgift_4bit": check_qgift_4bit, "compile": check_compile}


def run_checks(setup: Setup, names, functions=None, log=logger.info) -> dict:
    """Run each named check; record pass / fail / skip with its numbers, the error and the time it took."""
    functions = functions or CHECK_FUNCTIONS
    results = {}
    for name in names:
        log(f"[gpu_check] {name} ...")
        start = time.perf_counter()
        try:
            numbers = functions[name](setup)
            status = "pass" if numbers.pop("passed") else "fail"
            results[name] = {"status": status, **numbers}
        except Skip as reason:
            results[name] = {"status": "skip", "reason": str(reason)}
        except Exception as error:  # recorded; the other checks still run
            results[name] = {"status": "fail", "error": f"{type(error).__name__}: {error}",
                             "traceback": traceback.format_exc(limit=-6)}
        results[name]["seconds"] = time.perf_counter() - start
        log(f"[gpu_check] {name}: {results[name]['status']} ({results[name]['seconds']:.1f} s)")
        free(setup)
    return results


def machine(setup: Setup) -> dict:
    import peft
    import transformers

    info = {"device": str(setup.device), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version(), "cpu_cores": os.cpu_count()}
    if setup.cuda:
        props = torch.cuda.get_device_properties(setup.device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda)
    return info


def _num(value, digits=3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown(report: dict) -> str:
    lines = ["# peft-gift GPU check", "", f"Machine: `{json.dumps(report['machine'])}`", "",
             f"Total: {report['seconds']:.0f} s", "", "| check | status | numbers |", "|---|---|---|"]
    for name, result in report["checks"].items():
        if result["status"] == "skip":
            numbers = result["reason"]
        elif "error" in result:
            numbers = result["error"].replace("|", "\\|").replace("\n", " ")[:300]
        else:
            parts = [f"{k}={_num(v)}" for k, v in result.items()
                     if k not in ("status", "methods", "model", "seconds") and not isinstance(v, dict)]
            for method, values in result.get("methods", {}).items() if name != "bench" else ():
                parts.append(f"**{method}**: " + ", ".join(f"{k}={_num(v)}" for k, v in values.items()))
            numbers = "; ".join(parts)
        lines.append(f"| {name} | {result['status']} | {numbers} |")
    bench = report["checks"].get("bench", {})
    if bench.get("methods"):
        lines += ["", f"## Training step ({bench['dtype']}, batch {bench['batch'][0]}×{bench['batch'][1]} tokens)", "",
                  "| method | trainable params | step ms, median (min–max) | × floor | × LoRA | peak MiB |",
                  "|---|---|---|---|---|---|"]
        for method, r in bench["methods"].items():
            if "error" in r:
                lines.append(f"| {method} | error: {r['error'][:120]} | | | | |")
                continue
            lines.append(f"| {method} | {r['trainable_params']:,} | {r['step_ms_median']:.1f} "
                         f"({r['step_ms_min']:.1f}–{r['step_ms_max']:.1f}) | {_num(r['vs_floor'])} | "
                         f"{_num(r['vs_lora'])} | {_num(r['peak_mib'], 5)} |")
        if bench.get("memory_note"):
            lines += ["", bench["memory_note"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """``scripts/gpu_check.py``: writes <out>/gpu_check.json and .md, prints the markdown; 1 if any check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny Llama (seconds): the smoke run of the test suite")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    parser.add_argument("--reps", type=int, default=None, help="timed training steps per method (10; --tiny: 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed training steps per method before timing (3; --tiny: 1)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False (use --device cpu --tiny)")
    names = [n for n in args.checks.split(",") if n]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparisons mean fp32 (bf16 runs are unaffected)

    args.reps = args.reps or (3 if args.tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    setup = Setup(args.device, args.tiny, args.reps, args.warmup)
    start = time.perf_counter()
    checks = run_checks(setup, names)
    report = {"machine": machine(setup), "args": vars(args), "checks": checks, "seconds": time.perf_counter() - start}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(markdown(report))
    print(markdown(report))
    return 1 if any(r["status"] == "fail" for r in checks.values()) else 0
