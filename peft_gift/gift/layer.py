"""GIFT tuner layer: feeds x + s·φ(ψx) to the untouched base layer; merges W ← W(I + s·φψ) and restores W exactly."""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import check_adapters_to_merge
from peft.utils import resolve_quantization_backend
from peft.utils.quantization_utils import ForwardOnlyQuantizationBackend, TorchaoBackend
from torch import nn
from transformers.pytorch_utils import Conv1D

from .._peft_private import _get_in_out_features
from ..input_edit import InputEditLayer

# Above this condition number of I + Σ s φψ, the Woodbury unmerge would lose more than ~10 units of the weight
# dtype's rounding, so merging keeps a copy of the original weight instead (as it always does for 16-bit weights).
MAX_INVERTIBLE_CONDITION = 10.0


class SharedTheta(nn.ParameterDict):
    """One factor (φ or ψ) of one adapter for every sharing group: ``{group: Parameter}``, held by the `GiftModel`
    tuner (``gift_phi[adapter]``, ``gift_psi[adapter]``) and used by every layer of each group.

    Layers read a factor by *calling* this module, ``container(group)``, never by indexing it: a call runs the hooks
    that accelerate (``cpu_offload``, ``dispatch_model`` with offloading) attaches to modules with parameters, so an
    offloaded Θ is materialised around its use exactly as a layer's own weight is."""

    __call__ = nn.Module.__call__  # nn.ParameterDict refuses calls

    def forward(self, group: str) -> nn.Parameter:
        return self[group]


