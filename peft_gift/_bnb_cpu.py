"""bitsandbytes' CPU inference layout for 4-bit weights, kept out of models that carry GIFT or LoFiT adapters.

On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight the first time the layer runs in eval
mode on an input without gradient (``quant_state.packing_format_for_cpu``). That layout computes in bfloat16, passes
no gradient to the layer's input (so an adapter upstream of it stops training after an evaluation), rounds the
quantization scales to bfloat16 (bitsandbytes' inverse conversion does not restore them), and PEFT's
``dequantize_bnb_weight`` reads it as the standard layout (a wrong W for merging). GIFT and LoFiT read W and need
the gradient through every layer, so adding one of their adapters switches the repacking off on every 4-bit layer
of the model (``support_avx512bf16_for_cpu = False``, the flag bitsandbytes checks), and refuses a model whose
weights were already repacked. The training CLI switches it off right after loading a 4-bit base.
"""

from __future__ import annotations

from torch import nn


def _repacked(module: nn.Module) -> bool:
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def keep_standard_4bit_layout(model: nn.Module) -> int:
    """Switch bitsandbytes' CPU repacking off on every 4-bit layer of ``model``; return how many layers there were.

    Raises ``ValueError`` (and changes nothing) if a layer's weight is already in the CPU inference layout."""
    repacked = [name for name, module in model.named_modules() if _repacked(module)]
    if repacked:
        raise ValueError(
            f"{len(repacked)} 4-bit layers of this model (e.g. {repacked[0]!r}) were repacked by bitsandbytes for CPU "
            "inference (an eval-mode forward on an AVX512-BF16 CPU): their scales are rounded to bfloat16, they pass "
            "no gradient to their input and their weights cannot be read back exactly. Load the model again and add "
            "the adapter before evaluating it; from then on the repacking is switched off."
        )
    layers = [module for module in model.modules() if hasattr(module, "support_avx512bf16_for_cpu")]
    for module in layers:
        module.support_avx512bf16_for_cpu = False
    return len(layers)
