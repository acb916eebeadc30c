from .config import GiftConfig
from .layer import GiftLayer, Linear
from .model import GiftModel, group_key

__all__ = ["GiftConfig", "GiftLayer", "GiftModel", "Linear", "group_key"]
