"""What the GPU check (:mod:`.gpu_check`) runs on: the `Setup` (device, model shapes, batch, dtype), the models,
adapters and batches its checks build, and the differences they measure."""

from __future__ import annotations

import math

import torch

from .tiny import tiny_causal_lm

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


def build_base(config: dict, device, dtype, seed: int = 0):
    """A random-init LlamaForCausalLM created directly on ``device`` in ``dtype``, every weight frozen."""
    model = tiny_causal_lm("llama", seed=seed, device=device, **config)
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


def _device_str(device: torch.device) -> str:
    """``cuda`` → ``cuda:0`` (where tensors report their device with an index)."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)

