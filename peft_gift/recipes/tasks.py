"""Tasks of the training CLI: one class per task owns its columns, model head, encoding, collator and metrics.

Adding a task is one new :class:`Task` subclass registered in :data:`TASKS`; the config validation, data loading,
methods and the run code ask the task instead of testing its name.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np

from .checks import ConfigError
from .metrics import classification_metrics

HEAD_NAMES = ("classifier", "score")
_TEXT_GUESSES = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                 ("question", "sentence"), ("sentence",), ("text",))


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

    compute_metrics = None  # for the Trainer's evaluation during training (``eval_strategy``)

    def evaluate(self, model, eval_raw, eval_encoded, batch_size: int, progress: bool = False) -> dict:
        """Metrics of ``model`` on the whole evaluation split, computed in this process on the model's device."""
        raise NotImplementedError


class _ClassificationTask(Task):
    """A new linear head over a pretrained backbone; loss, accuracy and F1."""

    loss_counts_items = False

    def __init__(self, model_path, data_cfg, columns, train, evl):
        super().__init__(model_path, data_cfg, columns, train, evl)
        self.num_labels, self.label_names = self._num_labels(train, evl, label=columns["label"])

    @staticmethod
    def _num_labels(*parts, label: str) -> tuple[int, list[str] | None]:
        """(number of classes, their names or None). String labels (``positive`` / ``negative`` in a CSV) become
        classes named after them, sorted; integer labels are class ids."""
        names = getattr(parts[0].features.get(label), "names", None)
        if names:
            return len(names), list(names)
        values = {v for p in parts for v in p[label]}
        if None in values:
            raise ConfigError(f"label column {label!r} has empty values; every row needs a label")
        if all(isinstance(v, str) for v in values):
            return len(values), sorted(values)
        if not all(isinstance(v, numbers.Integral) for v in values):
            kinds = sorted({type(v).__name__ for v in values})
            raise ConfigError(f"label column {label!r} must hold class names (strings) or class ids (integers >= 0), "
                              f"found {', '.join(kinds)} values such as {next(iter(values))!r}")
        if min(values) < 0:
            raise ConfigError(f"labels must be integers >= 0 (found {min(values)})")
        return max(values) + 1, None

    def _label_ids(self, values) -> list[int]:
        """Class ids of a batch of labels (names → ids through ``label2id``; a ClassLabel column is already ids)."""
        if not self.label_names:
            return [int(v) for v in values]
        ids = {n: i for i, n in enumerate(self.label_names)}
        return [v if isinstance(v, numbers.Integral) else ids[v] for v in values]

    def _label_kwargs(self) -> dict:
        if not self.label_names:
            return {}
        return {"id2label": dict(enumerate(self.label_names)),
                "label2id": {n: i for i, n in enumerate(self.label_names)}}

    def compute_metrics(self, eval_pred):
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        return classification_metrics(logits, labels, self.num_labels)

    def evaluate(self, model, eval_raw, eval_encoded, batch_size, progress=False) -> dict:
        """``loss`` (the mean of the batch losses weighted by batch size, as the Trainer reports it), ``accuracy``
        and ``f1``."""
        import torch
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        loader = DataLoader(eval_encoded, batch_size=batch_size, collate_fn=self.collator())
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        logits, labels, loss = [], [], 0.0
        try:
            with torch.no_grad():
                for batch in tqdm(loader, desc="evaluating", disable=not progress or len(loader) < 2):
                    out = model(**{k: v.to(device) for k, v in batch.items()})
                    loss += float(out.loss) * len(batch["labels"])
                    logits.append(out.logits.float().cpu())
                    labels.append(batch["labels"])
        finally:
            model.train(was_training)
        labels = torch.cat(labels).numpy()
        return {"loss": loss / len(labels), **classification_metrics(torch.cat(logits).numpy(), labels, self.num_labels)}


class SequenceClassification(_ClassificationTask):
    """``seq_cls``: AutoModelForSequenceClassification with a new head; one or two text columns."""

    name = "seq_cls"
    task_type = "SEQ_CLS"

    @classmethod
    def columns(cls, ds, data_cfg, name):
        out = super().columns(ds, data_cfg, name)
        cols = list(ds.column_names)
        hint = f"dataset {name!r} has columns {cols}"
        text = data_cfg.get("text_columns")
        if isinstance(text, str):
            text = [text]
        if text is None:
            text = next((list(g) for g in _TEXT_GUESSES if all(c in cols for c in g)), None)
            if text is None:
                raise ConfigError(f"{hint}; seq_cls needs text column(s): set data.text_columns (one or two names)")
        if [c for c in text if c not in cols] or not 1 <= len(text) <= 2:
            raise ConfigError(f"{hint}; data.text_columns={text} must name one or two of them")
        out["text"] = text
        return out

    def __init__(self, model_path, data_cfg, columns, train, evl):
        super().__init__(model_path, data_cfg, columns, train, evl)
        self.max_length = int(data_cfg.get("max_length", 128))
        self.tokenizer = load_tokenizer(model_path)

    def load_model(self):
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            self.model_path, num_labels=self.num_labels, **self._label_kwargs())
        if model.config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def encode(self, ds):
        cols, tok = self.columns, self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token

        def fn(batch):
            enc = tok(*[batch[c] for c in cols["text"]], truncation=True, max_length=self.max_length)
            enc["labels"] = self._label_ids(batch[cols["label"]])
            return enc

        return ds.map(fn, batched=True, remove_columns=ds.column_names, desc="tokenizing")

    def collator(self):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)


