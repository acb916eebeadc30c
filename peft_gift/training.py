"""YAML-configured fine-tuning jobs (sequence classification, causal-LM multiple choice, image classification).

The logic behind ``scripts/train.py``; importable so that benchmarks can reuse the data, metric and training code::

    from peft_gift.training import load_config, run
    results = run(load_config("configs/gift_minilm_sst2.yaml", overrides=["training.num_train_epochs=1"]))

A config has the top-level keys ``model``, ``task``, ``method``, ``data``, ``training`` (fields of
``transformers.TrainingArguments``), and optionally ``seed`` and ``output_dir``. Every problem with a config, a file,
a model or a dataset is raised as :class:`ConfigError` (a one-line message) before any training starts.

Metrics are computed locally (numpy): ``evaluate.load("accuracy")`` downloads the metric script from the Hugging Face
Hub, which is not reachable offline.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

TASKS = ("seq_cls", "causal_lm_mc", "image_cls")
PEFT_METHODS = ("gift", "lofit", "lora", "vera", "ia3")
METHODS = (*PEFT_METHODS, "full", "bitfit", "linear_probe")
TOP_KEYS = ("model", "task", "method", "data", "training", "seed", "output_dir")
DATA_KEYS = (
    "dataset", "subset", "train_split", "eval_split", "train_size", "eval_size", "seed", "max_length",
    "text_columns", "label_column", "image_column", "image_size",
)
LOFIT_KEYS = ("name", "k", "fraction", "stage1", "stage2", "stage1_training", "stage2_training")
HEAD_NAMES = ("classifier", "score")


class ConfigError(ValueError):
    """A bad config, file, model or dataset; the message is one line saying what was wrong and what would work."""


# --------------------------------------------------------------------------------------------------------------
# config


class _Loader(yaml.SafeLoader):
    pass


# YAML 1.1 reads "1e-3" as a string; accept it as a float like every other config system does.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$|^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$"),
    list("-+0123456789."),
)


def _yaml(text: str):
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
        cfg = _yaml(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p} must contain a mapping with keys {', '.join(TOP_KEYS)}")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. training.learning_rate=1e-3")
        k, v = item.split("=", 1)
        _set_dotted(cfg, k.strip(), _yaml(v) if v.strip() else None)
    cfg.setdefault("output_dir", str(Path("outputs") / p.stem))
    return validate_config(cfg)


def _unknown(keys, allowed, where: str) -> None:
    import difflib

    allowed = list(allowed)
    bad = [k for k in keys if k not in allowed]
    if bad:
        close = sorted({c for k in bad for c in difflib.get_close_matches(str(k), allowed, n=3, cutoff=0.6)})
        hint = f"did you mean {', '.join(close)}? " if close else ""
        listing = f"allowed: {', '.join(allowed)}" if len(allowed) <= 20 else f"{len(allowed)} fields are allowed"
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, bad))} in {where}; {hint}{listing}")


def _peft_config_cls(name: str):
    import peft

    if name in ("gift", "lofit"):
        import peft_gift

        return peft_gift.GiftConfig if name == "gift" else peft_gift.LofitConfig
    return {"lora": peft.LoraConfig, "vera": peft.VeraConfig, "ia3": peft.IA3Config}[name]


def _config_fields(cls) -> list[str]:
    skip = {"peft_type", "task_type", "base_model_name_or_path", "revision", "auto_mapping", "inference_mode",
            "peft_version"}
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in skip]


def _training_fields() -> list[str]:
    from transformers import TrainingArguments

    return [f.name for f in dataclasses.fields(TrainingArguments) if f.init]


def validate_config(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    _unknown(cfg, TOP_KEYS, "the config")
    for key in ("model", "task", "method", "data"):
        if key not in cfg or cfg[key] in (None, ""):
            raise ConfigError(f"the config needs a {key!r} entry (see configs/gift_minilm_sst2.yaml)")
    if not isinstance(cfg["model"], str):
        raise ConfigError("'model' must be a string: an asset name (smollm2-135m, minilm-l6, dinov2-s14), a Hub id or a local path")
    if cfg["task"] not in TASKS:
        raise ConfigError(f"task {cfg['task']!r} is not supported; use one of {', '.join(TASKS)}")
    method = cfg["method"]
    if isinstance(method, str):
        method = cfg["method"] = {"name": method}
    if not isinstance(method, dict) or "name" not in method:
        raise ConfigError(f"'method' needs a 'name' ({', '.join(METHODS)}) and the method's hyper-parameters")
    name = method["name"]
    if name not in METHODS:
        raise ConfigError(f"method {name!r} is not supported; use one of {', '.join(METHODS)}")
    if name == "lofit":
        _unknown(method, LOFIT_KEYS, "method (lofit)")
        if (method.get("k") is None) == (method.get("fraction") is None):
            raise ConfigError("method lofit needs exactly one of 'k' (number of heads) or 'fraction' (of all heads)")
        fields = _config_fields(_peft_config_cls("lofit"))
        for stage in ("stage1", "stage2"):
            sub = method.get(stage) or {}
            if not isinstance(sub, dict):
                raise ConfigError(f"method.{stage} must be a mapping of LofitConfig fields")
            _unknown(sub, [f for f in fields if f not in ("mode", "heads")], f"method.{stage} (LofitConfig fields)")
        tfields = _training_fields()
        for stage in ("stage1_training", "stage2_training"):
            _unknown(method.get(stage) or {}, tfields, f"method.{stage} (TrainingArguments fields)")
    elif name in PEFT_METHODS:
        _unknown(method, ["name", *_config_fields(_peft_config_cls(name))], f"method ({name})")
    else:
        _unknown(method, ["name"], f"method ({name} takes no hyper-parameters)")
    data = cfg["data"]
    if isinstance(data, str):
        data = cfg["data"] = {"dataset": data}
    if not isinstance(data, dict) or "dataset" not in data:
        raise ConfigError("'data' needs a 'dataset': an asset name (sst2, arc_easy, cifar10, ...), a Hub id or a local path")
    _unknown(data, DATA_KEYS, "data")
    training = cfg.get("training") or {}
    if not isinstance(training, dict):
        raise ConfigError("'training' must be a mapping of transformers.TrainingArguments fields")
    _unknown(training, _training_fields(), "training (TrainingArguments fields)")
    cfg["training"] = training
    cfg.setdefault("seed", 0)
    return cfg


# --------------------------------------------------------------------------------------------------------------
# model and data resolution


def resolve_model(name: str) -> str:
    """Asset name → local dir; local dir → itself; Hub id → itself if its config can be fetched (else ConfigError)."""
    from . import assets

    if assets.model_asset_name(name):
        try:
            return assets.model_path(name)
        except assets.AssetError as e:
            raise ConfigError(str(e)) from None
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ConfigError(f"model directory {str(p)!r} has no config.json; pass a save_pretrained() directory")
        return str(p)
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - any failure means "cannot be resolved"
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"model {name!r} is not an asset ({', '.join(assets.MODELS)}), not a local directory, and could not be "
            f"loaded from the Hugging Face Hub ({reason}); use an asset name or a local save_pretrained() directory"
        ) from None
    return name


def _load_raw(name: str, data_cfg: dict):
    """Dataset name → DatasetDict (asset, save_to_disk dir, data file, or Hub id)."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    from . import assets

    if assets.dataset_asset_name(name):
        try:
            return assets.load_dataset_asset(name)
        except assets.AssetError as e:
            raise ConfigError(str(e)) from None
    p = Path(name).expanduser()
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "dataset_info.json").exists()):
        ds = load_from_disk(str(p))
        if isinstance(ds, Dataset):
            ds = DatasetDict({data_cfg.get("train_split") or "train": ds})
        return ds
    if p.is_file():
        ext = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".tsv": "csv"}.get(p.suffix)
        if ext is None:
            raise ConfigError(f"data file {str(p)!r}: unsupported type; use .json/.jsonl/.csv/.parquet or a save_to_disk dir")
        kw = {"delimiter": "\t"} if p.suffix == ".tsv" else {}
        return load_dataset(ext, data_files={"train": str(p)}, **kw)
    if p.exists() or name.startswith((".", "/", "~")):
        raise ConfigError(f"dataset path {name!r} is neither a datasets.save_to_disk directory nor a data file")
    try:
        return load_dataset(name, data_cfg.get("subset"))
    except Exception as e:  # noqa: BLE001
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"dataset {name!r} is not an asset ({', '.join(assets.DATASETS)}), not a local path, and could not be "
            f"loaded with datasets.load_dataset ({reason}); use an asset name or a local save_to_disk directory"
        ) from None


