"""The training CLI (scripts/train.py / peft_gift.recipes) on tiny random models and tiny synthetic data.

Every task type (seq_cls, causal_lm_mc, image_cls) and the gift / lofit / lora methods run end to end; results.json
is checked, the saved adapter is reloaded and must reproduce the reported metric; bad input fails with a one-line
error before any training starts. No Hub access: models, tokenizers and datasets are written into tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from tiny_models import tiny_bert, tiny_llama, tiny_vit, word_tokenizer

from peft_gift import hub, recipes
from peft_gift.recipes import cli, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["good", "bad", "movie", "film", "plot", "great", "awful", "the", "a", "was", "is", "very", "red", "blue",
         "green", "cat", "dog", "sky", "grass", "color", "question", "answer", "what", "of"]


def _tokenizer(kind: str):
    return word_tokenizer(WORDS + [":", "?", "\n", "Question", "Answer"], kind)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny BERT / Llama / ViT checkpoints with tokenizers, and synthetic datasets, saved to disk."""
    d = tmp_path_factory.mktemp("assets")
    bert = tiny_bert(vocab_size=64, max_position_embeddings=64)
    bert.save_pretrained(d / "bert")
    _tokenizer("bert").save_pretrained(d / "bert")
    llama = tiny_llama(vocab_size=64)
    llama.save_pretrained(d / "llama")
    _tokenizer("llama").save_pretrained(d / "llama")
    tiny_vit().save_pretrained(d / "vit")

    rng = np.random.default_rng(0)

    def sentence(label):
        words = list(rng.choice(["the", "a", "movie", "film", "plot", "was", "is", "very"], size=4))
        words.insert(int(rng.integers(0, 5)), "good" if label else "bad")
        return " ".join(words)

    def cls_split(n):
        labels = [int(x) for x in rng.integers(0, 2, size=n)]
        return Dataset.from_dict({"sentence": [sentence(y) for y in labels], "label": labels},
                                 features=Features({"sentence": Value("string"),
                                                    "label": ClassLabel(names=["neg", "pos"])}))

    DatasetDict({"train": cls_split(48), "validation": cls_split(16)}).save_to_disk(d / "sst_tiny")
    cls_split(20).remove_columns("label").save_to_disk(d / "no_label")

    colors = {"sky": "blue", "grass": "green", "cat": "red", "dog": "blue"}

    def mc_split(n):
        rows = []
        for i in range(n):
            thing = list(colors)[i % 4]
            choices = ["red", "blue", "green"]
            rows.append({"prompt": f"Question: what color of {thing}?\nAnswer:", "choices": choices,
                         "label": choices.index(colors[thing])})
        return Dataset.from_list(rows)

    DatasetDict({"train": mc_split(24), "validation": mc_split(8)}).save_to_disk(d / "mc_tiny")
    DatasetDict({"train": mc_split(16), "validation": mc_split(8)}).save_to_disk(d / "mc_tiny2")

    def img_split(n):
        labels = [int(x) for x in rng.integers(0, 3, size=n)]
        imgs = []
        for y in labels:
            arr = rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8)
            arr[..., y] += 150  # the class is the dominant colour channel
            from PIL import Image as PILImage

            imgs.append(PILImage.fromarray(arr))
        return Dataset.from_dict({"image": imgs, "label": labels},
                                 features=Features({"image": Image(), "label": ClassLabel(names=["r", "g", "b"])}))

    DatasetDict({"train": img_split(32), "test": img_split(12)}).save_to_disk(d / "img_tiny")
    return d


