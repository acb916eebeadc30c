"""peft-gift: GIFT and LoFiT as first-class PEFT tuner types.

``import peft_gift`` adds ``PeftType.GIFT`` / ``PeftType.LOFIT`` to PEFT and registers the tuners, so that
``get_peft_model``, ``PeftModel.from_pretrained``, ``AutoPeftModel*`` and ``merge_and_unload`` work unchanged.
"""

from . import _registry
from .gift import GiftConfig, GiftModel
from .lofit import LofitConfig, LofitModel, lofit_stage2_config, select_heads

__version__ = "0.1.0"

_registry.register("gift", GiftConfig, GiftModel)
_registry.register("lofit", LofitConfig, LofitModel)

from . import hub as _hub  # noqa: E402
from . import safe_load as _safe_load  # noqa: E402

_hub.install()  # model cards of GIFT / LoFiT adapters say how to load them; push_to_hub keeps PEFT's card
_safe_load.install()  # safetensors only; a failed from_pretrained / load_adapter leaves the model as it was

__all__ = [
    "GiftConfig", "GiftModel", "LofitConfig", "LofitModel", "lofit_stage2_config", "select_heads", "__version__",
]
