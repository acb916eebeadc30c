"""LoFiT: localized fine-tuning of attention heads (scales on every head, then offsets on the selected heads)."""

from ..targets import TRANSFORMERS_MODELS_TO_LOFIT_TARGET_MODULES_MAPPING
from .config import LofitConfig
from .layer import Linear, LofitLayer
from .model import LofitModel
from .selection import head_scores, lofit_stage2_config, select_heads

__all__ = [
    "LofitConfig",
    "LofitLayer",
    "LofitModel",
    "Linear",
    "TRANSFORMERS_MODELS_TO_LOFIT_TARGET_MODULES_MAPPING",
    "head_scores",
    "lofit_stage2_config",
    "select_heads",
]