def _pick_split(ds, wanted: str | None, prefer: tuple[str, ...], name: str, role: str) -> str:
    if wanted is not None:
        if wanted not in ds:
            raise ConfigError(f"dataset {name!r} has no split {wanted!r} for {role}; available: {', '.join(ds)}")
        return wanted
    for s in prefer:
        if s in ds:
            return s
    return next(iter(ds))


def split_dataset(ds, name: str, data_cfg: dict):
    """(train, eval) Datasets: shuffled with data.seed, cut to train_size / eval_size; disjoint when both come from
    the same split (e.g. the 872 SST-2 validation sentences)."""
    seed = int(data_cfg.get("seed", 0))
    tr = _pick_split(ds, data_cfg.get("train_split"), ("train",), name, "training")
    ev = _pick_split(ds, data_cfg.get("eval_split"), ("validation", "test", "train"), name, "evaluation")
    n_train, n_eval = data_cfg.get("train_size"), data_cfg.get("eval_size")
    for key, n in (("train_size", n_train), ("eval_size", n_eval)):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ConfigError(f"data.{key} must be a positive integer, got {n!r}")
    if tr == ev:
        full = ds[tr].shuffle(seed=seed)
        total = len(full)
        if n_train is None and n_eval is None:
            n_eval = max(1, total // 5)
        n_train = n_train if n_train is not None else total - n_eval
        n_eval = n_eval if n_eval is not None else total - n_train
        if n_train + n_eval > total:
            raise ConfigError(
                f"dataset {name!r} split {tr!r} has {total} rows, fewer than train_size + eval_size = {n_train + n_eval}; "
                f"lower the sizes (train and eval are cut disjointly from the same split)"
            )
        return full.select(range(n_train)), full.select(range(n_train, n_train + n_eval))
    train, evl = ds[tr].shuffle(seed=seed), ds[ev].shuffle(seed=seed)
    for key, n, part, split in (("train_size", n_train, train, tr), ("eval_size", n_eval, evl, ev)):
        if n is not None and n > len(part):
            raise ConfigError(f"data.{key}={n} but dataset {name!r} split {split!r} has only {len(part)} rows")
    train = train.select(range(n_train)) if n_train is not None else train
    evl = evl.select(range(n_eval)) if n_eval is not None else evl
    return train, evl


_TEXT_GUESSES = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                 ("question", "sentence"), ("sentence",), ("text",))


