"""LoReFT (Wu et al., 2024, "ReFT: Representation Finetuning for Language Models"), a minimal implementation used as
a baseline by the recipes and the accuracy study (``pyreft`` pins transformers 4.45 and cannot be installed beside
this stack).

For every intervened layer l, the hidden state h (the layer's output, i.e. the residual stream) at the first
``prefix`` and last ``suffix`` real (non-padding) positions of each sequence is replaced by

    Φ(h) = h + Rᵀ(W h + b − R h),     R ∈ ℝ^{r×d} with orthonormal rows, W ∈ ℝ^{r×d}, b ∈ ℝ^r

(edit the representation inside the r-dimensional subspace spanned by R's rows towards W h + b). One (R, W, b) per
layer is shared by its prefix and suffix positions (pyreft's ``share_weights``); R is kept orthonormal by
``torch.nn.utils.parametrizations.orthogonal``. Everything else of the model is frozen (a classification head, where
the task has one, trains with it). Parameters per layer: 2·r·d + r.

Where this differs from pyreft: positions come from the attention mask of each forward pass (so padding side does not
matter); dropout (default 0) acts on the edit W h + b − R h, where pyreft's ``LoreftIntervention`` drops out the
whole output Φ(h); no activation (pyreft's default for LoReFT is linear).

The settings are stored in the model config (``config.loreft``), so `save_pretrained` + `load_loreft` restore the
interventions from the saved directory.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

LAYER_LISTS = ("layer", "layers", "h", "block")  # names of the ModuleList that holds the transformer blocks


class LoReftIntervention(nn.Module):
    """Φ(h) = h + Rᵀ(W h + b − R h), R (r×d) with orthonormal rows; W, b: a ``Linear(d, r)``."""

    def __init__(self, hidden_size: int, r: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.rotate = orthogonal(nn.Linear(hidden_size, r, bias=False))  # R: weight (r, d), orthonormal rows
        self.learned_source = nn.Linear(hidden_size, r)  # W, b
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        rotation = self.rotate.weight.to(h.dtype)
        return h + self.dropout(self.learned_source(h) - h @ rotation.T) @ rotation


def transformer_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, ModuleList) of the model's transformer blocks: the first ModuleList named one of ``LAYER_LISTS``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in LAYER_LISTS and len(module) > 0:
            return name, module
    raise ValueError(f"LoReFT: no ModuleList of transformer blocks named one of {LAYER_LISTS} in "
                     f"{type(model).__name__}")


def intervened_positions(attention_mask: torch.Tensor, prefix: int, suffix: int) -> torch.Tensor:
    """(batch, seq) bool: the first ``prefix`` and last ``suffix`` real positions of each row of the mask."""
    real = attention_mask.bool()
    index = real.long().cumsum(dim=1) - 1  # position among the real tokens
    length = real.sum(dim=1, keepdim=True)
    return real & ((index < prefix) | (index >= length - suffix))


class LoReft(nn.Module):
    """The interventions of one model (``model.loreft``) and the hooks that apply them."""

    def __init__(self, model: nn.Module, r: int, layers: Optional[Sequence[int]], prefix: int, suffix: int,
                 dropout: float) -> None:
        super().__init__()
        self.layers_name, blocks = transformer_layers(model)
        hidden = model.config.get_text_config().hidden_size
        self.layer_ids = list(range(len(blocks))) if layers is None else [int(i) for i in layers]
        bad = [i for i in self.layer_ids if not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(f"LoReFT layers {bad} out of range: the model has {len(blocks)} layers (0..{len(blocks) - 1})")
        self.prefix, self.suffix = int(prefix), int(suffix)
        self.interventions = nn.ModuleDict({str(i): LoReftIntervention(hidden, r, dropout) for i in self.layer_ids})
        self._mask: Optional[torch.Tensor] = None
        self._handles = [model.register_forward_pre_hook(self._remember_mask, with_kwargs=True)]
        for i in self.layer_ids:
            self._handles.append(blocks[i].register_forward_hook(self._intervene(self.interventions[str(i)])))

    def _remember_mask(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is None and ids is not None:
            mask = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)
        self._mask = mask

    def _intervene(self, intervention: LoReftIntervention):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            mask = self._mask
            if mask is None or mask.shape != hidden.shape[:2]:
                mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
            where = intervened_positions(mask.to(hidden.device), self.prefix, self.suffix).unsqueeze(-1)
            edited = torch.where(where, intervention(hidden), hidden)
            return (edited, *output[1:]) if isinstance(output, tuple) else edited
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def check_settings(r, layers, prefix, suffix, dropout, field: Callable[[str], str] = "LoReFT {}".format) -> None:
    """Raise ValueError for settings LoReFT cannot use, naming each setting as ``field(name)``."""
    for name, value, low in (("r", r, 1), ("prefix", prefix, 0), ("suffix", suffix, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{field(name)} must be an integer >= {low}, got {value!r}")
    if prefix + suffix == 0:
        raise ValueError(f"LoReFT needs at least one intervened position: {field('prefix')} + {field('suffix')} >= 1")
    if layers is not None and (not isinstance(layers, (list, tuple)) or not layers or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in layers)):
        raise ValueError(f"{field('layers')} must be a non-empty list of layer indices (or omitted: all), "
                         f"got {layers!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ValueError(f"{field('dropout')} must be a number in [0, 1), got {dropout!r}")


def attach_loreft(model: nn.Module, r: int = 1, layers: Optional[Sequence[int]] = None, prefix: int = 1,
                  suffix: int = 1, dropout: float = 0.0) -> LoReft:
    """Add LoReFT interventions to ``model`` (as ``model.loreft``) and record the settings in ``model.config``."""
    check_settings(r, layers, prefix, suffix, dropout)
    loreft = LoReft(model, r, layers, prefix, suffix, float(dropout))
    model.loreft = loreft
    model.config.loreft = {"r": r, "layers": loreft.layer_ids, "prefix": prefix, "suffix": suffix,
                           "dropout": float(dropout)}
    return loreft


def load_loreft(model: nn.Module, directory: str) -> nn.Module:
    """Re-attach the interventions of a model saved with LoReFT (``model`` loaded from ``directory`` by
    ``from_pretrained``, which leaves the ``loreft.*`` tensors out) and load their values."""
    from pathlib import Path

    from safetensors.torch import load_file

    settings = getattr(model.config, "loreft", None)
    if not settings:
        raise ValueError(f"{directory} holds no LoReFT model (its config.json has no 'loreft' entry)")
    attach_loreft(model, **settings)
    tensors = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        tensors.update({k[len("loreft."):]: v for k, v in load_file(str(f)).items() if k.startswith("loreft.")})
    missing, unexpected = model.loreft.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{directory}: LoReFT tensors do not match config.loreft={settings}: missing {missing}, "
                         f"unexpected {unexpected}")
    return model
