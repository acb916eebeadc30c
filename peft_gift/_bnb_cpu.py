"""bitsandbytes' CPU inference layout for 4-bit weights, kept out of models that carry GIFT or LoFiT adapters.

On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight the first time the layer runs in eval
mode on an input without gradient (``quant_state.packing_format_for_cpu``). That layout computes in bfloat16, passes
no gradient to the layer's input (so every adapter before the layer stops training after an evaluation), rounds the
quantization scales to bfloat16 (bitsandbytes' inverse conversion does not restore them), and PEFT's
``dequantize_bnb_weight`` reads it as the standard layout (a wrong W for merging).

So while a model carries a GIFT or LoFiT adapter, the repacking is switched off on every 4-bit layer of that model
(``support_avx512bf16_for_cpu = False``, the flag bitsandbytes checks; `hold_standard_layout`): the gradient must
pass through all of them to reach the adapters, not only through the adapted ones. Adding an adapter to a model with
an already repacked layer is refused. Removing the model's last GIFT/LoFiT adapter (unload, merge_and_unload,
delete_adapter) gives every flag its previous value back (`release_standard_layout`); other models are never touched.
`keep_standard_4bit_layout(model)` switches it off for good (the training CLI calls it right after loading a 4-bit
base, as it evaluates before adding the adapter).
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

_PREVIOUS = "_peft_gift_avx512bf16_before"  # on a 4-bit layer whose flag an adapter switched off: the value before


def _repacked(module: nn.Module) -> bool:
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def _refuse_repacked(named_layers: Iterable[tuple[str, nn.Module]], fix: str) -> None:
    repacked = [name for name, module in named_layers if _repacked(module)]
    if repacked:
        raise ValueError(
            f"{len(repacked)} 4-bit layers of this model (e.g. {repacked[0]!r}) were repacked by bitsandbytes for CPU "
            "inference (an eval-mode forward on an AVX512-BF16 CPU): their scales are rounded to bfloat16, they pass "
            f"no gradient to their input and their weights cannot be read back exactly. {fix}"
        )


def _standard_layout_layers(model: nn.Module, fix: str) -> list[nn.Module]:
    """The 4-bit layers of ``model`` (those with bitsandbytes' repacking flag); ``ValueError`` (``fix`` says what to
    do) if one of them is already repacked."""
    named_layers = [(name, m) for name, m in model.named_modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    _refuse_repacked(named_layers, fix)
    return [m for _, m in named_layers]


def keep_standard_4bit_layout(model: nn.Module) -> int:
    """Switch bitsandbytes' CPU repacking off on every 4-bit layer of ``model`` for good; return how many there were.

    Raises ``ValueError`` (and changes nothing) if a layer's weight is already in the CPU inference layout."""
    layers = _standard_layout_layers(model, "Load the model again and call this before evaluating it.")
    for module in layers:
        module.support_avx512bf16_for_cpu = False
    return len(layers)


def hold_standard_layout(model: nn.Module) -> None:
    """Switch the repacking off on every 4-bit layer of ``model`` (which gets an adapter), keeping each flag's previous
    value for `release_standard_layout`. Raises ``ValueError`` (and changes nothing) if one is already repacked."""
    layers = _standard_layout_layers(model, "Load the model again and add the adapter before evaluating it; from then "
                                            "on the repacking is switched off until the model's last GIFT/LoFiT "
                                            "adapter is removed.")
    for module in layers:
        module.__dict__.setdefault(_PREVIOUS, module.support_avx512bf16_for_cpu)
        module.support_avx512bf16_for_cpu = False


def release_standard_layout(model: nn.Module) -> None:
    """Give every layer of ``model`` that `hold_standard_layout` switched off its previous flag back."""
    for module in model.modules():
        if _PREVIOUS in module.__dict__:
            module.support_avx512bf16_for_cpu = module.__dict__.pop(_PREVIOUS)