def _check_columns(ds, task: str, data_cfg: dict, name: str) -> dict:
    """Column names to use; ConfigError if the dataset lacks what the task needs."""
    cols = list(ds.column_names)
    label = data_cfg.get("label_column", "label")
    out = {"label": label}
    hint = f"dataset {name!r} has columns {cols}"
    if label not in cols:
        raise ConfigError(f"{hint} but no label column {label!r}; set data.label_column")
    if task == "seq_cls":
        text = data_cfg.get("text_columns")
        if isinstance(text, str):
            text = [text]
        if text is None:
            text = next((list(g) for g in _TEXT_GUESSES if all(c in cols for c in g)), None)
            if text is None:
                raise ConfigError(f"{hint}; seq_cls needs text column(s): set data.text_columns (one or two names)")
        missing = [c for c in text if c not in cols]
        if missing or not 1 <= len(text) <= 2:
            raise ConfigError(f"{hint}; data.text_columns={text} must name one or two of them")
        out["text"] = text
    elif task == "causal_lm_mc":
        prompt = "prompt" if "prompt" in cols else ("question" if "question" in cols else None)
        if prompt is None or "choices" not in cols:
            raise ConfigError(f"{hint}; causal_lm_mc needs 'prompt' (or 'question'), 'choices' (list of strings) and "
                              f"{label!r} (index of the right choice), as in the commonsense assets (arc_easy, boolq, ...)")
        out["prompt"] = prompt
    else:
        image = data_cfg.get("image_column") or next((c for c in ("image", "img", "pixel_values") if c in cols), None)
        if image is None or image not in cols:
            raise ConfigError(f"{hint}; image_cls needs an image column ('image' or set data.image_column)")
        out["image"] = image
    return out


def _num_labels(*parts, label: str) -> tuple[int, list[str] | None]:
    feat = parts[0].features.get(label)
    names = getattr(feat, "names", None)
    if names:
        return len(names), list(names)
    values = set()
    for p in parts:
        values.update(int(v) for v in p[label])
    if min(values) < 0:
        raise ConfigError(f"labels must be integers >= 0 (found {min(values)})")
    return max(values) + 1, None


