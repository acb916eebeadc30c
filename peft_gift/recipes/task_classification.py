"""The classification tasks of the training CLI (``seq_cls``, ``image_cls``): a new linear head over a pretrained
backbone, the classes read from the data's labels."""

from __future__ import annotations

import json
import numbers
from pathlib import Path

import numpy as np

from .checks import ConfigError
from .metrics import classification_metrics
from .task_base import HEAD_NAMES, Task, load_tokenizer

_TEXT_GUESSES = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                 ("question", "sentence"), ("sentence",), ("text",))


class _ClassificationTask(Task):
    """A new linear head over a pretrained backbone; loss, accuracy and F1."""

    loss_counts_items = False

    def __init__(self, model_path, data_cfg, columns, train, evl):
        super().__init__(model_path, data_cfg, columns, train, evl)
        self.num_labels, self.label_names = self._num_labels(train, evl, label=columns["label"])

    @staticmethod
    def _num_labels(*parts, label: str) -> tuple[int, list[str] | None]:
        """(number of classes, their names or None). String labels (``positive`` / ``negative`` in a CSV) become
        classes named after them, sorted; integer labels are class ids 0..N-1 (a ClassLabel column's names kept).
        At least two classes (one would be trained as a regression), and no more than the rows of data."""
        field = f"data.label_column {label!r}"
        values = {v for p in parts for v in p[label]}
        names = getattr(parts[0].features.get(label), "names", None)
        if None in values:
            raise ConfigError(f"{field} has empty values; every row needs a label")
        if all(isinstance(v, str) for v in values):
            names = sorted(values)
        elif not all(isinstance(v, numbers.Integral) for v in values):
            kinds = sorted({type(v).__name__ for v in values})
            raise ConfigError(f"{field} must hold class names (strings) or class ids (integers >= 0), found "
                              f"{', '.join(kinds)} values such as {next(iter(values))!r}")
        if len(values) < 2:
            raise ConfigError(f"{field} has a single class ({next(iter(values))!r}) in the rows used; a classifier "
                              f"needs at least 2 classes")
        if names:
            if not all(isinstance(v, str) or 0 <= v < len(names) for v in values):
                raise ConfigError(f"{field} must hold ids of its {len(names)} class names (0..{len(names) - 1}), "
                                  f"found {min(values)}..{max(values)}")
            return len(names), list(names)
        rows = sum(len(p) for p in parts)
        if min(values) < 0 or max(values) >= rows:
            raise ConfigError(f"{field} must hold class ids 0..N-1 with N at most the {rows} rows of data (one "
                              f"output per class), found {min(values)}..{max(values)}; renumber the classes or "
                              f"give them as names")
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
        for column in text:  # None (an empty CSV cell), blank strings and numbers would fail in the tokenizer
            bad = [v for v in ds[column] if not isinstance(v, str) or not v.strip()]
            other = sorted({type(v).__name__ for v in bad if v is not None and not isinstance(v, str)})
            if bad:
                what = f"{' and '.join(other)} values" if other else "empty cells"
                raise ConfigError(f"data.text_columns: column {column!r} of dataset {name!r} must hold text in every "
                                  f"row used; found {what} in {len(bad)} of them (e.g. {bad[0]!r}); drop or fill them")
        out["text"] = text
        return out

    def __init__(self, model_path, data_cfg, columns, train, evl):
        super().__init__(model_path, data_cfg, columns, train, evl)
        self.max_length = int(data_cfg.get("max_length", 128))
        self.tokenizer = load_tokenizer(model_path)
        self.pad_from = None  # batches need a padding token: the tokenizer's end-of-text (or unknown) token if none
        if self.tokenizer.pad_token is None:
            self.pad_from = "eos_token" if self.tokenizer.eos_token else "unk_token"
            self.tokenizer.pad_token = getattr(self.tokenizer, self.pad_from)

    def card_inputs(self) -> dict:
        return {"texts": len(self.columns["text"]), "pad_from": self.pad_from}

    def load_model(self):
        from transformers import AutoModelForSequenceClassification

        # a checkpoint that already has a head for another number of classes gets a new one, as for images
        model = AutoModelForSequenceClassification.from_pretrained(
            self.model_path, num_labels=self.num_labels, ignore_mismatched_sizes=True, **self._label_kwargs())
        if model.config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def encode(self, ds):
        cols, tok = self.columns, self.tokenizer

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

    def card_inputs(self) -> dict:
        return {"image_size": self.size, "image_mean": list(self.mean), "image_std": list(self.std)}

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
