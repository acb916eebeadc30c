"""The checks every config section shares: :class:`ConfigError` (one line naming the field and what would work), the
valid values of settings (:data:`BOUNDS`: finite numbers in range, names), unknown-key suggestions and the
TrainingArguments fields. The bottom of the recipes: it imports nothing of theirs."""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
import types
import typing
from typing import Any


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
        if isinstance(v, float) and not math.isfinite(v):  # inf passes every comparison with a finite end: a run of NaN or an OverflowError
            return False
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


FINITE = Bound()  # any finite number: the bound of a float field without a range of its own


@dataclasses.dataclass(frozen=True)
class Names:
    """The valid values of a setting that names things (columns, splits, datasets): one string, or a list of
    ``lo``..``hi`` strings where ``hi`` > 1."""

    lo: int = 1
    hi: int | None = 1

    def holds(self, v) -> bool:
        if isinstance(v, str):
            return bool(v)
        return (self.hi != 1 and isinstance(v, list) and all(isinstance(x, str) and x for x in v)
                and self.lo <= len(v) and (self.hi is None or len(v) <= self.hi))

    def __str__(self) -> str:
        if self.hi == 1:
            return "a non-empty string"
        count = f"{self.lo} to {self.hi}" if self.hi is not None else f"at least {self.lo}"
        return f"a string or a list of {count} strings"


POSITIVE, NON_NEGATIVE, AT_LEAST_1, UNIT = Bound(0, lo_open=True), Bound(0), Bound(1), Bound(0, 1)
# The valid values of settings, by section: (int or float, Bound) or (str, Names). TrainingArguments fields not listed
# here are still type-checked (finite numbers, booleans) from TrainingArguments' own annotations.
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
        "dataset": (str, Names(1, None)), "text_columns": (str, Names(1, 2)), "label_column": (str, Names()),
        "image_column": (str, Names()), "subset": (str, Names()), "train_split": (str, Names()),
        "eval_split": (str, Names()),
    },
    "quantization": {"llm_int8_threshold": (float, POSITIVE)},
    "lofit": {"k": (int, AT_LEAST_1), "fraction": (float, Bound(0, 1, lo_open=True))},
    "": {"seed": (int, NON_NEGATIVE)},
}


def check_value(value, field: str, kind: type, bound: Bound | None = None):
    """``value`` if it is a ``kind`` (bool, int or float; ints count as floats) within ``bound`` (floats: finite),
    or names within a :class:`Names` bound (``kind`` str), else ConfigError naming ``field`` and what would be valid
    (strings such as "3" or "yes" are refused where a number or flag is expected)."""
    if kind is str:
        if not bound.holds(value):
            raise ConfigError(f"{field} must be {bound}, got {value!r} ({type(value).__name__})")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{field} must be true or false, got {value!r} ({type(value).__name__})")
        return value
    number = isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
    bound = bound if bound is not None or kind is int else FINITE
    if not number or (bound is not None and not bound.holds(value)):
        what = "an integer" if kind is int else "a finite number"
        valid = f" {bound}" if bound is not None and bound != FINITE else ""
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
    if training.get("report_to") is not None:
        check_report_to(training["report_to"], f"{where}.report_to")
    return training


def check_report_to(value, field: str) -> None:
    """``report_to`` names "none", "all" or installed reporting integrations: the Trainer would otherwise refuse a
    missing one only after the model loaded."""
    from transformers.integrations import integration_utils as hf

    known = sorted(hf.INTEGRATION_TO_CALLBACK)
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{field} must be none, all, or a name or list of names of: {', '.join(known)}; got "
                          f"{value!r}")
    available = hf.get_available_reporting_integrations()
    for name in names:
        if name not in ("none", "all", *known):
            raise ConfigError(f"{field}: {name!r} is not a reporting integration; use none, all or {', '.join(known)}")
        if name in known and name not in available:
            raise ConfigError(f"{field}: {name!r} is not installed here; install it or use "
                              f"{', '.join(['none', *available])}")
