"""Which modules GIFT and LoFiT adapt: default targets per model type, name normalisation and layer filters."""

from __future__ import annotations

import copy
import re
from typing import Iterator, Optional, Union

from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from ._peft_private import _ExcludedModule

_QV = ["q_proj", "v_proj"]
# GIFT: the paper's settings: q and v of every attention block for language models; the attention output projection
# for ViT/DINOv2 (the paper's and the released vision configs' `attn:proj`; transformers 5.x names it `o_proj`).
TRANSFORMERS_MODELS_TO_GIFT_TARGET_MODULES_MAPPING: dict[str, Union[list[str], str]] = {
    **TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
    **{name: _QV for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")},
    **{name: ["o_proj"] for name in ("vit", "dinov2", "dinov2_with_registers")},
    "gpt2": ["c_attn"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
}

# LoFiT: the attention *output* projection, whose input is the concatenation of the per-head outputs. GPT-2 and
# BERT-style models also have an MLP projection with the same last name, so their targets name the parent too (a
# suffix match, like PEFT's list targets).
TRANSFORMERS_MODELS_TO_LOFIT_TARGET_MODULES_MAPPING: dict[str, Union[list[str], str]] = {
    **{
        model_type: ["o_proj"]
        for model_type in (
            "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
            "gemma3_text", "olmo", "olmo2", "granite", "smollm3", "phi3", "starcoder2", "cohere", "stablelm",
            "vit", "dinov2",
        )
    },
    "gpt2": ["attn.c_proj"],
    **{name: ["attention.output.dense"] for name in ("bert", "roberta", "xlm-roberta", "camembert", "electra")},
    "gpt_neox": ["attention.dense"],
    "opt": ["self_attn.out_proj"],
}

# The regexes that were LoFiT's defaults for those models before they became suffix lists: adapter configs saved
# with one of them and `layers_to_transform` (which PEFT >= 0.22 refuses for a str target) load as the list.
SAVED_REGEX_TARGETS = {
    r".*\.attn\.c_proj$": ["attn.c_proj"],
    r".*\.attention\.output\.dense$": ["attention.output.dense"],
    r".*\.attention\.dense$": ["attention.dense"],
    r".*\.self_attn\.out_proj$": ["self_attn.out_proj"],
}

DEFAULT_LAYER_PATTERNS = ("layers", "layer", "h", "block", "blocks")

# what a `PeftModel` puts before the names of the wrapped model's modules
PEFT_PREFIX = "base_model.model."


def base_module_name(name: str) -> str:
    """``name`` of a module in a `PeftModel` as the wrapped model names it (without ``base_model.model.``)."""
    return name.removeprefix(PEFT_PREFIX)


def normalize_module_names(value):
    """``target_modules`` / ``exclude_modules`` as PEFT stores them: a regex string stays a string, any other
    collection becomes a set (JSON gives lists back)."""
    if value is None or isinstance(value, str):
        return value
    return set(value)


def default_targets(mapping: dict, model_config: dict, config_name: str):
    """The default ``target_modules`` of ``model_config``'s model type, or a ValueError naming the field."""
    model_type = model_config.get("model_type")
    if model_type not in mapping:
        raise ValueError(
            f"{config_name}.target_modules is required: there is no default for model_type={model_type!r}. Pass the "
            f"names of the layers to adapt, e.g. target_modules=['q_proj', 'v_proj']; defaults exist for "
            f"{sorted(mapping)[:12]}..."
        )
    return normalize_module_names(copy.copy(mapping[model_type]))


def layer_index_of(key: str, layers_pattern=None) -> Optional[int]:
    """The transformer-layer index of module ``key``: the number after ``layers_pattern`` (default: after
    ``layers``/``layer``/``h``/``block``/``blocks``), e.g. ``model.layers.3.self_attn.o_proj`` -> 3."""
    patterns = layers_pattern or DEFAULT_LAYER_PATTERNS
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    alternatives = "|".join(re.escape(p) for p in patterns)
    match = re.search(rf"(?:^|\.)(?:{alternatives})\.(\d+)(?:\.|$)", key)
    return None if match is None else int(match.group(1))


def wanted_layers(config) -> Optional[set[int]]:
    layers = config.layers_to_transform
    if layers is None:
        return None
    return {layers} if isinstance(layers, int) else set(layers)


def match_target(config, key: str, apply_layer_filter: bool = True):
    """PEFT's name matching (target/exclude modules) followed by ``layers_to_transform``, applied the same way to
    list and regex ``target_modules`` (PEFT itself filters list targets only)."""
    without_filter = copy.copy(config)
    without_filter.layers_to_transform = None
    result = check_target_module_exists(without_filter, key)
    if not result or isinstance(result, _ExcludedModule) or not apply_layer_filter:
        return result
    layers = wanted_layers(config)
    if layers is not None and layer_index_of(key, config.layers_pattern) not in layers:
        return False
    return result


def candidate_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of ``model`` that an adapter may target: as PEFT's ``inject_adapter``, without the root and
    without anything inside a tuner layer (its base layer, an earlier adapter's containers such as
    ``gift_dropout``); the tuner layer itself is a candidate (a new adapter is added to it or wraps it)."""
    inside: tuple[str, ...] = ()
    for name, module in model.named_modules():  # parents come before their children
        if not name or name.startswith(inside):
            continue
        if isinstance(module, BaseTunerLayer):
            inside += (name + ".",)
        yield name, module
