"""LofitModel: the PEFT tuner that wraps attention output projections with LoFiT layers."""

from __future__ import annotations

import copy
import re
import warnings
import weakref
from collections.abc import Mapping
from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, _ExcludedModule, check_target_module_exists
from torch import nn
from transformers.pytorch_utils import Conv1D

from .._checked_load import CheckedLoading
from ..mixed_batch import adapter_names_hooks
from .config import TRANSFORMERS_MODELS_TO_LOFIT_TARGET_MODULES_MAPPING, LofitConfig
from .layer import Linear, LofitLayer

DEFAULT_LAYER_PATTERNS = ("layers", "layer", "h", "block", "blocks")


def layer_index_of(key: str, layers_pattern=None) -> Optional[int]:
    """The transformer-layer index of module ``key``: the number after ``layers_pattern`` (default: after
    ``layers``/``layer``/``h``/``block``/``blocks``), e.g. ``model.layers.3.self_attn.o_proj`` -> 3."""
    patterns = layers_pattern or DEFAULT_LAYER_PATTERNS
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    alternatives = "|".join(re.escape(p) for p in patterns)
    match = re.search(rf"(?:^|\.)(?:{alternatives})\.(\d+)(?:\.|$)", key)
    return None if match is None else int(match.group(1))


def _model_config_value(model: nn.Module, *names):
    configs = []
    config = getattr(model, "config", None)
    if config is not None:
        configs.append(config)
        get_text_config = getattr(config, "get_text_config", None)
        if callable(get_text_config):
            try:
                text_config = get_text_config()
            except Exception:  # pragma: no cover - exotic configs
                text_config = None
            if text_config is not None and text_config is not config:
                configs.append(text_config)
    for cfg in configs:
        for name in names:
            value = cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)
            if value is not None:
                return value
    return None


class _L1Hook:
    """Forward hook on the wrapped model: adds the tuner's L1 penalty to ``output.loss`` when there is one."""

    def __init__(self, tuner: "LofitModel"):
        self._tuner = weakref.ref(tuner)

    def __call__(self, module, args, output):
        tuner = self._tuner()
        if tuner is None or not isinstance(output, Mapping):
            return None
        loss = output.get("loss")
        if loss is None:
            return None
        penalty = tuner._active_l1_penalty()
        if penalty is None:
            return None
        output["loss"] = loss + penalty.to(device=loss.device, dtype=loss.dtype)
        return output


