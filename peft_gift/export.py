"""Export a GIFT adapter (or a LoFiT offset adapter) as a standard PEFT LoRA adapter, exactly.

GIFT is a per-layer LoRA: Ŵx = W(x + s·φ(ψx)) = Wx + s·(Wφ)(ψx), so every GIFT layer is the LoRA layer with

    lora_A = ψ (r × d_in),   lora_B = Wφ (d_out × r),   lora_alpha / r = s,   lora_dropout = GIFT's dropout

(B is per layer because W is; A is the shared ψ). A LoFiT offset adapter (stage 2) adds the constant W_o·v to the
output of each adapted projection: a rank-1 LoRA with lora_A = 0, lora_B = 0 and ``lora_bias`` = W_o·v.

The written folder is a plain PEFT LoRA adapter (``peft_type: LORA``): ``PeftModel.from_pretrained`` loads it without
``peft_gift``, and servers that run PEFT LoRA adapters (vLLM, TGI, LoRAX, ...) can serve GIFT adapters beside LoRA ones.
"""

from __future__ import annotations

import os

import torch
from peft import LoraConfig, PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file
from transformers.pytorch_utils import Conv1D

from .gift.config import GiftConfig
from .gift.layer import GiftLayer
from .lofit.config import LofitConfig
from .lofit.layer import LofitLayer


def export_lora(model: PeftModel, save_directory: str, adapter_name: str = "default") -> LoraConfig:
    """Write GIFT adapter ``adapter_name`` of ``model`` (or a LoFiT offset adapter) to ``save_directory`` as a PEFT
    LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) with the same outputs; return its config.

    ``modules_to_save`` and ``trainable_token_indices`` are carried over as they are (LoRA has both). Quantized base
    layers: B = Wφ uses the dequantized W, and the LoRA adapter then runs on the same quantized base. A merged adapter
    is exported from the original (unmerged) W. LoFiT scale adapters (stage 1) are refused: they select heads and
    are not meant for serving; merge them (``merge_and_unload``) if you must serve one. A LoFiT offset adapter is
    refused while a scale adapter is merged into the same projection (``unmerge_adapter`` first)."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"export_lora expects a PeftModel, got {type(model).__name__}")
    if adapter_name not in model.peft_config:
        raise ValueError(f"export_lora: no adapter {adapter_name!r}; available: {sorted(model.peft_config)}")
    config = model.peft_config[adapter_name]
    if isinstance(config, GiftConfig):
        tensors, lora_kwargs = _gift_as_lora(model, adapter_name, config)
    elif isinstance(config, LofitConfig):
        tensors, lora_kwargs = _lofit_offsets_as_lora(model, adapter_name)
    else:
        raise ValueError(
            f"export_lora: adapter {adapter_name!r} is {config.peft_type.value}; only GIFT and LoFiT offset adapters "
            "are exported (a LoRA adapter already is one: save_pretrained)"
        )
    # modules_to_save heads and trainable tokens: PEFT's own file keys, which a LoRA adapter uses alike
    others = {k: v for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()
              if not k.startswith(f"base_model.{config.peft_type.value.lower()}_")
              and ".lofit_head_" not in k}
    lora_config = LoraConfig(
        base_model_name_or_path=config.base_model_name_or_path, revision=config.revision, task_type=config.task_type,
        modules_to_save=config.modules_to_save, trainable_token_indices=getattr(config, "trainable_token_indices", None),
        inference_mode=True, **lora_kwargs,
    )
    os.makedirs(save_directory, exist_ok=True)
    lora_config.save_pretrained(save_directory)
    state = {k: v.detach().to("cpu").contiguous() for k, v in {**tensors, **others}.items()}
    save_file(state, os.path.join(save_directory, "adapter_model.safetensors"), metadata={"format": "pt"})
    return lora_config


def _adapted_layers(model: PeftModel, layer_cls: type, adapter_name: str):
    """(module path relative to the base model, layer) of every ``layer_cls`` layer holding ``adapter_name``."""
    prefix = "base_model.model."
    for name, module in model.named_modules():
        if isinstance(module, layer_cls) and adapter_name in module._all_available_adapter_names():
            yield name.removeprefix(prefix), module


def _conv1d_flags(layers) -> bool:
    kinds = {isinstance(layer.get_base_layer(), Conv1D) for _, layer in layers}
    return kinds == {True}  # PEFT corrects fan_in_fan_out per layer when a config mixes Conv1D and Linear


def _gift_as_lora(model: PeftModel, adapter_name: str, config: GiftConfig):
    layers = list(_adapted_layers(model, GiftLayer, adapter_name))
    tensors: dict[str, torch.Tensor] = {}
    for path, layer in layers:
        phi, psi = (t.detach().double() for t in layer.theta(adapter_name))
        weight = layer.unmerged_weight()  # out × in, float64 (dequantized; the original W when merged)
        tensors[f"base_model.model.{path}.lora_A.weight"] = psi.float()
        tensors[f"base_model.model.{path}.lora_B.weight"] = (weight @ phi.to(weight.device)).float()
    kwargs = dict(r=config.r, lora_alpha=config.scaling * config.r, lora_dropout=config.dropout,
                  target_modules=sorted(path for path, _ in layers), fan_in_fan_out=_conv1d_flags(layers))
    return tensors, kwargs


def _lofit_offsets_as_lora(model: PeftModel, adapter_name: str):
    layers = list(_adapted_layers(model, LofitLayer, adapter_name))
    modes = {layer.adapter_mode(adapter_name) for _, layer in layers}
    if modes != {"bias"}:
        raise ValueError(
            f"export_lora: LoFiT adapter {adapter_name!r} has head scales (mode='scale', stage 1), which a LoRA "
            "adapter cannot express with rank ≪ d; export a stage-2 (mode='bias') adapter, or serve the merged model "
            "(merge_and_unload)"
        )
    scaled = {path: names for path, layer in layers
              if (names := [n for n in layer.merged_adapters if layer.adapter_mode(n) == "scale"])}
    if scaled:
        path, names = next(iter(scaled.items()))
        raise ValueError(
            f"export_lora: LoFiT adapter {adapter_name!r} becomes lora_bias = W_o·v with the unscaled W_o, but scale "
            f"adapter(s) {names} are merged into W_o of {path!r} ({len(scaled)} layers in all); call "
            "model.unmerge_adapter() first (merged offset adapters do not matter)"
        )
    tensors: dict[str, torch.Tensor] = {}
    for path, layer in layers:
        base = layer.get_base_layer()
        weight = layer._weight_out_in(base.weight.detach()).double()
        bias = weight @ layer.get_offset_vector(adapter_name).detach().double().to(weight.device)
        tensors[f"base_model.model.{path}.lora_A.weight"] = torch.zeros(1, layer.in_features)
        tensors[f"base_model.model.{path}.lora_B.weight"] = torch.zeros(layer.out_features, 1)
        tensors[f"base_model.model.{path}.lora_B.bias"] = bias.float()
    kwargs = dict(r=1, lora_alpha=1, lora_dropout=0.0, lora_bias=True, target_modules=sorted(p for p, _ in layers),
                  fan_in_fan_out=_conv1d_flags(layers))
    return tensors, kwargs


__all__ = ["export_lora"]