# --------------------------------------------------------------------------------------------------------------
# metrics (local: evaluate.load() would fetch metric scripts from the Hub)


def accuracy(preds, labels) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float((preds == labels).mean()) if len(labels) else float("nan")


def f1(preds, labels, num_labels: int) -> float:
    """Binary F1 of class 1 for two classes, macro F1 otherwise."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = [1] if num_labels == 2 else list(range(num_labels))
    scores = []
    for c in classes:
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------------------------------
# tasks


class _TextTask:
    metric = "accuracy"

    def __init__(self, model_path, data_cfg, columns, num_labels, label_names):
        from transformers import AutoTokenizer

        self.model_path, self.columns, self.num_labels = model_path, columns, num_labels
        self.label_names = label_names
        self.max_length = int(data_cfg.get("max_length", 128))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"could not load a tokenizer from {model_path!r} ({str(e).splitlines()[0][:120]}); "
                              f"the model directory needs tokenizer files") from None

    def load_model(self):
        from transformers import AutoModelForSequenceClassification

        kw = {}
        if self.label_names:
            kw = {"id2label": dict(enumerate(self.label_names)), "label2id": {n: i for i, n in enumerate(self.label_names)}}
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path, num_labels=self.num_labels, **kw)
        if model.config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def encode(self, ds):
        cols, tok = self.columns, self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token

        def fn(batch):
            texts = [batch[c] for c in cols["text"]]
            enc = tok(*texts, truncation=True, max_length=self.max_length)
            enc["labels"] = [int(v) for v in batch[cols["label"]]]
            return enc

        return ds.map(fn, batched=True, remove_columns=ds.column_names, desc="tokenizing")

    def collator(self):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    def compute_metrics(self, eval_pred):
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        preds = np.argmax(logits, axis=-1)
        return {"accuracy": accuracy(preds, labels), "f1": f1(preds, labels, self.num_labels)}

    def evaluate(self, trainer, eval_ds) -> dict:
        m = trainer.evaluate(eval_ds)
        return {k[len("eval_"):]: float(v) for k, v in m.items() if k[len("eval_"):] in ("accuracy", "f1", "loss")}


class _ImageTask(_TextTask):
    def __init__(self, model_path, data_cfg, columns, num_labels, label_names):
        from transformers import AutoConfig

        self.model_path, self.columns, self.num_labels = model_path, columns, num_labels
        self.label_names = label_names
        mc = AutoConfig.from_pretrained(model_path)
        size = data_cfg.get("image_size") or getattr(mc, "image_size", 224)
        self.size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self.mean, self.std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        proc = Path(model_path) / "preprocessor_config.json"
        if proc.is_file():
            pc = json.loads(proc.read_text())
            self.mean, self.std = pc.get("image_mean", self.mean), pc.get("image_std", self.std)
        self.tokenizer = None

    def load_model(self):
        from transformers import AutoModelForImageClassification

        kw = {}
        if self.label_names:
            kw = {"id2label": dict(enumerate(self.label_names)), "label2id": {n: i for i, n in enumerate(self.label_names)}}
        try:
            return AutoModelForImageClassification.from_pretrained(
                self.model_path, num_labels=self.num_labels, ignore_mismatched_sizes=True, **kw)
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
            return {"pixel_values": pix, "labels": [int(v) for v in batch[label_col]]}

        ds = ds.select_columns([img_col, label_col])
        ds.set_transform(transform)
        return ds

    def collator(self):
        import torch

        def collate(rows):
            return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
                    "labels": torch.tensor([r["labels"] for r in rows])}

        return collate


class _MCTask:
    """Causal-LM SFT on the right answer (loss on answer tokens only) + multiple-choice eval by answer log-likelihood."""

    metric = "accuracy"

    def __init__(self, model_path, data_cfg, columns, num_labels=None, label_names=None):
        from transformers import AutoTokenizer

        self.model_path, self.columns = model_path, columns
        self.max_length = int(data_cfg.get("max_length", 256))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"could not load a tokenizer from {model_path!r} ({str(e).splitlines()[0][:120]}); "
                              f"the model directory needs tokenizer files") from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    def load_model(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.model_path)

    def _pair(self, prompt: str, continuation: str, add_eos: bool) -> tuple[list[int], int]:
        tok = self.tokenizer
        p = tok(prompt, add_special_tokens=True)["input_ids"]
        c = tok(continuation, add_special_tokens=False)["input_ids"]
        if add_eos and tok.eos_token_id is not None:
            c = c + [tok.eos_token_id]
        c = c[: self.max_length - 1]
        p = p[-(self.max_length - len(c)):]  # keep the end of a long prompt
        return p + c, len(p)

    def encode(self, ds):
        cols = self.columns

        def fn(batch):
            ids, labels = [], []
            for prompt, choices, lab in zip(batch[cols["prompt"]], batch["choices"], batch[cols["label"]]):
                seq, n_prompt = self._pair(prompt, " " + str(choices[int(lab)]), add_eos=True)
                ids.append(seq)
                labels.append([-100] * n_prompt + seq[n_prompt:])
            return {"input_ids": ids, "labels": labels}

        return ds.map(fn, batched=True, remove_columns=ds.column_names, desc="tokenizing")

    def collator(self):
        import torch

        pad = self.tokenizer.pad_token_id

        def collate(rows):
            n = max(len(r["input_ids"]) for r in rows)
            ids = torch.full((len(rows), n), pad, dtype=torch.long)
            labels = torch.full((len(rows), n), -100, dtype=torch.long)
            mask = torch.zeros((len(rows), n), dtype=torch.long)
            for i, r in enumerate(rows):
                k = len(r["input_ids"])
                ids[i, :k] = torch.tensor(r["input_ids"])
                labels[i, :k] = torch.tensor(r["labels"])
                mask[i, :k] = 1
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}

        return collate

    compute_metrics = None

    def evaluate(self, trainer, eval_ds, batch_size: int | None = None) -> dict:
        """acc: argmax of the summed answer log-likelihood; acc_norm: the same divided by the answer's characters."""
        import torch

        model = trainer.model
        bs = batch_size or trainer.args.per_device_eval_batch_size
        cols = self.columns
        items = []  # (question index, choice index, ids, n_prompt, n_chars)
        labels, sources = [], []
        for qi, row in enumerate(eval_ds):
            labels.append(int(row[cols["label"]]))
            sources.append(row.get("source"))
            for ci, choice in enumerate(row["choices"]):
                cont = " " + str(choice)
                seq, n_prompt = self._pair(row[cols["prompt"]], cont, add_eos=False)
                items.append((qi, ci, seq, n_prompt, len(cont)))
        order = sorted(range(len(items)), key=lambda i: -len(items[i][2]))
        scores = {}
        was_training = model.training
        model.eval()
        device = next(p.device for p in model.parameters())
        pad = self.tokenizer.pad_token_id
        with torch.no_grad():
            for start in range(0, len(order), bs):
                chunk = [items[i] for i in order[start:start + bs]]
                n = max(len(it[2]) for it in chunk)
                ids = torch.full((len(chunk), n), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), n), dtype=torch.long)
                for j, it in enumerate(chunk):
                    ids[j, : len(it[2])] = torch.tensor(it[2])
                    mask[j, : len(it[2])] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                tgt = ids[:, 1:].to(device)
                tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                for j, (qi, ci, seq, n_prompt, n_chars) in enumerate(chunk):
                    ll = float(tok_lp[j, n_prompt - 1: len(seq) - 1].sum())
                    scores[(qi, ci)] = (ll, ll / max(n_chars, 1))
        model.train(was_training)
        n_choices = {}
        for qi, ci, *_ in items:
            n_choices[qi] = max(n_choices.get(qi, 0), ci + 1)
        pred = [max(range(n_choices[q]), key=lambda c: scores[(q, c)][0]) for q in range(len(labels))]
        pred_norm = [max(range(n_choices[q]), key=lambda c: scores[(q, c)][1]) for q in range(len(labels))]
        out = {"accuracy": accuracy(pred, labels), "acc_norm": accuracy(pred_norm, labels)}
        if any(s is not None for s in sources) and len(set(sources)) > 1:
            for s in sorted(set(sources)):
                idx = [i for i, x in enumerate(sources) if x == s]
                out[f"accuracy_{s}"] = accuracy([pred[i] for i in idx], [labels[i] for i in idx])
        return out


