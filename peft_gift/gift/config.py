"""Configuration of GIFT (Generative Interpretable Fine-Tuning, arXiv 2312.00700)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from .._registry import GIFT
from ..config import InputEditConfig, check_choice, fail, is_int, is_real

SHARING_MODES = ("module", "all", "layer")
INIT_SCHEMES = ("gift", "wegeft")


@dataclass
class GiftConfig(InputEditConfig):
    """Configuration of a GIFT adapter.

    For every targeted frozen linear layer W (d_out × d_in) the fine-tuned weight is

        Ŵ = W (I + s · φ ψ),   φ: d_in × r,   ψ: r × d_in,   s = alpha / r (s = 1 when ``alpha`` is None),

    computed in activation space as ``Ŵ x = W (x + s · φ(ψ x))``. One Θ = (φ, ψ) is shared by a *group* of layers
    (see ``sharing``), so the trainable parameter count is Σ_groups 2 · r · d_in and does not grow with depth.

    Args:
        r (`int`): rank of Θ = (φ: d_in×r, ψ: r×d_in), >= 1. Default 64 (the paper's LLM setting).
        target_modules (`list[str] | str`, *optional*): linear layers to adapt (list: exact name or suffix match; str:
            regex full match). ``None`` picks the model type's default: q,v projections of language models
            (Llama/Mistral/Qwen2/Gemma ``q_proj,v_proj``, GPT-2 ``c_attn``, BERT/RoBERTa ``query,value``, T5 ``q,v``),
            the attention output projection ``o_proj`` of ViT/DINOv2.
        exclude_modules (`list[str] | str`, *optional*): layers never to adapt (same matching).
        sharing (`str`): ``"module"`` one Θ per module path without layer indices (the paper), ``"all"`` one Θ for
            every targeted layer (equal in_features required), ``"layer"`` one Θ per layer.
        alpha (`float`, *optional*): the scale is s = alpha / r; ``None`` means s = 1. Finite and > 0.
        init (`str`): ``"gift"`` (ψ = 0, φ Kaiming-uniform) or ``"wegeft"`` (φ = 0, ψ Kaiming-uniform).
        dropout (`float`): dropout probability on the adapter path input, in [0, 1).
        layers_to_transform (`int | list[int]`, *optional*): only adapt layers with these indices (list or regex
            targets alike).
        layers_pattern (`str | list[str]`, *optional*): name of the layer container holding those indices (needs
            ``layers_to_transform``).
        modules_to_save (`list[str]`, *optional*): modules trained in full and saved (e.g. a classifier head).
        trainable_token_indices (`list[int] | dict[str, list[int]]`, *optional*): token ids whose embedding rows are
            trained and saved with the adapter (PEFT's trainable tokens, as for LoRA).
    """

    r: int = field(default=64, metadata={"help": "Rank r of Θ = (φ: d_in×r, ψ: r×d_in). Must be >= 1."})
    sharing: Literal["module", "all", "layer"] = field(
        default="module",
        metadata={
            "help": (
                "How Θ is shared. 'module' (the paper's setting): one Θ per module path with the layer index removed, "
                "e.g. all `model.layers.*.self_attn.q_proj` share one Θ and all `...v_proj` another. 'all': one Θ for "
                "every targeted layer (all must have the same in_features). 'layer': one Θ per layer (ablation)."
            )
        },
    )
    alpha: Optional[float] = field(
        default=None, metadata={"help": "Scale s = alpha / r of the adapter path; None means s = 1. Must be > 0."}
    )
    init: Literal["gift", "wegeft"] = field(
        default="gift",
        metadata={
            "help": (
                "'gift' (GIFT v2/v3): ψ = 0 and φ with nn.Linear's default (Kaiming-uniform) init. 'wegeft' (WeGeFT, "
                "GIFT v5): φ = 0 and ψ Kaiming-uniform. Both leave the model unchanged at initialisation."
            )
        },
    )
    dropout: float = field(
        default=0.0, metadata={"help": "Dropout probability on the adapter path input: W(x + s·φψ·dropout(x))."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = GIFT
        if not is_int(self.r):
            fail(self, "r", "an int >= 1", TypeError)
        if self.r < 1:
            fail(self, "r", ">= 1")
        check_choice(self, "sharing", SHARING_MODES)
        check_choice(self, "init", INIT_SCHEMES)
        if self.alpha is not None and not is_real(self.alpha):
            fail(self, "alpha", "a number > 0 or None", TypeError)
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            fail(self, "alpha", "a finite number > 0 or None")
        if not is_real(self.dropout):
            fail(self, "dropout", "a float in [0, 1)", TypeError)
        if not 0.0 <= self.dropout < 1.0:
            fail(self, "dropout", "in [0, 1)")
        self.dropout = float(self.dropout)
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("GiftConfig.layers_pattern requires layers_to_transform to be set")

    @property
    def scaling(self) -> float:
        """The scale s of the adapter path (alpha / r, or 1)."""
        return 1.0 if self.alpha is None else float(self.alpha) / self.r
