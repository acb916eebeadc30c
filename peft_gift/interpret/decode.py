"""Logit lens for adapters: residual-stream directions (GIFT channels, LoFiT offsets) read through the LM head."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from ..lofit.readout import offset_vectors
from ._common import _hf_model
from .gift import cluster_vectors

_FINAL_NORMS = (
    "model.norm", "transformer.ln_f", "model.final_layernorm", "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm", "transformer.norm_f", "model.language_model.norm",
)


def _final_norm_and_head(model: nn.Module) -> tuple[Optional[nn.Module], nn.Module]:
    hf = _hf_model(model)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise ValueError(
            f"{type(hf).__name__} has no LM head (get_output_embeddings() is None); decoding needs a causal or "
            "masked language model such as AutoModelForCausalLM."
        )
    for path in _FINAL_NORMS:
        module = hf
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.Module):
            return module, head
    return None, head


def decode_vectors(
    model: nn.Module,
    vectors: torch.Tensor,
    tokenizer=None,
    k: int = 10,
    apply_final_norm: bool = True,
) -> list[list[tuple[Union[str, int], float]]]:
    """Read residual-stream directions through the model's final norm and LM head (the "logit lens").

    For each row v of ``vectors`` (n × hidden_size) computes logits = lm_head(final_norm(v)) and returns the ``k``
    tokens with the largest logits as ``[(token, logit)]`` — token strings when a tokenizer is given, else ids. This is
    the direct path only: it ignores what later layers do with v.

    Raises:
        ValueError: the model has no LM head, or the vectors' width is not the LM head's input size.
    """
    norm, head = _final_norm_and_head(model)
    hidden = head.weight.shape[1]
    vectors = torch.as_tensor(vectors)
    if vectors.dim() == 1:
        vectors = vectors[None]
    if vectors.dim() != 2 or vectors.shape[1] != hidden:
        raise ValueError(
            f"Vectors of shape {tuple(vectors.shape)} cannot be decoded: the LM head reads {hidden}-dim hidden states."
        )
    if apply_final_norm and norm is None:
        raise ValueError(
            f"No final norm found on {type(_hf_model(model)).__name__} (looked for {list(_FINAL_NORMS)}); "
            "pass apply_final_norm=False to decode without it."
        )
    with torch.no_grad():
        h = vectors.to(device=head.weight.device, dtype=head.weight.dtype)
        if apply_final_norm:
            h = norm(h)
        logits = head(h).float()
    k = min(k, logits.shape[-1])
    values, index = logits.topk(k, dim=-1)
    out = []
    for row_v, row_i in zip(values.tolist(), index.tolist()):
        names = tokenizer.convert_ids_to_tokens(row_i) if tokenizer is not None else row_i
        out.append(list(zip(names, row_v)))
    return out


def decode_gift_channels(
    model: nn.Module,
    layer: Optional[str] = None,
    tokenizer=None,
    k: int = 10,
    adapter_name: Optional[str] = None,
    apply_final_norm: bool = True,
) -> dict[str, list[list[tuple[Union[str, int], float]]]]:
    """The tokens each GIFT channel promotes: every column of C = W·φ decoded with :func:`decode_vectors`.

    Only layers whose output lives in the residual stream (d_out == the LM head's hidden size, e.g. ``o_proj``,
    ``down_proj`` or non-GQA ``v_proj``) can be read this way. ``layer=None`` decodes every such adapted layer.

    Returns:
        ``{layer name: [top tokens of channel 0, channel 1, ...]}``.
    """
    _, head = _final_norm_and_head(model)
    hidden = head.weight.shape[1]
    centres = cluster_vectors(model, layer, adapter_name)
    fitting = {name: c for name, c in centres.items() if c.shape[0] == hidden}
    if not fitting:
        raise ValueError(
            f"No requested GIFT layer writes to the {hidden}-dim residual stream: "
            f"{ {n: c.shape[0] for n, c in centres.items()} } (layer: d_out). Decode layers with d_out == {hidden}."
        )
    if layer is not None and len(fitting) != len(centres):
        bad = {n: c.shape[0] for n, c in centres.items() if n not in fitting}
        raise ValueError(f"Layers {bad} (name: d_out) do not write to the {hidden}-dim residual stream.")
    return {
        name: decode_vectors(model, c.T, tokenizer, k, apply_final_norm) for name, c in fitting.items()
    }


def decode_lofit_offsets(
    model: nn.Module, tokenizer=None, k: int = 10, adapter_name: Optional[str] = None, apply_final_norm: bool = True
) -> dict[tuple[int, int], list[tuple[Union[str, int], float]]]:
    """The tokens each offset head promotes: W_o[:, head]·v_h (:func:`lofit_offset_vectors`) through the final norm
    and the LM head (:func:`decode_vectors`). Returns ``{(layer, head): [(token, logit), ...]}``."""
    vectors = offset_vectors(model, adapter_name)
    keys = list(vectors)
    decoded = decode_vectors(model, torch.stack([vectors[key] for key in keys]), tokenizer, k, apply_final_norm)
    return dict(zip(keys, decoded))
