"""LoFiT read-outs for interpretation: the layers × heads score grid of a scale adapter and offset vectors W_o·v_h."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from ..lofit.readout import head_score_grid, offset_vectors


def lofit_head_score_grid(model: nn.Module, adapter_name: Optional[str] = None) -> np.ndarray:
    """Layers × heads array of ‖A_h‖₂ for a LoFiT scale (stage-1) adapter; NaN where a head has no scale.

    The same scores :func:`peft_gift.select_heads` ranks (both read them through :mod:`peft_gift.lofit.readout`).

    Raises:
        ValueError: the adapter is not a LoFiT adapter or is in bias mode (offsets, no scales to score).
    """
    return head_score_grid(model, adapter_name)


def lofit_offset_vectors(model: nn.Module, adapter_name: Optional[str] = None) -> dict[tuple[int, int], torch.Tensor]:
    """What each head of a LoFiT offset (stage-2) adapter writes into the residual stream, W_o[:, head]·v_h
    (see :func:`peft_gift.lofit.readout.offset_vectors`).

    Raises:
        ValueError: the adapter is not a LoFiT adapter or is in scale mode.
    """
    return offset_vectors(model, adapter_name)
