"""LofitModel: the PEFT tuner that wraps attention output projections with LoFiT layers."""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from typing import Iterator, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import resolve_quantization_backend
from torch import nn
from transformers.pytorch_utils import Conv1D

from .._peft_private import _ExcludedModule, _get_in_out_features
from ..targets import (
    DEFAULT_LAYER_PATTERNS,
    TRANSFORMERS_MODELS_TO_LOFIT_TARGET_MODULES_MAPPING,
    candidate_modules,
    layer_index_of,
    match_target,
    wanted_layers,
)
from ..tuner import InputEditTuner
from .config import LofitConfig
from .layer import Linear, LofitLayer


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


class LofitModel(InputEditTuner):
    r"""LoFiT (localized fine-tuning) as a PEFT tuner.

    For every targeted attention output projection y = W_o z + b of layer l (z = heads concatenated), the input is
    edited per head before the projection::

        scale adapters (stage 1):  z_h <- (1 + A_{l,h}) * z_h        objective + l1_lambda * sum |A|
        offset adapters (stage 2): z_h <- z_h + v_{l,h}               (selected heads only)

    Several active adapters compose as z_h <- z_h * prod_a (1 + A_a) + sum_b v_b. Merging folds scales into W_o's
    columns and offsets into b (b += W_o[:, head] v_h). ``merge_adapter`` keeps the model's parameter set: on a
    projection without a bias the layer adds the merged W_o v itself; ``merge_and_unload`` turns it into a real bias
    and, for Llama-style configs, switches ``attention_bias`` on with zero q/k/v biases so that the saved model
    reloads.

    The L1 term is added to A's gradient by the optimizer step (a global ``torch.optim`` step pre-hook,
    `peft_gift.lofit.l1`), once per computed gradient of an active, trainable A, scaled for a fused optimizer under
    ``GradScaler``, through the closure for ``step(closure)``; so it acts whatever computes the loss (HF Trainer, TRL,
    custom loops) and is never part of a reported loss (only of a closure's). A training forward that the hook could
    not serve (``torch.func``, DeepSpeed) raises ValueError. [`l1_penalty`] returns its value for logging or for a
    custom objective with ``l1_lambda=0``.
    """

    prefix: str = "lofit_"
    tuner_layer_cls = LofitLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LOFIT_TARGET_MODULES_MAPPING
    method_name = "LoFiT"

    @classmethod
    def _describe_config(cls, config: LofitConfig) -> str:
        return f"mode={config.mode!r}, heads={config.heads}"

    @classmethod
    def _check_target_module_exists(cls, peft_config: LofitConfig, key: str):
        """Name matching and ``layers_to_transform``, then only the layers that hold a selected head."""
        result = match_target(peft_config, key)
        if result and not isinstance(result, _ExcludedModule) and peft_config.heads is not None:
            if layer_index_of(key, peft_config.layers_pattern) not in peft_config.selected_layers:
                return False
        return result

    # ------------------------------------------------------------------ validation (before touching the model)
    @staticmethod
    def _resolve_geometry(model: nn.Module, config: LofitConfig, in_features: int) -> tuple[int, int]:
        """(num_heads, head_dim): the config's values, checked against the model config where it has them."""
        model_heads = _model_config_value(model, "num_attention_heads", "n_head", "num_heads")
        model_head_dim = _model_config_value(model, "head_dim")
        for field_name, given, from_model in (("num_heads", config.num_heads, model_heads),
                                               ("head_dim", config.head_dim, model_head_dim)):
            if given is not None and from_model is not None and int(given) != int(from_model):
                raise ValueError(
                    f"LofitConfig.{field_name}={given} does not match this model, whose config has {field_name}="
                    f"{from_model}: the adapter was made for another attention geometry. Load it onto the model it "
                    f"was trained on, or leave {field_name}=None to read it from the model config."
                )
        num_heads = config.num_heads if config.num_heads is not None else model_heads
        if num_heads is None:
            raise ValueError("Cannot read the number of attention heads from the model config; set `num_heads`.")
        num_heads = int(num_heads)
        head_dim = config.head_dim if config.head_dim is not None else model_head_dim
        if head_dim is None:
            hidden = _model_config_value(model, "hidden_size", "n_embd", "d_model")
            head_dim = int(hidden if hidden is not None else in_features) // num_heads
        return num_heads, int(head_dim)

    @classmethod
    def _validate(cls, model: nn.Module, config: LofitConfig) -> Optional[tuple[int, int]]:
        """Check the config against the model; raise ValueError before any module is replaced.

        Returns the resolved (num_heads, head_dim), or None when nothing matches (peft then raises its own error)."""
        candidates = _target_bases(model, config)
        if not candidates:
            return None
        layers = {key: layer_index_of(key, config.layers_pattern) for key in candidates}
        needs_index = config.heads is not None or config.layers_to_transform is not None
        if needs_index:
            _check_layer_indices(config, layers)
        in_features = {key: _get_in_out_features(base)[0] for key, base in candidates.items()}
        num_heads, head_dim = cls._resolve_geometry(model, config, next(iter(in_features.values())))
        _check_widths(in_features, num_heads, head_dim)
        if needs_index:
            _check_heads_in_range(model, config, sorted(set(layers.values())), num_heads)
        return num_heads, head_dim

    @classmethod
    @contextmanager
    def _injecting(cls, tuner, model: nn.Module, config: LofitConfig, adapter_name: str) -> Iterator[None]:
        geometry = cls._validate(model, config)
        if geometry is not None:
            config.num_heads, config.head_dim = geometry
        yield

    # ------------------------------------------------------------------ module creation
    def _create_and_replace(self, lofit_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        """Also called unbound with PEFT's `MixedModel` as ``self`` (uses only `BaseTuner` methods)."""
        layer = layer_index_of(current_key, lofit_config.layers_pattern)
        heads = None if lofit_config.heads is None else [h for (layer_, h) in lofit_config.heads if layer_ == layer]
        if isinstance(target, LofitLayer):
            target.update_layer(adapter_name, lofit_config, heads=heads)
        else:
            new_module = Linear(target, adapter_name, lofit_config, layer_index=layer, heads=heads)
            if adapter_name not in self.active_adapters:
                new_module.requires_grad_(False)
            self._replace_module(parent, target_name, new_module, target)

    # ------------------------------------------------------------------ L1 penalty
    def _lofit_layers(self):
        return [m for m in self.model.modules() if isinstance(m, LofitLayer)]

    def l1_penalty(self, adapter_names: Optional[list[str]] = None, l1_lambda: Optional[float] = None) -> torch.Tensor:
        """The value of LoFiT's stage-1 regulariser ``sum_a lambda_a * sum |A_a|`` over the scale adapters (default:
        the active ones), as a differentiable scalar; ``l1_lambda`` overrides each adapter's ``config.l1_lambda``.
        Offset adapters contribute nothing. A config with ``l1_lambda > 0`` already applies the term at every
        ``torch.optim`` optimizer step, so use this to log it (e.g. next to the loss), or for a custom objective with
        ``l1_lambda=0`` in the config (``torch.func``, DeepSpeed, which refuse ``l1_lambda > 0``). Under ZeRO-3 the scales are
        gathered for the value; the gradient of the term is λ·sign(A), written so that its backward does not need
        the (partitioned) A again."""
        names = self.active_adapters if adapter_names is None else (
            [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        )
        for name in names:
            if name not in self.peft_config:
                raise ValueError(f"Adapter {name} does not exist; available: {sorted(self.peft_config)}")
        terms = [(layer.lofit_head_scale[name].weight,
                  self.peft_config[name].l1_lambda if l1_lambda is None else float(l1_lambda))
                 for layer in self._lofit_layers() for name in names if name in layer.lofit_head_scale]
        partitioned = [scale for scale, _ in terms if hasattr(scale, "ds_id")]  # DeepSpeed ZeRO-3
        with _gathered(partitioned):
            total = None
            for scale, lam in terms:
                term = (scale * torch.sign(scale.detach())).sum() * lam  # λ·Σ|A|, gradient λ·sign(A)
                total = term if total is None else total + term.to(total.device)
        if total is None:
            param = next(self.model.parameters())
            total = torch.zeros((), device=param.device, dtype=torch.float32)
        return total

    # ------------------------------------------------------------------ unload / merge
    @classmethod
    def _unloading(cls, model: nn.Module):
        return loadable_biases(model)

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
                "or load the merged weights with a matching custom config.",
                stacklevel=2,
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


@contextmanager
def loadable_biases(model: nn.Module) -> Iterator[None]:
    """Around unloading (merging) LoFiT layers of ``model``: offsets merged into a projection without a bias (kept by
    the layer until now, so that ``merge_adapter`` leaves the parameter set unchanged) become a real bias on the
    unloaded projection, and the saved model is made to reload with it (`LofitModel._make_biases_loadable`)."""
    layers = [m for m in model.modules() if isinstance(m, LofitLayer)]
    yield
    created = [layer.materialise_merged_bias() for layer in layers]
    if any(created):
        LofitModel._make_biases_loadable(model)


def _target_bases(model: nn.Module, config: LofitConfig) -> dict[str, nn.Module]:
    """``{module name: base layer}`` of every match of ``target_modules`` (ignoring ``layers_to_transform`` and
    ``heads``); raise ValueError for a match LoFiT cannot adapt."""
    candidates = {}
    for key, module in candidate_modules(model):
        result = match_target(config, key, apply_layer_filter=False)
        if not result or isinstance(result, _ExcludedModule):
            continue
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        backend = resolve_quantization_backend(base, get_apply_tensor_subclass=lambda: None)
        if backend is not None:  # bnb's Linear4bit/Linear8bitLt and torchao weights pass the check below
            raise ValueError(
                f"LoFiT cannot adapt the quantized {type(base).__name__} {key!r} (backend "
                f"{getattr(backend, 'backend_name', '') or type(backend).__name__}): LoFiT supports unquantized "
                "torch.nn.Linear and transformers Conv1D attention output projections. Keep the output "
                "projections unquantized (e.g. BitsAndBytesConfig(..., llm_int8_skip_modules=['o_proj', "
                "'lm_head'])), or use GIFT, which supports quantized bases."
            )
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise ValueError(
                f"Target module {key!r} is a {type(base).__name__}; LoFiT supports torch.nn.Linear and "
                "transformers Conv1D attention output projections."
            )
        candidates[key] = base
    return candidates


def _check_layer_indices(config: LofitConfig, layers: dict[str, Optional[int]]) -> None:
    """``heads`` / ``layers_to_transform`` name layers by index: every target needs one."""
    unnumbered = [key for key, layer in layers.items() if layer is None]
    if unnumbered:
        field_name = "heads" if config.heads is not None else "layers_to_transform"
        patterns = list(DEFAULT_LAYER_PATTERNS) if config.layers_pattern is None else config.layers_pattern
        raise ValueError(
            f"LofitConfig.{field_name} names layers by index, but target module {unnumbered[0]!r} has no layer "
            f"index (a number after one of {patterns}). Set `layers_pattern` to the name of the layer container, or "
            f"adapt every head (heads=None)."
        )


def _check_widths(in_features: dict[str, int], num_heads: int, head_dim: int) -> None:
    for key, width in in_features.items():
        if width != num_heads * head_dim:
            raise ValueError(
                f"Target module {key!r} has in_features={width}, but num_heads * head_dim = {num_heads} * "
                f"{head_dim} = {num_heads * head_dim}. LoFiT must target the attention output projection, whose "
                "input is the concatenated head outputs (check `target_modules`, `num_heads`, `head_dim`)."
            )


def _check_heads_in_range(model: nn.Module, config: LofitConfig, available: list[int], num_heads: int) -> None:
    """``layers_to_transform`` and ``heads`` name targeted layers (``available``) and heads < ``num_heads``."""
    num_layers = _model_config_value(model, "num_hidden_layers", "n_layer", "num_layers")
    num_layers = max(available) + 1 if num_layers is None else int(num_layers)
    wanted = wanted_layers(config)
    if wanted is not None:
        bad = sorted(wanted - set(available))
        if bad:
            raise ValueError(
                f"`layers_to_transform` contains layer(s) {bad} without a target module; valid layers are "
                f"{available} (0 <= layer < {num_layers})."
            )
        available = sorted(set(available) & wanted)
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


def _gathered(params: list):
    """DeepSpeed ZeRO-3: ``params`` gathered whole for the duration (nothing to do for an empty list)."""
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)
