"""The code in the cards the training CLI writes runs as written: for every task (seq_cls with string or integer labels
and any number of classes, image_cls, causal LM), PEFT adapters with and without the plugin, a saved whole model and
the LoRA export, the card's Python block is executed with its Hub ids replaced by the local folders they stand for;
the model it builds must give the metrics results.json reports and name the job's classes.
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from tiny_models import save_checkpoint, tiny_bert, tiny_llama, tiny_vit, word_tokenizer

from peft_gift import recipes
from peft_gift.recipes import cli
from peft_gift.recipes.card_code import HERE, IMAGE_FILE

WORDS = ["good", "bad", "fine", "movie", "film", "plot", "the", "a", "was", "is", "very", "red", "blue", "green", "sky",
         "grass", "what", "color", "of", "Question", "Answer", ":", "?", "\n"]
TRAIN = {"num_train_epochs": 2, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
         "learning_rate": 1e-2, "logging_steps": 100, "disable_tqdm": True}
HUB = {"bert": "tiny-org/tiny-bert", "llama": "tiny-org/tiny-llama", "llama_nopad": "tiny-org/tiny-llama-nopad",
       "vit": "tiny-org/tiny-vit"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("card_code")
    save_checkpoint(tiny_bert(vocab_size=64, max_position_embeddings=64), d / "bert", WORDS, "bert")  # a 2-class head
    save_checkpoint(tiny_llama(vocab_size=64), d / "llama", WORDS)
    tiny_llama(vocab_size=64).save_pretrained(d / "llama_nopad")
    tok = word_tokenizer(WORDS)
    tok.pad_token = None  # as many decoder tokenizers: the job pads with the end-of-text token
    tok.save_pretrained(d / "llama_nopad")
    tiny_vit().save_pretrained(d / "vit")
    rng = np.random.default_rng(0)
    names = ["bad", "fine", "good"]
    rows = [(int(y), " ".join([names[y], *rng.choice(WORDS[3:11], size=3)])) for y in rng.integers(0, 3, size=45)]
    (d / "three.csv").write_text("text,label\n" + "".join(f"{t},{names[y]}\n" for y, t in rows))
    (d / "ids.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for y, t in rows))
    (d / "pairs.csv").write_text("premise,hypothesis,label\n" + "".join(f"{t},{t[::-1]},{names[y]}\n" for y, t in rows))

    def images(n):
        labels = [int(x) for x in rng.integers(0, 3, size=n)]
        arrays = [rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8) for _ in labels]
        for y, arr in zip(labels, arrays):
            arr[..., y] += 150
        from PIL import Image as PILImage

        return Dataset.from_dict({"image": [PILImage.fromarray(a) for a in arrays], "label": labels},
                                 features=Features({"image": Image(), "label": ClassLabel(names=["r", "g", "b"])}))

    DatasetDict({"train": images(24), "test": images(12)}).save_to_disk(d / "img")
    mc = [{"prompt": f"Question: what color of {t}?\nAnswer:", "choices": ["red", "blue", "green"], "label": y}
          for t, y in [("sky", 1), ("grass", 2)] * 8]
    DatasetDict({"train": Dataset.from_list(mc), "validation": Dataset.from_list(mc[:6])}).save_to_disk(d / "mc")
    return d


def _job(files, model, task, dataset, method, **data):
    return {"model": str(files / model), "task": task, "method": method, "card": {"base_model": HUB[model]},
            "data": {"dataset": str(files / dataset), "max_length": 32, **data}, "training": dict(TRAIN)}


GIFT_BERT = {"name": "gift", "r": 4, "target_modules": ["query", "value"]}
JOBS = {
    "seq_cls, 3 string labels, gift": ("bert", "seq_cls", "three.csv", GIFT_BERT, {"text_columns": "text"}),
    "seq_cls, 3 integer labels, no pad token, lora": (
        "llama_nopad", "seq_cls", "ids.jsonl", {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
        {"text_columns": "text"}),
    "seq_cls, two text columns, full model": ("bert", "seq_cls", "pairs.csv", {"name": "full"}, {}),
    "image_cls, gift": ("vit", "image_cls", "img", {"name": "gift", "r": 4, "target_modules": ["o_proj"]},
                        {"train_split": "train", "eval_split": "test"}),
    "causal_lm_mc, lofit": ("llama", "causal_lm_mc", "mc", {"name": "lofit", "heads": [[0, 1], [1, 2]]}, {}),
}


def _python_block(readme: str) -> str:
    return readme.split("```python\n", 1)[1].split("```", 1)[0]


def _run_block(code: str, replace: dict, tmp_path, monkeypatch) -> tuple[dict, str]:
    """Execute a card's code block with its Hub ids / placeholder replaced by local folders; (namespace, stdout)."""
    for hub_id, local in replace.items():
        code = code.replace(f'"{hub_id}"', json.dumps(str(local)))
    assert "tiny-org" not in code and HERE not in code, code
    monkeypatch.chdir(tmp_path)
    from PIL import Image as PILImage

    PILImage.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(tmp_path / IMAGE_FILE)
    namespace, printed = {}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "card", "exec"), namespace)  # noqa: S102 - the card's own code is what is tested
    return namespace, printed.getvalue()