class GiftLayer(InputEditLayer):
    """Mixin for layers adapted by GIFT: Ŵ = W (I + Σ_a s_a φ_a ψ_a) over the active adapters a.

    Θ_a = (φ_a, ψ_a) is *not* registered here: it lives once per sharing group on the `GiftModel` tuner
    (``gift_phi[adapter][group]``, ``gift_psi[adapter][group]``, `SharedTheta` containers) and may sit on another
    device than this layer (a model split over devices): the forward pass uses it on the input's device, so the
    gradient reaches Θ where it lives. Per adapter, the layer holds a view of that adapter's two group containers
    (``gift_theta[adapter]``), its group name, the scale s and the dropout module, all set together by `update_layer`
    — the only way an adapter enters a layer — so a layer cannot keep using Θ of a tuner or load that is gone.
    ``gift_theta`` is not a registered submodule (the adapter file holds each Θ once, from the tuner), yet it is
    listed in ``adapter_layer_names``, so PEFT's generic code sets Θ's ``requires_grad`` in
    `set_adapter`/`set_requires_grad`/`disable_adapter` and reports Θ in `get_layer_status`/`get_model_status`. It
    owns no tensor, so PEFT's per-layer device move (`_move_adapter_to_device_of_base_layer`) has nothing to move.
    """

    adapter_layer_names = ("gift_theta", "gift_dropout")
    other_param_names = ("gift_group", "gift_scaling")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.gift_dropout = nn.ModuleDict()
        object.__setattr__(self, "gift_theta", nn.ModuleDict())  # {adapter: {"phi": ..., "psi": ...}}, unregistered
        self.gift_group: dict[str, str] = {}
        self.gift_scaling: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        # the original weight, kept while merged when the Woodbury inverse could not restore it exactly
        self._unmerged_weight_copy: Optional[torch.Tensor] = None
        # the original quantized storage while merged (quantized bases only): `unmerge` restores it bit for bit
        self._quantized_original: Optional[dict[str, Any]] = None
        self.quantization_backend = _resolve_backend(self.get_base_layer())
        self.in_features, self.out_features = _get_in_out_features(self.get_base_layer())
        self.fan_in_fan_out = isinstance(self.get_base_layer(), Conv1D)  # Conv1D stores its weight as (in, out)
        self.kwargs = kwargs

    def update_layer(self, adapter_name: str, config, *, theta: tuple[SharedTheta, SharedTheta], group: str) -> None:
        """Attach adapter ``adapter_name`` (a `GiftConfig`): its (φ, ψ) containers on the tuner, its group, scale and
        dropout."""
        self.gift_theta[adapter_name] = nn.ModuleDict({"phi": theta[0], "psi": theta[1]})
        self.gift_group[adapter_name] = group
        self.gift_scaling[adapter_name] = config.scaling
        self.gift_dropout[adapter_name] = nn.Dropout(p=config.dropout) if config.dropout > 0 else nn.Identity()
        self.set_adapter(self.active_adapters)

    def theta(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(φ, ψ) of ``adapter_name`` for this layer's group (φ: d_in×r, ψ: r×d_in), where the tuner keeps them."""
        group, theta = self.gift_group[adapter_name], self.gift_theta[adapter_name]
        return theta["phi"](group), theta["psi"](group)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device=None) -> None:
        """Nothing to move: the layer owns no adapter tensor. PEFT's version would move (and cast) the shared Θ of
        every layer of the group to this layer's device; Θ stays on the tuner and forward brings it to the input."""

    # ---- exact merge / unmerge ---------------------------------------------------------------------------------
    def _low_rank_factors(self, adapter_names: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """U (d_in×R), V (R×d_in) in float64 on ``device`` (default: the base weight's; Θ may live on another
        device when the model is split over devices) with I + U V = I + Σ_a s_a φ_a ψ_a."""
        device = self.get_base_layer().weight.device if device is None else device
        us, vs = [], []
        for name in adapter_names:
            phi, psi = self.theta(name)
            us.append(phi.detach().to(device, torch.float64) * self.gift_scaling[name])
            vs.append(psi.detach().to(device, torch.float64))
        return torch.cat(us, dim=1), torch.cat(vs, dim=0)

    def _weight_as_out_in(self) -> torch.Tensor:
        weight = self.get_base_weight()
        return weight.T if self.fan_in_fan_out else weight

    def unmerged_weight(self) -> torch.Tensor:
        """The original W (out×in, float64): the kept copy, or recovered from the merged weight by Woodbury:
        W = W'(I + UV)⁻¹ = W' − (W'U)(I_R + VU)⁻¹V."""
        if self._quantized_original is not None:
            return self._dequantize_original()
        if self._unmerged_weight_copy is not None:
            return self._unmerged_weight_copy.to(self.get_base_layer().weight.device, torch.float64)
        weight = self._weight_as_out_in().double()
        if not self.merged_adapters:
            return weight
        u, v = self._low_rank_factors(self.merged_adapters, weight.device)
        eye = torch.eye(v.shape[0], dtype=torch.float64, device=v.device)
        return weight - torch.linalg.solve((eye + v @ u).T, (weight @ u).T).T @ v

    def _base_dtype(self) -> torch.dtype:
        if self.quantization_backend is not None:  # the dtype W dequantizes to (what requantizing expects)
            if getattr(self, "_dequantized_dtype", None) is None:
                self._dequantized_dtype = self.get_base_weight().dtype
            return self._dequantized_dtype
        dtype = self.get_base_layer().weight.dtype
        return dtype if dtype.is_floating_point else torch.float32

    # ---- quantized bases: dequantize -> merge -> requantize; unmerge restores the original quantized storage ----
    def _check_quantized_merge(self) -> None:
        """Raise a ValueError naming the backend if the quantized base layer cannot hold a merged weight."""
        backend = self.quantization_backend
        if backend is None:
            return
        name = getattr(backend, "backend_name", type(backend).__name__) or type(backend).__name__
        layer = type(self.get_base_layer()).__name__
        if isinstance(backend, ForwardOnlyQuantizationBackend) or not getattr(backend, "supports_merge", True):
            raise ValueError(
                f"GIFT cannot merge into a {name} quantized layer ({layer}): this backend cannot dequantize and "
                f"requantize its weight. Keep the adapter unmerged (the forward pass works), or merge into an "
                f"unquantized copy of the base model."
            )
        if isinstance(backend, TorchaoBackend) and backend.get_apply_tensor_subclass is None:
            raise ValueError(
                f"GIFT cannot merge into a torchao quantized layer ({layer}, weight "
                f"{type(self.get_base_layer().weight).__name__}): the layer does not know the model's torchao "
                f"quantization config needed to requantize the merged weight. Keep the adapter unmerged, or merge "
                f"into an unquantized copy of the base model."
            )

    def _keep_quantized_original(self) -> None:
        base = self.get_base_layer()
        state = getattr(base, "state", None)  # bitsandbytes 8-bit: the int8 data and scales live on the matmul state
        self._quantized_original = {
            "module": base,
            "weight": getattr(base, "weight", None),
            "state": None if state is None else (getattr(state, "CB", None), getattr(state, "SCB", None)),
        }

    def _dequantize_original(self) -> torch.Tensor:
        """The original W (out×in, float64) dequantized from the kept quantized storage (the layer keeps its merged
        storage)."""
        kept = self._quantized_original
        source = kept["module"]
        if source is self.get_base_layer():  # bnb / torchao replace the weight (and 8-bit's scales), not the layer
            cb_scb = kept["state"] or (None, None)
            source = SimpleNamespace(weight=kept["weight"], state=SimpleNamespace(CB=cb_scb[0], SCB=cb_scb[1]))
        return self.quantization_backend.get_base_weight(source).detach().double()

    def _restore_quantized(self, kept: dict[str, Any]) -> None:
        base = kept["module"]
        if self.get_base_layer() is not base:  # HQQ replaces the whole base layer when requantizing
            self.base_layer = base
        if kept["weight"] is not None:
            base.weight = kept["weight"]
        if kept["state"] is not None:
            base.state.reset_grads()
            base.state.CB, base.state.SCB = kept["state"]

    def _as_base_weight(self, weight64: torch.Tensor) -> torch.Tensor:
        new = weight64.T if self.fan_in_fan_out else weight64
        return new.to(self._base_dtype()).contiguous()

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW_a = s_a · (W φ_a) ψ_a for the unmerged W, in the base layer's weight layout and dtype."""
        weight = self.unmerged_weight()
        u, v = self._low_rank_factors([adapter_name], weight.device)
        delta = (weight @ u) @ v
        delta = delta.T if self.fan_in_fan_out else delta
        return delta.to(self._base_dtype())

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """W ← W₀ (I + Σ s_a φ_a ψ_a) over the already merged and the newly merged adapters, where W₀ is the
        original weight. Merging [a] then [b] therefore equals merging [a, b] at once. W₀ is kept (a copy) when the
        weight is 16-bit or cond(I + Σ s φψ) > `MAX_INVERTIBLE_CONDITION`, so that `unmerge` is always exact."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        adapter_names = [name for name in adapter_names if name in self.gift_group]
        if not adapter_names:
            return
        self._check_quantized_merge()
        weight = self.unmerged_weight()
        u, v = self._low_rank_factors(self.merged_adapters + adapter_names, weight.device)
        merged = self._as_base_weight(weight + (weight @ u) @ v)
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(
                f"NaNs detected in the merged weights. The adapter {', '.join(adapter_names)} seems to be broken"
            )
        if self.quantization_backend is not None:
            # dequantize -> merge -> requantize (as PEFT does for LoRA); the original quantized storage is kept (it
            # is small) so that `unmerge` and `unmerged_weight` are exact, not a second requantization
            if self._quantized_original is None:
                self._keep_quantized_original()
            self.set_base_weight(merged)
            self.merged_adapters.extend(adapter_names)
            return
        if self._unmerged_weight_copy is None and not self._woodbury_is_exact(u, v):
            self._unmerged_weight_copy = weight.to(self._base_dtype())  # out×in, exact: W₀ came from this dtype
        self.set_base_weight(merged)
        self.merged_adapters.extend(adapter_names)

    def _woodbury_is_exact(self, u: torch.Tensor, v: torch.Tensor) -> bool:
        """Whether W can be recovered from W(I + UV) to ~the weight dtype's rounding: a 32/64-bit weight and
        cond(I + UV) <= MAX_INVERTIBLE_CONDITION. I + UV is the identity outside span(U, Vᵀ), so its singular values
        are those of a 2R×2R matrix (computed in float64)."""
        if self._base_dtype() not in (torch.float32, torch.float64):
            return False
        basis, _ = torch.linalg.qr(torch.cat([u, v.T], dim=1))
        restricted = torch.eye(basis.shape[1], dtype=torch.float64, device=u.device) + (basis.T @ u) @ (v @ basis)
        singular = torch.linalg.svdvals(restricted)
        largest, smallest = max(float(singular.max()), 1.0), min(float(singular.min()), 1.0)
        return smallest > 0 and largest / smallest <= MAX_INVERTIBLE_CONDITION

    def unmerge(self) -> None:
        """Restore the original W exactly: from the kept copy, or by Woodbury in float64 (well-conditioned 32-bit)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        if self._quantized_original is not None:
            self._restore_quantized(self._quantized_original)
            self._quantized_original = None
            self.merged_adapters = []
            return
        weight = self.unmerged_weight()
        self.set_base_weight(self._as_base_weight(weight))
        self._unmerged_weight_copy = None
        self.merged_adapters = []

    # ---- forward -----------------------------------------------------------------------------------------------
    def _input_delta(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """s_a φ_a(ψ_a dropout_a(x)), computed in Θ's dtype on x's device (a differentiable move: Θ may live on
        another device when the model is split over devices)."""
        phi, psi = (t.to(x.device) for t in self.theta(adapter_name))
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


def _resolve_backend(base: nn.Module):
    """PEFT's quantization backend of ``base`` (None if not quantized). A torchao weight whose model's quantization
    config is not passed in still gets a backend that dequantizes (forward, `interpret`); merging then raises."""
    try:
        return resolve_quantization_backend(base)
    except ValueError:
        if "torchao" not in type(getattr(base, "weight", None)).__module__:
            raise
        return TorchaoBackend(get_apply_tensor_subclass=None)


class Linear(nn.Module, GiftLayer):
    """GIFT on a linear layer (``nn.Linear``, GPT-2 ``Conv1D`` or a quantized linear): y = W(x + s·φ(ψx)) + b,
    i.e. Ŵ = W(I + s·φψ). Never builds a d_out×d_in or d_out×r product during the forward pass."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, *, theta, group: str, **kwargs) -> None:
        super().__init__()
        GiftLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, theta=theta, group=group)

    def forward(self, x: torch.Tensor, *args: Any, adapter_names: Optional[list[str]] = None, **kwargs: Any):
        return self.edited_forward(x, *args, adapter_names=adapter_names, **kwargs)

    def __repr__(self) -> str:
        return "gift." + super().__repr__()
