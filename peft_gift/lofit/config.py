"""Configuration of the LoFiT tuner (localized fine-tuning of attention heads)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from .._registry import LOFIT
from ..config import InputEditConfig, check_choice, fail, is_int, is_real

# the stored values of `mode` ("bias" is the offset mode: z_h + v_h; files keep this value)
VALID_MODES = ("scale", "bias")


def normalize_heads(heads) -> Optional[list[list[int]]]:
    """Return ``heads`` as a sorted list of ``[layer, head]`` int lists (as JSON holds them, so that ``to_dict()``
    equals the saved file); validate each pair.

    Raises ``TypeError`` for something that is not a list of int pairs, ``ValueError`` for a negative index or a
    duplicate pair.
    """
    if heads is None:
        return None
    requirement = "a list of (layer, head) pairs of two ints or None"
    if isinstance(heads, (str, bytes)) or not hasattr(heads, "__iter__"):
        raise TypeError(f"LofitConfig.heads must be {requirement}, got {heads!r}")
    pairs = []
    for item in heads:
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2 \
                or not all(map(is_int, item)):
            raise TypeError(f"LofitConfig.heads must be {requirement}, got the entry {item!r}")
        pairs.append((int(item[0]), int(item[1])))
    negative = [pair for pair in pairs if min(pair) < 0]
    if negative:
        raise ValueError(
            f"LofitConfig.heads must hold indices 0 <= layer < num_layers and 0 <= head < num_heads, got the "
            f"negative {negative[0]}"
        )
    seen = set()
    duplicates = sorted({p for p in pairs if p in seen or seen.add(p)})
    if duplicates:
        raise ValueError(f"LofitConfig.heads must hold each (layer, head) pair once, got the duplicates {duplicates}")
    return [list(pair) for pair in sorted(pairs)]


@dataclass
class LofitConfig(InputEditConfig):
    r"""Configuration of a [`LofitModel`] (LoFiT: localized fine-tuning on LLM representations).

    LoFiT edits the per-head attention outputs z_h (the *input* of the attention output projection, heads
    concatenated) at every position::

        mode="scale" (stage 1):   z_h <- (1 + A_h) * z_h        for every head of every targeted layer
        mode="bias"  (stage 2):   z_h <- z_h + v_h              for the selected (layer, head) pairs only

    A_h, v_h are vectors of size ``head_dim``, initialised from N(0, init_std^2). In scale mode training minimises the
    loss plus ``l1_lambda * sum(|A|)`` (sparsity; the term's gradient is added at each optimizer step, see
    [`LofitModel`]), the heads are then ranked with [`select_heads`] by ||A_h||_2, and stage 2 learns offsets on those
    heads only (see [`lofit_stage2_config`]). The offset mode is stored as ``"bias"`` (its value in saved files).

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
        l1_lambda (`float`): weight λ of the L1 penalty ``λ·Σ|A|`` in scale mode (0 disables it): its gradient
            λ·sign(A) is added to A's gradient at each ``torch.optim`` optimizer step; the reported loss does not
            contain it (``LofitModel.l1_penalty`` gives its value). Ignored in bias mode.
        init_std (`float`): standard deviation of the normal initialisation of A and v; ``0`` gives the identity
            (the adapted model equals the base model).
        target_modules (`list[str] | str`, *optional*): the attention output projections to adapt (list: exact name or
            suffix match; str: regex full match). Default per model type: ``["o_proj"]`` (Llama family, ViT, DINOv2),
            ``["attn.c_proj"]`` (GPT-2), ``["attention.output.dense"]`` (BERT/RoBERTa). Targeting any other
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
        default=0.0, metadata={"help": "Weight λ of the L1 penalty λ·Σ|A| in scale mode, applied as λ·sign(A) at "
                          "each optimizer step (not part of the reported loss)."}
    )
    init_std: float = field(
        default=1e-3, metadata={"help": "Std of the N(0, init_std^2) initialisation of A and v; 0 gives the identity."}
    )
    num_heads: Optional[int] = field(
        default=None, metadata={"help": "Number of attention heads; None = read from the model config."}
    )
    head_dim: Optional[int] = field(
        default=None,
        metadata={"help": "Head width; None = model config head_dim if present else hidden_size // num_heads."},
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
        check_choice(self, "mode", VALID_MODES)
        self.heads = normalize_heads(self.heads)
        if self.heads is not None and len(self.heads) == 0:
            raise ValueError(
                f"LofitConfig.heads is empty (mode={self.mode!r}): select at least one (layer, head) pair (e.g. with "
                "peft_gift.select_heads), or pass heads=None to adapt every head."
            )
        for name in ("l1_lambda", "init_std"):
            if not is_real(getattr(self, name)):
                fail(self, name, "a finite number >= 0", TypeError)
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                fail(self, name, "a finite number >= 0")
            setattr(self, name, float(getattr(self, name)))
        for name in ("num_heads", "head_dim"):
            if getattr(self, name) is not None and not is_int(getattr(self, name)):
                fail(self, name, "an int >= 1 or None", TypeError)
            if getattr(self, name) is not None and getattr(self, name) < 1:
                fail(self, name, ">= 1 or None")

    @property
    def selected_layers(self) -> Optional[set[int]]:
        """Layers that hold at least one selected head (``None`` when ``heads`` is None)."""
        return None if self.heads is None else {layer for layer, _ in self.heads}