def _assert_same_model(model, res):
    """``model`` gives the metrics the CLI reported, on the CLI's own evaluation split and code."""
    again = recipes.evaluate(model, recipes.prepare(res["config"]))
    assert again["accuracy"] == pytest.approx(res["after"]["accuracy"])
    if "loss" in again:
        assert again["loss"] == pytest.approx(res["after"]["loss"], rel=1e-4)


@pytest.mark.parametrize("case", list(JOBS))
def test_the_card_code_runs_as_written_and_gives_the_reported_model(files, tmp_path, monkeypatch, case):
    model, task, dataset, method, data = JOBS[case]
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(files, model, task, dataset, method, **data)))
    out = tmp_path / "out"
    assert cli.main([str(job), "--output-dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    saved = out / ("model" if method["name"] == "full" else "adapter")
    code = _python_block((saved / "README.md").read_text())
    assert ("import peft_gift" in code) == (method["name"] in ("gift", "lofit"))
    namespace, printed = _run_block(code, {HUB[model]: files / model, HERE: saved}, tmp_path, monkeypatch)
    _assert_same_model(namespace["model"], res)
    if task == "causal_lm_mc":
        assert namespace["output"].shape[0] == 1  # it generated an answer
        return
    n = res["num_labels"]
    names = res["labels"] or [f"LABEL_{i}" for i in range(n)]
    assert namespace["model"].config.id2label == dict(enumerate(names))
    assert namespace["model"].config.label2id == {name: i for i, name in enumerate(names)}
    predicted = eval(printed.strip().splitlines()[-1])  # noqa: S307 - the list of label names the card printed
    assert len(predicted) == 1 and predicted[0] in names


def test_the_lora_export_card_code_runs_without_the_plugin(files, tmp_path, monkeypatch):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(files, "bert", "seq_cls", "three.csv", GIFT_BERT, text_columns="text")))
    out = tmp_path / "out"
    assert cli.main([str(job), "--output-dir", str(out), "--export-lora"]) == 0
    res = json.loads((out / "results.json").read_text())
    code = _python_block((out / "lora_export" / "README.md").read_text())
    assert "peft_gift" not in code
    namespace, _ = _run_block(code, {HUB["bert"]: files / "bert", HERE: out / "lora_export"}, tmp_path, monkeypatch)
    assert namespace["model"].peft_config["default"].peft_type.value == "LORA"
    assert namespace["model"].config.id2label == {0: "bad", 1: "fine", 2: "good"}
    _assert_same_model(namespace["model"], res)


def test_install_lines_name_the_repository_from_the_package_metadata(monkeypatch):
    """The card's install line reads the repository from the installed package's metadata ([project.urls]); without
    one it says how to install from a clone or a wheel."""
    from importlib import metadata

    from peft_gift import hub

    class Meta:
        def __init__(self, urls):
            self.urls = urls

        def get_all(self, key):
            return self.urls if key == "Project-URL" else None

    monkeypatch.setattr(metadata, "metadata", lambda name: Meta(["Repository, https://example.org/peft-gift"]))
    assert hub.install_instructions() == ['pip install "peft-gift @ git+https://example.org/peft-gift"']
    monkeypatch.setattr(metadata, "metadata", lambda name: Meta([]))
    assert any(re.search(r"clone", line) for line in hub.install_instructions())
