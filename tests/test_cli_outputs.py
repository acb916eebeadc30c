"""The training CLI's output folder: an earlier run's outputs are refused (or replaced as a whole with --overwrite, so
that no older adapter, model or LoRA export is left beside the new one), and a path in the way of an output fails
before anything loads instead of after training.
"""

from __future__ import annotations

import json

import pytest
import yaml
from tiny_models import save_checkpoint, tiny_bert

from peft_gift.recipes import cli

WORDS = ["good", "bad", "movie", "film", "plot", "the", "a", "was", "is", "very"]
TRAIN = {"num_train_epochs": 1, "per_device_train_batch_size": 8, "logging_steps": 100, "disable_tqdm": True}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("outputs")
    save_checkpoint(tiny_bert(vocab_size=64, max_position_embeddings=64), d / "bert", WORDS, "bert")
    (d / "reviews.csv").write_text("text,label\n" + "".join(f"{'good' if i % 2 else 'bad'} movie {i % 5},"
                                                          f"{'pos' if i % 2 else 'neg'}\n" for i in range(30)))
    return d


def _job(files, tmp_path, method="lora") -> str:
    cfg = {"model": str(files / "bert"), "task": "seq_cls", "method": {"name": method, "r": 2, "target_modules": ["query"]},
           "data": {"dataset": str(files / "reviews.csv"), "text_columns": "text", "max_length": 16},
           "training": dict(TRAIN)}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _no_weights(monkeypatch):
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("weights loaded")))


def _earlier_run(out):
    """What an earlier GIFT run with --export-lora, and a full fine-tune before it, left in ``out``."""
    for folder in ("adapter", "lora_export", "model"):
        (out / folder).mkdir(parents=True)
        (out / folder / "adapter_config.json").write_text("{}")
    (out / "results.json").write_text(json.dumps({"method": "gift"}))


def test_an_earlier_run_is_refused_without_overwrite(files, tmp_path, capsys, monkeypatch):
    _no_weights(monkeypatch)
    out = tmp_path / "out"
    _earlier_run(out)
    rc = cli.main([_job(files, tmp_path), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == (
        f"error: output_dir {str(out)!r} holds the outputs of an earlier run (results.json, adapter/, model/, "
        "lora_export/); pass --overwrite to replace them (they are removed before training) or choose another "
        "--output-dir"), err
    assert json.loads((out / "results.json").read_text()) == {"method": "gift"}  # nothing touched


def test_overwrite_replaces_the_earlier_run_and_leaves_nothing_stale(files, tmp_path, capsys):
    out = tmp_path / "out"
    _earlier_run(out)
    (out / "job.yaml").write_text("kept: the folder's other files are not the job's")
    assert cli.main([_job(files, tmp_path), "--output-dir", str(out), "--overwrite"]) == 0
    assert "--overwrite: removed results.json, adapter, model, lora_export of an earlier run" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "lora" and results["saved_to"] == str(out / "adapter")
    assert not (out / "lora_export").exists() and not (out / "model").exists()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (out / "job.yaml").read_text().startswith("kept")


@pytest.mark.parametrize("name, make, kind", [
    ("adapter", lambda p: p.write_text("x"), "file"),
    ("lora_export", lambda p: p.write_text("x"), "file"),
    ("model", lambda p: p.write_text("x"), "file"),
    ("results.json", lambda p: p.mkdir(), "folder"),
])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_path_in_the_way_of_an_output_fails_before_anything_loads(files, tmp_path, capsys, monkeypatch, name, make,
                                                                    kind, overwrite):
    """The job used to train, crash while saving and lose results.json; --overwrite removes only what the job wrote."""
    _no_weights(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    make(out / name)
    rc = cli.main([_job(files, tmp_path), "--output-dir", str(out), *(["--overwrite"] if overwrite else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and f"error: output_dir {str(out)!r}: {name} is a {kind}, where the job writes its" in err[-1], err
    assert (out / name).exists()
