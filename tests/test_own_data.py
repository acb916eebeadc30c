"""Your own data with a copied shipped config: a CSV / JSONL with string labels and one split trains, and every
numeric and boolean setting is checked before any model weights are loaded (one-line error naming the key).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from datasets import Dataset, DatasetDict
from tiny_models import save_checkpoint, tiny_bert, tiny_llama

from peft_gift import recipes
from peft_gift.recipes import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["good", "bad", "movie", "film", "plot", "the", "a", "was", "is", "very", "red", "blue", "green", "sky",
         "what", "color", "of", "Question", "Answer", ":", "?", "\n"]
FAST = {"num_train_epochs": 1, "per_device_train_batch_size": 8, "logging_steps": 100, "disable_tqdm": True,
        "warmup_steps": 0}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("own_data")
    save_checkpoint(tiny_bert(vocab_size=64, max_position_embeddings=64), d / "bert", WORDS, "bert")
    save_checkpoint(tiny_llama(vocab_size=64), d / "llama", WORDS)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):
        y = bool(rng.integers(0, 2))
        rows.append({"text": " ".join(["good" if y else "bad", *rng.choice(WORDS[2:10], size=3)]),
                     "sentiment": "positive" if y else "negative"})
    with open(d / "reviews.csv", "w") as f:
        f.write("text,sentiment\n" + "".join(f"{r['text']},{r['sentiment']}\n" for r in rows))
    with open(d / "reviews.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    DatasetDict({"train": Dataset.from_list(rows[:30]), "test": Dataset.from_list(rows[30:])}).save_to_disk(d / "two")
    mixed = [{"text": r["text"], "sentiment": r["sentiment"] if i % 2 else i} for i, r in enumerate(rows)]
    with open(d / "mixed.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in mixed))
    mc = [{"prompt": "Question: what color of sky?\nAnswer:", "choices": ["red", "blue"], "label": 1}] * 12
    DatasetDict({"train": Dataset.from_list(mc), "validation": Dataset.from_list(mc[:4])}).save_to_disk(d / "mc")
    return d


def _copied_shipped_config(files, dataset: str) -> dict:
    """configs/gift_minilm_sst2.yaml as a user copies it: own model and data file, sizes dropped, split names kept
    (train_split: validation, eval_split: validation — a single data file has only split 'train')."""
    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "gift_minilm_sst2.yaml")))
    cfg["model"] = str(files / "bert")
    cfg["method"]["r"] = 4
    cfg["data"].update(dataset=str(files / dataset), text_columns="text", label_column="sentiment", max_length=16)
    del cfg["data"]["train_size"], cfg["data"]["eval_size"]
    cfg["training"].update(FAST)
    return cfg


def _write(tmp_path, cfg) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("dataset", ["reviews.csv", "reviews.jsonl"])
def test_string_labels_and_a_single_split_train_with_a_copied_config(files, tmp_path, capsys, dataset):
    cfg = _copied_shipped_config(files, dataset)
    out = tmp_path / "out"
    assert cli.main([_write(tmp_path, cfg), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["labels"] == ["negative", "positive"] and res["card"]["labels"] == ["negative", "positive"]
    assert res["train_examples"] == 32 and res["eval_examples"] == 8  # 40 rows cut 80/20, seeded
    note = f"{dataset}: train and eval cut disjointly from its only split 'train' (it has no split 'validation')"
    assert res["split"] == [note + ": 32 train / 8 eval rows, shuffled with data.seed=0"] and note in printed
    assert res["optimizer_steps"] == 4 and 0 <= res["after"]["accuracy"] <= 1
    assert "0 = `negative`, 1 = `positive`" in (out / "adapter" / "README.md").read_text()
    model = recipes.prepare(res["config"]).load_model()  # what the CLI trained: label names in the model config
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}


def test_single_split_is_cut_the_same_way_every_time(files):
    cfg = _copied_shipped_config(files, "reviews.csv")
    a, b = recipes.prepare(cfg), recipes.prepare(cfg)
    assert a.train["text"] == b.train["text"] and a.eval["text"] == b.eval["text"]
    assert (len(a.train), len(a.eval)) == (32, 8)


@pytest.mark.parametrize("dataset, message", [
    ("two", "has no split 'validation' for train (data.train_split); available: train, test"),
    ("mixed.jsonl", "data.label_column 'sentiment' must hold class names (strings) or class ids (integers >= 0)"),
])
def test_data_errors_are_one_line(files, tmp_path, capsys, dataset, message):
    rc = cli.main([_write(tmp_path, _copied_shipped_config(files, dataset)), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and message in err[-1], err


def _rows(label=lambda i: "positive" if i % 2 else "negative", text=lambda i: f"good movie {i % 7}", n=40) -> str:
    return "text,sentiment\n" + "".join(f"{text(i)},{label(i)}\n" for i in range(n))


def _jsonl(label=lambda i: i % 2, text=lambda i: f"good movie {i % 7}", n=40) -> str:
    return "".join(json.dumps({"text": text(i), "sentiment": label(i)}) + "\n" for i in range(n))


# (file name, its content, extra data settings, the error): each was a traceback (or a wrong run) before
BAD_FILES = [
    ("empty.csv", "", {}, "data file '{path}' has no rows (nothing in it)"),
    ("header_only.csv", "text,sentiment\n", {}, "data file '{path}' has no rows (only a header line)"),
    ("empty.jsonl", "\n", {}, "data file '{path}' has no rows (nothing in it)"),
    ("null_text.csv", _rows() + ",positive\n", {},
     "data.text_columns: column 'text' of dataset '{path}' must hold text in every row used; found empty cells in 1"),
    ("null_text.jsonl", _jsonl(text=lambda i: None if i == 3 else "good film"), {}, "found empty cells in 1"),
    ("blank_text.jsonl", _jsonl(text=lambda i: "  " if i == 3 else "good film"), {}, "found empty cells in 1"),
    ("numbers.csv", _rows(text=lambda i: i), {}, "column 'text' of dataset '{path}' must hold text in every row used; "
     "found int values in"),
    ("mixed_text.jsonl", _jsonl(text=lambda i: 5 if i == 0 else "good film"), {}, "found int values in 1"),
    ("one_class.csv", _rows(label=lambda i: "positive"), {},
     "data.label_column 'sentiment' has a single class ('positive') in the rows used; a classifier needs at least 2"),
    ("one_id.jsonl", _jsonl(label=lambda i: 0), {}, "data.label_column 'sentiment' has a single class (0)"),
    ("huge_id.jsonl", _jsonl(label=lambda i: 10**12 if i == 5 else i % 2), {},
     "data.label_column 'sentiment' must hold class ids 0..N-1 with N at most the 40 rows of data"),
    ("sparse_id.jsonl", _jsonl(label=lambda i: 200000 if i == 5 else i % 2), {}, "found 0..200000"),
    ("reviews.csv", _rows(), {"train_size": 40},
     "data.train_size=40 leaves no rows to evaluate on: dataset '{path}' split 'train' has 40 rows"),
    ("reviews.csv", _rows(), {"train_size": 45}, "data.train_size=45 leaves no rows to evaluate on"),
]


@pytest.mark.parametrize("name, content, data, message", BAD_FILES,
                         ids=[f"{n}{'-' + str(d) if d else ''}" for n, _, d, _ in BAD_FILES])
def test_bad_data_files_fail_in_one_line_before_any_weights_load(files, tmp_path, capsys, monkeypatch, name, content,
                                                                  data, message):
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("weights loaded")))
    path = tmp_path / name
    path.write_text(content)
    cfg = _copied_shipped_config(files, "reviews.csv")
    cfg["data"].update(dataset=str(path), **data)
    out = tmp_path / "out"
    rc = cli.main([_write(tmp_path, cfg), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and message.format(path=path) in err[-1], err
    assert not out.exists()


BAD_VALUES = [
    ("training.num_train_epochs", -1, "training.num_train_epochs must be a finite number > 0, got -1"),
    ("training.learning_rate", -1, "training.learning_rate must be a finite number > 0"),
    ("training.per_device_train_batch_size", 0, "training.per_device_train_batch_size must be an integer >= 1"),
    ("training.max_steps", 0, "training.max_steps must be an integer -1 or >= 1"),
    ("training.gradient_accumulation_steps", 0, "training.gradient_accumulation_steps must be an integer >= 1"),
    ("training.warmup_steps", -5, "training.warmup_steps must be a finite number >= 0"),
    ("training.adam_beta2", 1.5, "training.adam_beta2 must be a finite number in [0, 1)"),
    ("training.weight_decay", -0.1, "training.weight_decay must be a finite number >= 0"),
    ("training.fp16", "yes", "training.fp16 must be true or false, got 'yes'"),
    ("data.max_length", 1, "data.max_length must be an integer >= 2"),
    ("data.train_size", 0, "data.train_size must be an integer >= 1"),
    ("seed", -1, "seed must be an integer >= 0"),
    ("method.r", 0, "invalid GiftConfig hyper-parameters"),
    ("method.linear_probe_first", "yes", "method.linear_probe_first must be true or false"),
    # infinity passes every comparison with a finite end: NaN training or an OverflowError after the model loaded
    ("training.learning_rate", float("inf"), "training.learning_rate must be a finite number > 0, got inf"),
    ("training.weight_decay", float("inf"), "training.weight_decay must be a finite number >= 0, got inf"),
    ("training.num_train_epochs", float("inf"), "training.num_train_epochs must be a finite number > 0, got inf"),
    ("training.warmup_steps", float("inf"), "training.warmup_steps must be a finite number >= 0, got inf"),
    ("training.max_grad_norm", float("nan"), "training.max_grad_norm must be a finite number >= 0, got nan"),
    ("data.text_columns", 5, "data.text_columns must be a string or a list of 1 to 2 strings, got 5 (int)"),
    ("data.text_columns", ["text", "text", "text"], "data.text_columns must be a string or a list of 1 to 2 strings"),
    ("data.label_column", "", "data.label_column must be a non-empty string, got ''"),
    ("training.report_to", "no_such_tracker", "training.report_to: 'no_such_tracker' is not a reporting integration"),
    ("training.report_to", "NOT_INSTALLED", "is not installed here; install it or use none"),
]
LOFIT_BAD = [
    ("method.k", 0, "method.k must be an integer >= 1"),
    ("method.k", 100, "method.k must be 1 <= k <= 8 (the model's heads: 2 layers x 4 heads), got 100"),
    ("method.fraction", 1.5, "method.fraction must be a finite number in (0, 1]"),
    ("method.heads", [[5, 0]], "method.heads: [5, 0] is not a head of this model"),
    ("method.stage2", {"init_std": -1.0}, "invalid method.stage2"),
    ("method.stage2_training", {"num_train_epochs": -1}, "method.stage2_training.num_train_epochs must be a finite number > 0"),
    ("quantization", {"load_in_4bit": "yes"}, "quantization.load_in_4bit must be true or false, got 'yes'"),
]


@pytest.mark.parametrize("key, value, message", BAD_VALUES + LOFIT_BAD,
                         ids=[f"{k}={v}" for k, v, _ in BAD_VALUES + LOFIT_BAD])
def test_bad_values_fail_before_any_weights_load(files, tmp_path, capsys, monkeypatch, key, value, message):
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("weights loaded")))
    if (key, value, message) in LOFIT_BAD:
        cfg = {"model": str(files / "llama"), "task": "causal_lm_mc", "method": {"name": "lofit", "k": 2},
               "data": {"dataset": str(files / "mc"), "max_length": 32}, "training": dict(FAST)}
        if key in ("method.fraction", "method.heads"):
            del cfg["method"]["k"]
    else:
        cfg = _copied_shipped_config(files, "reviews.csv")
    section, _, field = key.rpartition(".")
    if value == "NOT_INSTALLED":  # a reporting integration transformers knows but this environment lacks (wandb, ...)
        from transformers.integrations import integration_utils

        missing = sorted(set(integration_utils.INTEGRATION_TO_CALLBACK)
                         - set(integration_utils.get_available_reporting_integrations()))
        value = missing[0] if missing else pytest.skip("every reporting integration is installed")
    (cfg[section] if section else cfg)[field] = value
    out = tmp_path / "out"
    rc = cli.main([_write(tmp_path, cfg), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and message in err[-1], err
    assert not out.exists()
