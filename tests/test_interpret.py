"""peft_gift.interpret and scripts/visualize.py: GIFT cluster vectors/scores/maps, LM-head decoding, LoFiT head maps."""

import json
import os

import numpy as np
import pytest
import torch
from peft import get_peft_model
from tiny_models import (
    image_inputs,
    random_gift_model,
    randomise_theta,
    text_inputs,
    tiny_dinov2,
    tiny_gpt2,
    tiny_llama,
    tiny_vit,
)

import peft_gift
from peft_gift import interpret
from peft_gift.gift.layer import GiftLayer
from peft_gift.interpret import figures
from peft_gift.interpret._common import _short
from peft_gift.lofit.layer import LofitLayer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def gift_model(factory, seed=1, **config):
    return random_gift_model(factory(), std=0.2, seed=seed, **config)


def named_gift_layers(model):
    return {_short(n): m for n, m in model.named_modules() if isinstance(m, GiftLayer)}


def dense_w(layer):
    """Original W in (out, in) layout, straight from the base layer (unmerged model)."""
    w = layer.get_base_layer().weight.detach().double()
    return w.T if layer.fan_in_fan_out else w


def capture_inputs(model, layers):
    """Run the model once and return each layer's input x, captured independently of interpret."""
    seen = {}
    handles = [
        m.register_forward_hook(lambda mod, args, out, n=n: seen.__setitem__(n, args[0].detach().double()))
        for n, m in layers.items()
    ]
    return seen, handles


