"""Memory of a 4-bit (bitsandbytes NF4) vs an fp32 base for QGIFT, measured on this machine.

Each variant runs in a fresh subprocess: load the model, add GIFT (r=64, q_proj/v_proj), run one training step
(forward + backward + AdamW on Θ) on a fixed batch. Reported per variant: ``model.get_memory_footprint()`` (weights
and buffers as stored), the bytes of the decoder's linear weights, the trainable parameter count, the process's peak
RSS after loading and after the step (``ru_maxrss``, CPU), the step time, and the CUDA peak when run on a GPU.

    python scripts/quant_memory.py --model smollm2-135m --out results/quant_memory
        # writes quant_memory.json and quant_memory.md (a markdown table)

The measurement behind ``scripts/quant_memory.py``; each variant runs as ``python -m peft_gift.bench.quant_memory
--variant ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

# the folder holding the peft_gift package, for the measuring subprocesses (run from a checkout or installed)
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = ("fp32", "nf4")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(model_ref: str, variant: str, batch: int, seq: int) -> dict:
    """One variant in this process: load, add GIFT r=64 on q/v, one training step; the numbers of the table."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    import peft_gift
    from peft_gift.recipes.assets import resolve_model

    path = resolve_model(model_ref)
    cuda = torch.cuda.is_available()
    rss0 = _rss_mib()
    if variant == "fp32":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cuda" if cuda else "cpu")
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config,
                                                     device_map="cuda" if cuda else "cpu")
    footprint = model.get_memory_footprint()
    linear_bytes = 0
    for name, module in model.named_modules():
        if ".layers." in name and hasattr(module, "weight") and module.weight is not None and "proj" in name:
            linear_bytes += module.weight.numel() * module.weight.element_size()
            state = getattr(module.weight, "quant_state", None)
            if state is not None and getattr(state, "absmax", None) is not None:
                linear_bytes += state.absmax.numel() * state.absmax.element_size()
    rss_loaded = _rss_mib()
    model = get_peft_model(model, peft_gift.GiftConfig(r=64, target_modules=["q_proj", "v_proj"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(model.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model.train()
    t0 = time.perf_counter()
    loss = model(ids, labels=ids).loss
    loss.backward()
    opt.step()
    if cuda:
        torch.cuda.synchronize()
    step_s = time.perf_counter() - t0
    return {
        "variant": variant, "model": model_ref, "footprint_mib": footprint / 2**20,
        "decoder_linear_weights_mib": linear_bytes / 2**20, "trainable_params": trainable,
        "rss_before_load_mib": rss0, "peak_rss_after_load_mib": rss_loaded, "peak_rss_after_step_mib": _rss_mib(),
        "step_s": step_s, "loss": float(loss),
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def _measure_in_subprocess(args, variant: str) -> dict:
    """`measure` in a fresh interpreter (its peak RSS is this variant's alone)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(
        [sys.executable, "-m", "peft_gift.bench.quant_memory", "--model", args.model, "--variant", variant,
         "--batch", str(args.batch), "--seq", str(args.seq)], capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], meta: dict) -> str:
    """The table of ``quant_memory.md``."""
    lines = [
        "| base | footprint (MiB) | decoder q/k/v/o/gate/up/down weights (MiB) | trainable (GIFT r=64, q/v) | "
        "peak RSS after load (MiB) | peak RSS after 1 step (MiB) | step (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['footprint_mib']:.1f} | {r['decoder_linear_weights_mib']:.1f} | "
                     f"{r['trainable_params']:,} | {r['peak_rss_after_load_mib']:.0f} | "
                     f"{r['peak_rss_after_step_mib']:.0f} | {r['step_s']:.2f} |")
    return "\n".join(lines) + f"\n\n{meta['command']} — {meta['machine']}, batch {meta['batch']}×{meta['seq']} tokens\n"


def main(argv=None) -> int:
    """``scripts/quant_memory.py``: writes <out>/quant_memory.json and .md and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="results/quant_memory")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(measure(args.model, args.variant, args.batch, args.seq)))
        return 0
    rows = [_measure_in_subprocess(args, variant) for variant in VARIANTS]
    import bitsandbytes

    meta = {"command": "python scripts/quant_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.node()}: {os.cpu_count()} CPU cores, {platform.platform()}",
            "bitsandbytes": bitsandbytes.__version__, "batch": args.batch, "seq": args.seq}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quant_memory.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown(rows, meta)
    (out / "quant_memory.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":  # the measuring subprocess: python -m peft_gift.bench.quant_memory --variant ...
    raise SystemExit(main())
