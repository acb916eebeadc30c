"""The correctness checks of :mod:`.gpu_check` (merge, save/load, device-map split, 4-bit QGIFT, torch.compile):
each returns a dict of numbers with ``"passed": bool``, or raises `Skip` where it does not apply."""

from __future__ import annotations

import copy
import math
import tempfile
import time

import torch

from .gpu_setup import (
    Setup,
    Skip,
    _device_str,
    adapter_tensors,
    add_adapter,
    build_base,
    free,
    logits_of,
    make_batch,
    max_diff,
    randomise_adapter,
    rel_diff,
)


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
