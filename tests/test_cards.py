"""What the training CLI publishes: cards, adapter_config.json and results.json's "card" name no path of this machine,
carry the run's facts as a model-index the Hub parses, and `--export-lora` writes an equal plain PEFT LoRA adapter.

Tiny random BERT / Llama and synthetic data in tmp_path; the base model gets a Hub id through `card.base_model`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from tiny_models import save_checkpoint, tiny_bert, tiny_llama, word_tokenizer

from peft_gift import recipes
from peft_gift.recipes import assets, cli

WORDS = ["good", "bad", "movie", "film", "plot", "the", "a", "was", "is", "very", "red", "blue", "green", "sky",
         "grass", "what", "color", "of", "Question", "Answer", ":", "?", "\n"]
TRAIN = {"num_train_epochs": 2, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
         "learning_rate": 1e-2, "logging_steps": 100, "disable_tqdm": True}
HUB_ID = "tiny-org/tiny-bert"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cards")
    save_checkpoint(tiny_bert(vocab_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0), d / "bert", WORDS, "bert")
    save_checkpoint(tiny_llama(vocab_size=64), d / "llama", WORDS)
    rng = np.random.default_rng(0)

    def split(n):
        labels = [int(x) for x in rng.integers(0, 2, size=n)]
        text = [" ".join(["good" if y else "bad", *rng.choice(WORDS[2:10], size=3)]) for y in labels]
        return Dataset.from_dict({"sentence": text, "label": labels}, features=Features(
            {"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos"])}))

    DatasetDict({"train": split(32), "validation": split(16)}).save_to_disk(d / "sst_tiny")
    rows = [{"prompt": f"Question: what color of {t}?\nAnswer:", "choices": ["red", "blue", "green"], "label": y}
            for t, y in [("sky", 1), ("grass", 2)] * 8]
    DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows[:6])}).save_to_disk(d / "mc")
    return d


def _cfg(files, method, **extra):
    return {"model": str(files / "bert"), "task": "seq_cls", "method": method,
            "data": {"dataset": str(files / "sst_tiny"), "max_length": 16}, "training": dict(TRAIN), **extra}


def _run(tmp_path, cfg, *argv):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert cli.main([str(path), "--output-dir", str(out), *argv]) == 0
    return out, json.loads((out / "results.json").read_text())


def _local_paths(text: str, roots) -> list[str]:
    return [r for r in roots if r in text]


def test_cli_outputs_name_no_local_path_and_carry_a_parsable_model_index(files, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard, metadata_load

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _cfg(files, {"name": "gift", "r": 4, "target_modules": ["query", "value"]}, card={"base_model": HUB_ID})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, res = _run(tmp_path, cfg)
    # offline, saving asks the Hub nothing (PEFT's default would look up whether the base vocabulary was resized)
    assert not [str(w.message) for w in caught if HUB_ID in str(w.message)]
    umask = os.umask(0)
    os.umask(umask)  # the saved files get the mode of any new file (safetensors alone writes 0600)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in (out / "adapter").iterdir()} == {
        f.name: oct(0o666 & ~umask) for f in (out / "adapter").iterdir()}
    roots = [str(files), str(tmp_path), str(Path.home()), "site-packages", "/tmp/"]
    readme = (out / "adapter" / "README.md").read_text()
    adapter_config = (out / "adapter" / "adapter_config.json").read_text()
    published = json.dumps(res["card"])
    for name, text in (("README.md", readme), ("adapter_config.json", adapter_config), ("results card", published)):
        assert not _local_paths(text, roots), (name, _local_paths(text, roots))
    assert json.loads(adapter_config)["base_model_name_or_path"] == HUB_ID

    meta = metadata_load(out / "adapter" / "README.md")
    assert meta["base_model"] == HUB_ID and f"base_model:adapter:{HUB_ID}" in meta["tags"]
    assert {"peft", "gift"} <= set(meta["tags"]) and meta["library_name"] == "peft"
    card = ModelCard.load(out / "adapter" / "README.md")
    found = {(r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert found[("accuracy", "accuracy (after fine-tuning)")] == pytest.approx(res["after"]["accuracy"])
    assert found[("accuracy", "accuracy (before fine-tuning)")] == pytest.approx(res["before"]["accuracy"])
    assert {r.task_type for r in card.data.eval_results} == {"text-classification"}
    assert {r.dataset_name for r in card.data.eval_results} == {"sst_tiny"}  # a local dataset: its file name only
    # the card says what the CLI knew: task, data, settings, trainable parameters, command, and how to load
    for fact in ("`seq_cls`", "32 training / 16 evaluation examples", "`gift` (r=4", f"{res['trainable_params']:,} of",
                 "0 = `neg`, 1 = `pos`", "python scripts/train.py job.yaml", "## How to load this adapter",
                 "AutoModelForSequenceClassification.from_pretrained(", f'"{HUB_ID}", num_labels=len(id2label)'):
        assert fact in readme, fact
    job = yaml.safe_load(readme.split("```yaml\n", 1)[1].split("```", 1)[0])  # the card's runnable job config
    assert job["model"] == HUB_ID and job["method"] == cfg["method"] and "output_dir" not in job


def test_local_model_without_hub_id_gets_a_placeholder_and_cannot_be_pushed(files, tmp_path, capsys):
    out, res = _run(tmp_path, _cfg(files, {"name": "gift", "r": 2, "target_modules": ["query"]}))
    readme = (out / "adapter" / "README.md").read_text()
    assert str(files) not in readme and "<base model Hub id>" in readme
    assert res["card"]["base_model"] is None and "card.base_model" in capsys.readouterr().out
    path = tmp_path / "job.yaml"
    rc = cli.main([str(path), "--output-dir", str(tmp_path / "pushed"), "--push-to-hub", "me/adapter"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "card.base_model" in err[-1] and not (tmp_path / "pushed").exists()


def test_assets_know_the_hub_model_they_copy():
    from peft_gift.recipes.data import published_model

    for key, asset in assets.MODELS.items():
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", asset.hub_id), key
        assert published_model({"model": key}) == (asset.hub_id, asset.copy)
    assert assets.MODELS["minilm-l6"].hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert assets.MODELS["smollm2-135m"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "Q4_1" in assets.MODELS["smollm2-135m"].copy and "not bit-identical" in assets.MODELS["dinov2-s14"].copy
    assert published_model({"model": "minilm-l6", "card": {"base_model": "me/my-copy"}}) == ("me/my-copy", None)
    assert published_model({"model": "org/some-model"}) == ("org/some-model", None)


@pytest.mark.parametrize("card, message", [
    ({"base_model": "/home/me/models/bert"}, "card.base_model must be a Hugging Face Hub id"),
    ({"base_model": "not a hub id"}, "card.base_model must be a Hugging Face Hub id"),
    ({"base_model": 3}, "card.base_model must be a Hugging Face Hub id"),
    ({"basemodel": "org/x"}, "did you mean base_model"),
    ("org/x", "'card' must be a mapping"),
])
def test_card_section_is_validated(files, card, message):
    with pytest.raises(recipes.ConfigError, match=re.escape(message)):
        recipes.validate_config(_cfg(files, "gift", card=card))


def _logits(model, files, task):
    tok = word_tokenizer(WORDS, "bert" if task == "seq_cls" else "llama")
    batch = tok(["good movie was very", "the plot is bad"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.eval()(**batch).logits


@pytest.mark.parametrize("task", ["seq_cls", "causal_lm_mc"])
def test_export_lora_flag_writes_an_equal_plain_lora_adapter(files, tmp_path, monkeypatch, task):
    """GIFT (seq_cls, with the trained head in modules_to_save) and LoFiT stage 2 (offsets as lora_bias): the export
    loads as a plain PEFT LoRA adapter and gives the trained adapter's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if task == "seq_cls":
        cfg = _cfg(files, {"name": "gift", "r": 4, "target_modules": ["query", "value"]}, card={"base_model": HUB_ID})
        load = lambda: AutoModelForSequenceClassification.from_pretrained(str(files / "bert"), num_labels=2)  # noqa: E731
    else:
        cfg = {"model": str(files / "llama"), "task": "causal_lm_mc", "card": {"base_model": "tiny-org/tiny-llama"},
               "method": {"name": "lofit", "heads": [[0, 1], [1, 2]], "stage2": {"init_std": 0.1}},
               "data": {"dataset": str(files / "mc"), "max_length": 32}, "training": dict(TRAIN)}
        load = lambda: AutoModelForCausalLM.from_pretrained(str(files / "llama"))  # noqa: E731
    out, res = _run(tmp_path, cfg, "--export-lora")
    export = out / "lora_export"
    assert res["lora_export"] == str(export)
    saved = json.loads((export / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["base_model_name_or_path"] == cfg["card"]["base_model"]
    trained = PeftModel.from_pretrained(load(), str(out / "adapter"))
    lora = PeftModel.from_pretrained(load(), str(export))
    assert lora.peft_config["default"].peft_type.value == "LORA"
    torch.testing.assert_close(_logits(lora, files, task), _logits(trained, files, task), atol=1e-5, rtol=0)
    readme = (export / "README.md").read_text()
    assert "plain PEFT LoRA adapter" in readme and "peft_gift" not in readme.split("```python", 1)[1].split("```")[0]
    assert str(files) not in readme and str(tmp_path) not in readme


@pytest.mark.parametrize("method", ["lora", "full"])
def test_export_lora_flag_is_refused_for_methods_without_a_lora_form(files, tmp_path, capsys, method, monkeypatch):
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("loaded")))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_cfg(files, {"name": method})))
    rc = cli.main([str(path), "--output-dir", str(tmp_path / "out"), "--export-lora"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: --export-lora:") and f"{method!r}" in err[-1], err
    assert not (tmp_path / "out").exists()


def test_a_failed_push_is_not_a_config_error_and_keeps_the_outputs(files, tmp_path, capsys, monkeypatch):
    """The run finished and wrote everything; only the upload failed (no network here): exit 1 with one line saying
    so, not the config-error exit 2 (it was reported as a ConfigError)."""
    import peft_gift.hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(peft_gift.hub, "push_to_hub", offline)
    cfg = _cfg(files, {"name": "gift", "r": 2, "target_modules": ["query"]}, card={"base_model": HUB_ID})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = cli.main([str(path), "--output-dir", str(tmp_path / "out"), "--push-to-hub", "me/adapter"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and "push_to_hub('me/adapter') failed (no network)" in err[-1] and "hf auth login" in err[-1]
    assert (tmp_path / "out" / "results.json").exists() and (tmp_path / "out" / "adapter").is_dir()