# ------------------------------------------------------------------------------------------------ GIFT
@pytest.mark.parametrize("factory,targets", [(tiny_llama, ["q_proj", "o_proj"]), (tiny_gpt2, ["c_attn"])])
def test_cluster_vectors_are_w_phi(factory, targets):
    model = gift_model(factory, r=5, target_modules=targets)
    layers = named_gift_layers(model)
    vectors = interpret.cluster_vectors(model)
    assert list(vectors) == list(layers)
    for name, layer in layers.items():
        phi, _ = layer.theta("default")
        expected = dense_w(layer) @ phi.detach().double()
        assert vectors[name].shape == (layer.out_features, 5)
        torch.testing.assert_close(vectors[name].double(), expected, rtol=1e-5, atol=1e-6)
    # merging changes the stored weight but C still uses the original W
    model.merge_adapter()
    merged = interpret.cluster_vectors(model)
    for name in vectors:
        torch.testing.assert_close(merged[name], vectors[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("factory,targets,alpha", [(tiny_llama, ["q_proj", "v_proj"], 8.0), (tiny_gpt2, ["c_attn"], None)])
def test_channel_scores_identity(factory, targets, alpha):
    """s_ij = y_i · (W φ)[:, j] with y = Ŵx + b the adapted layer's output, built densely from x, W, φ, ψ, s."""
    model = gift_model(factory, r=4, target_modules=targets, alpha=alpha)
    inputs = text_inputs(batch=2, seq=7)
    layers = named_gift_layers(model)
    seen, handles = capture_inputs(model, layers)
    with torch.no_grad():
        model(**inputs)
    for h in handles:
        h.remove()
    scores = interpret.channel_scores(model, inputs)
    base_scores = interpret.channel_scores(model, inputs, output="base")
    for name, layer in layers.items():
        phi, psi = (t.detach().double() for t in layer.theta("default"))
        w = dense_w(layer)
        s = layer.gift_scaling["default"]
        w_hat = w @ (torch.eye(w.shape[1], dtype=torch.float64) + s * phi @ psi)
        bias = layer.get_base_layer().bias
        b = 0 if bias is None else bias.detach().double()
        x = seen[name]
        expected = (x @ w_hat.T + b) @ (w @ phi)
        expected_base = (x @ w.T + b) @ (w @ phi)
        assert scores[name].shape == (2, 7, 4)
        torch.testing.assert_close(scores[name].double(), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(base_scores[name].double(), expected_base, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(scores[name].double(), expected_base, atol=1e-3)  # Θ really changes y


def test_channel_scores_deterministic_and_leave_model_untouched():
    model = gift_model(tiny_llama, r=3, target_modules=["q_proj"], dropout=0.5)
    model.train()
    inputs = text_inputs()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = interpret.channel_scores(model, inputs, layers="layers.1.self_attn.q_proj")
    second = interpret.channel_scores(model, inputs, layers=["model.layers.1.self_attn.q_proj"])
    assert list(first) == ["model.layers.1.self_attn.q_proj"]
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # eval mode: GIFT dropout is off
    assert model.training  # mode restored
    assert all(not m._forward_hooks for m in model.modules() if isinstance(m, GiftLayer))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_channel_scores_merged_equals_unmerged():
    model = gift_model(tiny_llama, r=3, target_modules=["v_proj"])
    inputs = text_inputs()
    before = interpret.channel_scores(model, inputs)
    model.merge_adapter()
    after = interpret.channel_scores(model, inputs)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-4, atol=1e-4)


def test_unknown_or_unadapted_layer_is_a_clear_error():
    model = gift_model(tiny_llama, r=3, target_modules=["q_proj"])
    with pytest.raises(ValueError, match=r"layers.0.self_attn.k_proj.*has no GIFT adapter.*model.layers.0.self_attn.q_proj"):
        interpret.cluster_vectors(model, "layers.0.self_attn.k_proj")
    with pytest.raises(ValueError, match=r"'nope' is not a module of this model.*q_proj"):
        interpret.channel_scores(model, text_inputs(), layers="nope")
    with pytest.raises(ValueError, match="matches several"):
        interpret.cluster_vectors(model, "q_proj")
    with pytest.raises(ValueError, match="'other' does not exist"):
        interpret.cluster_vectors(model, adapter_name="other")
    lofit = get_peft_model(tiny_llama(), peft_gift.LofitConfig(mode="scale"))
    with pytest.raises(ValueError, match="no GIFT adapter"):
        interpret.cluster_vectors(lofit)


def test_patch_heatmaps_normalisation():
    rows, cols, r = 3, 4, 5
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 1 + rows * cols, r, generator=g)
    scores[:, 0] = 1e6  # the CLS token must be dropped, not dominate the maps
    maps = interpret.patch_heatmaps(scores, (rows, cols))
    assert maps.shape == (2, r, rows, cols)
    flat = maps.reshape(2 * r, -1)
    assert torch.allclose(flat.amax(dim=1), torch.ones(2 * r))
    assert ((flat == 0) | (flat >= 0.5)).all() and (flat == 0).any()
    # the patch order is row-major: token 1 + i*cols + j is patch (i, j)
    patches = scores[:, 1:]
    b, c, i, j = 1, 2, 2, 3
    p = patches[b, :, c]
    expected = (p[i * cols + j] - p.min()) / (p.max() - p.min())
    assert maps[b, c, i, j] == pytest.approx(float(expected) if expected >= 0.5 else 0.0, abs=1e-6)
    with pytest.raises(ValueError, match="patch grid"):
        interpret.patch_heatmaps(scores, (4, 4))


def test_vision_maps_and_wrong_image_sizes(tmp_path):
    model = gift_model(tiny_dinov2, r=3, target_modules=["o_proj"])
    pixels = image_inputs(batch=2, size=28)["pixel_values"]
    path = tmp_path / "maps.png"
    maps = figures.save_cluster_maps(model, pixels, path, layer="encoder.layer.1.attention.o_proj", channels=[0, 2])
    assert maps.shape == (2, 3, 2, 2)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match=r"30x30 is not a multiple of the patch size 14x14"):
        figures.save_cluster_maps(model, torch.randn(1, 3, 30, 30), tmp_path / "x.png", layer="layer.1.attention.o_proj")
    with pytest.raises(ValueError, match=r"1 channels; the model expects num_channels=3"):
        interpret.patch_grid(model, torch.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        interpret.patch_grid(model, torch.randn(3, 28, 28))
    with pytest.raises(ValueError, match="Pass `layer`"):
        figures.save_cluster_maps(model, pixels, tmp_path / "y.png")
    with pytest.raises(ValueError, match=r"Channels \[3\] do not exist; valid channels are 0..2"):
        figures.save_cluster_maps(model, pixels, tmp_path / "z.png", layer="layer.0.attention.o_proj", channels=[3])
    vit = gift_model(tiny_vit, r=2, target_modules=["o_proj"])
    with pytest.raises(ValueError, match=r"48x48 does not match.*image_size=32x32"):
        figures.save_cluster_maps(vit, torch.randn(1, 3, 48, 48), tmp_path / "v.png", layer="layers.0.attention.o_proj")


def test_text_views(tmp_path):
    model = gift_model(tiny_gpt2, r=3, target_modules=["c_attn"])
    inputs = text_inputs(batch=2, seq=6)
    inputs["attention_mask"][1, 4:] = 0
    scores = interpret.channel_scores(model, inputs, layers="h.0.attn.c_attn")["transformer.h.0.attn.c_attn"]
    tokens = [[f"t{i}" for i in row] for row in inputs["input_ids"].tolist()]
    top = interpret.top_tokens_per_channel(scores, tokens, k=4, attention_mask=inputs["attention_mask"])
    assert len(top) == 3 and all(len(t) == 4 for t in top)
    for j, entries in enumerate(top):
        values = [v for *_, v in entries]
        assert values == sorted(values, reverse=True)
        assert all(inputs["attention_mask"][b, i] == 1 for _, b, i, _ in entries)
        for token, b, i, v in entries:
            assert token == tokens[b][i] and v == pytest.approx(float(scores[b, i, j]))
    png = figures.save_text_channel_view(scores, tokens, tmp_path / "t.png", attention_mask=inputs["attention_mask"])
    page = figures.save_text_channel_view(scores, tokens, tmp_path / "t.html", k=2)
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    text = page.read_text()
    assert text.count("<tr><td>ch ") == 3 and top[0][0][0] in text
    with pytest.raises(ValueError, match=r"\.png or \.html"):
        figures.save_text_channel_view(scores, tokens, tmp_path / "t.txt")


def test_decode_gift_channels():
    model = gift_model(tiny_llama, r=3, target_modules=["k_proj", "o_proj"])
    decoded = interpret.decode_gift_channels(model, k=5)
    assert sorted(decoded) == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]  # k_proj: 32-dim
    hf = model.get_base_model()
    c = interpret.cluster_vectors(model, "layers.1.self_attn.o_proj")["model.layers.1.self_attn.o_proj"]
    with torch.no_grad():
        logits = hf.lm_head(hf.model.norm(c.T))
    chans = decoded["model.layers.1.self_attn.o_proj"]
    assert len(chans) == 3 and all(len(ch) == 5 for ch in chans)
    for j, ch in enumerate(chans):
        assert [t for t, _ in ch] == logits[j].topk(5).indices.tolist()
        assert [v for _, v in ch] == pytest.approx(logits[j].topk(5).values.tolist(), rel=1e-5)
    with pytest.raises(ValueError, match=r"do not write to the 64-dim residual stream"):
        interpret.decode_gift_channels(model, layer=["layers.0.self_attn.k_proj", "layers.0.self_attn.o_proj"])
    with pytest.raises(ValueError, match="No requested GIFT layer writes"):
        interpret.decode_gift_channels(model, layer="layers.0.self_attn.k_proj")
    with pytest.raises(ValueError, match="LM head reads 64-dim"):
        interpret.decode_vectors(model, torch.zeros(2, 32))
    no_head = gift_model(tiny_dinov2, r=2, target_modules=["o_proj"])
    with pytest.raises(ValueError, match="no LM head"):
        interpret.decode_gift_channels(no_head)


# ------------------------------------------------------------------------------------------------ LoFiT
def test_lofit_head_map_values(tmp_path):
    model = get_peft_model(tiny_gpt2(), peft_gift.LofitConfig(mode="scale", init_std=0.3))
    grid = figures.save_lofit_head_map(model, tmp_path / "heads.png", k=2)
    assert grid.shape == (2, 4)
    for layer in (m for m in model.modules() if isinstance(m, LofitLayer)):
        a = layer.lofit_head_scale["default"].weight.detach()
        assert grid[layer.layer_index] == pytest.approx(a.norm(dim=-1).tolist(), rel=1e-6)
    assert {k: grid[k] for k in peft_gift.lofit.head_scores(model)} == pytest.approx(peft_gift.lofit.head_scores(model))
    assert (tmp_path / "heads.png").read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match=r"outside the 2 layers × 4 heads"):
        figures.save_lofit_head_map(model, tmp_path / "bad.png", selected=[(5, 0)])


