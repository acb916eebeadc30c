"""GiftModel: the PEFT tuner that injects GIFT layers and owns the shared Θ."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import resolve_quantization_backend
from torch import nn
from transformers.pytorch_utils import Conv1D

from .._peft_private import _get_in_out_features
from ..targets import TRANSFORMERS_MODELS_TO_GIFT_TARGET_MODULES_MAPPING, candidate_modules
from ..tuner import InputEditTuner
from .config import GiftConfig
from .layer import GiftLayer, Linear, SharedTheta


def _escape(part: str) -> str:
    return part.replace("~", "~~").replace("-", "~-")


def group_key(module_name: str, sharing: str) -> str:
    """Name of the Θ group of a targeted module: 'all'; the path without layer indices ('module'); the full path
    ('layer'). Parameter names cannot contain '.', so path parts are joined by '-' after escaping '~' and '-' with
    '~' — an injective name — and a path with no part left (a Linear directly in an ``nn.Sequential``) is '~root'."""
    if sharing == "all":
        return "all"
    parts = module_name.split(".")
    if sharing == "module":
        parts = [part for part in parts if not part.isdigit()]
    return "-".join(_escape(part) for part in parts) or "~root"


def _is_supported(base: nn.Module) -> bool:
    if isinstance(base, (nn.Linear, Conv1D)):
        return True
    backend = resolve_quantization_backend(base)
    return backend is not None and getattr(backend, "layer_type", None) == "linear"


def _theta_containers(tuner, adapter_name: str, group: str, config: GiftConfig, in_features: int,
                      weight: torch.Tensor) -> tuple[SharedTheta, SharedTheta]:
    """``adapter_name``'s (φ, ψ) group containers on ``tuner``, allocating Θ of ``group`` (on the base weight's
    device and dtype) the first time a layer of the group needs it."""
    for container in (tuner.gift_phi, tuner.gift_psi):
        if adapter_name not in container:
            container[adapter_name] = SharedTheta()
    phi_dict, psi_dict = tuner.gift_phi[adapter_name], tuner.gift_psi[adapter_name]
    if group not in phi_dict:
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        phi = torch.zeros(in_features, config.r, dtype=torch.float32, device=weight.device)
        psi = torch.zeros(config.r, in_features, dtype=torch.float32, device=weight.device)
        if weight.device.type != "meta":
            # nn.Linear's default init, U(±1/sqrt(fan_in)), for the factor that is not zero
            nn.init.kaiming_uniform_(phi if config.init == "gift" else psi, a=math.sqrt(5))
        phi_dict[group] = nn.Parameter(phi.to(dtype))
        psi_dict[group] = nn.Parameter(psi.to(dtype))
    return phi_dict, psi_dict


def _theta_parameters(tuner, adapter_name: str):
    for container in (tuner.gift_phi, tuner.gift_psi):
        if adapter_name in container:
            yield from container[adapter_name].values()


class GiftModel(InputEditTuner):
    """PEFT tuner for GIFT: each targeted linear layer computes Ŵx = W(x + Σ_a s_a φ_a(ψ_a x)), i.e.
    Ŵ = W(I + Σ_a s_a φ_a ψ_a), where Θ_a = (φ_a, ψ_a) is shared by all layers of a sharing group.

    Θ is stored once per (adapter, group) on this tuner, as ``gift_phi[adapter][group]`` (d_in × r) and
    ``gift_psi[adapter][group]`` (r × d_in); the adapter file therefore holds exactly two tensors per group
    (``base_model.gift_phi.<group>``, ``base_model.gift_psi.<group>``).
    """

    prefix: str = "gift_"
    tuner_layer_cls = GiftLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_GIFT_TARGET_MODULES_MAPPING
    uses_shared_state: bool = True
    method_name = "GIFT"

    @classmethod
    def _describe_config(cls, config: GiftConfig) -> str:
        return f"r={config.r}, sharing={config.sharing!r}"

    @classmethod
    def _check_targets(cls, model: nn.Module, config: GiftConfig) -> None:
        """Raise before any change if a module this config targets is unsupported or a Θ group mixes in_features."""
        groups: dict[str, list[tuple[str, int]]] = {}
        for name, module in candidate_modules(model):
            if not cls._check_target_module_exists(config, name):
                continue
            base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
            if not _is_supported(base):
                raise ValueError(
                    f"GIFT cannot adapt module {name!r} of type {type(base).__name__}: supported are torch.nn.Linear, "
                    f"transformers Conv1D and quantized linear layers. Check GiftConfig.target_modules."
                )
            in_features, _ = _get_in_out_features(base)
            groups.setdefault(group_key(name, config.sharing), []).append((name, in_features))
        for members in groups.values():
            if len({d for _, d in members}) > 1:
                clash = ", ".join(f"{n} (in_features={d})" for n, d in members[:6])
                raise ValueError(
                    f"GiftConfig.sharing={config.sharing!r} shares one Θ between modules with different in_features: "
                    f"{clash}. Use sharing='module' or 'layer', or target modules of equal in_features."
                )

    @classmethod
    @contextmanager
    def _injecting(cls, tuner, model: nn.Module, config: GiftConfig, adapter_name: str) -> Iterator[None]:
        for container in ("gift_phi", "gift_psi"):
            if container not in tuner._modules:
                setattr(tuner, container, nn.ModuleDict())
        cls._check_targets(model, config)
        # as PEFT does for the parameters it sees: adding an adapter leaves the other adapters' trainability alone
        others = [p for name in list(tuner.gift_phi) if name != adapter_name for p in _theta_parameters(tuner, name)]
        flags = [(p, p.requires_grad) for p in others]
        try:
            yield
        except BaseException:
            cls._delete_own_state(tuner, adapter_name)
            raise
        finally:
            for param, requires_grad in flags:
                param.requires_grad_(requires_grad)

    @classmethod
    def _cast_own_state(cls, tuner, adapter_name: str) -> None:
        for container in (tuner.gift_phi, tuner.gift_psi):
            params = container[adapter_name] if adapter_name in container else {}
            for group, param in list(params.items()):
                if param.dtype in (torch.float16, torch.bfloat16):
                    params[group] = nn.Parameter(param.detach().float(), requires_grad=param.requires_grad)

    @classmethod
    def _delete_own_state(cls, tuner, adapter_name: str) -> None:
        for container in (getattr(tuner, "gift_phi", {}), getattr(tuner, "gift_psi", {})):
            if adapter_name in container:
                del container[adapter_name]

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        """Also called unbound with PEFT's `MixedModel` as ``self`` (uses only `BaseTuner` methods)."""
        group = group_key(current_key, peft_config.sharing)
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        in_features, _ = _get_in_out_features(base)
        weight = base.weight if hasattr(base, "weight") else next(base.parameters())
        theta = _theta_containers(self, adapter_name, group, peft_config, in_features, weight)
        if isinstance(target, GiftLayer):
            target.update_layer(adapter_name, peft_config, theta=theta, group=group)
            return
        new_module = Linear(target, adapter_name, peft_config, theta=theta, group=group)
        self._replace_module(parent, target_name, new_module, target)
