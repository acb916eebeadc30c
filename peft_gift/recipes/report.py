"""What a run reports beside its metrics: the machine it ran on, the markdown results table, and where the progress
messages of the recipes (``logging`` under ``peft_gift``) are shown when a command runs them."""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager


@contextmanager
def console_logging(stream, prefix: str = ""):
    """Show ``peft_gift``'s INFO messages on ``stream`` (one line each, after ``prefix``) while the block runs: what the
    command-line entry points do; as a library the recipes only log."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    package = logging.getLogger("peft_gift")
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


def machine_info() -> dict:
    """What a measurement ran on: CPU model, cores, torch threads, device and library versions."""
    import platform

    import peft
    import torch
    import transformers

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    device = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    return {"device": device, "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(), "os": f"{platform.system()} {platform.machine()}"}


def describe_machine(info: dict) -> str:
    return (f"{info['device']} ({info['cpu']}), {info['cores']} cores, {info['torch_threads']} torch thread(s), "
            f"torch {info['torch']}, {info['os']}")


def _fmt(v) -> str:
    return "—" if v is None else (f"{100 * v:.1f}%" if isinstance(v, float) and not math.isnan(v) else str(v))


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | dataset (train/eval) | method | trainable params (head) | metric | before | after | "
            "train time | wall time |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        ds = r["dataset"] if isinstance(r["dataset"], str) else "+".join(map(str, r["dataset"]))
        m = r["metric"]
        lines.append(
            f"| {r['model']} | {ds} ({r['train_examples']}/{r['eval_examples']}) | {r['method']} | "
            f"{r['trainable_params']:,} ({r['head_params']:,}) | {m} | {_fmt(r['before'].get(m))} | "
            f"{_fmt(r['after'].get(m))} | {r['train_time_s']:.0f} s | {r['wall_time_s']:.0f} s |"
        )
    return "\n".join(lines)
