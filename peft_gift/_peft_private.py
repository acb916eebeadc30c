"""Every private PEFT name the library uses, in one place, with the PEFT releases it was checked against.

Checked on peft 0.21.2 and 0.22.0 (``scripts/check_versions.sh`` runs the fast suite on the lowest and the newest
supported pair); pyproject.toml therefore bounds peft below the next minor release. Everything else the library uses
from PEFT is public: ``get_peft_model``, ``PeftModel``, ``PeftConfig``, ``BaseTuner`` / ``BaseTunerLayer`` and their
documented override points (``_create_and_replace``, ``_prepare_adapter_config``, ``_remap_adapter_state_dict_for_load``,
...), ``register_peft_method``, ``check_target_module_exists``, ``check_adapters_to_merge``, the mappings in
``peft.mapping`` and ``peft.utils``. `peft_gift.mixed` reads PEFT's mixed-model internals on its own terms (it warns and
switches itself off when they differ, instead of failing ``import peft_gift``).

| name | what for |
|---|---|
| ``tuners_utils._get_in_out_features`` | in/out width of any base layer (Linear, Conv1D, quantized), as PEFT's tuners read it |
| ``tuners_utils._ExcludedModule`` | what ``check_target_module_exists`` returns for a module in ``exclude_modules`` |
| ``tuners_utils._get_tuner_state_dict_key_prefixes`` / ``_filter_state_dict_by_key_prefixes`` | the tensors of one
  adapter, as PEFT's loading selects them (the strict adapter-file check in ``_checked_load``) |
| ``tuners._buffer_dict.BufferDict`` | LoFiT's per-adapter head indices: buffers keyed by adapter name, as VeRA's |
"""

from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import (
    _ExcludedModule,
    _filter_state_dict_by_key_prefixes,
    _get_in_out_features,
    _get_tuner_state_dict_key_prefixes,
)

CHECKED_PEFT_VERSIONS = ("0.21.2", "0.22.0")

__all__ = [
    "BufferDict", "CHECKED_PEFT_VERSIONS", "_ExcludedModule", "_filter_state_dict_by_key_prefixes",
    "_get_in_out_features", "_get_tuner_state_dict_key_prefixes",
]
