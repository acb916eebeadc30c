"""Job configs for the training CLI: read the YAML, apply ``--set`` overrides, validate every field before any work.

A config has the top-level keys ``model``, ``task``, ``method``, ``data``, ``training`` (fields of
``transformers.TrainingArguments``), and optionally ``seed``, ``output_dir``, ``quantization`` and ``card`` (what the
model card publishes). Every problem is raised as :class:`ConfigError` (a ``ValueError`` whose message is one line
naming the field and what would work). Numbers and booleans are checked against one table, :data:`BOUNDS`, before
anything is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import numbers
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

TOP_KEYS = ("model", "task", "method", "data", "training", "seed", "output_dir", "quantization", "card")
# ``card``: what the model card and adapter_config.json name instead of machine-local paths
CARD_KEYS = ("base_model", "dataset")
# ``quantization``: fields of transformers.BitsAndBytesConfig for a quantized base model (QGIFT); causal LM tasks only
QUANT_TASKS = ("causal_lm_mc",)
_QUANT_DTYPES = ("float32", "bfloat16", "float16")
DATA_KEYS = (
    "dataset", "subset", "train_split", "eval_split", "train_size", "eval_size", "seed", "max_length",
    "text_columns", "label_column", "image_column", "image_size",
)


class ConfigError(ValueError):
    """A bad config, file, model or dataset; the message is one line saying what was wrong and what would work."""


@dataclasses.dataclass(frozen=True)
class Bound:
    """The valid values of a number: ``lo``/``hi`` (open ends where stated) and extra allowed values (a sentinel such
    as ``max_steps: -1``, "no limit")."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()

    def holds(self, v) -> bool:
        if v in self.also:
            return True
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {self.lo}"
        else:
            text = f"{'<' if self.hi_open else '<='} {self.hi}"
        return " or ".join([*map(str, self.also), text])


POSITIVE, NON_NEGATIVE, AT_LEAST_1, UNIT = Bound(0, lo_open=True), Bound(0), Bound(1), Bound(0, 1)
# The ranges of the numeric settings, by section: (int or float, Bound). TrainingArguments fields not listed here are
# still type-checked (numbers, booleans) from TrainingArguments' own annotations.
BOUNDS: dict[str, dict[str, tuple[type, Bound]]] = {
    "training": {
        "num_train_epochs": (float, POSITIVE),
        "max_steps": (int, Bound(1, also=(-1,))),  # -1: train num_train_epochs epochs
        "learning_rate": (float, POSITIVE),
        "per_device_train_batch_size": (int, AT_LEAST_1),
        "per_device_eval_batch_size": (int, AT_LEAST_1),
        "gradient_accumulation_steps": (int, AT_LEAST_1),
        "eval_accumulation_steps": (int, AT_LEAST_1),
        "warmup_steps": (float, NON_NEGATIVE),  # < 1: a fraction of the total steps (transformers 5)
        "warmup_ratio": (float, UNIT),  # transformers 4
        "weight_decay": (float, NON_NEGATIVE),
        "max_grad_norm": (float, NON_NEGATIVE),
        "adam_beta1": (float, Bound(0, 1, hi_open=True)),
        "adam_beta2": (float, Bound(0, 1, hi_open=True)),
        "adam_epsilon": (float, POSITIVE),
        "label_smoothing_factor": (float, UNIT),
        "logging_steps": (float, POSITIVE),
        "eval_steps": (float, POSITIVE),
        "save_steps": (float, POSITIVE),
        "save_total_limit": (int, AT_LEAST_1),
        "seed": (int, NON_NEGATIVE),
        "data_seed": (int, NON_NEGATIVE),
        "dataloader_num_workers": (int, NON_NEGATIVE),
        "dataloader_prefetch_factor": (int, AT_LEAST_1),
    },
    "data": {
        "seed": (int, NON_NEGATIVE), "max_length": (int, Bound(2)), "image_size": (int, AT_LEAST_1),
        "train_size": (int, AT_LEAST_1), "eval_size": (int, AT_LEAST_1),
    },
    "quantization": {"llm_int8_threshold": (float, POSITIVE)},
    "lofit": {"k": (int, AT_LEAST_1), "fraction": (float, Bound(0, 1, lo_open=True))},
    "": {"seed": (int, NON_NEGATIVE)},
}


