"""peft-gift: GIFT and LoFiT as first-class PEFT tuner types.

``import peft_gift`` adds ``PeftType.GIFT`` / ``PeftType.LOFIT`` to PEFT and registers the tuners, so that
``get_peft_model``, ``PeftModel.from_pretrained``, ``AutoPeftModel*`` and ``merge_and_unload`` work unchanged.
"""

from . import _registry
from .export import export_lora
from .gift import GiftConfig, GiftModel
from .hub import push_to_hub, write_model_card
from .lofit import LofitConfig, LofitModel, lofit_stage2_config, select_heads

__version__ = "0.1.0"

_registry.register("gift", GiftConfig, GiftModel)
_registry.register("lofit", LofitConfig, LofitModel)

__all__ = [
    "GiftConfig", "GiftModel", "LofitConfig", "LofitModel", "export_lora", "lofit_stage2_config", "push_to_hub",
    "select_heads", "write_model_card", "__version__",
]
