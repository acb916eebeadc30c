#!/usr/bin/env python
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
import copy
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)

import torch  # noqa: E402

BENCH_METHODS = ("floor", "gift", "lofit2", "lora")
CHECKS = ("bench", "merge", "save_load", "device_map_split", "qgift_4bit", "compile")


class Skip(Exception):
    """Raised by a check that does not apply here (the reason is recorded)."""


class Setup:
    """What the checks run on: device, model shapes, batch, dtype."""

    def __init__(self, device: str, tiny: bool, reps: int, warmup: int):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.tiny, self.reps, self.warmup = tiny, reps, warmup
        if tiny:
            self.bench_config = dict(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                     max_position_embeddings=64, tie_word_embeddings=False)
            self.check_config = self.bench_config
            self.bench_batch, self.check_batch, self.r = (2, 16), (2, 16), 8
        else:  # a ~1B Llama shape: 0.85B parameters (untied embeddings)
            self.bench_config = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                                     num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                                     tie_word_embeddings=False)
            self.check_config = dict(self.bench_config, num_hidden_layers=4)
            self.bench_batch, self.check_batch, self.r = (4, 512), (2, 128), 64
        # bf16 is what the benchmark is about on CUDA; on the CPU (smoke runs) fp32
        self.dtype = torch.bfloat16 if self.cuda else torch.float32

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


# ----------------------------------------------------------------------------------------------------------------
# models, adapters, batches


def build_base(config: dict, device, dtype, seed: int = 0):
    """A random-init LlamaForCausalLM created directly on ``device`` in ``dtype``, every weight frozen."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**config))
    model.to(dtype)
    model.config.use_cache = False
    model.requires_grad_(False)
    return model.eval()


def lofit_heads(config: dict) -> list[tuple[int, int]]:
    """K ≈ 3% of all heads (at least 1), a fixed pseudo-random choice (speed does not depend on which heads)."""
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    k = max(1, round(0.03 * layers * heads))
    flat = torch.randperm(layers * heads, generator=torch.Generator().manual_seed(0))[:k].tolist()
    return sorted((i // heads, i % heads) for i in flat)


def add_adapter(model, method: str, setup: Setup, config: dict):
    """``model`` with ``method``'s adapter (``floor``: the model itself)."""
    from peft import LoraConfig, get_peft_model

    import peft_gift

    if method == "floor":
        return model
    if method == "gift":
        peft_config = peft_gift.GiftConfig(r=setup.r, target_modules=["q_proj", "v_proj"])
    elif method == "lofit2":
        peft_config = peft_gift.LofitConfig(mode="bias", heads=lofit_heads(config))
    elif method == "lora":
        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    else:
        raise ValueError(method)
    torch.manual_seed(1)
    return get_peft_model(model, peft_config)


def randomise_adapter(model, config: dict, rank: int, seed: int = 2) -> None:
    """Give the adapter values with a visible effect (GIFT's ψ and LoRA's B start at 0): GIFT φ, ψ ~ N(0, σ²) with
    ‖φψ‖ ≈ 0.1 (σ² = 0.1 / √(d·r)); LoRA A, B and LoFiT offsets ~ N(0, 0.05²)."""
    g = torch.Generator().manual_seed(seed)
    gift_std = math.sqrt(0.1 / math.sqrt(config["hidden_size"] * rank))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            std = gift_std if ("gift_phi" in name or "gift_psi" in name) else 0.05
            param.copy_(torch.randn(param.shape, generator=g).to(param.device, param.dtype) * std)


