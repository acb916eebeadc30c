"""Run before each Python block of the docs (tests/test_docs_run.py), in the block's own process and folder.

A block that names a Hugging Face Hub id gets a tiny random model of the same family instead (nothing can be
downloaded here): ``from_pretrained("HuggingFaceTB/SmolLM2-135M", **kwargs)`` saves a tiny Llama once and loads it
with the block's own ``kwargs`` (a quantization config, ``device_map``), so the block's code runs unchanged;
``AutoTokenizer.from_pretrained(hub_id)`` gets a small word-level tokenizer. Local paths (an adapter the block saved)
load as usual.
"""

from __future__ import annotations

import os
import tempfile

import transformers

_FAMILIES = {  # substring of a Hub id -> (config class, tiny config)
    "t5": ("T5Config", dict(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                            decoder_start_token_id=0)),
    "": ("LlamaConfig", dict(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=64,
                             tie_word_embeddings=False)),  # SmolLM2, Llama, ... (4-bit blocks need hidden % 64 == 0)
}
_SAVED: dict[tuple[str, str], str] = {}
_ROOT = tempfile.mkdtemp(prefix="docs_hub_")


def _tiny_copy(auto_cls, hub_id: str) -> str:
    family = next(key for key in _FAMILIES if key in hub_id.lower())
    key = (auto_cls.__name__, family)
    if key not in _SAVED:
        import torch

        config_name, kwargs = _FAMILIES[family]
        torch.manual_seed(0)
        model = auto_cls.from_config(getattr(transformers, config_name)(**kwargs))
        _SAVED[key] = os.path.join(_ROOT, f"{auto_cls.__name__}-{family or 'llama'}")
        model.save_pretrained(_SAVED[key])
    return _SAVED[key]


def _patch(auto_cls) -> None:
    original = auto_cls.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        if isinstance(name, str) and not os.path.exists(name) and name.count("/") <= 1:
            name = _tiny_copy(cls, name)
        return original(cls, name, *args, **kwargs)

    auto_cls.from_pretrained = classmethod(from_pretrained)


for _cls in (transformers.AutoModelForCausalLM, transformers.AutoModelForSeq2SeqLM):
    _patch(_cls)


def _tiny_tokenizer() -> str:
    """A word-level tokenizer (lower-cased words and punctuation, the rest [UNK]) with EOS and pad tokens, saved
    once: what a block's ``AutoTokenizer.from_pretrained(hub_id)`` gets."""
    key = ("tokenizer", "")
    if key not in _SAVED:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        words = ("[PAD] [UNK] </s> the a an is are was of and to in on it . , ? ! : capital city country france paris "
                 "italy rome germany berlin japan tokyo spain madrid question answer yes no sky blue grass green cat "
                 "dog red what which good bad").split()
        tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
        _SAVED[key] = os.path.join(_ROOT, "tokenizer")
        transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                             eos_token="</s>").save_pretrained(_SAVED[key])
    return _SAVED[key]


_tokenizer_from_pretrained = transformers.AutoTokenizer.from_pretrained.__func__


def _tokenizer_for(cls, name, *args, **kwargs):
    if isinstance(name, str) and not os.path.exists(name) and name.count("/") <= 1:
        name = _tiny_tokenizer()
    return _tokenizer_from_pretrained(cls, name, *args, **kwargs)


transformers.AutoTokenizer.from_pretrained = classmethod(_tokenizer_for)