def _write_cfg(tmp_path, cfg: dict, name="job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


TRAIN = {"num_train_epochs": 2, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
         "learning_rate": 1e-2, "logging_steps": 100, "disable_tqdm": True}


def _cls_cfg(assets, method):
    return {"model": str(assets / "bert"), "task": "seq_cls", "method": method,
            "data": {"dataset": str(assets / "sst_tiny"), "max_length": 16, "seed": 0}, "training": dict(TRAIN)}


def _run_cli(tmp_path, cfg, *extra):
    out = tmp_path / "out"
    rc = cli.main([_write_cfg(tmp_path, cfg), "--output-dir", str(out), *extra])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    return out, results


def _reevaluate(results, model):
    """Evaluate `model` exactly as the CLI did (same data split, same evaluation code)."""
    return recipes.evaluate(model, recipes.prepare(results["config"]))


def _check_results(results, method, task):
    for key in ("before", "after", "trainable_params", "total_params", "wall_time_s", "train_time_s", "config",
                "metric", "machine", "optimizer_steps"):
        assert key in results, key
    assert results["processes"] == 1 and results["optimizer_steps"] > 0
    assert results["method"] == method and results["task"] == task
    assert 0 < results["trainable_params"] < results["total_params"]
    assert 0.0 <= results["after"]["accuracy"] <= 1.0 and 0.0 <= results["before"]["accuracy"] <= 1.0
    assert results["wall_time_s"] >= results["train_time_s"] > 0


def test_seq_cls_gift_trains_saves_and_reloads(assets, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    cfg = _cls_cfg(assets, {"name": "gift", "r": 4, "target_modules": ["query", "value"]})
    out, res = _run_cli(tmp_path, cfg)
    _check_results(res, "gift", "seq_cls")
    # GIFT, one Θ per module type (query, value), 2·r·d_in each, plus the 2-class head (64·2 + 2)
    assert res["trainable_params"] == 2 * (2 * 4 * 64) + 130
    assert res["head_params"] == 130
    assert res["train_examples"] == 48 and res["eval_examples"] == 16
    assert "| gift |" in capsys.readouterr().out  # the printed markdown table
    assert (out / "adapter" / "adapter_config.json").is_file()
    # training happened: the eval loss went down, and the zero-initialised Θ factor moved away from zero
    assert res["after"]["loss"] < res["before"]["loss"], (res["before"], res["after"])
    from safetensors.torch import load_file

    theta = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert theta and max(float(t.abs().max()) for t in theta.values()) > 0
    base = AutoModelForSequenceClassification.from_pretrained(str(assets / "bert"), num_labels=2)
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    again = _reevaluate(res, model)
    assert again["accuracy"] == pytest.approx(res["after"]["accuracy"])
    assert again["loss"] == pytest.approx(res["after"]["loss"], rel=1e-4)


@pytest.mark.parametrize("method", [
    {"name": "lora", "r": 4, "target_modules": ["query", "value"]},
    {"name": "full"},
    {"name": "linear_probe"},
])
def test_seq_cls_other_methods(assets, tmp_path, method):
    cfg = _cls_cfg(assets, method)
    cfg["training"]["num_train_epochs"] = 1
    out, res = _run_cli(tmp_path, cfg)
    if method["name"] == "full":
        assert res["trainable_params"] == res["total_params"]
        assert (out / "model" / "config.json").is_file()
    else:
        _check_results(res, method["name"], "seq_cls")
    if method["name"] == "linear_probe":
        assert res["trainable_params"] == res["head_params"] == 130
    if method["name"] == "lora":
        assert res["trainable_params"] == 2 * 2 * (4 * 64 + 64 * 4) + 130
        assert (out / "adapter" / "adapter_config.json").is_file()


def test_linear_probe_first_trains_the_head_then_head_and_adapter(assets, tmp_path):
    """LP-FT for a PEFT method: stage 1 changes only the head, stage 2 the head and Θ; both stages' budgets apply."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    method = {"name": "gift", "r": 4, "target_modules": ["query", "value"], "linear_probe_first": True,
              "stage1_training": {"max_steps": 3, "learning_rate": 1e-2}, "stage2_training": {"max_steps": 5}}
    out, res = _run_cli(tmp_path, _cls_cfg(assets, method))
    s1, s2 = res["stages"]["stage1"], res["stages"]["stage2"]
    assert s1["trainable_params"] == s1["head_params"] == 130
    assert s2["trainable_params"] == res["trainable_params"] == 2 * (2 * 4 * 64) + 130
    assert s1["train_time_s"] > 0 and s2["train_time_s"] > 0
    theta = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert max(float(t.abs().max()) for k, t in theta.items() if "gift_" in k) > 0  # Θ trained in stage 2
    base = AutoModelForSequenceClassification.from_pretrained(str(assets / "bert"), num_labels=2)
    again = _reevaluate(res, PeftModel.from_pretrained(base, str(out / "adapter")))
    assert again["accuracy"] == pytest.approx(res["after"]["accuracy"])
    assert torch.isfinite(torch.tensor(again["loss"]))


@pytest.mark.parametrize("method, message", [
    ({"name": "gift", "linear_probe_first": "yes"}, "linear_probe_first must be true or false"),
    ({"name": "lora", "stage1_training": {"max_steps": 2}}, "only used with method.linear_probe_first"),
    ({"name": "gift", "linear_probe_first": True, "stage2_training": {"max_stepz": 2}}, "max_stepz"),
])
def test_linear_probe_first_bad_values(assets, tmp_path, method, message):
    with pytest.raises(recipes.ConfigError, match=message):
        recipes.prepare(_cls_cfg(assets, method))


def test_seq_cls_loreft_trains_saves_and_reloads(assets, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from peft_gift.recipes.loreft import load_loreft

    out, res = _run_cli(tmp_path, _cls_cfg(assets, {"name": "loreft", "r": 2}))
    _check_results(res, "loreft", "seq_cls")
    layers = AutoModelForSequenceClassification.from_pretrained(str(assets / "bert")).config.num_hidden_layers
    assert res["trainable_params"] == layers * (2 * 2 * 64 + 2) + 130  # per layer R, W (r x d) and b (r), + head
    model = load_loreft(AutoModelForSequenceClassification.from_pretrained(str(out / "model")), str(out / "model"))
    again = _reevaluate(res, model)
    assert again["accuracy"] == pytest.approx(res["after"]["accuracy"])
    assert again["loss"] == pytest.approx(res["after"]["loss"], rel=1e-4)


@pytest.mark.parametrize("method, message", [
    ({"name": "loreft", "r": "2"}, "method.r must be an integer"),
    ({"name": "loreft", "prefix": 0, "suffix": 0}, "at least one intervened position"),
    ({"name": "loreft", "layers": [0, "1"]}, "method.layers must be"),
    ({"name": "loreft", "rank": 2}, "rank"),
])
def test_loreft_bad_values(assets, tmp_path, method, message):
    with pytest.raises(recipes.ConfigError, match=message):
        recipes.prepare(_cls_cfg(assets, method))


def test_causal_lm_mc_lofit_two_stage(assets, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = {"model": str(assets / "llama"), "task": "causal_lm_mc",
           "method": {"name": "lofit", "k": 3, "stage1": {"l1_lambda": 1e-3}, "stage2_training": {"learning_rate": 5e-2}},
           "data": {"dataset": str(assets / "mc_tiny"), "max_length": 32}, "training": dict(TRAIN)}
    out, res = _run_cli(tmp_path, cfg)
    _check_results(res, "lofit", "causal_lm_mc")
    s1, s2 = res["stages"]["stage1"], res["stages"]["stage2"]
    assert s1["trainable_params"] == 2 * 4 * 16  # scale vectors on every head: 2 layers x 4 heads x head_dim 16
    assert len(s2["heads"]) == 3 and s2["trainable_params"] == 3 * 16 == res["trainable_params"]
    assert all(0 <= layer < 2 and 0 <= head < 4 for layer, head in s2["heads"])
    assert {"accuracy", "acc_norm"} <= set(res["after"])
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert saved["mode"] == "bias" and len(saved["heads"]) == 3
    for adapter in ("adapter", "stage1_adapter"):  # every saved adapter says how to load it
        assert "import peft_gift" in (out / adapter / "README.md").read_text()
    import peft_gift

    stage1 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(assets / "llama")),
                                       str(out / "stage1_adapter"))
    assert peft_gift.select_heads(stage1, k=3) == [tuple(h) for h in s2["heads"]]  # the saved scales chose them
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(assets / "llama")), str(out / "adapter"))
    again = _reevaluate(res, model)
    assert again["accuracy"] == pytest.approx(res["after"]["accuracy"])
    assert again["acc_norm"] == pytest.approx(res["after"]["acc_norm"])


def test_causal_lm_mc_gift_learns_and_reports_per_dataset(assets, tmp_path):
    cfg = {"model": str(assets / "llama"), "task": "causal_lm_mc",
           "method": {"name": "gift", "r": 4, "target_modules": ["q_proj", "v_proj"]},
           "data": {"dataset": [str(assets / "mc_tiny"), str(assets / "mc_tiny2")], "max_length": 32,
                    "train_size": 16, "eval_size": 8},
           "training": {**TRAIN, "num_train_epochs": 4, "learning_rate": 3e-2}}
    _, res = _run_cli(tmp_path, cfg)
    _check_results(res, "gift", "causal_lm_mc")
    assert res["train_examples"] == 32 and res["eval_examples"] == 16
    assert {f"accuracy_{assets / 'mc_tiny'}", f"accuracy_{assets / 'mc_tiny2'}"} <= set(res["after"])
    # a memorisable mapping (4 things → colours): SFT on the answer tokens must beat the random model
    assert res["after"]["accuracy"] > res["before"]["accuracy"], res


def test_image_cls_gift_and_reload(assets, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    cfg = {"model": str(assets / "vit"), "task": "image_cls",
           "method": {"name": "gift", "r": 4, "target_modules": ["o_proj"]},
           "data": {"dataset": str(assets / "img_tiny"), "train_split": "train", "eval_split": "test"},
           "training": {**TRAIN, "num_train_epochs": 3}}
    out, res = _run_cli(tmp_path, cfg)
    _check_results(res, "gift", "image_cls")
    assert res["head_params"] == 64 * 3 + 3
    assert res["trainable_params"] == 2 * 4 * 64 + 64 * 3 + 3
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert "classifier" in saved["modules_to_save"]
    base = AutoModelForImageClassification.from_pretrained(str(assets / "vit"), num_labels=3)
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    again = _reevaluate(res, model)
    assert again["accuracy"] == pytest.approx(res["after"]["accuracy"])


def test_set_overrides_and_float_parsing(assets, tmp_path):
    path = _write_cfg(tmp_path, _cls_cfg(assets, {"name": "gift", "r": 4, "target_modules": ["query"]}))
    cfg = recipes.load_config(path, ["training.learning_rate=1e-3", "method.r=8", "data.train_size=10"])
    assert cfg["training"]["learning_rate"] == 1e-3 and isinstance(cfg["training"]["learning_rate"], float)
    assert cfg["method"]["r"] == 8 and cfg["data"]["train_size"] == 10


def test_shipped_configs_validate():
    names = sorted(n for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".yaml"))
    assert {"gift_minilm_sst2.yaml", "lora_minilm_sst2.yaml", "lofit_smollm2_arc_easy.yaml",
            "gift_smollm2_commonsense.yaml", "gift_dinov2_cifar10.yaml"} <= set(names)
    for n in names:
        cfg = recipes.load_config(os.path.join(ROOT, "configs", n))
        assert cfg["task"] in recipes.TASKS


BAD = [
    (lambda a: {**_cls_cfg(a, "gift"), "optimizer": "adam"}, "unknown key(s) 'optimizer' in the config"),
    (lambda a: _cls_cfg(a, {"name": "gift", "rank": 4}), "unknown key(s) 'rank' in method (gift)"),
    (lambda a: {**_cls_cfg(a, "gift"), "training": {"warmup_ratio": 0.1}}, "did you mean warmup_steps"),
    (lambda a: _cls_cfg(a, "dora"), "method 'dora' is not supported"),
    (lambda a: {**_cls_cfg(a, "gift"), "task": "seq2seq"}, "task 'seq2seq' is not supported"),
    (lambda a: {**_cls_cfg(a, "gift"), "model": "no-such-org/no-such-model-xyz"},
     "could not be loaded from the Hugging Face Hub"),
    (lambda a: {**_cls_cfg(a, "gift"), "model": str(a / "sst_tiny")}, "has no config.json"),
    (lambda a: {**_cls_cfg(a, "gift"), "data": {"dataset": str(a / "no_label")}}, "no label column 'label'"),
    (lambda a: {**_cls_cfg(a, "gift"), "data": {"dataset": str(a / "missing_dir")}}, "neither a datasets.save_to_disk"),
    (lambda a: {**_cls_cfg(a, "gift"), "task": "causal_lm_mc", "model": str(a / "llama")},
     "causal_lm_mc needs 'prompt'"),
    (lambda a: {**_cls_cfg(a, "gift"), "data": {"dataset": str(a / "sst_tiny"), "train_size": 1000}},
     "data.train_size=1000 but dataset"),
    (lambda a: _cls_cfg(a, {"name": "lofit"}), "exactly one of 'k'"),
]


@pytest.mark.parametrize("make,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_fails_before_training(assets, tmp_path, capsys, make, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    rc = cli.main([_write_cfg(tmp_path, make(assets)), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert not out.exists()  # nothing trained or written


def test_script_entry_point_missing_file(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    # one line, no traceback (bitsandbytes may log a line of its own at import on AVX512-BF16 CPUs)
    lines = [line for line in proc.stderr.strip().splitlines() if "kernels-community" not in line]
    assert len(lines) == 1 and "config file" in lines[0] and "not found" in lines[0], proc.stderr


def test_local_metrics_match_definitions():
    preds, labels = [1, 0, 1, 1, 0, 2], [1, 0, 0, 1, 2, 2]
    assert metrics.accuracy(preds, labels) == pytest.approx(4 / 6)
    # binary F1 on class 1: tp=2, fp=1, fn=0 → 0.8
    assert metrics.f1([1, 0, 1, 1], [1, 0, 0, 1], 2) == pytest.approx(0.8)
    # macro F1: class0 (tp1 fp1 fn1)=0.5, class1 (tp2 fp1 fn0)=0.8, class2 (tp1 fp0 fn1)=2/3
    assert metrics.f1(preds, labels, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    sk = pytest.importorskip("sklearn.metrics")
    assert metrics.f1(preds, labels, 3) == pytest.approx(sk.f1_score(labels, preds, average="macro"))


# ---- values of the wrong type and LoFiT stage-2 settings fail with a one-line error naming the field, untrained
TYPED = [
    (lambda a: {**_cls_cfg(a, "gift"), "seed": "3"}, "seed must be an integer"),
    (lambda a: {**_cls_cfg(a, "gift"), "data": {"dataset": str(a / "sst_tiny"), "max_length": "64"}},
     "data.max_length must be an integer"),
    (lambda a: {**_cls_cfg(a, "gift"), "training": {"learning_rate": "fast"}}, "training.learning_rate must be a finite number"),
    (lambda a: {**_cls_cfg(a, "gift"), "training": {"num_train_epochs": "2"}},
     "training.num_train_epochs must be a finite number"),
    (lambda a: _cls_cfg(a, {"name": "lofit", "k": 2, "stage2": {"init_std": -1.0}}), "method.stage2"),
    (lambda a: _cls_cfg(a, {"name": "lofit", "k": "2"}), "method.k must be an integer"),
]


@pytest.mark.parametrize("make,message", TYPED, ids=[m for _, m in TYPED])
def test_wrongly_typed_values_name_the_field(assets, tmp_path, capsys, make, message):
    out = tmp_path / "out"
    rc = cli.main([_write_cfg(tmp_path, make(assets)), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and message in err[-1], err
    assert not out.exists()


def test_output_dir_naming_a_file_is_a_clear_error(assets, tmp_path, capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a directory")
    for argv in (["--output-dir", str(a_file)], ["--output-dir", str(a_file / "sub")]):
        rc = cli.main([_write_cfg(tmp_path, _cls_cfg(assets, "gift")), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and "output_dir" in err[-1] and "is a file" in err[-1], err
    cfg = {**_cls_cfg(assets, "gift"), "output_dir": str(a_file)}
    with pytest.raises(ValueError, match="output_dir .* is a file"):
        recipes.validate_config(cfg)


@pytest.mark.parametrize("method,message", [
    ({"name": "lofit", "k": 100}, "1 <= k <= 8"),  # the tiny Llama has 2 layers x 4 heads
    ({"name": "lofit", "k": 2, "stage2": {"num_heads": 3, "head_dim": 16}}, "invalid method.stage2 for this model"),
], ids=["k", "geometry"])
def test_lofit_stage2_settings_fail_before_stage1_trains(assets, tmp_path, capsys, monkeypatch, method, message):
    import transformers

    calls = []
    real_train = transformers.Trainer.train
    monkeypatch.setattr(transformers.Trainer, "train", lambda self, *a, **k: calls.append(1) or real_train(self, *a, **k))
    cfg = {"model": str(assets / "llama"), "task": "causal_lm_mc", "method": method,
           "data": {"dataset": str(assets / "mc_tiny"), "max_length": 32}, "training": dict(TRAIN)}
    out = tmp_path / "out"
    rc = cli.main([_write_cfg(tmp_path, cfg), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and message in err[-1], err
    assert calls == [] and not (out / "stage1_adapter").exists()


def test_cli_saves_the_plugin_model_card_with_the_adapter(assets, tmp_path):
    out, _ = _run_cli(tmp_path, _cls_cfg(assets, {"name": "gift", "r": 2, "target_modules": ["query"]}))
    card = (out / "adapter" / "README.md").read_text()
    # install as the README says (peft-gift is not on PyPI), then import the plugin
    assert all(line in card for line in hub.install_instructions()) and "import peft_gift" in card
    assert "pip install peft-gift\n" not in card


@pytest.mark.parametrize("kind", ["gift", "full", "loreft", "lofit_mc"])
def test_evaluate_script_reproduces_the_reported_metrics(assets, tmp_path, capsys, kind):
    """`scripts/evaluate.py OUT/adapter` (or OUT/model) evaluates what the run saved on its job's evaluation split
    and prints the run's table and metrics: equal to results.json's "after"."""
    from peft_gift.recipes import reevaluate

    cfg = {"gift": lambda: _cls_cfg(assets, {"name": "gift", "r": 4, "target_modules": ["query", "value"]}),
           "full": lambda: _cls_cfg(assets, {"name": "full"}),
           "loreft": lambda: _cls_cfg(assets, {"name": "loreft", "r": 2}),
           "lofit_mc": lambda: {"model": str(assets / "llama"), "task": "causal_lm_mc",
                                "method": {"name": "lofit", "k": 3, "stage1": {"l1_lambda": 1e-3}},
                                "data": {"dataset": str(assets / "mc_tiny"), "max_length": 32},
                                "training": dict(TRAIN)}}[kind]()
    out, res = _run_cli(tmp_path, cfg)
    capsys.readouterr()
    assert reevaluate.main([res["saved_to"]]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    again = json.loads(printed[-1])
    assert again.keys() == res["after"].keys()
    for metric, value in res["after"].items():
        assert again[metric] == pytest.approx(value, rel=1e-6), metric
    assert f"| {res['method']} |" in "\n".join(printed)
    assert reevaluate.main([res["saved_to"], _write_cfg(tmp_path, res["config"], "again.yaml")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == again


def test_evaluate_script_refuses_a_folder_that_is_no_run_output(tmp_path, capsys):
    from peft_gift.recipes import reevaluate

    assert reevaluate.main([str(tmp_path)]) == 2
    assert "not an adapter or model folder written by train.py" in capsys.readouterr().err
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert reevaluate.main([str(tmp_path / "adapter")]) == 2
    assert "no results.json beside it" in capsys.readouterr().err
