"""Job configs for the training CLI: read the YAML, apply ``--set`` overrides, validate every field before any work.

A config has the top-level keys ``model``, ``task``, ``method``, ``data``, ``training`` (fields of
``transformers.TrainingArguments``), and optionally ``seed`` and ``output_dir``. Every problem is raised as
:class:`ConfigError` (a ``ValueError`` whose message is one line naming the field and what would work).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import numbers
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

TOP_KEYS = ("model", "task", "method", "data", "training", "seed", "output_dir", "quantization")
# ``quantization``: fields of transformers.BitsAndBytesConfig for a quantized base model (QGIFT); causal LM tasks only
QUANT_TASKS = ("causal_lm_mc",)
_QUANT_DTYPES = ("float32", "bfloat16", "float16")
DATA_KEYS = (
    "dataset", "subset", "train_split", "eval_split", "train_size", "eval_size", "seed", "max_length",
    "text_columns", "label_column", "image_column", "image_size",
)
_DATA_INTS = {"seed": 0, "max_length": 2, "image_size": 1, "train_size": 1, "eval_size": 1}  # key: minimum


class ConfigError(ValueError):
    """A bad config, file, model or dataset; the message is one line saying what was wrong and what would work."""


class _Loader(yaml.SafeLoader):
    pass


# YAML 1.1 reads "1e-3" as a string; accept it as a float like every other config system does.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$|^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _set_dotted(cfg: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        if not isinstance(node.get(k, {}), dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read a YAML config, apply ``key.sub=value`` overrides, validate it; return the resolved config dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; pass a YAML file such as configs/gift_minilm_sst2.yaml")
    try:
        cfg = parse_yaml(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p} must contain a mapping with keys {', '.join(TOP_KEYS)}")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. training.learning_rate=1e-3")
        k, v = item.split("=", 1)
        _set_dotted(cfg, k.strip(), parse_yaml(v) if v.strip() else None)
    cfg.setdefault("output_dir", str(Path("outputs") / p.stem))
    return validate_config(cfg)


def check_unknown(keys, allowed, where: str) -> None:
    """ConfigError for keys not in ``allowed``, with "did you mean" suggestions."""
    allowed = list(allowed)
    bad = [k for k in keys if k not in allowed]
    if bad:
        close = sorted({c for k in bad for c in difflib.get_close_matches(str(k), allowed, n=3, cutoff=0.6)})
        hint = f"did you mean {', '.join(close)}? " if close else ""
        listing = f"allowed: {', '.join(allowed)}" if len(allowed) <= 20 else f"{len(allowed)} fields are allowed"
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, bad))} in {where}; {hint}{listing}")


def check_int(value, field: str, minimum: int = 0) -> int:
    """``value`` as an int >= minimum, else ConfigError naming ``field`` (strings such as "3" are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{field} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    return int(value)


def config_fields(cls) -> list[str]:
    """The init fields of a PEFT config class that a job config may set."""
    skip = {"peft_type", "task_type", "base_model_name_or_path", "revision", "auto_mapping", "inference_mode",
            "peft_version"}
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in skip]


def _training_field_types() -> dict[str, Any]:
    from transformers import TrainingArguments

    return {f.name: f.type for f in dataclasses.fields(TrainingArguments) if f.init}


def training_fields() -> list[str]:
    return list(_training_field_types())


def _numeric_kind(tp) -> str | None:
    """"int", "float" when a TrainingArguments field only takes numbers (None allowed), else None."""
    args = set(typing.get_args(tp)) - {type(None)} if typing.get_origin(tp) is typing.Union else {tp}
    if args and args <= {int}:
        return "int"
    if args and args <= {int, float}:
        return "float"
    return None


def check_training(training, where: str) -> dict:
    """Known TrainingArguments fields with numbers where the field takes numbers (a clear error, not a traceback
    deep inside the optimizer, for ``learning_rate: "1e-3x"``)."""
    if training is None:
        return {}
    if not isinstance(training, dict):
        raise ConfigError(f"'{where}' must be a mapping of transformers.TrainingArguments fields")
    types = _training_field_types()
    check_unknown(training, types, f"{where} (TrainingArguments fields)")
    for key, value in training.items():
        kind = _numeric_kind(types[key])
        if kind is None or value is None:
            continue
        ok = isinstance(value, numbers.Integral) if kind == "int" else isinstance(value, numbers.Real)
        if isinstance(value, bool) or not ok:
            raise ConfigError(f"{where}.{key} must be {'an integer' if kind == 'int' else 'a number'}, got "
                              f"{value!r} ({type(value).__name__})")
    return training