class ImageClassification(_ClassificationTask):
    """``image_cls``: AutoModelForImageClassification, images resized to ``image_size`` and normalised with the
    model's processor mean/std (ImageNet's if it has none)."""

    name = "image_cls"

    @classmethod
    def columns(cls, ds, data_cfg, name):
        out = super().columns(ds, data_cfg, name)
        cols = list(ds.column_names)
        image = data_cfg.get("image_column") or next((c for c in ("image", "img", "pixel_values") if c in cols), None)
        if image is None or image not in cols:
            raise ConfigError(f"dataset {name!r} has columns {cols}; image_cls needs an image column ('image' or set "
                              f"data.image_column)")
        out["image"] = image
        return out

    def __init__(self, model_path, data_cfg, columns, train, evl):
        from transformers import AutoConfig

        super().__init__(model_path, data_cfg, columns, train, evl)
        size = data_cfg.get("image_size") or getattr(AutoConfig.from_pretrained(model_path), "image_size", 224)
        self.size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self.mean, self.std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        proc = Path(model_path) / "preprocessor_config.json"
        if proc.is_file():
            pc = json.loads(proc.read_text())
            self.mean, self.std = pc.get("image_mean", self.mean), pc.get("image_std", self.std)

    @classmethod
    def head_modules(cls, model) -> list[str]:
        return [n for n, _ in model.named_children() if n in HEAD_NAMES]

    def load_model(self):
        from transformers import AutoModelForImageClassification

        try:
            return AutoModelForImageClassification.from_pretrained(
                self.model_path, num_labels=self.num_labels, ignore_mismatched_sizes=True, **self._label_kwargs())
        except ValueError as e:
            raise ConfigError(f"model {self.model_path!r} has no image-classification head class "
                              f"({str(e).splitlines()[0][:120]}); use a ViT/DINOv2-style model") from None

    def encode(self, ds):
        import torch
        from PIL import Image

        img_col, label_col, size = self.columns["image"], self.columns["label"], self.size
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)

        def transform(batch):
            pix = []
            for im in batch[img_col]:
                if not isinstance(im, Image.Image):
                    im = Image.fromarray(np.asarray(im, dtype=np.uint8))
                im = im.convert("RGB").resize((size, size), Image.BICUBIC)
                t = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
                pix.append((t - mean) / std)
            return {"pixel_values": pix, "labels": self._label_ids(batch[label_col])}

        ds = ds.select_columns([img_col, label_col])
        ds.set_transform(transform)
        return ds

    def collator(self):
        from transformers import default_data_collator

        return default_data_collator


class MultipleChoice(Task):
    """``causal_lm_mc``: supervised fine-tuning on ``prompt + " " + right answer + eos`` (loss on the answer tokens
    only), evaluated by scoring every choice with :func:`~peft_gift.recipes.multiple_choice.score_choices`."""

    name = "causal_lm_mc"
    task_type = "CAUSAL_LM"
    has_head = False
    multi_dataset = True

    @classmethod
    def columns(cls, ds, data_cfg, name):
        out = super().columns(ds, data_cfg, name)
        cols = list(ds.column_names)
        prompt = "prompt" if "prompt" in cols else ("question" if "question" in cols else None)
        if prompt is None or "choices" not in cols:
            raise ConfigError(f"dataset {name!r} has columns {cols}; causal_lm_mc needs 'prompt' (or 'question'), "
                              f"'choices' (list of strings) and {out['label']!r} (index of the right choice), as in "
                              f"the commonsense assets (arc_easy, boolq, ...)")
        out["prompt"] = prompt
        return out

    @classmethod
    def kept_columns(cls, columns):
        return [columns["prompt"], "choices", columns["label"]]

    def __init__(self, model_path, data_cfg, columns, train, evl):
        super().__init__(model_path, data_cfg, columns, train, evl)
        self.max_length = int(data_cfg.get("max_length", 256))
        self.tokenizer = load_tokenizer(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"  # prompt positions must not depend on the batch

    def load_model(self):
        from transformers import AutoModelForCausalLM

        if not self.quantization:
            return AutoModelForCausalLM.from_pretrained(self.model_path)
        import os

        import torch
        from transformers import BitsAndBytesConfig

        from .._bnb_cpu import keep_standard_4bit_layout

        # a quantized base (QGIFT): bitsandbytes quantizes while loading, on this process's device
        device_map = {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, quantization_config=BitsAndBytesConfig(**self.quantization), device_map=device_map)
        keep_standard_4bit_layout(model)  # the "before" evaluation must not repack it (peft_gift._bnb_cpu)
        return model

    def encode(self, ds):
        from .multiple_choice import encode_pair

        cols = self.columns

        def fn(batch):
            ids, labels = [], []
            for prompt, choices, lab in zip(batch[cols["prompt"]], batch["choices"], batch[cols["label"]]):
                seq, n_prompt = encode_pair(self.tokenizer, prompt, " " + str(choices[int(lab)]), self.max_length,
                                            add_eos=True)
                ids.append(seq)
                labels.append([-100] * n_prompt + seq[n_prompt:])
            return {"input_ids": ids, "labels": labels}

        return ds.map(fn, batched=True, remove_columns=ds.column_names, desc="tokenizing")

    def collator(self):
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100)

    def evaluate(self, model, eval_raw, eval_encoded, batch_size, progress=False) -> dict:
        from .loreft import LoReft
        from .multiple_choice import evaluate_multiple_choice

        # LoReFT edits the last positions of a sequence, so a prompt's states depend on the choice after it
        shared_prompt = not isinstance(getattr(model, "loreft", None), LoReft)
        return evaluate_multiple_choice(model, self.tokenizer, eval_raw, self.columns, self.max_length,
                                        batch_size=batch_size, shared_prompt=shared_prompt, progress=progress)


TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (SequenceClassification, MultipleChoice, ImageClassification)}
