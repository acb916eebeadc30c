"""Tiny random models, checkpoints, word tokenizers and synthetic datasets for the smoke modes (``--quick``,
``--smoke``), the distributed and GPU checks and the tests: `tiny_causal_lm` is the one factory of tiny decoders."""

from __future__ import annotations

import random
from pathlib import Path

import torch

# the shape every tiny decoder has unless told otherwise: 2 layers, hidden 64, 4 heads of 16, 2 KV heads (GQA)
TINY_DECODER = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
# family -> (transformers config class, what the family adds to TINY_DECODER)
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"pad_token_id": 0, "sliding_window": 32}),  # a window longer than tiny inputs
    "qwen2": ("Qwen2Config", {"pad_token_id": 0}),  # q/k/v with bias, o_proj without
    # Gemma needs head_dim given (4 heads · 16 = hidden 64); one KV head (MQA)
    "gemma": ("GemmaConfig", {"pad_token_id": 0, "head_dim": 16, "num_key_value_heads": 1}),
}


def tiny_config(family: str = "llama", **overrides):
    """The transformers config of a tiny ``family`` decoder: `TINY_DECODER`, the family's additions, then
    ``overrides`` (transformers' own names: ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``num_key_value_heads``, ``head_dim``, ``vocab_size``, ``intermediate_size``, ``max_position_embeddings``,
    ``tie_word_embeddings``, ``pad_token_id``, ...)."""
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    config_class, extra = FAMILIES[family]
    return getattr(transformers, config_class)(**{**TINY_DECODER, **extra, **overrides})


def tiny_causal_lm(family: str = "llama", *, seed: int | None = 0, device=None, **overrides):
    """A random-init causal LM of ``family`` (`tiny_config`'s shape; ``overrides`` as there, any size), built after
    ``torch.manual_seed(seed)`` (``seed=None``: from the current random state) directly on ``device`` (default: the
    CPU). In float32 and in training mode, as ``from_config`` gives it; callers choose ``.eval()``, dtype and freezing."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    if device is None:
        return AutoModelForCausalLM.from_config(config)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config)


def word_tokenizer(vocab_size: int, bert: bool = False):
    """A whitespace word-level fast tokenizer over ``w5 … w<vocab_size - 1>`` with ids 0-4 for [PAD] [UNK] [CLS]
    [SEP] </s>; ``bert=True`` wraps every text in [CLS] … [SEP], otherwise the tokenizer has an EOS token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "</s>": 4, **{f"w{i}": i for i in range(5, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bert:
        from tokenizers.processors import TemplateProcessing

        tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>",
                                   model_input_names=["input_ids", "attention_mask"])


def _cls_row(g: random.Random, vocab: int) -> dict:
    """label = whether word w5 occurs more often than w6 (learnable by a tiny model)."""
    ids = [g.randrange(7, vocab) for _ in range(g.randrange(6, 14))]
    for _ in range(g.randrange(0, 4)):
        ids[g.randrange(len(ids))] = g.choice((5, 6))
    return {"sentence": " ".join(f"w{i}" for i in ids), "label": int(ids.count(5) > ids.count(6))}


def _mc_row(g: random.Random, vocab: int) -> dict:
    """The prompt ends with word k; the right choice starts with word k+1."""
    k, label = g.randrange(10, vocab - 2), g.randrange(3)
    choices = [[g.randrange(10, vocab), g.randrange(10, vocab)] for _ in range(3)]
    choices[label][0] = k + 1
    prompt = [g.randrange(10, vocab) for _ in range(5)] + [k]
    return {"prompt": " ".join(f"w{i}" for i in prompt), "choices": [" ".join(f"w{i}" for i in c) for c in choices],
            "label": label}


def quick_assets(root: Path, vocab: int = 64) -> dict:
    """Tiny BERT / Llama checkpoints with word tokenizers and synthetic datasets under ``root``."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoModelForSequenceClassification, BertConfig

    g = random.Random(0)
    torch.manual_seed(0)
    bert = AutoModelForSequenceClassification.from_config(BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, num_labels=2))
    bert.save_pretrained(root / "bert")
    word_tokenizer(vocab, bert=True).save_pretrained(root / "bert")
    llama = tiny_causal_lm("llama", seed=None, vocab_size=vocab, hidden_size=32, intermediate_size=64,
                           pad_token_id=0, eos_token_id=4)
    llama.save_pretrained(root / "llama")
    word_tokenizer(vocab, bert=False).save_pretrained(root / "llama")
    DatasetDict({"validation": Dataset.from_list([_cls_row(g, vocab) for _ in range(128)])}).save_to_disk(root / "cls")
    DatasetDict({"train": Dataset.from_list([_mc_row(g, vocab) for _ in range(48)]),
                 "validation": Dataset.from_list([_mc_row(g, vocab) for _ in range(32)])}).save_to_disk(root / "mc")
    return {"bert": str(root / "bert"), "llama": str(root / "llama"), "cls": str(root / "cls"), "mc": str(root / "mc")}