def make_batch(config: dict, shape: tuple[int, int], device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config["vocab_size"], shape, generator=g).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def logits_of(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float().to(a.device)).abs().max())


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (float64)."""
    a, b = a.detach().double(), b.detach().double().to(a.device)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def free(setup: Setup) -> None:
    import gc

    gc.collect()
    if setup.cuda:
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------
# checks: each returns a dict of numbers (with "passed": bool) or raises Skip


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


def check_merge(setup: Setup) -> dict:
    """Merged vs unmerged logits. fp32: equal up to rounding. 16-bit: merging rounds the merged weights (LoFiT: the
    new bias) to 16 bits, which moves the logits by a few units of their rounding whatever the adapter; PEFT's LoRA
    merged into the same base is the measure of that: GIFT's and LoFiT's error must be at most twice LoRA's, and
    below half the adapter's effect."""
    config = setup.check_config
    batch = make_batch(config, setup.check_batch, setup.device)
    fp32 = setup.dtype == torch.float32
    out, passed = {}, True
    for method in ("lora", "gift", "lofit2"):  # LoRA first: the reference for the 16-bit tolerance
        model = add_adapter(build_base(config, setup.device, setup.dtype), method, setup, config)
        randomise_adapter(model, config, setup.r)
        model.eval()
        before = {n: p.detach().clone() for n, p in model.named_parameters() if ".base_layer." in n}
        unmerged = logits_of(model, batch)
        with model.disable_adapter():
            effect = max_diff(logits_of(model, batch), unmerged)
        model.merge_adapter()
        merged = logits_of(model, batch)
        model.unmerge_adapter()
        after = {n: p.detach() for n, p in model.named_parameters() if ".base_layer." in n}
        # 16-bit weights: GIFT and LoFiT keep a copy while merged and restore it bit for bit; fp32: GIFT divides the
        # merge out (Woodbury, to ~10 units of rounding), so allow that much
        weight_error = max(max_diff(after[n], before[n]) for n in before) if before.keys() == after.keys() else math.inf
        weight_scale = max(float(w.abs().max()) for w in before.values())
        restored = max_diff(logits_of(model, batch), unmerged)
        plain = model.merge_and_unload()
        unloaded = max_diff(logits_of(plain, batch), merged)
        error = max_diff(merged, unmerged)
        scale = max(1.0, float(unmerged.abs().max()))
        entry = {"adapter_effect": effect, "merged_vs_unmerged": error, "unmerged_weights_max_diff": weight_error,
                 "unmerged_again_vs_unmerged": restored, "merge_and_unload_vs_merged": unloaded}
        if method == "lora":  # the reference, not a check of this library
            lora_error = error
            entry["reference_only"] = True
        else:
            tolerance = 1e-4 * scale if fp32 else min(2 * lora_error, 0.5 * effect)
            # merge_and_unload gives the merged weights; LoFiT's adds zero q/k/v/o biases (a reloadable Llama
            # config), which may change which 16-bit kernel runs, so it is held to the merge's tolerance
            entry["tolerance"] = tolerance
            entry["passed"] = ok = (effect > 0 and error <= tolerance and unloaded <= tolerance
                                    and weight_error <= (1e-5 * weight_scale if fp32 else 0.0)
                                    and restored <= (1e-4 * scale if fp32 else 0.0))
            passed &= ok
        out[method] = entry
        del model, plain
        free(setup)
    return {"passed": passed, "dtype": str(setup.dtype).replace("torch.", ""), "methods": out}


def check_save_load(setup: Setup) -> dict:
    from peft import PeftModel

    config = setup.check_config
    batch = make_batch(config, setup.check_batch, setup.device)
    out, passed = {}, True
    for method in ("gift", "lofit2"):
        model = add_adapter(build_base(config, setup.device, setup.dtype), method, setup, config)
        randomise_adapter(model, config, setup.r)
        model.eval()
        expected = logits_of(model, batch)
        saved = {n: t.clone() for n, t in adapter_tensors(model).items()}
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            del model
            loaded = PeftModel.from_pretrained(build_base(config, setup.device, setup.dtype), folder).eval()
        tensors = {n: p.detach() for n, p in loaded.named_parameters() if n in saved}
        same = tensors.keys() == saved.keys() and all(torch.equal(tensors[n], saved[n]) for n in saved)
        devices = sorted({str(t.device) for t in tensors.values()})
        diff = max_diff(logits_of(loaded, batch), expected)
        ok = same and devices == [str(_device_str(setup.device))] and diff <= 1e-6 * max(1.0, float(expected.abs().max()))
        out[method] = {"tensors_equal": same, "adapter_devices": devices, "logits_max_diff": diff, "passed": ok}
        passed &= ok
        del loaded
        free(setup)
    return {"passed": passed, "methods": out}