def check_value(value, field: str, kind: type, bound: Bound | None = None):
    """``value`` if it is a ``kind`` (bool, int or float; ints count as floats) within ``bound``, else ConfigError
    naming ``field`` and the valid range (strings such as "3" or "yes" are refused)."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{field} must be true or false, got {value!r} ({type(value).__name__})")
        return value
    number = isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
    if not number or (bound is not None and not bound.holds(value)):
        what = "an integer" if kind is int else "a number"
        valid = f" {bound}" if bound is not None else ""
        raise ConfigError(f"{field} must be {what}{valid}, got {value!r} ({type(value).__name__})")
    return value


def check_section(values: dict, section: str, where: str, types: dict | None = None) -> None:
    """Every value of ``values`` whose key is in :data:`BOUNDS` [``section``] or whose annotated type in ``types``
    is a number or a boolean; None (a field's "unset") is allowed."""
    table = BOUNDS.get(section, {})
    for key, value in values.items():
        if value is None:
            continue
        kind, bound = table.get(key, (_kind(types.get(key)) if types else None, None))
        if kind is not None:
            check_value(value, f"{where}.{key}" if where else key, kind, bound)


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
    return int(check_value(value, field, int, Bound(minimum)))


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


def _kind(tp) -> type | None:
    """bool, int or float when an annotated field only takes that (None allowed), else None. String annotations
    (PEFT's config classes) count when they are one of these names, optionally ``Optional[...]``."""
    if isinstance(tp, str):
        name = re.sub(r"^Optional\[(\w+)\]$|^(\w+) \| None$", lambda m: m.group(1) or m.group(2), tp.strip())
        return {"bool": bool, "int": int, "float": float}.get(name)
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    args = set(typing.get_args(tp)) - {type(None)} if union else {tp}
    for kind, allowed in ((bool, {bool}), (int, {int}), (float, {int, float})):
        if args and args <= allowed:
            return kind
    return None


def check_training(training, where: str) -> dict:
    """Known TrainingArguments fields, each number within its range and each flag a boolean (a one-line error, not a
    traceback deep inside the optimizer or a run of 0 steps, for ``learning_rate: -1`` or ``num_train_epochs: -1``)."""
    if training is None:
        return {}
    if not isinstance(training, dict):
        raise ConfigError(f"'{where}' must be a mapping of transformers.TrainingArguments fields")
    types_ = _training_field_types()
    check_unknown(training, types_, f"{where} (TrainingArguments fields)")
    check_section(training, "training", where, types_)
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
    size = data.get("image_size")
    check_section({k: v for k, v in data.items() if not (k == "image_size" and isinstance(size, (list, tuple)))},
                  "data", "data")
    if cfg.get("quantization") is not None:
        cfg["quantization"] = check_quantization(cfg["quantization"], cfg["task"])
    cfg["training"] = check_training(cfg.get("training"), "training")
    cfg.setdefault("seed", 0)
    check_section({"seed": cfg["seed"]}, "", "")
    if cfg.get("card") is not None:
        cfg["card"] = check_card(cfg["card"])
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

    params = inspect.signature(BitsAndBytesConfig.__init__).parameters
    allowed = [k for k in params if k not in ("self", "kwargs")]
    check_unknown(quant, allowed, "quantization")
    flags = {k: bool for k in allowed if isinstance(params[k].default, bool)}  # load_in_4bit: "yes" is no flag
    check_section(quant, "quantization", "quantization", flags)
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


def check_card(card) -> dict:
    """The ``card`` section: Hub ids (``org/name``) that the model card and adapter_config.json name instead of the
    local model directory (``base_model``) or data file (``dataset``)."""
    from ..hub import is_local_path

    if not isinstance(card, dict):
        raise ConfigError("'card' must be a mapping, e.g. {base_model: org/model-name, dataset: org/dataset-name}")
    check_unknown(card, CARD_KEYS, "card")
    for key, value in card.items():
        if value is None:
            continue
        if not isinstance(value, str) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", value) or is_local_path(value):
            raise ConfigError(f"card.{key} must be a Hugging Face Hub id such as org/name (published in the model "
                              f"card, so never a local path), got {value!r}")
    return dict(card)


def check_output_dir(path) -> Path:
    """``path`` as a Path, or ConfigError when it names an existing file (everything is written below it)."""
    p = Path(path)
    for parent in (p, *p.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"output_dir {str(p)!r}: {str(parent)!r} is a file, not a directory; pass a directory "
                              f"path (it is created if missing)")
    return p