_TASK_CLS = {"seq_cls": _TextTask, "causal_lm_mc": _MCTask, "image_cls": _ImageTask}


def prepare(cfg: dict) -> dict:
    """Resolve the model, load/split/check the data and build the task: everything that can fail on bad input,
    done before any model weights are loaded or trained."""
    from datasets import concatenate_datasets

    model_path = resolve_model(cfg["model"])
    data_cfg = cfg["data"]
    names = data_cfg["dataset"] if isinstance(data_cfg["dataset"], list) else [data_cfg["dataset"]]
    trains, evals, columns = [], [], None
    for name in names:
        raw = _load_raw(str(name), data_cfg)
        train, evl = split_dataset(raw, str(name), data_cfg)
        cols = _check_columns(train, cfg["task"], data_cfg, str(name))
        _check_columns(evl, cfg["task"], data_cfg, str(name))
        if columns is not None and cols != columns:
            raise ConfigError(f"datasets {names} have different column layouts; list only datasets of the same format")
        columns = cols
        if len(names) > 1:
            keep = [columns["prompt"], "choices", columns["label"]] if cfg["task"] == "causal_lm_mc" else None
            if keep is None:
                raise ConfigError("a list of datasets is only supported for task causal_lm_mc")
            train = train.select_columns(keep).add_column("source", [str(name)] * len(train))
            evl = evl.select_columns(keep).add_column("source", [str(name)] * len(evl))
        trains.append(train)
        evals.append(evl)
    train = concatenate_datasets(trains).shuffle(seed=int(data_cfg.get("seed", 0))) if len(trains) > 1 else trains[0]
    evl = concatenate_datasets(evals) if len(evals) > 1 else evals[0]
    num_labels, label_names = (None, None)
    if cfg["task"] != "causal_lm_mc":
        num_labels, label_names = _num_labels(train, evl, label=columns["label"])
    task = _TASK_CLS[cfg["task"]](model_path, data_cfg, columns, num_labels, label_names)
    return {"model_path": model_path, "train": train, "eval": evl, "task": task, "columns": columns}


