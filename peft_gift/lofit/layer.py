"""LoFiT tuner layers: per-head scales and offsets on the input of an attention output projection."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn
from transformers.pytorch_utils import Conv1D

from .._peft_private import BufferDict, _get_in_out_features
from ..input_edit import InputEditLayer
from .l1 import refuse_unreachable_scale, register_penalised_layer

# Below this |1 + A| a merged scale cannot be divided out of an offset merged on top of it accurately.
_MIN_INVERTIBLE_SCALE = 1e-3


class HeadVectors(nn.Module):
    """The per-head vectors of one adapter in one layer: ``weight`` (K, head_dim), the scales A or offsets v of the
    K heads it adapts. A module (not a bare parameter) so that parameter names read ``<container>.<adapter>.weight``
    like LoRA's, which tools that copy one adapter into another by name (TRL's DPO reference adapter) rely on."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(values)


class LofitLayer(InputEditLayer):
    r"""Mixin holding LoFiT's per-head parameters for one attention output projection.

    The projection's input z (last dim = ``num_heads * head_dim``, heads concatenated) is viewed as ``(num_heads,
    head_dim)`` and edited before the projection runs::

        z_h <- z_h * prod_a (1 + A_{a,h}) + sum_b v_{b,h}

    over the active scale adapters a (``lofit_head_scale``) and offset adapters b (``lofit_head_offset``). Each adapter
    stores a ``(K, head_dim)`` tensor for the K heads it adapts in this layer (``K = num_heads`` for "every head"), and
    ``lofit_head_index[adapter]`` (a non-persistent long buffer, rebuilt from the config) says which heads those are.
    Heads without an entry are left unchanged (scale 1, offset 0).
    """

    adapter_layer_names = ("lofit_head_scale", "lofit_head_offset")
    other_param_names = ("lofit_head_index", "lofit_l1_lambda")

    def __init__(self, base_layer: nn.Module, layer_index: Optional[int], **kwargs) -> None:
        self.base_layer = base_layer
        self.lofit_head_scale = nn.ModuleDict()  # {adapter: HeadVectors}
        self.lofit_head_offset = nn.ModuleDict()
        self.lofit_head_index = BufferDict({}, persistent=False)
        self.layer_index = None if layer_index is None else int(layer_index)
        self.lofit_l1_lambda: dict[str, float] = {}  # per scale adapter: λ of its L1 penalty
        # per adapter: (num_heads, head_dim) used to interpret the input of this projection
        self.head_shapes: dict[str, tuple[int, int]] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        # per merged adapter: what `unmerge` needs to restore the base layer exactly
        self._merge_records: dict[str, dict[str, Any]] = {}

        base = self.get_base_layer()
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise ValueError(
                f"LoFiT supports torch.nn.Linear and transformers Conv1D projections, got {type(base).__name__}."
            )
        self.in_features, self.out_features = _get_in_out_features(base)
        self.fan_in_fan_out = isinstance(base, Conv1D)  # Conv1D stores its weight as (in, out)

    # ------------------------------------------------------------------ adapters
    def update_layer(self, adapter_name: str, config, *, heads: Optional[list[int]] = None) -> None:
        """Create the parameters of ``adapter_name`` (a `LofitConfig` whose ``num_heads``/``head_dim`` are resolved):
        a ``(K, head_dim)`` tensor for the heads of this layer in ``heads`` (``None`` = all ``num_heads``), drawn from
        N(0, init_std^2); a scale adapter also records its λ."""
        mode, num_heads, head_dim = config.mode, config.num_heads, config.head_dim
        if num_heads * head_dim != self.in_features:
            raise ValueError(
                f"in_features={self.in_features} of layer {self.layer_index} != num_heads * head_dim = "
                f"{num_heads} * {head_dim} = {num_heads * head_dim}."
            )
        head_ids = list(range(num_heads)) if heads is None else sorted(heads)
        if not head_ids or head_ids[0] < 0 or head_ids[-1] >= num_heads or len(set(head_ids)) != len(head_ids):
            raise ValueError(f"heads {head_ids} of layer {self.layer_index} must be unique and in [0, {num_heads}).")
        values = torch.zeros(len(head_ids), head_dim)
        if config.init_std > 0:
            values.normal_(0.0, config.init_std)
        container = self.lofit_head_scale if mode == "scale" else self.lofit_head_offset
        container[adapter_name] = HeadVectors(values)
        self.lofit_head_index[adapter_name] = torch.tensor(head_ids, dtype=torch.long)
        self.head_shapes[adapter_name] = (num_heads, head_dim)
        if mode == "scale":
            self.lofit_l1_lambda[adapter_name] = float(config.l1_lambda)
            if config.l1_lambda > 0:
                register_penalised_layer(self)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.head_shapes.pop(adapter_name, None)

    def penalised_scales(self) -> list[tuple[torch.Tensor, float]]:
        """[(A, λ)] of the active scale adapters with λ > 0 whose A is trained (``requires_grad``): what the L1 step
        hook (`l1.add_l1_term`) adds λ·sign(A) to."""
        return [(self.lofit_head_scale[name].weight, self.lofit_l1_lambda[name]) for name in self.active_adapters
                if self.lofit_l1_lambda.get(name, 0.0) > 0 and name in self.lofit_head_scale
                and self.lofit_head_scale[name].weight.requires_grad]

    def adapter_mode(self, adapter_name: str) -> Optional[str]:
        """"scale", "bias" (offsets) or None when this layer has no parameters for ``adapter_name``."""
        if adapter_name in self.lofit_head_scale:
            return "scale"
        if adapter_name in self.lofit_head_offset:
            return "bias"
        return None

    def adapted_heads(self, adapter_name: str) -> list[int]:
        """Head indices (within this layer) that ``adapter_name`` adapts."""
        return self.lofit_head_index[adapter_name].tolist()

    def _expand(self, adapter_name: str, values: torch.Tensor, fill: float) -> torch.Tensor:
        """(K, head_dim) values of the adapted heads -> flat (num_heads * head_dim,) vector, ``fill`` elsewhere."""
        num_heads, head_dim = self.head_shapes[adapter_name]
        index = self.lofit_head_index[adapter_name]
        if index.numel() == num_heads:  # every head, stored in order
            return values.reshape(-1)
        full = values.new_full((num_heads, head_dim), fill)
        return full.index_copy(0, index.to(values.device), values).reshape(-1)

    def get_scale_vector(self, adapter_name: str) -> torch.Tensor:
        """Flat multiplier (1 + A) over the projection's input features (1 where the adapter has no head)."""
        return self._expand(adapter_name, 1.0 + self.lofit_head_scale[adapter_name].weight, 1.0)

    def get_offset_vector(self, adapter_name: str) -> torch.Tensor:
        """Flat offset v over the projection's input features (0 where the adapter has no head)."""
        return self._expand(adapter_name, self.lofit_head_offset[adapter_name].weight, 0.0)

    def _combined_edit(self, adapter_names) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        scale = offset = None
        for name in adapter_names:
            if name in self.lofit_head_scale:
                if self.lofit_l1_lambda.get(name, 0.0) > 0:
                    refuse_unreachable_scale(self.lofit_head_scale[name].weight, name)
                s = self.get_scale_vector(name)
                scale = s if scale is None else scale * s
            elif name in self.lofit_head_offset:
                v = self.get_offset_vector(name)
                offset = v if offset is None else offset + v
        return scale, offset

    def edit_input(self, x: torch.Tensor, adapter_names: list[str]) -> torch.Tensor:
        """Apply the head edits of ``adapter_names`` to the projection input ``x`` (..., in_features)."""
        scale, offset = self._combined_edit(adapter_names)
        if scale is None and offset is None:
            return x
        ref = scale if scale is not None else offset
        compute_dtype = torch.promote_types(x.dtype, ref.dtype)
        z = x.to(compute_dtype)
        if scale is not None:
            z = z * scale.to(device=x.device, dtype=compute_dtype)
        if offset is not None:
            z = z + offset.to(device=x.device, dtype=compute_dtype)
        return z.to(x.dtype)

    # ------------------------------------------------------------------ weights in (out, in) layout
    def _weight_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T if self.fan_in_fan_out else weight

    def _head_features(self, adapter_name: str) -> torch.Tensor:
        """Indices of the input features (columns of W_o) of the K heads ``adapter_name`` adapts, head by head."""
        _, head_dim = self.head_shapes[adapter_name]
        index = self.lofit_head_index[adapter_name]
        return (index[:, None] * head_dim + torch.arange(head_dim, device=index.device)).reshape(-1)

    def _merged_scale(self) -> Optional[torch.Tensor]:
        scale = None
        for name in self.merged_adapters:
            record = self._merge_records.get(name, {})
            if "scale" in record:
                scale = record["scale"] if scale is None else scale * record["scale"]
        return scale

    def get_delta_bias(self, adapter_name: str) -> torch.Tensor:
        """b' - b for merging offset adapter ``adapter_name``: W_o @ v (fp32), using the *unscaled* W_o."""
        base = self.get_base_layer()
        offset = self.get_offset_vector(adapter_name).detach().to(torch.float32)
        merged_scale = self._merged_scale()
        if merged_scale is not None:
            # z' = z * S + v  =>  W (z * S + v) = (W diag S) z + (W diag S)(v / S)
            nonzero = offset != 0
            if (merged_scale[nonzero].abs() < _MIN_INVERTIBLE_SCALE).any():
                raise ValueError(
                    f"Cannot merge offset adapter {adapter_name!r} on top of an already merged scale that is ~0 on "
                    "the same features; unmerge first or merge the adapters in one call."
                )
            offset = torch.where(nonzero, offset / merged_scale.to(offset.device), offset)
        weight = self._weight_out_in(base.weight.detach()).to(torch.float32)
        return weight @ offset.to(weight.device)

    # ------------------------------------------------------------------ merge / unmerge
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Fold the adapters into the base layer: scales into the weight columns of their heads
        (W[:, head] *= 1 + A_h; those K·head_dim columns are kept for `unmerge`), offsets into the bias
        (b += W[:, head] @ v_h). A projection without a bias keeps its parameters: the merged W v is added in
        `forward` instead, and becomes a real bias only when the layer is unloaded (`materialise_merged_bias`).

        Args:
            safe_merge: compute on copies and raise ``ValueError`` if the result has NaN/inf, leaving W and b as is.
            adapter_names: adapters to merge (default: the active ones).
        """
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        base = self.get_base_layer()
        for name in adapter_names:
            mode = self.adapter_mode(name)
            if mode is None:
                continue
            record: dict[str, Any] = {}
            if mode == "scale":
                weight = self._weight_out_in(base.weight.data)
                features = self._head_features(name).to(weight.device)
                columns = weight[:, features]
                dtype = torch.promote_types(weight.dtype, torch.float32)
                scale = 1.0 + self.lofit_head_scale[name].weight.detach().reshape(-1).to(weight.device, dtype)
                merged = (columns.to(dtype) * scale).to(weight.dtype)
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
                record["scale"] = self.get_scale_vector(name).detach().to(torch.float32).clone()
                record["columns"] = (features, columns)  # the original columns: `unmerge` restores them bit for bit
                weight[:, features] = merged
            else:
                delta = self.get_delta_bias(name)
                new_bias = delta if base.bias is None else (
                    base.bias.data.to(torch.float32) + delta.to(base.bias.device)).to(base.bias.dtype)
                if safe_merge and not torch.isfinite(new_bias).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
                if base.bias is None:
                    # no bias to fold W v into: kept as a bias that `forward` adds, so merging leaves the model's
                    # parameters as they are; `merge_and_unload` makes it a real bias (`materialise_merged_bias`)
                    record["effective_bias"] = delta
                else:
                    record["bias"] = base.bias.data.clone()
                    base.bias.data = new_bias
            self._merge_records[name] = record
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Undo all merges (last merged first), exactly: restore the stored weight columns of scaled heads and the
        stored bias (or drop the W v that `forward` added)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            record = self._merge_records.pop(name, {})
            if "columns" in record:
                weight = self._weight_out_in(base.weight.data)
                features, columns = record["columns"]
                weight[:, features.to(weight.device)] = columns.to(weight.device)
            if "bias" in record:
                base.bias.data = record["bias"].to(base.bias.device)

    def merged_effective_bias(self) -> Optional[torch.Tensor]:
        """Σ W v (fp32) of the offsets merged while the projection has no bias, which `forward` adds; else None."""
        deltas = [self._merge_records[name]["effective_bias"] for name in self.merged_adapters
                  if "effective_bias" in self._merge_records.get(name, {})]
        return sum(deltas[1:], deltas[0]) if deltas else None

    def materialise_merged_bias(self) -> bool:
        """Unloading: give the base projection a real bias holding `merged_effective_bias` (the merged offsets);
        True if one was created."""
        bias = self.merged_effective_bias()
        base = self.get_base_layer()
        if bias is None or base.bias is not None:
            return False
        base.bias = nn.Parameter(bias.to(device=base.weight.device, dtype=base.weight.dtype), requires_grad=False)
        return True


class Linear(nn.Module, LofitLayer):
    r"""LoFiT on an ``nn.Linear`` or transformers ``Conv1D`` attention output projection W_o:

        y = W_o z' + b,   z'_h = z_h * prod_a (1 + A_{a,h}) + sum_b v_{b,h}   for every head h of this layer

    where z is the projection's input (heads concatenated), a runs over the active scale adapters and b over the
    active offset adapters. Applied at every position; vectorised over heads (no loop over heads).
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, *, layer_index: Optional[int],
                 heads: Optional[list[int]] = None, **kwargs) -> None:
        super().__init__()
        LofitLayer.__init__(self, base_layer, layer_index=layer_index)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, heads=heads)

    def forward(self, x: torch.Tensor, *args: Any, adapter_names: Optional[list[str]] = None, **kwargs: Any):
        result = self.edited_forward(x, *args, adapter_names=adapter_names, **kwargs)
        bias = self.merged_effective_bias() if self.merged else None  # (disabling unmerges inside edited_forward)
        return result if bias is None else result + bias.to(device=result.device, dtype=result.dtype)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """``copy.deepcopy`` and unpickling (``torch.load``, ``mp.spawn``) rebuild layers through here: a copy of a
        penalised layer joins the L1 step hook's registry as the original did."""
        super().__setstate__(state)
        if any(lam > 0 for lam in self.__dict__.get("lofit_l1_lambda", {}).values()):
            register_penalised_layer(self)

    def __repr__(self) -> str:
        return "lofit." + super().__repr__()
