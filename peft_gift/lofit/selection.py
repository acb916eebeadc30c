"""From LoFiT stage 1 (scales) to stage 2 (offsets): head selection and the stage-2 config."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional, Union

from torch import nn

from .config import LofitConfig
from .readout import head_scores, resolve_lofit_adapter

__all__ = ["head_scores", "lofit_stage2_config", "select_heads"]


def select_heads(
    peft_model: nn.Module,
    k: Optional[int] = None,
    fraction: Optional[float] = None,
    adapter_name: Optional[str] = None,
) -> list[tuple[int, int]]:
    """LoFiT head selection: the global top-K (layer, head) pairs by ||A_h||_2 of a stage-1 scale adapter, best first.

    Exactly one of ``k`` (1 <= k <= number of scored heads) or ``fraction`` (0 < fraction <= 1; K = round(fraction *
    heads), at least 1) must be given. Ties are broken by (layer, head). There is no per-layer quota.
    """
    if (k is None) == (fraction is None):
        raise ValueError(f"Pass exactly one of `k` or `fraction`, got k={k!r}, fraction={fraction!r}.")
    scores = head_scores(peft_model, adapter_name)
    total = len(scores)
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= total:
            raise ValueError(f"`k` must be an int with 1 <= k <= {total} (the number of scored heads), got {k!r}.")
        count = int(k)
    else:
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
            raise ValueError(f"`fraction` must be a float with 0 < fraction <= 1, got {fraction!r}.")
        count = max(1, min(total, int(math.floor(fraction * total + 0.5))))
    ranked = sorted(scores, key=lambda key: (-scores[key], key))
    return ranked[:count]


def lofit_stage2_config(
    stage1_config_or_peft_model: Union[LofitConfig, nn.Module],
    heads: list[tuple[int, int]],
    **overrides,
) -> LofitConfig:
    """The stage-2 (offset) config matching a stage-1 config or model: same targets/geometry/task, ``mode="bias"``,
    ``heads=heads``, ``l1_lambda=0``; any field can be overridden by keyword. Apply it to a *fresh* base model (LoFiT
    stage 2 starts from the base model, the stage-1 scales are dropped)."""
    source = stage1_config_or_peft_model
    if not isinstance(source, LofitConfig):
        _, source = resolve_lofit_adapter(source, overrides.pop("adapter_name", None))
    unknown = set(overrides) - {f.name for f in dataclasses.fields(LofitConfig)}
    if unknown:
        raise ValueError(f"Unknown LofitConfig field(s) {sorted(unknown)}.")
    values = {f.name: getattr(source, f.name) for f in dataclasses.fields(LofitConfig) if f.init}
    for name in ("peft_type", "peft_version", "inference_mode"):
        values.pop(name, None)
    for name in ("target_modules", "exclude_modules", "modules_to_save"):
        if isinstance(values.get(name), (set, list)):
            values[name] = type(values[name])(values[name])
    values.update(mode="bias", heads=heads, l1_lambda=0.0)
    values.update(overrides)
    return LofitConfig(**values)
