"""Recipes around the tuners: the YAML training CLI, offline assets, the pipeline the benchmarks share.

Needs the ``train`` extra (``pip install "peft-gift[train]"``: datasets, pyyaml, matplotlib, gguf, onnx, pillow);
the library itself (``import peft_gift``) does not import anything from here.

Modules: :mod:`.config` (YAML + validation), :mod:`.data` (models, datasets, splits), :mod:`.tasks` (one class
per task), :mod:`.multiple_choice` (the multiple-choice evaluator), :mod:`.metrics`, :mod:`.methods` (the method
registry), :mod:`.pipeline` (prepare / fit / evaluate / run), :mod:`.card` (the model cards the CLI writes),
:mod:`.report`, :mod:`.cli`, :mod:`.assets`.
"""

from .config import ConfigError, load_config, validate_config
from .methods import METHODS, apply_method, param_counts
from .metrics import accuracy, f1
from .pipeline import Job, evaluate, fit, prepare, run
from .report import describe_machine, machine_info, markdown_table
from .tasks import TASKS

__all__ = [
    "METHODS", "TASKS", "ConfigError", "Job", "accuracy", "apply_method", "describe_machine", "evaluate", "f1", "fit",
    "load_config", "machine_info", "markdown_table", "param_counts", "prepare", "run", "validate_config",
]
