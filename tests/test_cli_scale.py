"""The training CLI on 2 CPU processes: `accelerate launch --config_file configs/accelerate/ddp_cpu.yaml
scripts/train.py CONFIG`, with nothing in the job config about processes.

Checked on a tiny BERT (dropout 0) and a tiny sentiment set (64 train / 24 eval): the run uses world size 2
(results.json ``processes``, half the optimizer steps of one process with the same per-device batch), its trained
adapter equals that of one process with the same global batch (SGD, so a loss scaled by the number of processes
would show), one process prints and writes, the reported metrics are those of the whole evaluation split, and the
saved adapter reloaded in a fresh process reproduces them. That run is slow-marked (about a minute on the shared
2-core box, mostly the start-up of three interpreters); the fast tests below check its parts in one process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from safetensors.torch import load_file
from tiny_models import save_checkpoint, tiny_bert

from peft_gift import recipes
from peft_gift.recipes import cli, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["good", "bad", "movie", "film", "plot", "the", "a", "was", "is", "very"]
# SGD: an update proportional to the gradient, so a loss N times too large would change the adapter
TRAINING = {"num_train_epochs": 2, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
            "learning_rate": 0.5, "optim": "sgd", "logging_steps": 100, "disable_tqdm": True}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    save_checkpoint(tiny_bert(vocab_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0), d / "bert", WORDS, "bert")
    rng = np.random.default_rng(0)

    def split(n):
        labels = [int(x) for x in rng.integers(0, 2, size=n)]
        sentences = []
        for y in labels:
            words = list(rng.choice(WORDS[2:], size=4))
            words.insert(int(rng.integers(0, 5)), "good" if y else "bad")
            sentences.append(" ".join(words))
        return Dataset.from_dict({"sentence": sentences, "label": labels}, features=Features(
            {"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos"])}))

    DatasetDict({"train": split(64), "validation": split(24)}).save_to_disk(d / "sst")
    cfg = {"model": str(d / "bert"), "task": "seq_cls", "method": {"name": "gift", "r": 4,
           "target_modules": ["query", "value"]}, "data": {"dataset": str(d / "sst"), "max_length": 16},
           "training": TRAINING}
    (d / "job.yaml").write_text(yaml.safe_dump(cfg))
    return d / "job.yaml"


def _env():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("WORLD_SIZE", None)
    return env


def _one_process(job, out, *overrides):
    assert cli.main([str(job), "--output-dir", str(out), *[f"--set={o}" for o in overrides]]) == 0
    return json.loads((out / "results.json").read_text())


def test_launched_on_cpus_the_training_arguments_start_gloo(monkeypatch):
    """Under torchrun / accelerate launch (WORLD_SIZE > 1) without CUDA, TrainingArguments need use_cpu=True, or they
    start no process group and every process trains alone on all the data."""
    import types

    import transformers

    seen = []
    monkeypatch.setattr(transformers, "TrainingArguments", lambda **kwargs: seen.append(kwargs))
    job = types.SimpleNamespace(seed=0)
    for world, cuda, use_cpu in (("2", False, True), ("1", False, None), ("2", True, None)):
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        pipeline._training_args(job, {}, None, "train")
        args = seen.pop()
        assert args.get("use_cpu") is use_cpu, (world, cuda)
        assert args["ddp_find_unused_parameters"] is False


def test_a_process_other_than_the_main_one_prints_and_writes_nothing(job, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "_is_main", lambda: False)
    out = tmp_path / "out"
    res = recipes.run(recipes.load_config(job), output_dir=str(out))
    assert res["processes"] == 1 and set(res["after"]) == {"loss", "accuracy", "f1"}
    printed = capsys.readouterr().out.splitlines()
    assert printed and all(line.startswith("{'") for line in printed), printed  # only the Trainer's own log lines
    assert not (out / "results.json").exists() and not (out / "adapter").exists()


def test_gradient_accumulation_equals_the_larger_batch(job, tmp_path):
    """2 micro-batches of 8 are one batch of 16: transformers took the classification head's forward(**kwargs) for a
    loss summed over num_items_in_batch and did not divide the head's mean loss by the accumulation steps (nor, on
    N processes, undo its multiplication by N), so the gradient was twice too large."""
    accumulated = _one_process(job, tmp_path / "acc", "training.gradient_accumulation_steps=2")
    larger = _one_process(job, tmp_path / "larger", "training.per_device_train_batch_size=16")
    assert accumulated["optimizer_steps"] == larger["optimizer_steps"] == 8
    a = load_file(str(tmp_path / "acc" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "larger" / "adapter" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-8, rtol=1e-4)  # GIFT's ψ grows from 0 to ~1e-4


# reason for slow: about a minute on the shared 2-core box (three interpreter start-ups: accelerate launch's two
# ranks and the fresh process that reloads the adapter)
@pytest.mark.slow
def test_two_processes_share_the_global_batch_and_one_writes(job, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate CLI not found"
    out = tmp_path / "two"
    proc = subprocess.run(
        [accelerate, "launch", "--config_file", os.path.join(ROOT, "configs", "accelerate", "ddp_cpu.yaml"),
         "--main_process_port", str(29600 + os.getpid() % 1000), os.path.join(ROOT, "scripts", "train.py"), str(job),
         "--output-dir", str(out)], capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "find_unused_parameters" not in proc.stderr  # every trained tensor takes part: DDP is told so
    two = json.loads((out / "results.json").read_text())
    assert two["processes"] == 2
    assert two["eval_examples"] == 24 and two["train_examples"] == 64
    # one process printed: the table, the evaluations and the "wrote" line appear once
    assert proc.stdout.count("| gift |") == 1 and proc.stdout.count("before: ") == 1, proc.stdout
    assert proc.stdout.count("wrote ") == 1 and "2 processes" in proc.stdout
    assert sorted(os.listdir(out / "adapter")) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert "import peft_gift" in (out / "adapter" / "README.md").read_text()

    # world size 2: half the optimizer steps of one process with the same per-device batch (64 / 8 / 2 x 2 epochs) ...
    same_device_batch = _one_process(job, tmp_path / "one")
    assert same_device_batch["processes"] == 1 and same_device_batch["optimizer_steps"] == 16
    assert two["optimizer_steps"] == 8
    # ... and the same training as one process with the same global batch (2 x 8): the same batches, the same
    # mean loss and gradient; only the order of the gradient sum differs
    same_global_batch = _one_process(job, tmp_path / "global", "training.per_device_train_batch_size=16")
    assert same_global_batch["optimizer_steps"] == 8
    a = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "global" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-8, rtol=1e-4)  # GIFT's ψ grows from 0 to ~1e-4
    assert two["before"] == same_global_batch["before"]  # the whole evaluation split, evaluated once
    for metric in ("accuracy", "f1", "loss"):
        assert two["after"][metric] == pytest.approx(same_global_batch["after"][metric], abs=1e-6)

    # the saved adapter, reloaded in a fresh process, reproduces the reported metrics
    code = f"""
import json
from peft import PeftModel
from peft_gift import recipes
job = recipes.prepare(json.load(open({str(out / "results.json")!r}))["config"])
model = PeftModel.from_pretrained(job.task.load_model(), {str(out / "adapter")!r})
print(json.dumps(recipes.evaluate(model, job)))
"""
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_env())
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    again = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert again["accuracy"] == two["after"]["accuracy"] and again["f1"] == two["after"]["f1"]
    assert again["loss"] == pytest.approx(two["after"]["loss"], rel=1e-6)
