"""What the GIFT and LoFiT configs share: the fields that pick the adapted modules and one validation style.

Every check of a config raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a bad value, with
the message ``"<Config>.<field> must be …, got …"``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import NoReturn, Optional, Union

from peft.config import PeftConfig

from .targets import SAVED_REGEX_TARGETS, normalize_module_names


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def fail(config, name: str, requirement: str, error: type[Exception] = ValueError) -> NoReturn:
    """Raise ``error("<Config>.<name> must be <requirement>, got <value>")``."""
    raise error(f"{type(config).__name__}.{name} must be {requirement}, got {getattr(config, name)!r}")


def check_choice(config, name: str, choices: tuple[str, ...]) -> None:
    if getattr(config, name) not in choices:
        fail(config, name, f"one of {list(choices)}")


@dataclass
class InputEditConfig(PeftConfig):
    """Base of `GiftConfig` and `LofitConfig`: which modules an input-editing tuner adapts, and what else it trains and
    saves. Subclasses add their method's fields, call ``super().__post_init__()`` and set ``peft_type``.

    Args:
        target_modules (`list[str] | str`, *optional*): the layers to adapt (list: exact name or suffix match; str:
            regex full match). ``None`` picks the method's default for the model type.
        exclude_modules (`list[str] | str`, *optional*): layers never to adapt (same matching).
        layers_to_transform (`int | list[int]`, *optional*): only adapt layers with these indices (``target_modules``
            must then be a list or ``None``: PEFT refuses it with a regex).
        layers_pattern (`str | list[str]`, *optional*): name of the layer container whose index follows it (e.g.
            ``"layers"``, ``"h"``); ``None`` tries ``layers``, ``layer``, ``h``, ``block``, ``blocks``.
        modules_to_save (`list[str]`, *optional*): modules trained in full and saved (e.g. a classifier head).
        trainable_token_indices (`list[int] | dict[str, list[int]]`, *optional*): token ids whose embedding rows are
            trained and saved with the adapter (PEFT's trainable tokens, as for LoRA).
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Module names (suffix match) or one regex (full match) of the layers to adapt. None picks the "
                          "method's default for the model type (see the config class's docstring)."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names (suffix match) or one regex of layers never to adapt."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Only adapt layers with these indices (ints >= 0)."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Name of the layer container (e.g. 'layers', 'h'); the layer index is the number after it."},
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules trained in full and saved, e.g. a classifier head."}
    )
    trainable_token_indices: Optional[Union[list[int], dict[str, list[int]]]] = field(
        default=None,
        metadata={
            "help": (
                "Token ids whose embedding rows are trained (and saved with the adapter) without training the whole "
                "embedding matrix, handled by PEFT as for LoRA: a list targets the input embedding, a dict maps "
                "embedding module names to id lists, e.g. {'embed_tokens': [0, 1]}. TRL sets it when a chat template "
                "adds tokens."
            )
        },
    )

    def __post_init__(self):
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            # PEFT >= 0.22 refuses this pair (a str target ignores layers_to_transform); refused on every PEFT
            # version, except LoFiT's former default regexes, which earlier releases saved and now load as lists
            self.target_modules = SAVED_REGEX_TARGETS.get(self.target_modules, self.target_modules)
            if isinstance(self.target_modules, str):
                raise ValueError(
                    "`layers_to_transform` cannot be used when `target_modules` is a str. "
                    f"({type(self).__name__}.target_modules={self.target_modules!r} is a regex: give the module names "
                    "as a list, e.g. ['o_proj'], to adapt only the layers in layers_to_transform.)"
                )
        super().__post_init__()
        self.target_modules = normalize_module_names(self.target_modules)
        self.exclude_modules = normalize_module_names(self.exclude_modules)
        layers = self.layers_to_transform
        if layers is not None:
            items = [layers] if is_int(layers) else layers
            requirement = "an int >= 0, a list of them or None"
            if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__") or not all(map(is_int, items)):
                fail(self, "layers_to_transform", requirement, TypeError)
            if any(item < 0 for item in items):
                fail(self, "layers_to_transform", requirement)
