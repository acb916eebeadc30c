"""Which adapter a read-only tool means: one resolver for GIFT and LoFiT (select_heads, interpret, the CLI)."""

from __future__ import annotations

from typing import Optional

from torch import nn


def resolve_adapter(model: nn.Module, adapter_name: Optional[str], config_cls: type, kind: str):
    """``(adapter name, its config)`` for the ``kind`` adapter (a ``config_cls`` instance) of a PEFT model.

    ``adapter_name=None`` means: the active adapter if it is a ``kind`` adapter, else the model's only ``kind``
    adapter. Raises ``ValueError`` naming the valid adapters when that is ambiguous, absent or of another type.
    """
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        raise ValueError(f"Expected a PEFT model with a {kind} adapter (the model has no `peft_config`).")
    mine = {name: cfg for name, cfg in configs.items() if isinstance(cfg, config_cls)}
    if adapter_name is None:
        active = getattr(model, "active_adapter", None)
        if isinstance(active, (list, tuple)):
            active = active[0] if len(active) == 1 else None
        if active in mine:
            adapter_name = active
        elif len(mine) == 1:
            adapter_name = next(iter(mine))
        elif not mine:
            raise ValueError(
                f"The model has no {kind} adapter; its adapters are "
                f"{ {n: type(c).__name__ for n, c in configs.items()} }."
            )
        else:
            raise ValueError(f"Several {kind} adapters ({sorted(mine)}); pass `adapter_name`.")
    if adapter_name not in configs:
        raise ValueError(f"Adapter {adapter_name!r} does not exist; the model's adapters are {sorted(configs)}.")
    if adapter_name not in mine:
        raise ValueError(
            f"Adapter {adapter_name!r} is a {type(configs[adapter_name]).__name__}, not a {config_cls.__name__}; "
            f"{kind} adapters of this model: {sorted(mine)}."
        )
    return adapter_name, configs[adapter_name]