def test_lofit_partial_layers_leave_nan():
    model = get_peft_model(tiny_llama(), peft_gift.LofitConfig(mode="scale", layers_to_transform=[1], init_std=0.1))
    grid = interpret.lofit_head_score_grid(model)
    assert grid.shape == (2, 4) and np.isnan(grid[0]).all() and np.isfinite(grid[1]).all()


def test_lofit_offsets_and_decoding():
    heads = [(0, 1), (1, 0), (1, 3)]
    model = get_peft_model(tiny_llama(), peft_gift.LofitConfig(mode="bias", heads=heads, init_std=0.5))
    vectors = interpret.lofit_offset_vectors(model)
    assert list(vectors) == heads and all(v.shape == (64,) for v in vectors.values())
    # summed per layer they equal the bias an exact merge adds (kept by the layer: Llama's o_proj has no bias)
    layers = {m.layer_index: m for m in model.modules() if isinstance(m, LofitLayer)}
    model.merge_adapter()
    for index, layer in layers.items():
        added = sum(v for (l, _), v in vectors.items() if l == index)
        assert layer.get_base_layer().bias is None
        torch.testing.assert_close(layer.merged_effective_bias(), added, rtol=1e-5, atol=1e-6)
    model.unmerge_adapter()
    decoded = interpret.decode_lofit_offsets(model, k=4)
    assert list(decoded) == heads and all(len(v) == 4 for v in decoded.values())
    hf = model.get_base_model()
    with torch.no_grad():
        expected = hf.lm_head(hf.model.norm(vectors[(1, 3)])).topk(4).indices.tolist()
    assert [t for t, _ in decoded[(1, 3)]] == expected


