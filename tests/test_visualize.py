"""The visualiser's pictures say what they show: an untrained GIFT adapter is named as such (log and titles), every
title fits its figure (r=64, narrow figures, long module names), and padded positions are not drawn."""

from __future__ import annotations

import json
import logging

import matplotlib
import pytest
import torch
from peft import get_peft_model
from tiny_models import randomise_theta, text_inputs, tiny_dinov2, tiny_llama

import peft_gift
from peft_gift import interpret
from peft_gift.bench import visualize
from peft_gift.interpret import figures

matplotlib.use("Agg", force=True)


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved during the test, as {"titles": [(text, fits in the figure)], "maps": [(image width,
    x tick labels)]}, read from the figure just before it is written."""
    from matplotlib.figure import Figure

    seen = []
    save = Figure.savefig

    def recording_savefig(fig, *args, **kwargs):
        fig.canvas.draw()
        renderer, box = fig.canvas.get_renderer(), fig.bbox
        texts = [fig._suptitle] + [ax.title for ax in fig.axes]
        titles = []
        for t in texts:
            if t is None or not t.get_text():
                continue
            e = t.get_window_extent(renderer)
            titles.append((t.get_text(), e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y1 <= box.y1 + 1))
        maps = [(ax.images[0].get_array().shape[1], [label.get_text() for label in ax.get_xticklabels()])
                for ax in fig.axes if ax.images and ax.axison]
        seen.append({"titles": titles, "maps": maps})
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return seen


def _saved_llama_adapter(tmp_path, trained: bool):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(tiny_llama(), peft_gift.GiftConfig(r=2, target_modules=["q_proj"]))
    if trained:
        randomise_theta(model)
    model.save_pretrained(tmp_path / "adapter")
    return ["--adapter", str(tmp_path / "adapter"), "--base-model", str(tmp_path / "base"),
            "--text", "5 6 7 8", "--text", "9 10", "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("trained", [False, True], ids=["untrained", "trained"])
def test_untrained_gift_adapter_is_named_in_the_log_titles_and_summary(tmp_path, caplog, drawn, trained):
    """ψ = 0 (GIFT's init) draws a structured picture of the random φ: the log warns, every title says so."""
    args = _saved_llama_adapter(tmp_path, trained)
    with caplog.at_level(logging.INFO, logger="peft_gift"):
        assert visualize.main(args) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "untrained" in r.getMessage()]
    titles = [text for fig in drawn for text, _ in fig["titles"]]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert drawn and titles
    assert bool(warned) is not trained
    assert all(("untrained" in t) is not trained for t in titles if t.startswith("GIFT channels")), titles
    assert next(iter(summary["adapters"].values()))["untrained"] is not trained


def test_gift_is_untrained_for_both_inits():
    for init in ("gift", "wegeft"):
        model = get_peft_model(tiny_llama(), peft_gift.GiftConfig(r=2, init=init))
        assert figures.gift_is_untrained(model)
        randomise_theta(model)
        assert not figures.gift_is_untrained(model)


def test_titles_fit_their_figures_at_r64(tmp_path, drawn):
    vision = get_peft_model(tiny_dinov2(), peft_gift.GiftConfig(r=64, target_modules=["o_proj"]))
    randomise_theta(vision)
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    for channels in ([0], [0, 1], None):  # one narrow panel up to all 64 channels
        figures.save_cluster_maps(vision, pixels, tmp_path / "maps.png", layer="encoder.layer.1.attention.o_proj",
                                  channels=channels, labels=["a rather long class name", "x"],
                                  note=visualize.UNTRAINED_NOTE)
    text = get_peft_model(tiny_llama(), peft_gift.GiftConfig(r=64, target_modules=["q_proj"]))
    randomise_theta(text)
    inputs = text_inputs(batch=2, seq=3)
    (layer, scores), = interpret.channel_scores(text, inputs, "layers.1.self_attn.q_proj").items()
    tokens = [[f"t{i}" for i in row] for row in inputs["input_ids"].tolist()]
    figures.save_text_channel_view(scores, tokens, tmp_path / "t.png", title=f"GIFT channels of {layer}",
                                   note=visualize.UNTRAINED_NOTE)
    lofit = get_peft_model(tiny_llama(), peft_gift.LofitConfig(mode="scale", init_std=0.2))
    figures.save_lofit_head_map(lofit, tmp_path / "heads.png", k=2, title="LoFiT stage-1 head scores of a long run "
                                "name that does not fit on one line ‖A_h‖₂")
    assert len(drawn) == 5
    cut = [text for fig in drawn for text, fits in fig["titles"] if not fits]
    assert not cut, cut


def test_text_view_leaves_padded_positions_out(tmp_path, drawn):
    model = get_peft_model(tiny_llama(), peft_gift.GiftConfig(r=3, target_modules=["q_proj"]))
    randomise_theta(model)
    inputs = text_inputs(batch=3, seq=6)
    inputs["attention_mask"][1, 4:] = 0  # right padding
    inputs["attention_mask"][2, :2] = 0  # left padding
    (_, scores), = interpret.channel_scores(model, inputs, "layers.0.self_attn.q_proj").items()
    tokens = [[f"t{i}" for i in row] for row in inputs["input_ids"].tolist()]
    figures.save_text_channel_view(scores, tokens, tmp_path / "t.png", attention_mask=inputs["attention_mask"])
    page = figures.save_text_channel_view(scores, tokens, tmp_path / "t.html", attention_mask=inputs["attention_mask"])
    (fig,) = drawn
    kept = [[tokens[b][i] for i in range(6) if inputs["attention_mask"][b, i]] for b in range(3)]
    assert fig["maps"] == [(len(k), k) for k in kept]
    assert page.read_text().count("<span") == 3 * sum(map(len, kept))  # 3 channels × the unpadded tokens
