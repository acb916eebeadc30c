"""The one registry of fine-tuning methods: builds every method's PEFT config or freezing, for the CLI and benchmarks.

A method is one :class:`Method` in :data:`METHODS`. ``apply`` turns a freshly loaded model into the model to train
(one stage); ``fit`` runs the method's whole recipe through the pipeline's trainer (two stages for LoFiT and LP-FT).
"""

from __future__ import annotations

from .checks import ConfigError, check_training
from .method_base import Method, PeftMethod, param_counts
from .method_lofit import Lofit
from .tasks import HEAD_NAMES


class Full(Method):
    """Every parameter trainable; saves the whole model."""

    name = "full"

    def apply(self, model, params, task):
        for p in model.parameters():
            p.requires_grad_(True)
        return model


class BitFit(Method):
    """Biases and the task's new head trainable, everything else frozen."""

    name = "bitfit"
    biases = True

    def validate(self, params, task):
        super().validate(params, task)
        from .tasks import TASKS

        if not self.biases and not TASKS[task].has_head:
            raise ConfigError(f"{self.name} needs a classification head; use it with seq_cls or image_cls")

    def apply(self, model, params, task):
        for n, p in model.named_parameters():
            p.requires_grad_(self.biases and n.endswith(".bias"))
        for name, head in model.named_children():
            if name in HEAD_NAMES:
                for p in head.parameters():
                    p.requires_grad_(True)
        return model


class LinearProbe(BitFit):
    """Only the task's new classification head trainable."""

    name = "linear_probe"
    biases = False


class LinearProbeThenFull(LinearProbe):
    """LP-FT: train the head alone (stage 1), then every parameter (stage 2); per-stage TrainingArguments overrides
    ``stage1_training`` / ``stage2_training``."""

    name = "lp_ft"

    def keys(self):
        return ["stage1_training", "stage2_training"]

    def validate(self, params, task):
        super().validate(params, task)
        for stage in ("stage1_training", "stage2_training"):
            check_training(params.get(stage), f"method.{stage}")

    def fit(self, model, params, ctx):
        model = LinearProbe.apply(self, model, params, ctx.task)
        c1 = param_counts(model)
        t1 = ctx.train(model, "stage1", params.get("stage1_training"))
        model = Full.apply(self, model, params, ctx.task)
        c2 = param_counts(model)
        t2 = ctx.train(model, "stage2", params.get("stage2_training"))
        return model, {"train_time_s": t1 + t2, "stages": {"stage1": {**c1, "train_time_s": round(t1, 1)},
                                                           "stage2": {**c2, "train_time_s": round(t2, 1)}}}


class Loreft(LinearProbe):
    """LoReFT baseline (`peft_gift.recipes.loreft`): interventions Φ(h) = h + Rᵀ(Wh + b − Rh) on the first ``prefix``
    and last ``suffix`` positions of the given ``layers`` (default all), rank ``r``; the base frozen, a new head
    trained with them; saves the whole model with the settings in its config (reload: `loreft.load_loreft`)."""

    name = "loreft"
    DEFAULTS = {"r": 1, "layers": None, "prefix": 1, "suffix": 1, "dropout": 0.0}

    def keys(self):
        return list(self.DEFAULTS)

    def validate(self, params, task):
        Method.validate(self, params, task)  # a head is optional: LoReFT also adapts language models
        from .loreft import check_settings

        try:
            check_settings(**{**self.DEFAULTS, **{k: v for k, v in params.items() if k != "name"}},
                           field="method.{}".format)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def apply(self, model, params, task):
        from .loreft import attach_loreft

        model = LinearProbe.apply(self, model, params, task)  # freeze the base, train a head if the task has one
        try:
            attach_loreft(model, **{**self.DEFAULTS, **params})
        except ValueError as e:
            raise ConfigError(f"method loreft cannot be applied to this model: {e}") from None
        return model


METHODS: dict[str, Method] = {m.name: m for m in (
    PeftMethod("gift", "peft_gift.GiftConfig", exports_lora=True),
    Lofit(),
    PeftMethod("lora", "peft.LoraConfig"),
    PeftMethod("vera", "peft.VeraConfig"),
    PeftMethod("ia3", "peft.IA3Config"),
    PeftMethod("miss", "peft.MissConfig"),
    Full(),
    BitFit(),
    LinearProbe(),
    LinearProbeThenFull(),
    Loreft(),
)}


def apply_method(model, method: dict, task):
    """Wrap/freeze ``model`` for one stage of ``method`` (a validated ``{"name": ..., **params}``); ``task`` is a
    task instance or class (it names the PEFT task type and the head to train)."""
    return METHODS[method["name"]].apply(model, {k: v for k, v in method.items() if k != "name"}, task)


__all__ = ["METHODS", "Method", "apply_method", "param_counts"]
