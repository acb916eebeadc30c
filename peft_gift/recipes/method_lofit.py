"""LoFiT's two-stage recipe for the CLI: scales with an L1 term on every head, ``select_heads``, offsets on those heads
from a fresh base model."""

from __future__ import annotations

from .checks import ConfigError, check_section, check_training, check_unknown, config_fields
from .method_base import Method, PeftMethod, _first_line, param_counts


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

            m1.save_pretrained(ctx.out / "stage1_adapter", save_embedding_layers=False)  # the scales behind the selection (head maps)
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