# --------------------------------------------------------------------------------------------------------------
# methods


def _task_type(task: str):
    return {"seq_cls": "SEQ_CLS", "causal_lm_mc": "CAUSAL_LM", "image_cls": None}[task]


def _with_head(kwargs: dict, task: str, model) -> dict:
    if task == "image_cls":
        heads = [n for n, _ in model.named_children() if n in HEAD_NAMES]
        kwargs["modules_to_save"] = list(dict.fromkeys([*(kwargs.get("modules_to_save") or []), *heads]))
    return kwargs


def build_peft_config(name: str, params: dict, task: str, model):
    cls = _peft_config_cls(name)
    kwargs = _with_head(dict(params), task, model)
    try:
        return cls(task_type=_task_type(task), **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {cls.__name__} hyper-parameters {kwargs}: {str(e).splitlines()[0]}") from None


def apply_method(model, method: dict, task: str):
    """Wrap/freeze ``model`` for a non-LoFiT method; returns the model to train."""
    name = method["name"]
    if name in PEFT_METHODS:
        from peft import get_peft_model

        import peft_gift  # noqa: F401 - registers GIFT/LoFiT with PEFT

        params = {k: v for k, v in method.items() if k != "name"}
        if name == "lofit":
            params.setdefault("mode", "scale")
        try:
            return get_peft_model(model, build_peft_config(name, params, task, model))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"method {name} cannot be applied to this model: {str(e).splitlines()[0]}") from None
    if name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    heads = [m for n, m in model.named_children() if n in HEAD_NAMES]
    if task == "causal_lm_mc" and name == "linear_probe":
        raise ConfigError("linear_probe needs a classification head; use it with seq_cls or image_cls")
    for n, p in model.named_parameters():
        p.requires_grad_(name == "bitfit" and n.endswith(".bias"))
    for h in heads:
        for p in h.parameters():
            p.requires_grad_(True)
    return model


def param_counts(model) -> dict:
    total = trainable = head = 0
    seen = set()
    for n, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            if any(f".{h}." in f".{n}." for h in HEAD_NAMES):
                head += p.numel()
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    return {"trainable_params": int(trainable), "head_params": int(head), "total_params": int(total)}


# --------------------------------------------------------------------------------------------------------------
# training


DEFAULT_TRAINING = dict(
    num_train_epochs=1, per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=1e-3,
    logging_steps=10, save_strategy="no", eval_strategy="no", report_to="none", dataloader_num_workers=0,
    disable_tqdm=False, remove_unused_columns=False,
)


def _defaults() -> dict:
    import torch

    return {**DEFAULT_TRAINING, "dataloader_pin_memory": torch.cuda.is_available()}


