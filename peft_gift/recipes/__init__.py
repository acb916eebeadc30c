"""Recipes around the tuners: the YAML training CLI, offline assets, the pipeline the benchmarks share.

Needs the ``train`` extra (``pip install "peft-gift[train]"``: datasets, pyyaml, matplotlib, gguf, onnx, pillow);
the library itself (``import peft_gift``) does not import anything from here.

Modules, each importing only those listed before it: :mod:`.checks` (ConfigError, value ranges), :mod:`.tasks` (one
class per task), :mod:`.multiple_choice` (the multiple-choice evaluator), :mod:`.metrics`, :mod:`.method_base` /
:mod:`.method_lofit` / :mod:`.methods` (the method registry), :mod:`.config` (YAML + validation), :mod:`.data`
(models, datasets, splits), :mod:`.pipeline` (prepare / fit / evaluate / run), :mod:`.card` (the model cards the CLI
writes), :mod:`.report`, :mod:`.cli`, :mod:`.assets` (with :mod:`.asset_packages`, :mod:`.asset_builds`).
"""

import importlib
import importlib.util

# name -> submodule; imported on first use, so that `python -m peft_gift.recipes.assets list` loads only what it needs
# (and runpy finds the module not yet imported)
_EXPORTS = {
    "ConfigError": "config", "load_config": "config", "validate_config": "config",
    "METHODS": "methods", "apply_method": "methods", "param_counts": "methods",
    "accuracy": "metrics", "f1": "metrics",
    "Job": "pipeline", "evaluate": "pipeline", "fit": "pipeline", "prepare": "pipeline", "run": "pipeline",
    "describe_machine": "report", "machine_info": "report", "markdown_table": "report",
    "TASKS": "tasks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: `recipes.assets`
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
