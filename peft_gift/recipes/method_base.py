"""The base of every fine-tuning method of the registry (:mod:`.methods`): :class:`Method` (freeze / train / fit),
:class:`PeftMethod` (a PEFT config built from the job's ``method`` fields), and the parameter counts."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .checks import ConfigError, check_section, check_training, check_unknown, config_fields
from .tasks import HEAD_NAMES


def _is_head_param(name: str) -> bool:
    """A parameter of the task's classification head (also inside PEFT's ``modules_to_save`` wrapper)."""
    return any(f".{h}." in f".{name}." for h in HEAD_NAMES)


def param_counts(model) -> dict:
    """``trainable_params``, ``head_params`` (trainable parameters of a classification head), ``total_params``."""
    total = trainable = head = 0
    seen = set()
    for n, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            if _is_head_param(n):
                head += p.numel()
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    return {"trainable_params": int(trainable), "head_params": int(head), "total_params": int(total)}


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class Method:
    """A fine-tuning method: its config keys, validation, how it wraps/freezes a model and how it trains."""

    name: ClassVar[str]
    saves_adapter: ClassVar[bool] = False  # saves OUT/adapter (PEFT) rather than OUT/model
    exports_lora: bool = False  # peft_gift.export_lora writes its adapter as an equal PEFT LoRA adapter

    def keys(self) -> list[str]:
        return []

    def validate(self, params: dict, task: str) -> None:
        extra = self.keys()
        where = f"method ({self.name})" if extra else f"method ({self.name} takes no hyper-parameters)"
        check_unknown(params, ["name", *extra], where)

    def check_model(self, params: dict, model_config) -> None:
        """Settings that depend on the model's geometry, checked from its ``config.json`` before any weights load."""

    def apply(self, model, params: dict, task):
        raise NotImplementedError

    def fit(self, model, params: dict, ctx) -> tuple[Any, dict]:
        """Apply the method and train it: ``(trained model, {"train_time_s": ...})``."""
        model = self.apply(model, params, ctx.task)
        counts = param_counts(model)
        ctx.log(f"trainable parameters: {counts['trainable_params']:,} (head {counts['head_params']:,}) "
                f"of {counts['total_params']:,}")
        return model, {"train_time_s": ctx.train(model, "train")}


class PeftMethod(Method):
    """``get_peft_model`` with the config class's own fields; the task's new head goes to ``modules_to_save``.

    With ``linear_probe_first: true`` (LP-FT for any PEFT method, tasks with a classification head): stage 1 trains
    the head alone, stage 2 the head and the adapter; ``stage1_training`` / ``stage2_training`` override the job's
    TrainingArguments per stage."""

    saves_adapter = True
    LP_FT_KEYS = ("linear_probe_first", "stage1_training", "stage2_training")

    def __init__(self, name: str, config_cls_path: str, exports_lora: bool = False) -> None:
        self.name, self._path, self.exports_lora = name, config_cls_path, exports_lora

    def validate(self, params, task):
        super().validate(params, task)
        lp = params.get("linear_probe_first", False)
        if not isinstance(lp, bool):
            raise ConfigError(f"method.linear_probe_first must be true or false, got {lp!r}")
        staged = [key for key in ("stage1_training", "stage2_training") if params.get(key) is not None]
        if staged and not lp:
            raise ConfigError(f"method.{staged[0]} is only used with method.linear_probe_first: true")
        if lp:
            from .tasks import TASKS

            if not TASKS[task].has_head:
                raise ConfigError(f"method.linear_probe_first needs a classification head (seq_cls or image_cls), "
                                  f"not task {task}")
            for stage in ("stage1_training", "stage2_training"):
                check_training(params.get(stage), f"method.{stage}")
        from .tasks import TASKS

        cls = self.config_cls()
        check_section(params, "peft", "method", {f.name: f.type for f in dataclasses.fields(cls)})  # flags
        self.build_config(params, TASKS[task], None)  # the config class's own range checks, before any loading

    def fit(self, model, params, ctx):
        if not params.get("linear_probe_first"):
            return super().fit(model, params, ctx)
        model = self.apply(model, params, ctx.task)
        adapter = [p for n, p in model.named_parameters() if p.requires_grad and not _is_head_param(n)]
        for p in adapter:
            p.requires_grad_(False)
        c1 = param_counts(model)
        ctx.log(f"LP-FT stage 1 (head only): {c1['trainable_params']:,} trainable parameters")
        t1 = ctx.train(model, "stage1", params.get("stage1_training"))
        for p in adapter:
            p.requires_grad_(True)
        c2 = param_counts(model)
        ctx.log(f"LP-FT stage 2 (head + {self.name}): {c2['trainable_params']:,} trainable parameters")
        t2 = ctx.train(model, "stage2", params.get("stage2_training"))
        return model, {"train_time_s": t1 + t2, "stages": {"stage1": {**c1, "train_time_s": round(t1, 1)},
                                                           "stage2": {**c2, "train_time_s": round(t2, 1)}}}

    def config_cls(self):
        import importlib

        module, _, attr = self._path.rpartition(".")
        if module.startswith("peft_gift"):
            import peft_gift  # noqa: F401 - registers GIFT/LoFiT with PEFT
        return getattr(importlib.import_module(module), attr)

    def keys(self) -> list[str]:
        return [*config_fields(self.config_cls()), *self.LP_FT_KEYS]

    def build_config(self, params: dict, task, model):
        cls = self.config_cls()
        kwargs = {k: v for k, v in params.items() if k != "name" and k not in self.LP_FT_KEYS}
        heads = task.head_modules(model) if model is not None else []
        if heads:
            kwargs["modules_to_save"] = list(dict.fromkeys([*(kwargs.get("modules_to_save") or []), *heads]))
        try:
            return cls(task_type=task.task_type, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid {cls.__name__} hyper-parameters {kwargs}: {_first_line(e)}") from None

    def apply(self, model, params, task):
        from peft import get_peft_model

        config = self.build_config(params, task, model)
        try:
            return get_peft_model(model, config)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"method {self.name} cannot be applied to this model: {_first_line(e)}") from None
