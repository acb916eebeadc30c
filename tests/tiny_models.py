"""Tiny random transformers models shared by the tests (CPU, seconds)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BertConfig,
    Dinov2Config,
    Dinov2Model,
    GPT2Config,
    LlamaConfig,
    RobertaConfig,
    T5Config,
    ViTConfig,
    ViTForImageClassification,
)


def tiny_llama(seed: int = 0, **overrides):
    """Llama with grouped-query attention: 4 heads, 2 KV heads, head_dim 16, 2 layers."""
    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    cfg.update(overrides)
    return AutoModelForCausalLM.from_config(LlamaConfig(**cfg)).eval()


def tiny_gpt2(seed: int = 0, **overrides):
    """GPT-2 (Conv1D projections): 4 heads of 16, 2 layers."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    cfg.update(overrides)
    return AutoModelForCausalLM.from_config(GPT2Config(**cfg)).eval()


def _encoder_kwargs(**overrides):
    cfg = dict(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, num_labels=2,
    )
    cfg.update(overrides)
    return cfg


def tiny_bert(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(BertConfig(**_encoder_kwargs(**overrides))).eval()


def tiny_roberta(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    kw = _encoder_kwargs(**overrides)
    kw.setdefault("pad_token_id", 1)
    kw["max_position_embeddings"] = kw["max_position_embeddings"] + 2
    return AutoModelForSequenceClassification.from_config(RobertaConfig(**kw)).eval()


def tiny_vit(seed: int = 0, **overrides):
    """ViT image classifier: 32x32 images, patch 8 (16 patches), 4 heads of 16, 2 layers."""
    torch.manual_seed(seed)
    cfg = dict(
        image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=3,
    )
    cfg.update(overrides)
    return ViTForImageClassification(ViTConfig(**cfg)).eval()


def tiny_dinov2(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(
        image_size=28, patch_size=14, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    )
    cfg.update(overrides)
    return Dinov2Model(Dinov2Config(**cfg)).eval()


def tiny_t5(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0,
    )
    cfg.update(overrides)
    return AutoModelForSeq2SeqLM.from_config(T5Config(**cfg)).eval()


def text_inputs(batch: int = 2, seq: int = 10, vocab: int = 100, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def image_inputs(batch: int = 2, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, size, size, generator=g)}


def t5_inputs(batch: int = 2, seq: int = 8, seed: int = 0):
    inp = text_inputs(batch, seq, seed=seed)
    inp["decoder_input_ids"] = text_inputs(batch, 5, seed=seed + 1)["input_ids"]
    return inp


def model_output(model, inputs) -> torch.Tensor:
    """The main output tensor of any of the tiny models (logits or last hidden state)."""
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
