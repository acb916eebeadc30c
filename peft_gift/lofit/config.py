"""Configuration of the LoFiT tuner (localized fine-tuning of attention heads)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from .._registry import LOFIT
from ..targets import normalize_module_names

VALID_MODES = ("scale", "bias")

def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def normalize_heads(heads) -> Optional[list[list[int]]]:
    """Return ``heads`` as a sorted list of ``[layer, head]`` int lists (as JSON holds them, so that ``to_dict()``
    equals the saved file); validate each pair.

    Raises ``ValueError`` for a malformed pair, a negative index or a duplicate pair.
    """
    if heads is None:
        return None
    if isinstance(heads, (str, bytes)) or not hasattr(heads, "__iter__"):
        raise ValueError(f"`heads` must be a list of (layer, head) pairs or None, got {heads!r}.")
    pairs = []
    for item in heads:
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
            raise ValueError(f"`heads` entries must be (layer, head) pairs of two ints, got {item!r}.")
        layer, head = item
        if not (_is_int(layer) and _is_int(head)):
            raise ValueError(f"`heads` entries must be (layer, head) pairs of two ints, got {item!r}.")
        layer, head = int(layer), int(head)
        if layer < 0 or head < 0:
            raise ValueError(
                f"`heads` contains ({layer}, {head}) with a negative index; valid layers are 0 <= layer < num_layers "
                f"and valid heads are 0 <= head < num_heads."
            )
        pairs.append((layer, head))
    seen = set()
    duplicates = sorted({p for p in pairs if p in seen or seen.add(p)})
    if duplicates:
        raise ValueError(f"`heads` contains duplicate (layer, head) pairs: {duplicates}; each pair may appear once.")
    return [list(pair) for pair in sorted(pairs)]


@dataclass
class LofitConfig(PeftConfig):
    r"""Configuration of a [`LofitModel`] (LoFiT: localized fine-tuning on LLM representations).

    LoFiT edits the per-head attention outputs z_h (the *input* of the attention output projection, heads
    concatenated) at every position::

        mode="scale" (stage 1):   z_h <- (1 + A_h) * z_h        for every head of every targeted layer
        mode="bias"  (stage 2):   z_h <- z_h + v_h              for the selected (layer, head) pairs only

    A_h, v_h are vectors of size ``head_dim``, initialised from N(0, init_std^2). In scale mode the training loss gains
    ``l1_lambda * sum(|A|)`` (sparsity), the heads are then ranked with [`select_heads`] by ||A_h||_2, and stage 2
    learns offsets on those heads only (see [`lofit_stage2_config`]).

    Args:
        mode (`str`, *optional*): ``"scale"`` (stage 1, learn A for every head) or ``"bias"`` (stage 2, learn v for
            the heads in ``heads``). ``None`` means ``"bias"`` when ``heads`` is given; with neither, the config
            raises a ``ValueError`` that shows the two-stage recipe (offsets on every head, ``mode="bias",
            heads=None``, are an ablation, not LoFiT, and must be asked for explicitly).
        heads (`list[list[int]]`, *optional*): ``(layer, head)`` pairs to adapt. ``None`` adapts every head of
            every targeted layer. In bias mode only the projections of layers that contain a selected head are
            wrapped, and the number of trainable parameters is exactly ``len(heads) * head_dim``. In scale mode a
            list restricts the layers that get a scale tensor (a full ``(num_heads, head_dim)`` tensor per layer).
            Stored sorted, as ``[layer, head]`` lists (the JSON form; tuples are accepted).
        l1_lambda (`float`): weight λ of the L1 penalty ``λ·Σ|A|`` added to the model's loss in scale mode (0 disables
            it). Ignored in bias mode.
        init_std (`float`): standard deviation of the normal initialisation of A and v; ``0`` gives the identity
            (the adapted model equals the base model).
        target_modules (`list[str] | str`, *optional*): the attention output projections to adapt (list: exact name or
            suffix match; str: regex full match). Default per model type: ``o_proj`` (Llama family, ViT, DINOv2),
            ``.*\.attn\.c_proj$`` (GPT-2), ``.*\.attention\.output\.dense$`` (BERT/RoBERTa). Targeting any other
            layer is wrong: its input must be the concatenated head outputs.
        num_heads (`int`, *optional*): number of attention (query) heads. ``None`` reads ``num_attention_heads`` /
            ``n_head`` from the model config.
        head_dim (`int`, *optional*): width of one head. ``None`` reads ``head_dim`` from the model config where
            present, else ``hidden_size // num_heads``. ``num_heads * head_dim`` must equal each target's
            ``in_features``.
        layers_to_transform (`int | list[int]`, *optional*): only adapt projections in these layer indices.
        layers_pattern (`str | list[str]`, *optional*): the name of the module list holding the layers (e.g.
            ``"layers"``, ``"h"``); the layer index is the number after it. ``None`` tries ``layers``, ``layer``,
            ``h``, ``block``, ``blocks``.
        exclude_modules (`list[str] | str`, *optional*): modules never to adapt (same matching as target_modules).
        modules_to_save (`list[str]`, *optional*): extra modules to train fully and save (e.g. a classifier head).
        trainable_token_indices (`list[int] | dict[str, list[int]]`, *optional*): token ids whose embedding rows are
            trained and saved with the adapter (PEFT's trainable tokens, as for LoRA; TRL sets it for chat templates
            that add tokens).
    """

    mode: Optional[str] = field(
        default=None,
        metadata={"help": "'scale': z_h <- (1 + A_h) * z_h on every head (stage 1); 'bias': z_h <- z_h + v_h on the "
                          "selected heads (stage 2). None: 'bias' when `heads` is given; a bare LofitConfig() raises "
                          "and shows the two-stage recipe."},
    )
    heads: Optional[list[list[int]]] = field(
        default=None,
        metadata={"help": "(layer, head) pairs to adapt; None = every head of every targeted layer."},
    )
    l1_lambda: float = field(
        default=0.0, metadata={"help": "Weight of the L1 penalty l1_lambda * sum(|A|) added to the loss in scale mode."}
    )
    init_std: float = field(
        default=1e-3, metadata={"help": "Std of the N(0, init_std^2) initialisation of A and v; 0 gives the identity."}
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Attention output projections to adapt (list: suffix match, str: regex). None = per-model "
                          "default (o_proj, GPT-2 attn.c_proj, BERT attention.output.dense)."},
    )
    num_heads: Optional[int] = field(
        default=None, metadata={"help": "Number of attention heads; None = read from the model config."}
    )
    head_dim: Optional[int] = field(
        default=None,
        metadata={"help": "Head width; None = model config head_dim if present else hidden_size // num_heads."},
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Only adapt the projections in these layer indices."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Name of the layer list (e.g. 'layers', 'h'); the layer index is the number after it."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Modules never to adapt (list: suffix match, str: regex)."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules trained fully and saved, e.g. a classification head."}
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
        super().__post_init__()
        self.peft_type = LOFIT
        if self.mode is None:
            if self.heads is None:
                raise ValueError(
                    "LofitConfig() needs `mode`: LoFiT is two stages. Stage 1: LofitConfig(mode='scale', "
                    "l1_lambda=1e-3) on every head, train, then heads = peft_gift.select_heads(model, fraction=0.03); "
                    "stage 2 on a fresh base: lofit_stage2_config(stage1_model, heads) (mode='bias' on those heads). "
                    "Offsets on every head are an ablation: LofitConfig(mode='bias', heads=None)."
                )
            self.mode = "bias"
        if self.mode not in VALID_MODES:
            raise ValueError(f"`mode` must be one of {list(VALID_MODES)}, got {self.mode!r}.")
        self.heads = normalize_heads(self.heads)
        if self.heads is not None and len(self.heads) == 0:
            raise ValueError(
                f"LofitConfig.heads is empty (mode={self.mode!r}): select at least one (layer, head) pair (e.g. with "
                "peft_gift.select_heads), or pass heads=None to adapt every head."
            )
        for name in ("l1_lambda", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite float >= 0, got {value!r}.")
            setattr(self, name, float(value))
        for name in ("num_heads", "head_dim"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"`{name}` must be a positive int or None, got {value!r}.")
        if self.layers_to_transform is not None:
            layers = [self.layers_to_transform] if _is_int(self.layers_to_transform) else self.layers_to_transform
            if not isinstance(layers, (list, tuple)) or not all(_is_int(x) and x >= 0 for x in layers):
                raise ValueError(
                    f"`layers_to_transform` must be an int >= 0 or a list of them, got {self.layers_to_transform!r}."
                )
        self.target_modules = normalize_module_names(self.target_modules)
        self.exclude_modules = normalize_module_names(self.exclude_modules)

    @property
    def selected_layers(self) -> Optional[set[int]]:
        """Layers that hold at least one selected head (``None`` when ``heads`` is None)."""
        return None if self.heads is None else {layer for layer, _ in self.heads}
