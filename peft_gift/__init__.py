"""peft-gift: GIFT and LoFiT as first-class PEFT tuner types.

``import peft_gift`` adds ``PeftType.GIFT`` / ``PeftType.LOFIT`` to PEFT and registers the tuners, so that
``get_peft_model``, ``PeftModel.from_pretrained``, ``AutoPeftModel*``, ``PeftMixedModel`` and ``merge_and_unload``
work unchanged.
"""

from . import _checked_load, _registry, mixed
from ._version import __version__
from .export import export_lora
from .gift import GiftConfig, GiftModel
from .hub import push_to_hub, write_model_card
from .lofit import LofitConfig, LofitModel, lofit_stage2_config, select_heads


def _register_all() -> None:
    """Register our tuners with PEFT (also for `PeftMixedModel`) and track PEFT's loading calls; idempotent."""
    for name, config_cls, model_cls in (("gift", GiftConfig, GiftModel), ("lofit", LofitConfig, LofitModel)):
        peft_type = _registry.register(name, config_cls, model_cls)
        mixed.allow_in_peft_mixed_model(peft_type, model_cls)
    _checked_load.track_loading_calls()


_register_all()

__all__ = [
    "GiftConfig", "GiftModel", "LofitConfig", "LofitModel", "export_lora", "lofit_stage2_config", "push_to_hub",
    "select_heads", "write_model_card", "__version__",
]
