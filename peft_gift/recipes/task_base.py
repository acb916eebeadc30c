"""The base of every task of the training CLI (:class:`Task`): what a task declares and the hooks the pipeline calls.
The tasks themselves are in :mod:`.task_classification` and :mod:`.tasks` (which holds the registry, :data:`TASKS`)."""

from __future__ import annotations

from typing import ClassVar, Optional

from .checks import ConfigError

HEAD_NAMES = ("classifier", "score")


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"could not load a tokenizer from {model_path!r} ({str(e).splitlines()[0][:120]}); "
                          f"the model directory needs tokenizer files") from None


class Task:
    """What a task declares: its name, PEFT task type, metric, whether it trains a new head, its data columns."""

    name: ClassVar[str]
    task_type: ClassVar[Optional[str]] = None  # PEFT TaskType
    metric: ClassVar[str] = "accuracy"
    has_head: ClassVar[bool] = True  # a freshly initialised classification head (linear_probe / bitfit train it)
    multi_dataset: ClassVar[bool] = False  # a list of datasets, scored per source
    # the model's loss is a sum over the Trainer's ``num_items_in_batch`` (causal LMs); a classification head averages
    # its own batch and ignores it, and the Trainer must then not scale that loss by the number of processes
    loss_counts_items: ClassVar[bool] = True
    tokenizer = None

    @classmethod
    def columns(cls, ds, data_cfg: dict, name: str) -> dict:
        """Column names to use; ConfigError if the dataset lacks what the task needs."""
        cols = list(ds.column_names)
        label = data_cfg.get("label_column", "label")
        if label not in cols:
            raise ConfigError(f"dataset {name!r} has columns {cols} but no label column {label!r}; "
                              f"set data.label_column")
        return {"label": label}

    @classmethod
    def kept_columns(cls, columns: dict) -> list[str]:
        raise ConfigError(f"a list of datasets is not supported for task {cls.name}")

    def __init__(self, model_path: str, data_cfg: dict, columns: dict, train, evl) -> None:
        self.model_path, self.data_cfg, self.columns = model_path, data_cfg, columns
        self.quantization: Optional[dict] = None  # BitsAndBytesConfig fields (the config's ``quantization``)

    @classmethod
    def head_modules(cls, model) -> list[str]:
        """Modules a PEFT config must add to ``modules_to_save`` (PEFT adds the SEQ_CLS head by itself)."""
        return []

    def load_model(self):
        raise NotImplementedError

    def encode(self, ds):
        raise NotImplementedError

    def collator(self):
        raise NotImplementedError

    def card_inputs(self) -> dict:
        """How the job prepared its inputs, for the code in the model card (:mod:`.card_code`)."""
        return {}

    compute_metrics = None  # for the Trainer's evaluation during training (``eval_strategy``)

    def evaluate(self, model, eval_raw, eval_encoded, batch_size: int, progress: bool = False) -> dict:
        """Metrics of ``model`` on the whole evaluation split, computed in this process on the model's device."""
        raise NotImplementedError
