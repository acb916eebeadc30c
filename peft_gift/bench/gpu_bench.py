"""The ``bench`` check of :mod:`.gpu_check`: one training step of each method (GIFT, LoFiT stage 2, LoRA and the
frozen floor), its median time and CUDA peak memory."""

from __future__ import annotations

import statistics
import time

import torch

from .gpu_setup import BENCH_METHODS, Setup, add_adapter, build_base, free, make_batch


def check_bench(setup: Setup) -> dict:
    config, results, passed = setup.bench_config, {}, True
    batch = make_batch(config, setup.bench_batch, setup.device)
    for method in BENCH_METHODS:
        try:
            results[method] = bench_method(setup, method, config, batch)
            passed &= results[method]["loss_finite"]
        except Exception as error:  # one method failing does not stop the others
            results[method] = {"error": f"{type(error).__name__}: {error}"}
            passed = False
        free(setup)
    floor = results.get("floor", {}).get("step_ms_median")
    lora = results.get("lora", {}).get("step_ms_median")
    for entry in results.values():
        step = entry.get("step_ms_median")
        entry["vs_floor"] = step / floor if step and floor else None
        entry["vs_lora"] = step / lora if step and lora else None
    return {"passed": passed, "dtype": str(setup.dtype).replace("torch.", ""), "batch": list(setup.bench_batch),
            "model": config, "methods": results,
            "memory_note": None if setup.cuda else "peak memory is measured on CUDA only (max_memory_allocated)"}


def bench_method(setup: Setup, method: str, config: dict, batch: dict) -> dict:
    model = add_adapter(build_base(config, setup.device, setup.dtype), method, setup, config).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None
    embeds = None
    if method == "floor":
        with torch.no_grad():
            embeds = model.get_input_embeddings()(batch["input_ids"])
    losses = []

    def step() -> None:
        if embeds is not None:  # the frozen floor: backward to the input embeddings only
            x = embeds.detach().requires_grad_(True)
            loss = model(inputs_embeds=x, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
            loss.backward()
        else:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    weights_bytes = torch.cuda.memory_allocated(setup.device) if setup.cuda else None
    for _ in range(setup.warmup):
        step()
    setup.sync()
    if setup.cuda:
        torch.cuda.reset_peak_memory_stats(setup.device)
    times = []
    for _ in range(setup.reps):
        setup.sync()
        start = time.perf_counter()
        step()
        setup.sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(setup.device) if setup.cuda else None
    result = {
        "trainable_params": sum(p.numel() for p in params),
        "step_ms_median": 1e3 * statistics.median(times), "step_ms_min": 1e3 * min(times),
        "step_ms_max": 1e3 * max(times), "timed_steps": len(times), "warmup_steps": setup.warmup,
        "peak_mib": None if peak is None else peak / 2**20,
        "weights_mib": None if weights_bytes is None else weights_bytes / 2**20,
        "loss_finite": bool(torch.isfinite(torch.stack(losses)).all()),
    }
    return result