class LofitModel(CheckedLoading, BaseTuner):
    r"""LoFiT (localized fine-tuning) as a PEFT tuner.

    For every targeted attention output projection y = W_o z + b of layer l (z = heads concatenated), the input is
    edited per head before the projection::

        scale adapters (stage 1):  z_h <- (1 + A_{l,h}) * z_h        loss <- loss + l1_lambda * sum |A|
        offset adapters (stage 2): z_h <- z_h + v_{l,h}               (selected heads only)

    Several active adapters compose as z_h <- z_h * prod_a (1 + A_a) + sum_b v_b. Merging folds scales into W_o's
    columns and offsets into b (b += W_o[:, head] v_h; a zero bias is created where missing and, for Llama-style
    configs, ``attention_bias`` is switched on with zero q/k/v biases so that a saved merged model reloads).

    The L1 term is added by a forward hook on the wrapped model, so it reaches ``output.loss`` whether or not the
    ``PeftModel`` has a ``task_type``; [`l1_penalty`] returns it for custom losses.
    """

    prefix: str = "lofit_"
    tuner_layer_cls = LofitLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LOFIT_TARGET_MODULES_MAPPING

    # ------------------------------------------------------------------ matching
    @staticmethod
    def _without_layer_filter(config: LofitConfig) -> LofitConfig:
        stripped = copy.copy(config)
        stripped.layers_to_transform = None
        return stripped

    def _matches(self, config: LofitConfig, key: str, apply_layer_filters: bool = True):
        """peft's name matching (target/exclude/modules_to_save) plus our own layer filters, which also apply to regex
        target_modules (peft applies layers_to_transform to list targets only)."""
        result = check_target_module_exists(self._without_layer_filter(config), key)
        if not result or isinstance(result, _ExcludedModule) or not apply_layer_filters:
            return result
        layer = layer_index_of(key, config.layers_pattern)
        if config.layers_to_transform is not None:
            wanted = config.layers_to_transform
            wanted = {wanted} if isinstance(wanted, int) else set(wanted)
            if layer not in wanted:
                return False
        if config.heads is not None and layer not in config.selected_layers:
            return False
        return result

    def _check_target_module_exists(self, peft_config: LofitConfig, key: str):
        return self._matches(peft_config, key)

    # ------------------------------------------------------------------ validation (before touching the model)
    def _resolve_geometry(self, model: nn.Module, config: LofitConfig, in_features: Optional[int]) -> tuple[int, int]:
        num_heads = config.num_heads
        if num_heads is None:
            num_heads = _model_config_value(model, "num_attention_heads", "n_head", "num_heads")
        if num_heads is None:
            raise ValueError("Cannot read the number of attention heads from the model config; set `num_heads`.")
        num_heads = int(num_heads)
        head_dim = config.head_dim
        if head_dim is None:
            head_dim = _model_config_value(model, "head_dim")
        if head_dim is None:
            hidden = _model_config_value(model, "hidden_size", "n_embd", "d_model")
            if hidden is None and in_features is not None:
                hidden = in_features
            if hidden is None:
                raise ValueError("Cannot read the head width from the model config; set `head_dim`.")
            head_dim = int(hidden) // num_heads
        return num_heads, int(head_dim)

    def _validate(self, model: nn.Module, config: LofitConfig) -> Optional[tuple[int, int]]:
        """Check the config against the model; raise ValueError before any module is replaced.

        Returns the resolved (num_heads, head_dim), or None when nothing matches (peft then raises its own error)."""
        tuner_prefixes = [name + "." for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
        candidates = []  # every match of target_modules, ignoring layers_to_transform and heads
        for key, module in model.named_modules():
            if not key or any(key.startswith(p) for p in tuner_prefixes):
                continue
            result = self._matches(config, key, apply_layer_filters=False)
            if result and not isinstance(result, _ExcludedModule):
                candidates.append((key, module))
        if not candidates:
            return None

        layers = {}
        for key, module in candidates:
            layer = layer_index_of(key, config.layers_pattern)
            if layer is None:
                raise ValueError(
                    f"Cannot read the layer index of target module {key!r}: expected a number after one of "
                    f"{list(DEFAULT_LAYER_PATTERNS) if config.layers_pattern is None else config.layers_pattern}; "
                    "set `layers_pattern`."
                )
            base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
            if not isinstance(base, (nn.Linear, Conv1D)):
                raise ValueError(
                    f"Target module {key!r} is a {type(base).__name__}; LoFiT supports torch.nn.Linear and "
                    "transformers Conv1D attention output projections."
                )
            layers[key] = (layer, base)

        first_in = next(iter(layers.values()))[1]
        first_in = first_in.weight.shape[0] if isinstance(first_in, Conv1D) else first_in.in_features
        num_heads, head_dim = self._resolve_geometry(model, config, first_in)
        for key, (layer, base) in layers.items():
            in_features = base.weight.shape[0] if isinstance(base, Conv1D) else base.in_features
            if in_features != num_heads * head_dim:
                raise ValueError(
                    f"Target module {key!r} has in_features={in_features}, but num_heads * head_dim = {num_heads} * "
                    f"{head_dim} = {num_heads * head_dim}. LoFiT must target the attention output projection, whose "
                    "input is the concatenated head outputs (check `target_modules`, `num_heads`, `head_dim`)."
                )

        available = sorted({layer for layer, _ in layers.values()})
        num_layers = _model_config_value(model, "num_hidden_layers", "n_layer", "num_layers")
        num_layers = max(available) + 1 if num_layers is None else int(num_layers)
        if config.layers_to_transform is not None:
            wanted = config.layers_to_transform
            wanted = [wanted] if isinstance(wanted, int) else list(wanted)
            bad = sorted(set(wanted) - set(available))
            if bad:
                raise ValueError(
                    f"`layers_to_transform` contains layer(s) {bad} without a target module; valid layers are "
                    f"{available} (0 <= layer < {num_layers})."
                )
            available = sorted(set(available) & set(wanted))
        for layer, head in config.heads or []:
            if layer not in available:
                raise ValueError(
                    f"`heads` contains ({layer}, {head}): layer {layer} is out of range; valid layers are "
                    f"{available} (0 <= layer < {num_layers}, targeted by target_modules/layers_to_transform)."
                )
            if head >= num_heads:
                raise ValueError(
                    f"`heads` contains ({layer}, {head}): head {head} is out of range; valid heads are "
                    f"0 <= head < {num_heads}."
                )
        return num_heads, head_dim

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        config = self.peft_config[adapter_name]
        config = self._prepare_adapter_config(config, self.get_model_config(model))
        geometry = self._validate(model, config)
        if geometry is not None:
            config.num_heads, config.head_dim = geometry
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self._sync_l1_hook()

    # ------------------------------------------------------------------ module creation
    def _create_and_replace(self, lofit_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        layer = layer_index_of(current_key, lofit_config.layers_pattern)
        heads = None
        if lofit_config.heads is not None:
            heads = [h for (l, h) in lofit_config.heads if l == layer]
        options = dict(
            mode=lofit_config.mode, num_heads=lofit_config.num_heads, head_dim=lofit_config.head_dim, heads=heads,
            init_std=lofit_config.init_std, inference_mode=lofit_config.inference_mode,
        )
        if isinstance(target, LofitLayer):
            target.update_layer(adapter_name, **options)
        else:
            new_module = Linear(target, adapter_name, layer_index=layer, **options)
            if adapter_name not in self.active_adapters:
                new_module.requires_grad_(False)
            self._replace_module(parent, target_name, new_module, target)

    method_name = "LoFiT"

    @classmethod
    def _describe_config(cls, config: LofitConfig) -> str:
        return f"mode={config.mode!r}, heads={config.heads}"

    def _post_injection_hook(self, model: nn.Module, config: LofitConfig, adapter_name: str) -> None:
        add_tags = getattr(model, "add_model_tags", None)
        if callable(add_tags):
            add_tags(["lofit"])

    # ------------------------------------------------------------------ L1 penalty
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """Mixed-adapter batches: ``model(..., adapter_names=[...])`` picks one adapter per sample."""
        return adapter_names_hooks(self, LofitLayer, *args, **kwargs)

    def _lofit_layers(self):
        return [m for m in self.model.modules() if isinstance(m, LofitLayer)]

    def l1_penalty(self, adapter_names: Optional[list[str]] = None, l1_lambda: Optional[float] = None) -> torch.Tensor:
        """LoFiT's stage-1 regulariser ``sum_a lambda_a * sum |A_a|`` over the scale adapters (default: the active
        ones), as a differentiable scalar. ``l1_lambda`` overrides each adapter's ``config.l1_lambda``. Offset
        adapters contribute nothing. Use it in custom losses; with a model that returns ``loss`` it is already added
        for the active adapters."""
        names = self.active_adapters if adapter_names is None else (
            [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        )
        for name in names:
            if name not in self.peft_config:
                raise ValueError(f"Adapter {name} does not exist; available: {sorted(self.peft_config)}")
        total = None
        for layer in self._lofit_layers():
            for name in names:
                if name not in layer.lofit_head_scale:
                    continue
                lam = self.peft_config[name].l1_lambda if l1_lambda is None else float(l1_lambda)
                term = layer.lofit_head_scale[name].abs().sum() * lam
                total = term if total is None else total + term.to(total.device)
        if total is None:
            param = next(self.model.parameters())
            total = torch.zeros((), device=param.device, dtype=torch.float32)
        return total

    def _active_l1_penalty(self) -> Optional[torch.Tensor]:
        layers = self._lofit_layers()
        if not layers or any(layer.disable_adapters for layer in layers):
            return None
        names = [
            n for n in self.active_adapters
            if n in self.peft_config and self.peft_config[n].mode == "scale" and self.peft_config[n].l1_lambda > 0
        ]
        if not names:
            return None
        return self.l1_penalty(names)

    def _sync_l1_hook(self) -> None:
        """Keep exactly one L1 forward hook on the wrapped model while a scale adapter with l1_lambda > 0 exists."""
        wanted = any(getattr(c, "mode", None) == "scale" and c.l1_lambda > 0 for c in self.peft_config.values())
        handle = self.__dict__.get("_l1_hook_handle")
        if wanted and handle is None:
            self.__dict__["_l1_hook_handle"] = self.model.register_forward_hook(_L1Hook(self))
        elif not wanted and handle is not None:
            handle.remove()
            self.__dict__["_l1_hook_handle"] = None

    def _remove_l1_hook(self) -> None:
        handle = self.__dict__.get("_l1_hook_handle")
        if handle is not None:
            handle.remove()
            self.__dict__["_l1_hook_handle"] = None

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._sync_l1_hook()

    # ------------------------------------------------------------------ unload / merge
    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        had_bias = {
            id(m.get_base_layer()): m.get_base_layer().bias is not None for m in self._lofit_layers()
        }
        model = super()._unload_and_optionally_merge(
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )
        self._remove_l1_hook()
        gained_bias = [
            m for m in model.modules() if id(m) in had_bias and not had_bias[id(m)] and m.bias is not None
        ]
        if gained_bias:
            self._make_biases_loadable(model)
        return model

    @staticmethod
    def _make_biases_loadable(model: nn.Module) -> None:
        """After merging offsets into bias-free projections: make the saved model reload with those biases.

        Llama-style configs build q/k/v/o with ``bias=config.attention_bias``; switching it on needs a (zero) bias on
        every one of those projections in every layer (k/v sized by their own out_features under GQA)."""
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "attention_bias"):
            warnings.warn(
                "Merging LoFiT offsets created a bias on projections that had none; this model's config has no "
                "`attention_bias` switch, so `from_pretrained` may not load those biases. Keep the adapter unmerged "
                "or load the merged weights with a matching custom config."
            )
            return
        config.attention_bias = True
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else None
        if text_config is not None and text_config is not config and hasattr(text_config, "attention_bias"):
            text_config.attention_bias = True
        for module in model.modules():
            projections = [getattr(module, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
            if not all(isinstance(p, nn.Linear) for p in projections):
                continue
            for proj in projections:
                if proj.bias is None:
                    proj.bias = nn.Parameter(
                        torch.zeros(proj.out_features, dtype=proj.weight.dtype, device=proj.weight.device),
                        requires_grad=False,
                    )
