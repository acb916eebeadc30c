"""Tiny random transformers models shared by the tests (CPU, seconds).

Built from transformers alone, never importing peft_gift: fresh processes that must not import the plugin build
their models here (tests/test_export.py loads the LoRA exports with plain PEFT; tests/test_architecture.py runs PEFT
with and without it). The package's factory, `peft_gift.bench.tiny.tiny_causal_lm`, builds the same decoders with
the same defaults and seeds; tests/test_tiny_factory.py holds the two to bit-identical weights."""

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


def randomise_theta(peft_model, std=0.1, seed=1):
    """Give every GIFT Θ (φ and ψ) random N(0, std²) values, so that an adapter is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".gift_phi." in name or ".gift_psi." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def random_gift_model(base=None, *, std=0.1, seed=1, **config):
    """A PeftModel with one GIFT adapter ("default"; r=4 and the default targets unless ``config`` says otherwise) whose
    Θ is random (``randomise_theta(std, seed)``), on ``base`` (a fresh tiny Llama by default)."""
    from peft import get_peft_model

    from peft_gift import GiftConfig

    config.setdefault("r", 4)
    model = get_peft_model(tiny_llama() if base is None else base, GiftConfig(**config))
    randomise_theta(model, std=std, seed=seed)
    return model


def randomise_lofit(peft_model, std=0.3, seed=1):
    """Give every LoFiT head scale and offset (all adapters) random N(0, std²) values, layer by layer."""
    from peft_gift.lofit import LofitLayer

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in peft_model.modules():
            if isinstance(layer, LofitLayer):
                for container in (layer.lofit_head_scale, layer.lofit_head_offset):
                    for p in container.parameters():
                        p.copy_(torch.randn(p.shape, generator=g) * std)


def save_checkpoint(model, folder, words, kind: str = "llama"):
    """Save ``model`` with a `word_tokenizer` over ``words`` into ``folder`` (a local checkpoint for the CLI)."""
    model.save_pretrained(folder)
    word_tokenizer(words, kind).save_pretrained(folder)


def word_tokenizer(words, kind: str = "llama"):
    """A word-level fast tokenizer over ``words`` (plus [PAD] [UNK] [CLS] [SEP] </s>); ``kind="bert"`` adds CLS/SEP,
    otherwise it has an EOS token and no special tokens around the text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + [w for w in dict.fromkeys(words) if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    kw = dict(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    if kind == "bert":
        return PreTrainedTokenizerFast(**kw, cls_token="[CLS]", sep_token="[SEP]")
    return PreTrainedTokenizerFast(**kw, eos_token="</s>", model_input_names=["input_ids", "attention_mask"])


# --- Llama-family variants used by tests/test_workflows.py (appended; all: hidden 64, 2 layers, 4 heads of 16) ---


def _decoder_kwargs(**overrides):
    cfg = dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0,
    )
    cfg.update(overrides)
    return cfg


def tiny_mistral(seed: int = 0, **overrides):
    """Mistral with GQA (2 KV heads) and a sliding window longer than the tiny inputs."""
    from transformers import MistralConfig

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(MistralConfig(**_decoder_kwargs(sliding_window=32, **overrides))).eval()


def tiny_qwen2(seed: int = 0, **overrides):
    """Qwen2 (q/k/v projections with bias, o_proj without) with GQA (2 KV heads)."""
    from transformers import Qwen2Config

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(Qwen2Config(**_decoder_kwargs(**overrides))).eval()


def tiny_gemma(seed: int = 0, **overrides):
    """Gemma: head_dim must be given explicitly (16, so that 4 heads · 16 = hidden 64); one KV head (MQA)."""
    from transformers import GemmaConfig

    torch.manual_seed(seed)
    kw = _decoder_kwargs(head_dim=16, num_key_value_heads=1)
    kw.update(overrides)
    return AutoModelForCausalLM.from_config(GemmaConfig(**kw)).eval()


def gift_two_adapter_model():
    """A tiny Llama with two random GIFT adapters: "default" (r=4, q/v) and "other" (r=2, q/o), "default" active."""
    from peft import get_peft_model

    from peft_gift import GiftConfig

    model = get_peft_model(tiny_llama(), GiftConfig(r=4))
    randomise_theta(model, seed=1)
    model.add_adapter("other", GiftConfig(r=2, target_modules=["q_proj", "o_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".other." in n:
                p.normal_(0, 0.1)
    return model