def test_lofit_mode_errors():
    bias = get_peft_model(tiny_llama(), peft_gift.LofitConfig(mode="bias", heads=[(0, 0)]))
    with pytest.raises(ValueError, match=r"need a LoFiT scale adapter \(mode='scale'.*has mode='bias'"):
        interpret.lofit_head_score_grid(bias)
    scale = get_peft_model(tiny_llama(), peft_gift.LofitConfig(mode="scale"))
    with pytest.raises(ValueError, match=r"need a LoFiT bias adapter \(mode='bias'.*has mode='scale'"):
        interpret.lofit_offset_vectors(scale)
    gift = gift_model(tiny_llama, r=2, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="no LoFiT adapter"):
        interpret.lofit_head_score_grid(gift)


# ------------------------------------------------------------------------------------------------ CLI
def test_visualize_smoke_writes_valid_pngs(tmp_path):
    from PIL import Image

    from peft_gift.bench import visualize

    assert visualize.main(["--smoke", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    files = summary["files"]
    pngs = [f for f in files if f.endswith(".png")]
    kinds = {os.path.basename(f).split("_")[0] + "_" + os.path.basename(f).split("_")[1] for f in pngs}
    assert {"gift_maps", "gift_tokens", "lofit_head"} <= kinds
    for f in pngs:
        data = open(f, "rb").read()
        assert data[:8] == PNG_SIGNATURE, f
        with Image.open(f) as im:
            im.load()
            assert im.size[0] > 50 and im.size[1] > 50
    assert any(f.endswith("gift_decode.md") for f in files) and any(f.endswith("lofit_decode.md") for f in files)
    decode = open(next(f for f in files if f.endswith("lofit_decode.md"))).read()
    assert decode.count("| layer ") == 3 and "`w" in decode  # 3 selected heads, decoded with the tokenizer


def _dense_scores(layer, x, adapter):
    """(x + s·φψx) Wᵀ + b, projected on C = W·φ — all with ``adapter``'s Θ (the channel-score formula, densely)."""
    phi, psi = (t.detach().double() for t in layer.theta(adapter))
    w = dense_w(layer)
    bias = layer.get_base_layer().bias
    y = (x + layer.gift_scaling[adapter] * (x @ psi.T) @ phi.T) @ w.T + (0 if bias is None else bias.detach().double())
    return y @ (w @ phi)


def test_channel_scores_read_the_named_adapter_not_the_active_one():
    model = get_peft_model(tiny_llama(), peft_gift.GiftConfig(r=3, target_modules=["v_proj"]))
    model.add_adapter("other", peft_gift.GiftConfig(r=3, target_modules=["v_proj"]))
    randomise_theta(model, std=0.3, seed=5)
    model.set_adapter("default")
    inputs = text_inputs()
    layers = named_gift_layers(model)
    seen, handles = capture_inputs(model, layers)
    with torch.no_grad():
        model(**inputs)
    for h in handles:
        h.remove()
    scores = interpret.channel_scores(model, inputs, adapter_name="other")
    for name, layer in layers.items():
        torch.testing.assert_close(scores[name].double(), _dense_scores(layer, seen[name], "other"), rtol=1e-4,
                                   atol=1e-4)
    # inside disable_adapter the layer input is the base model's, but y is still adapter "other"'s output
    seen, handles = capture_inputs(model, layers)
    with model.disable_adapter():
        with torch.no_grad():
            model(**inputs)
        disabled = interpret.channel_scores(model, inputs, adapter_name="other")
    for h in handles:
        h.remove()
    for name, layer in layers.items():
        torch.testing.assert_close(disabled[name].double(), _dense_scores(layer, seen[name], "other"), rtol=1e-4,
                                   atol=1e-4)


def _visualize_module():
    from peft_gift.bench import visualize

    return visualize


@pytest.mark.parametrize("content,message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "is not a PEFT adapter config"),
    ('{"r": 4}', "is not a PEFT adapter config"),
], ids=["garbage", "list", "no-peft-type"])
def test_visualize_garbage_adapter_config_is_a_one_line_error(tmp_path, content, message):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(content)
    with pytest.raises(SystemExit) as exc:
        _visualize_module().main(["--adapter", str(adapter), "--out", str(tmp_path / "out")])
    text = str(exc.value)
    assert text.startswith("error: ") and "adapter_config.json" in text and message in text and "\n" not in text


@pytest.mark.parametrize("base", ["no-such-org/no-such-model-xyz", "{missing_dir}"], ids=["hub-id", "missing-dir"])
def test_visualize_bad_base_model_is_a_one_line_error(tmp_path, monkeypatch, base):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = get_peft_model(tiny_llama(), peft_gift.GiftConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(SystemExit) as exc:
        _visualize_module().main(["--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "out"),
                                  "--base-model", base.format(missing_dir=tmp_path / "nope")])
    text = str(exc.value)
    assert text.startswith("error: ") and "base" in text and "\n" not in text, text