def _trainer(model, prep, training: dict, out: Path, seed: int, stage: str):
    from transformers import Trainer, TrainingArguments

    args = {**_defaults(), **training, "seed": seed}
    args.setdefault("data_seed", seed)
    args["output_dir"] = str(out / "trainer" / stage)
    try:
        targs = TrainingArguments(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid training arguments: {str(e).splitlines()[0]}") from None
    task = prep["task"]
    eval_ds = prep["eval_enc"] if targs.eval_strategy != "no" and task.compute_metrics else None
    return Trainer(
        model=model, args=targs, train_dataset=prep["train_enc"], eval_dataset=eval_ds, data_collator=task.collator(),
        compute_metrics=task.compute_metrics,
    )


def _evaluate(model, prep, training: dict, out: Path, seed: int) -> dict:
    trainer = _trainer(model, prep, training, out, seed, "eval")
    return prep["task"].evaluate(trainer, prep["eval"] if isinstance(prep["task"], _MCTask) else prep["eval_enc"])


def _train(model, prep, training: dict, out: Path, seed: int, stage: str) -> float:
    trainer = _trainer(model, prep, training, out, seed, stage)
    t0 = time.time()
    trainer.train()
    return time.time() - t0


def run(cfg: dict, output_dir: str | None = None, push_to_hub: str | None = None, log=print) -> dict:
    from .hub import plugin_peft_types, write_model_card
    from .hub import push_to_hub as peft_gift_push_to_hub

    """Run one job from a validated config; write the adapter/model and results.json; return the results dict."""
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    t_start = time.time()
    cfg = validate_config(cfg)
    out = Path(output_dir or cfg["output_dir"])
    cfg["output_dir"] = str(out)
    seed = int(cfg["seed"])
    method = cfg["method"]
    if method["name"] in ("gift", "lofit"):
        try:
            import peft_gift  # noqa: F401
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"method {method['name']} needs peft_gift importable ({e})") from None
    set_seed(seed)
    prep = prepare(cfg)
    task = prep["task"]
    prep["train_enc"] = task.encode(prep["train"])
    prep["eval_enc"] = task.encode(prep["eval"])
    log(f"model {cfg['model']} -> {prep['model_path']}; train {len(prep['train'])}, eval {len(prep['eval'])} examples")
    hf_logging.set_verbosity_error()  # "newly initialized head" warnings etc.; the table below states the setup
    out.mkdir(parents=True, exist_ok=True)
    training = cfg["training"]

    set_seed(seed)
    model = task.load_model()
    log("evaluating the untrained model ...")
    before = _evaluate(model, prep, training, out, seed)
    log(f"before: {before}")
    results: dict[str, Any] = {"model": cfg["model"], "model_path": prep["model_path"], "task": cfg["task"],
                               "method": method["name"], "dataset": cfg["data"]["dataset"],
                               "train_examples": len(prep["train"]), "eval_examples": len(prep["eval"]),
                               "metric": task.metric, "before": before}
    if method["name"] == "lofit":
        model, stages = _run_lofit(model, prep, cfg, out, seed, log)
        results["stages"] = stages
        train_time = sum(s["train_time_s"] for s in stages.values())
    else:
        model = apply_method(model, method, cfg["task"])
        results.update(param_counts(model))
        log(f"trainable parameters: {results['trainable_params']:,} (head {results['head_params']:,}) "
            f"of {results['total_params']:,}")
        train_time = _train(model, prep, training, out, seed, "train")
    results.update({k: v for k, v in param_counts(model).items()})
    results["train_time_s"] = round(train_time, 1)
    log("evaluating the fine-tuned model ...")
    results["after"] = _evaluate(model, prep, training, out, seed)
    log(f"after: {results['after']}")

    is_peft = method["name"] in PEFT_METHODS
    save_dir = out / ("adapter" if is_peft else "model")
    model.save_pretrained(str(save_dir))
    plugin_adapter = bool(plugin_peft_types(model))
    if plugin_adapter:
        write_model_card(model, str(save_dir))  # the card says how to load a GIFT / LoFiT adapter
    if task.tokenizer is not None and not is_peft:
        task.tokenizer.save_pretrained(str(save_dir))
    results["saved_to"] = str(save_dir)
    results["wall_time_s"] = round(time.time() - t_start, 1)
    results["machine"] = describe_machine(machine_info())
    results["config"] = cfg
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    log(markdown_table([results]))
    log(f"wrote {save_dir} and {out / 'results.json'}")
    if push_to_hub:
        try:
            peft_gift_push_to_hub(model, push_to_hub) if plugin_adapter else model.push_to_hub(push_to_hub)
            log(f"pushed to https://huggingface.co/{push_to_hub}")
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"push_to_hub({push_to_hub!r}) failed ({str(e).splitlines()[0][:160]}); the results are "
                              f"saved in {out}; log in with `hf auth login` and check network access") from None
    return results