def validate_config(cfg: dict) -> dict:
    """The config with defaults filled in, or ConfigError for the first problem found."""
    from .methods import METHODS
    from .tasks import TASKS

    cfg = copy.deepcopy(cfg)
    check_unknown(cfg, TOP_KEYS, "the config")
    for key in ("model", "task", "method", "data"):
        if key not in cfg or cfg[key] in (None, ""):
            raise ConfigError(f"the config needs a {key!r} entry (see configs/gift_minilm_sst2.yaml)")
    if not isinstance(cfg["model"], str):
        raise ConfigError("'model' must be a string: an asset name (smollm2-135m, minilm-l6, dinov2-s14), a Hub id "
                          "or a local path")
    if cfg["task"] not in TASKS:
        raise ConfigError(f"task {cfg['task']!r} is not supported; use one of {', '.join(TASKS)}")
    method = cfg["method"]
    if isinstance(method, str):
        method = cfg["method"] = {"name": method}
    if not isinstance(method, dict) or "name" not in method:
        raise ConfigError(f"'method' needs a 'name' ({', '.join(METHODS)}) and the method's hyper-parameters")
    if method["name"] not in METHODS:
        raise ConfigError(f"method {method['name']!r} is not supported; use one of {', '.join(METHODS)}")
    METHODS[method["name"]].validate(method, cfg["task"])
    data = cfg["data"]
    if isinstance(data, str):
        data = cfg["data"] = {"dataset": data}
    if not isinstance(data, dict) or "dataset" not in data:
        raise ConfigError("'data' needs a 'dataset': an asset name (sst2, arc_easy, cifar10, ...), a Hub id or a "
                          "local path")
    check_unknown(data, DATA_KEYS, "data")
    for key, minimum in _DATA_INTS.items():
        if data.get(key) is not None and not (key == "image_size" and isinstance(data[key], (list, tuple))):
            check_int(data[key], f"data.{key}", minimum)
    if cfg.get("quantization") is not None:
        cfg["quantization"] = check_quantization(cfg["quantization"], cfg["task"])
    cfg["training"] = check_training(cfg.get("training"), "training")
    cfg.setdefault("seed", 0)
    check_int(cfg["seed"], "seed")
    out = cfg.get("output_dir")
    if out is not None:
        if not isinstance(out, (str, os.PathLike)):
            raise ConfigError(f"output_dir must be a directory path, got {out!r} ({type(out).__name__})")
        check_output_dir(out)
    return cfg


def check_quantization(quant, task: str):
    """None, or the validated ``BitsAndBytesConfig`` fields: exactly one of load_in_4bit / load_in_8bit true."""
    if quant is None:
        return None
    if not isinstance(quant, dict):
        raise ConfigError("'quantization' must be a mapping of transformers.BitsAndBytesConfig fields, e.g. "
                          "{load_in_4bit: true, bnb_4bit_quant_type: nf4}")
    if task not in QUANT_TASKS:
        raise ConfigError(f"quantization is supported for task(s) {', '.join(QUANT_TASKS)}, not {task!r}")
    import inspect

    from transformers import BitsAndBytesConfig

    allowed = [k for k in inspect.signature(BitsAndBytesConfig.__init__).parameters if k not in ("self", "kwargs")]
    check_unknown(quant, allowed, "quantization")
    bits = [k for k in ("load_in_4bit", "load_in_8bit") if quant.get(k) is True]
    if len(bits) != 1:
        raise ConfigError("quantization needs exactly one of load_in_4bit: true or load_in_8bit: true")
    for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
        if key in quant and quant[key] not in _QUANT_DTYPES:
            raise ConfigError(f"quantization.{key} must be one of {', '.join(_QUANT_DTYPES)}, got {quant[key]!r}")
    if "bnb_4bit_quant_type" in quant and quant["bnb_4bit_quant_type"] not in ("nf4", "fp4"):
        raise ConfigError(f"quantization.bnb_4bit_quant_type must be 'nf4' or 'fp4', got {quant['bnb_4bit_quant_type']!r}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("quantization needs bitsandbytes: pip install 'bitsandbytes>=0.50,<0.51'") from None
    return dict(quant)


def check_output_dir(path) -> Path:
    """``path`` as a Path, or ConfigError when it names an existing file (everything is written below it)."""
    p = Path(path)
    for parent in (p, *p.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"output_dir {str(p)!r}: {str(parent)!r} is a file, not a directory; pass a directory "
                              f"path (it is created if missing)")
    return p
