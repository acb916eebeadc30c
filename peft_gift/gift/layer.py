"""GIFT tuner layer: feeds x + s·φ(ψx) to the untouched base layer; merges W ← W(I + s·φψ) exactly."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features, check_adapters_to_merge
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..mixed_batch import forward_with_edited_input


class GiftLayer(BaseTunerLayer):
    """Mixin for layers adapted by GIFT: Ŵ = W (I + Σ_a s_a φ_a ψ_a) over the active adapters a.

    Θ_a = (φ_a, ψ_a) is *not* stored here: it lives once per sharing group on the `GiftModel` tuner
    (``gift_phi[adapter][group]``, ``gift_psi[adapter][group]``). The layer keeps an unregistered reference to those
    two containers and, per adapter, the name of its group, the scale s and the dropout module.
    """

    adapter_layer_names = ("gift_dropout",)
    other_param_names = ("gift_group", "gift_scaling")

    def __init__(self, base_layer: nn.Module, theta: tuple[nn.ModuleDict, nn.ModuleDict], **kwargs) -> None:
        self.base_layer = base_layer
        self.gift_dropout = nn.ModuleDict()
        self.gift_group: dict[str, str] = {}
        self.gift_scaling: dict[str, float] = {}
        # plain tuple: the tuner's (gift_phi, gift_psi) containers, deliberately not registered as submodules
        self._gift_theta = theta
        self._disable_adapters = False
        self.merged_adapters = []
        self.in_features, self.out_features = _get_in_out_features(self.get_base_layer())
        self.fan_in_fan_out = isinstance(self.get_base_layer(), Conv1D)  # Conv1D stores its weight as (in, out)
        self.kwargs = kwargs

    def update_layer(self, adapter_name: str, group: str, scaling: float, dropout: float) -> None:
        self.gift_group[adapter_name] = group
        self.gift_scaling[adapter_name] = scaling
        self.gift_dropout[adapter_name] = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.set_adapter(self.active_adapters)

    def theta(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(φ, ψ) of ``adapter_name`` for this layer's group (φ: d_in×r, ψ: r×d_in)."""
        group = self.gift_group[adapter_name]
        phi, psi = self._gift_theta
        return phi[adapter_name][group], psi[adapter_name][group]

    # ---- exact merge / unmerge ---------------------------------------------------------------------------------
    def _low_rank_factors(self, adapter_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """U (d_in×R), V (R×d_in) in float64 with I + U V = I + Σ_a s_a φ_a ψ_a."""
        us, vs = [], []
        for name in adapter_names:
            phi, psi = self.theta(name)
            us.append(phi.detach().double() * self.gift_scaling[name])
            vs.append(psi.detach().double())
        return torch.cat(us, dim=1), torch.cat(vs, dim=0)

    def _weight_as_out_in(self) -> torch.Tensor:
        weight = self.get_base_weight()
        return weight.T if self.fan_in_fan_out else weight

    def unmerged_weight(self) -> torch.Tensor:
        """The original W (out×in, float64), recovered from the merged weight by Woodbury if needed:
        W = W'(I + UV)⁻¹ = W' − (W'U)(I_R + VU)⁻¹V."""
        weight = self._weight_as_out_in().double()
        if not self.merged_adapters:
            return weight
        u, v = self._low_rank_factors(self.merged_adapters)
        eye = torch.eye(v.shape[0], dtype=torch.float64, device=v.device)
        return weight - torch.linalg.solve((eye + v @ u).T, (weight @ u).T).T @ v

    def _write_weight(self, weight64: torch.Tensor) -> None:
        dtype = self.get_base_layer().weight.dtype
        new = weight64.T if self.fan_in_fan_out else weight64
        self.set_base_weight(new.to(dtype if dtype.is_floating_point else torch.float32).contiguous())

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW_a = s_a · (W φ_a) ψ_a for the unmerged W, in the base layer's weight layout and dtype."""
        weight = self.unmerged_weight()
        u, v = self._low_rank_factors([adapter_name])
        delta = (weight @ u) @ v
        delta = delta.T if self.fan_in_fan_out else delta
        return delta.to(self.get_base_layer().weight.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """W ← W₀ (I + Σ s_a φ_a ψ_a) over the already merged and the newly merged adapters, where W₀ is the
        original weight. Merging [a] then [b] therefore equals merging [a, b] at once."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        adapter_names = [name for name in adapter_names if name in self.gift_group]
        if not adapter_names:
            return
        weight = self.unmerged_weight()
        u, v = self._low_rank_factors(self.merged_adapters + adapter_names)
        merged = weight + (weight @ u) @ v
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(
                f"NaNs detected in the merged weights. The adapter {adapter_names} seems to be broken"
            )
        self._write_weight(merged)
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        """Restore the original W exactly (up to float64 round-off and the weight dtype) without a stored copy."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        self._write_weight(self.unmerged_weight())
        self.merged_adapters = []

    # ---- forward -----------------------------------------------------------------------------------------------
    def _input_delta(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """s_a φ_a(ψ_a dropout_a(x)), computed in Θ's dtype."""
        phi, psi = self.theta(adapter_name)
        h = self.gift_dropout[adapter_name](self._cast_input_dtype(x, psi.dtype))
        delta = (h @ psi.T) @ phi.T
        scaling = self.gift_scaling[adapter_name]
        return delta * scaling if scaling != 1.0 else delta

    def edit_input(self, x: torch.Tensor, adapter_names: list[str]) -> torch.Tensor:
        """x + Σ_a s_a φ_a(ψ_a dropout_a(x)) over ``adapter_names`` (those this layer has), in x's dtype."""
        delta = None
        for name in adapter_names:
            if name in self.gift_group:
                d = self._input_delta(x, name)
                delta = d if delta is None else delta + d
        return x if delta is None else x + delta.to(x.dtype)


class Linear(nn.Module, GiftLayer):
    """GIFT on a linear layer (``nn.Linear``, GPT-2 ``Conv1D`` or a quantized linear): y = W(x + s·φ(ψx)) + b,
    i.e. Ŵ = W(I + s·φψ). Never builds a d_out×d_in or d_out×r product during the forward pass."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        theta: tuple[nn.ModuleDict, nn.ModuleDict],
        group: str,
        scaling: float,
        dropout: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__()
        GiftLayer.__init__(self, base_layer, theta, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, group, scaling, dropout)

    def forward(self, x: torch.Tensor, *args: Any, adapter_names: Optional[list[str]] = None, **kwargs: Any):
        return forward_with_edited_input(self, x, *args, adapter_names=adapter_names, **kwargs)

    def __repr__(self) -> str:
        return "gift." + super().__repr__()
