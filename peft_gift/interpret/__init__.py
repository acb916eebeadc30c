"""Interpretability read-outs of GIFT and LoFiT adapters: tensors and token lists, no plotting.

Everything here reads a model without changing it: activations are captured with forward hooks that are removed
before the function returns, parameters are only read, and the train/eval mode is restored.

GIFT (Ŵ = W(I + s·φψ), see :class:`peft_gift.GiftConfig`)
    * :func:`cluster_vectors` — C = W·φ (d_out × r) per adapted layer, W the *unmerged* frozen weight.
    * :func:`channel_scores` — s_ij = y_i · C[:, j] for every token i and channel j on given inputs, where y_i is
      the adapter's output of the layer for token i.
    * :func:`patch_grid`, :func:`patch_heatmaps` — per-channel maps over ViT/DINOv2 patches, normalised as in the GIFT
      paper (min-max per map, values < 0.5 zeroed); :func:`top_tokens_per_channel` for text.
    * :func:`decode_gift_channels` — the columns of C read through the final norm and the LM head.

LoFiT (z_h ← (1 + A_h) ⊙ z_h + v_h, see :class:`peft_gift.LofitConfig`)
    * :func:`lofit_head_score_grid` — layers × heads map of ‖A_h‖₂ of a scale adapter (the scores
      :func:`peft_gift.select_heads` ranks).
    * :func:`lofit_offset_vectors`, :func:`decode_lofit_offsets` — what each offset head writes into the residual
      stream (W_o[:, head] · v_h) and the tokens it promotes through the final norm and the LM head.

Pictures (PNG/HTML) of these numbers: :mod:`peft_gift.interpret.figures` (matplotlib, imported when drawing) and
``scripts/visualize.py`` (the ``train`` extra brings matplotlib).
"""

from .decode import decode_gift_channels, decode_lofit_offsets, decode_vectors
from .gift import (
    channel_scores,
    cluster_vectors,
    gift_layer_names,
    patch_grid,
    patch_heatmaps,
    top_tokens_per_channel,
)
from .lofit import lofit_head_score_grid, lofit_offset_vectors

__all__ = [
    "gift_layer_names",
    "cluster_vectors",
    "channel_scores",
    "patch_grid",
    "patch_heatmaps",
    "top_tokens_per_channel",
    "decode_vectors",
    "decode_gift_channels",
    "lofit_head_score_grid",
    "lofit_offset_vectors",
    "decode_lofit_offsets",
]
