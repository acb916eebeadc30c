"""The speed benchmark's models and methods: random-init models with real architectures' shapes, each method built
by the recipe method registry, and a runner for one training step / one inference forward."""

from __future__ import annotations

import copy

import torch

from ..recipes import apply_method
from ..recipes.tasks import TASKS

METHODS = ("floor", "gift_module", "gift_all", "lora", "vera", "ia3", "lofit_bias", "full")
PEFT_METHODS = ("gift_module", "gift_all", "lora", "vera", "ia3", "lofit_bias")


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
