"""Job configs for the training CLI: read the YAML, apply ``--set`` overrides, validate every field before any work.

A config has the top-level keys ``model``, ``task``, ``method``, ``data``, ``training`` (fields of
``transformers.TrainingArguments``), and optionally ``seed``, ``output_dir``, ``quantization`` and ``card`` (what the
model card publishes). Every problem is raised as :class:`ConfigError` (a ``ValueError`` whose message is one line
naming the field and what would work). Numbers and booleans are checked against one table, :data:`BOUNDS`, before
anything is loaded.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from .checks import (  # noqa: F401  (ConfigError and check_int are part of this module's API)
    ConfigError,
    check_int,
    check_section,
    check_training,
    check_unknown,
    check_value,
    config_fields,
)
from .methods import METHODS
from .outputs import check_output_dir  # noqa: F401  (part of this module's API)
from .tasks import TASKS

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


def validate_config(cfg: dict) -> dict:
    """The config with defaults filled in, or ConfigError for the first problem found."""
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
