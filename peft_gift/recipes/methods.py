"""The one registry of fine-tuning methods: builds every method's PEFT config or freezing, for the CLI and benchmarks.

A method is one :class:`Method` in :data:`METHODS`. ``apply`` turns a freshly loaded model into the model to train
(one stage); ``fit`` runs the method's whole recipe through the pipeline's trainer (two stages for LoFiT and LP-FT).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .config import ConfigError, check_section, check_training, check_unknown, config_fields
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


class Lofit(PeftMethod):
    """LoFiT in two stages: scales (1 + A_h) on every head with an L1 term, ``select_heads`` (``k`` or ``fraction``),
    then offsets v_h on those heads trained from a fresh base model. With ``heads`` given, only stage 2 runs."""

    STAGE_KEYS = ("k", "fraction", "heads", "stage1", "stage2", "stage1_training", "stage2_training")
    STAGE1_DEFAULTS = {"l1_lambda": 1e-3, "init_std": 1e-3}

    def __init__(self) -> None:
        super().__init__("lofit", "peft_gift.LofitConfig", exports_lora=True)  # stage 2: a rank-1 LoRA with bias

    def keys(self) -> list[str]:
        return list(self.STAGE_KEYS)

    def validate(self, params, task):
        Method.validate(self, params, task)  # its own stage keys, not the LP-FT option
        fields = [f for f in config_fields(self.config_cls()) if f not in ("mode", "heads")]
        for stage in ("stage1", "stage2"):
            sub = params.get(stage) or {}
            if not isinstance(sub, dict):
                raise ConfigError(f"method.{stage} must be a mapping of LofitConfig fields")
            check_unknown(sub, fields, f"method.{stage} (LofitConfig fields)")
        for stage in ("stage1_training", "stage2_training"):
            check_training(params.get(stage), f"method.{stage}")
        given = [key for key in ("k", "fraction", "heads") if params.get(key) is not None]
        if len(given) != 1:
            raise ConfigError("method lofit needs exactly one of 'k' (number of heads) or 'fraction' (of all heads), "
                              "or an explicit 'heads' list of [layer, head] pairs (stage 2 only)")
        check_section(params, "lofit", "method")
        heads = params.get("heads")
        if heads is not None and (not isinstance(heads, (list, tuple)) or not heads or not all(
                isinstance(h, (list, tuple)) and len(h) == 2 and all(isinstance(i, int) and not isinstance(i, bool)
                                                                     for i in h) for h in heads)):
            raise ConfigError(f"method.heads must be a non-empty list of [layer, head] pairs, got {heads!r}")
        # build both stages' configs now so that a bad stage-2 value fails before stage 1 trains
        self._config("stage1", {**self.STAGE1_DEFAULTS, **(params.get("stage1") or {}), "mode": "scale"})
        self._config("stage2", {**self._stage1_values(params), "mode": "bias", "l1_lambda": 0.0,
                                "heads": [tuple(h) for h in heads or [(0, 0)]], **(params.get("stage2") or {})})

    def check_model(self, params, model_config) -> None:
        """``k`` and ``heads`` within the model's heads (layers x heads from its config), so that a LoFiT job that
        cannot select its heads fails before the untrained evaluation runs. Encoder-decoder models (several attention
        blocks per layer) are left to the dry run in :meth:`fit`."""
        stage1 = self._stage1_values(params)
        n_heads = stage1.get("num_heads") or getattr(model_config, "num_attention_heads", None)
        n_layers = getattr(model_config, "num_hidden_layers", None)
        if getattr(model_config, "is_encoder_decoder", False) or not n_heads or not n_layers:
            return
        chosen = stage1.get("layers_to_transform")
        layers = len(chosen) if isinstance(chosen, (list, tuple)) else 1 if isinstance(chosen, int) else n_layers
        total = layers * n_heads
        if params.get("k") is not None and params["k"] > total:
            raise ConfigError(f"method.k must be 1 <= k <= {total} (the model's heads: {layers} layers x {n_heads} "
                              f"heads), got {params['k']}")
        for layer, head in params.get("heads") or []:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ConfigError(f"method.heads: [{layer}, {head}] is not a head of this model (layers 0..{n_layers - 1}, "
                                  f"heads 0..{n_heads - 1})")

    def _stage1_values(self, params) -> dict:
        return {**self.STAGE1_DEFAULTS, **(params.get("stage1") or {})}

    def _config(self, stage: str, values: dict, task_type=None):
        cls = self.config_cls()
        try:
            return cls(task_type=task_type, **values)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid method.{stage} (LofitConfig): {_first_line(e)}") from None

    def stage1_config(self, params, task, model):
        return self.build_config({**self._stage1_values(params), "mode": "scale"}, task, model)

    def stage2_config(self, params, task, model, heads, stage1_config=None):
        import peft_gift

        if stage1_config is None:
            stage1_config = self.stage1_config(params, task, model)
        try:
            return peft_gift.lofit_stage2_config(stage1_config, [tuple(h) for h in heads], **(params.get("stage2") or {}))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid method.stage2 (LofitConfig): {_first_line(e)}") from None

    def apply(self, model, params, task):
        """One stage: the offsets on ``heads`` if given, else the stage-1 scales on every head."""
        from peft import get_peft_model

        config = (self.stage2_config(params, task, model, params["heads"]) if params.get("heads") is not None
                  else self.stage1_config(params, task, model))
        try:
            return get_peft_model(model, config)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"method lofit cannot be applied to this model: {_first_line(e)}") from None

    def _check_stage2(self, m1, params, task, cfg1) -> None:
        """Select heads on the untrained stage-1 model and dry-run the stage-2 config on it: k/fraction beyond the
        model's heads, or stage-2 geometry that does not fit, fail here, before stage 1 trains."""
        import peft_gift

        try:
            heads = peft_gift.select_heads(m1, k=params.get("k"), fraction=params.get("fraction"))
        except ValueError as e:
            raise ConfigError(f"LoFiT head selection: {e}") from None
        cfg2 = self.stage2_config(params, task, m1, heads, cfg1)
        probe = "stage2_check"
        try:
            m1.add_adapter(probe, cfg2)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ConfigError(f"invalid method.stage2 for this model: {_first_line(e)}") from None
        finally:
            if probe in m1.peft_config:
                m1.delete_adapter(probe)
            m1.set_adapter("default")

    def fit(self, model, params, ctx):
        from peft import get_peft_model
        from transformers import set_seed

        import peft_gift

        task = ctx.task
        if params.get("heads") is not None:
            m2 = self.apply(model, params, task)
            c2 = param_counts(m2)
            ctx.log(f"LoFiT stage 2 only (bias on {len(params['heads'])} given heads): {c2['trainable_params']:,} "
                    f"trainable parameters")
            t2 = ctx.train(m2, "stage2", params.get("stage2_training"))
            return m2, {"train_time_s": t2, "stages": {"stage2": {
                **c2, "train_time_s": round(t2, 1), "heads": [list(h) for h in params["heads"]]}}}
        cfg1 = self.stage1_config(params, task, model)
        m1 = get_peft_model(model, cfg1)
        self._check_stage2(m1, params, task, cfg1)
        c1 = param_counts(m1)
        ctx.log(f"LoFiT stage 1 (scale, L1 {cfg1.l1_lambda}): {c1['trainable_params']:,} trainable parameters")
        t1 = ctx.train(m1, "stage1", params.get("stage1_training"))
        heads = peft_gift.select_heads(m1, k=params.get("k"), fraction=params.get("fraction"))
        ctx.log(f"LoFiT selected {len(heads)} heads: {heads}")
        if ctx.out is not None and ctx.main:  # one writer when launched on several processes
            from ..hub import write_model_card

            m1.save_pretrained(ctx.out / "stage1_adapter")  # the scales behind the selection (head maps)
            write_model_card(m1, str(ctx.out / "stage1_adapter"))
        cfg2 = self.stage2_config(params, task, m1, heads, cfg1)
        del m1, model
        set_seed(ctx.seed)
        m2 = get_peft_model(ctx.load_model(), cfg2)
        c2 = param_counts(m2)
        ctx.log(f"LoFiT stage 2 (bias on {len(heads)} heads): {c2['trainable_params']:,} trainable parameters")
        t2 = ctx.train(m2, "stage2", params.get("stage2_training"))
        stages = {
            "stage1": {**c1, "train_time_s": round(t1, 1), "l1_lambda": cfg1.l1_lambda},
            "stage2": {**c2, "train_time_s": round(t2, 1), "heads": [list(h) for h in heads]},
        }
        return m2, {"train_time_s": t1 + t2, "stages": stages}


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


def get_method(method: dict) -> Method:
    return METHODS[method["name"]]


def apply_method(model, method: dict, task):
    """Wrap/freeze ``model`` for one stage of ``method`` (a validated ``{"name": ..., **params}``); ``task`` is a
    task instance or class (it names the PEFT task type and the head to train)."""
    return METHODS[method["name"]].apply(model, {k: v for k, v in method.items() if k != "name"}, task)


__all__ = ["METHODS", "Method", "apply_method", "get_method", "param_counts"]