def _run_lofit(model, prep, cfg, out: Path, seed: int, log):
    """Stage 1: scale adapters on every head + L1 → top-K heads by ||A||; stage 2: offsets on those heads, trained
    from the base model."""
    from transformers import set_seed

    import peft_gift
    from peft import get_peft_model

    method, task_name = cfg["method"], cfg["task"]
    stage1_params = {"l1_lambda": 1e-3, "init_std": 1e-3, **(method.get("stage1") or {}), "mode": "scale"}
    cfg1 = build_peft_config("lofit", stage1_params, task_name, model)
    m1 = get_peft_model(model, cfg1)
    c1 = param_counts(m1)
    log(f"LoFiT stage 1 (scale, L1 {cfg1.l1_lambda}): {c1['trainable_params']:,} trainable parameters")
    t1 = _train(m1, prep, {**cfg["training"], **(method.get("stage1_training") or {})}, out, seed, "stage1")
    try:
        heads = peft_gift.select_heads(m1, k=method.get("k"), fraction=method.get("fraction"))
    except ValueError as e:
        raise ConfigError(f"LoFiT head selection failed: {e}") from None
    log(f"LoFiT selected {len(heads)} heads: {heads}")
    m1.save_pretrained(out / "stage1_adapter")  # the scales behind the selection (head maps, re-selection)
    cfg2 = peft_gift.lofit_stage2_config(cfg1, heads, **(method.get("stage2") or {}))
    del m1, model
    set_seed(seed)
    base = prep["task"].load_model()
    m2 = get_peft_model(base, cfg2)
    c2 = param_counts(m2)
    log(f"LoFiT stage 2 (bias on {len(heads)} heads): {c2['trainable_params']:,} trainable parameters")
    t2 = _train(m2, prep, {**cfg["training"], **(method.get("stage2_training") or {})}, out, seed, "stage2")
    stages = {
        "stage1": {**c1, "train_time_s": round(t1, 1), "l1_lambda": cfg1.l1_lambda},
        "stage2": {**c2, "train_time_s": round(t2, 1), "heads": [list(h) for h in heads]},
    }
    return m2, stages


def machine_info() -> dict:
    """What a measurement ran on: CPU model, cores, torch threads, device and library versions."""
    import platform

    import peft
    import torch
    import transformers

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    device = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    return {"device": device, "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(), "os": f"{platform.system()} {platform.machine()}"}


def describe_machine(info: dict) -> str:
    return (f"{info['device']} ({info['cpu']}), {info['cores']} cores, {info['torch_threads']} torch thread(s), "
            f"torch {info['torch']}, {info['os']}")


def _fmt(v) -> str:
    return "—" if v is None else (f"{100 * v:.1f}%" if isinstance(v, float) and not math.isnan(v) else str(v))


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | dataset (train/eval) | method | trainable params (head) | metric | before | after | "
            "train time | wall time |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        ds = r["dataset"] if isinstance(r["dataset"], str) else "+".join(map(str, r["dataset"]))
        m = r["metric"]
        lines.append(
            f"| {r['model']} | {ds} ({r['train_examples']}/{r['eval_examples']}) | {r['method']} | "
            f"{r['trainable_params']:,} ({r['head_params']:,}) | {m} | {_fmt(r['before'].get(m))} | "
            f"{_fmt(r['after'].get(m))} | {r['train_time_s']:.0f} s | {r['wall_time_s']:.0f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="train.py", description="Fine-tune a model with GIFT / LoFiT / LoRA / ... "
                                "from a YAML config and write the adapter and results.json.")
    p.add_argument("config", help="YAML config, e.g. configs/gift_minilm_sst2.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set training.num_train_epochs=3 --set method.r=32")
    p.add_argument("--output-dir", default=None, help="where to write (default: outputs/<config name>)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="push the adapter (peft_gift.push_to_hub for GIFT/LoFiT, else PEFT's push_to_hub)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        run(cfg, output_dir=args.output_dir, push_to_hub=args.push_to_hub)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