def _device_str(device: torch.device) -> str:
    """``cuda`` → ``cuda:0`` (where tensors report their device with an index)."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def split_device_map(peft_model, main: str, other: str) -> dict:
    """Embeddings, the first half of the decoder layers, the LM head and GIFT's Θ (on the tuner) on ``main``; the
    other layers and the final norm on ``other``."""
    layers = len(peft_model.base_model.model.model.layers)
    device_map = {"base_model.model.model.embed_tokens": main, "base_model.model.model.rotary_emb": main,
                  "base_model.model.model.norm": other, "base_model.model.lm_head": main,
                  "base_model.gift_phi": main, "base_model.gift_psi": main}
    for i in range(layers):
        device_map[f"base_model.model.model.layers.{i}"] = main if i < layers // 2 else other
    return device_map


def check_device_map_split(setup: Setup, devices: tuple[str, str] | None = None) -> dict:
    """``devices`` (main, other): ("cuda:0", "cpu") on CUDA; the test suite passes ("cpu", "cpu") to run the code."""
    from accelerate import dispatch_model

    if devices is None:
        if not setup.cuda:
            raise Skip("needs CUDA: splits the model over cuda:0 and the CPU")
        devices = (_device_str(setup.device), "cpu")
    main, other = devices
    config = setup.check_config
    # fp32: the CPU half would be slow in bf16, and fp32 makes CPU and GPU results comparable
    model = add_adapter(build_base(config, "cpu", torch.float32), "gift", setup, config)
    randomise_adapter(model, config, setup.r)
    reference = copy.deepcopy(model).to(main)
    batch = make_batch(config, setup.check_batch, main)

    def forward_backward(m) -> tuple[torch.Tensor, torch.Tensor, dict]:
        m.train()
        m.zero_grad(set_to_none=True)
        out = m(**batch)
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.requires_grad and p.grad is not None}
        return out.loss.detach(), out.logits.detach().float(), grads

    ref_loss, ref_logits, ref_grads = forward_backward(reference)
    device_map = split_device_map(model, main, other)
    dispatch_model(model, device_map=device_map, main_device=main, force_hooks=True)
    layer_devices = sorted({str(next(layer.parameters()).device) for layer in model.base_model.model.model.layers})
    theta_devices = sorted({str(p.device) for n, p in model.named_parameters() if "gift_" in n})
    loss, logits, grads = forward_backward(model)
    scale = max(1.0, float(ref_logits.abs().max()))
    logits_diff = max_diff(logits, ref_logits)
    grad_rel = max((rel_diff(grads[n], g) for n, g in ref_grads.items() if n in grads), default=math.inf)
    grads_reach_theta = grads.keys() == ref_grads.keys() and bool(grads) and all(
        float(g.abs().sum()) > 0 for g in grads.values())
    model.eval()
    unmerged = logits_of(model, batch)
    merged_model = model.merge_and_unload()
    merge_diff = max_diff(logits_of(merged_model, batch), unmerged)
    passed = (logits_diff <= 1e-4 * scale and abs(float(loss) - float(ref_loss)) <= 1e-4 and grad_rel <= 1e-3
              and grads_reach_theta and merge_diff <= 1e-4 * scale)
    del model, merged_model, reference
    free(setup)
    return {"passed": passed, "devices": list(devices), "layer_devices": layer_devices, "theta_devices": theta_devices,
            "logits_max_diff": logits_diff, "loss_diff": abs(float(loss) - float(ref_loss)),
            "theta_grad_max_rel_diff": grad_rel, "theta_grads_nonzero": grads_reach_theta,
            "merged_vs_unmerged": merge_diff, "logits_scale": scale}


def check_qgift_4bit(setup: Setup) -> dict:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise Skip(f"bitsandbytes is not installed ({error})") from None
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from peft_gift.gift.layer import GiftLayer

    config = setup.check_config
    batch = make_batch(config, setup.check_batch, setup.device)
    compute_dtype = setup.dtype
    with tempfile.TemporaryDirectory() as folder:
        build_base(config, "cpu", compute_dtype).save_pretrained(folder)
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=compute_dtype)
        base = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, dtype=compute_dtype,
                                                    device_map={"": _device_str(setup.device)})
    model = add_adapter(base, "gift", setup, config)
    layer = next(m for m in model.modules() if isinstance(m, GiftLayer))
    base_type = type(layer.get_base_layer()).__name__
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    theta = {n: p.detach().clone() for n, p in adapter_tensors(model).items()}
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    setup.sync()
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    setup.sync()
    step_ms = 1e3 * (time.perf_counter() - start)
    loss = float(loss.detach())
    optimizer.zero_grad(set_to_none=True)
    # ψ starts at 0, so the first step moves ψ (by ~lr with AdamW) and not yet φ
    theta_moved = max(max_diff(p, theta[n]) for n, p in adapter_tensors(model).items())
    frozen_same = all(torch.equal(p.detach(), frozen[n]) for n, p in model.named_parameters() if n in frozen)

    randomise_adapter(model, config, setup.r)
    storage = layer.get_base_layer().weight.detach().clone()
    model.merge_adapter()  # dequantize -> merge -> requantize
    requantized = type(layer.get_base_layer()).__name__ == base_type
    model.unmerge_adapter()
    storage_restored = torch.equal(layer.get_base_layer().weight.detach(), storage)
    effect, error = merge_error(model, batch)
    # what requantizing costs any merge: PeftModel's LoRA merged into the same 4-bit base
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    lora = get_peft_model(model.unload(), LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora_effect, lora_error = merge_error(lora, batch)
    passed = (math.isfinite(loss) and theta_moved > 1e-4 and frozen_same and requantized and storage_restored
              and effect > 0 and lora_effect > 0 and error <= 2 * lora_error)
    del model, base, optimizer, lora
    free(setup)
    return {"passed": passed, "base_layer": base_type, "loss": loss, "step_ms": step_ms,
            "theta_max_change": theta_moved, "frozen_weights_unchanged": frozen_same, "adapter_effect": effect,
            "merged_vs_unmerged": error, "lora_adapter_effect": lora_effect, "lora_merged_vs_unmerged": lora_error,
            "merge_keeps_4bit_layer": requantized, "unmerge_restores_4bit_storage": storage_restored}


def merge_error(model, batch) -> tuple[float, float]:
    """(max |adapter effect on the logits|, max |merged − unmerged logits|); leaves the adapter unmerged."""
    model.eval()
    unmerged = logits_of(model, batch)
    with model.disable_adapter():
        effect = max_diff(logits_of(model, batch), unmerged)
    model.merge_adapter()
    error = max_diff(logits_of(model, batch), unmerged)
    model.unmerge_adapter()
    return effect, error


def check_compile(setup: Setup) -> dict:
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    config = setup.check_config
    backend = "inductor" if setup.cuda else "aot_eager"  # inductor on CPU needs a C++ toolchain and minutes
    # fp32 so that compiled and eager agree to rounding (bf16 fusions legitimately round differently)
    model = add_adapter(build_base(config, setup.device, torch.float32), "gift", setup, config)
    randomise_adapter(model, config, setup.r)
    model.train()
    batch = make_batch(config, setup.check_batch, setup.device)

    def run(m) -> tuple[torch.Tensor, torch.Tensor, dict]:
        model.zero_grad(set_to_none=True)
        out = m(**batch)
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.loss.detach(), out.logits.detach().float(), grads

    eager_loss, eager_logits, eager_grads = run(model)
    dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=backend)
    setup.sync()
    start = time.perf_counter()
    loss, logits, grads = run(compiled)  # the first call compiles
    setup.sync()
    compile_s = time.perf_counter() - start
    graph_breaks = sum(counters["graph_break"].values())
    graphs = counters["stats"]["unique_graphs"]
    logits_rel = rel_diff(logits, eager_logits)
    grad_rel = max((rel_diff(grads[n], g) for n, g in eager_grads.items() if n in grads), default=math.inf)
    passed = (graph_breaks == 0 and grads.keys() == eager_grads.keys() and bool(grads) and logits_rel <= 1e-4
              and grad_rel <= 1e-3 and abs(float(loss) - float(eager_loss)) <= 1e-4 * max(1.0, float(eager_loss)))
    dynamo.reset()
    return {"passed": passed, "backend": backend, "graphs": graphs, "graph_breaks": graph_breaks,
            "first_call_s": compile_s, "loss_diff": abs(float(loss) - float(eager_loss)),
            "logits_rel_diff": logits_rel, "theta_grad_max_rel_diff": grad_rel}


CHECK_FUNCTIONS = {"bench": check_bench, "merge": check_merge, "save_load": check_save_load,
                   "device_map_split": check_device_map_split, "qgift_4bit": check_qgift_4bit, "compile": check_compile}


def run_checks(setup: Setup, names, functions=None, log=print) -> dict:
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


# ----------------------------------------------------------------------------------------------------------------
# report


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


if __name__ == "__main__":
    raise SystemExit(main())
