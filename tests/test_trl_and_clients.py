"""GIFT and LoFiT (stage 1 ``mode="scale"`` with L1, stage 2 ``mode="bias"`` on heads) through the clients people
train and serve with, each checked against a number:

- TRL ``SFTTrainer`` with ``peft_config=``: the training loss goes down; the L1 penalty shrinks the stage-1 scales
  (λ > 0 against λ = 0 from the same init); a chat template that adds tokens (``chat_template_path=``) makes TRL set
  ``trainable_token_indices``: exactly those rows train and are saved and reloaded with the adapter.
- TRL ``DPOTrainer`` with ``peft_config=`` (finite losses, adapter moves) and with an already-wrapped PeftModel (TRL's
  "ref" adapter is a copy of "default" by parameter name, and stays frozen).
- ``transformers.pipeline("text-generation", model=peft_model)`` gives what ``peft_model.generate`` gives.
- A fresh process loads what the training CLI saved with ``AutoPeftModelFor...`` and reproduces the saved model's
  outputs; the adapter folder carries the peft-gift model card.

Tiny random Llama / BERT with word-level tokenizers, CPU, no Hub. Single-threaded (as tests/test_workflows.py): on a
shared 2-core machine the tiny models run faster on one thread.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from tiny_models import randomise_theta, tiny_llama, word_tokenizer

import peft_gift  # noqa: F401
from peft_gift import GiftConfig, LofitConfig, lofit_stage2_config

trl = pytest.importorskip("trl")

WORDS = ["the", "a", "cat", "dog", "sky", "grass", "is", "red", "blue", "green", "very", "big", "small", "what",
         "color", "of", "answer", "question", "user", "assistant", "yes", "no", ".", "?", ":"]
HEADS = [(0, 1), (1, 0), (1, 3)]  # stage-2 heads of the tiny Llama (2 layers x 4 heads of 16)


def _stage1(l1_lambda=1e-3, init_std=0.1, **kw):
    return LofitConfig(mode="scale", l1_lambda=l1_lambda, init_std=init_std, task_type="CAUSAL_LM", **kw)


CONFIGS = {  # fresh config objects each time: TRL writes into the one it is given
    "gift": lambda **kw: GiftConfig(r=4, task_type="CAUSAL_LM", **kw),
    "lofit_stage1": lambda **kw: _stage1(**kw),
    "lofit_stage2": lambda **kw: lofit_stage2_config(_stage1(), HEADS, init_std=0.0, **kw),
}
ADAPTER_KEYS = {"gift": ("gift_phi", "gift_psi"), "lofit_stage1": ("lofit_head_scale",),
                "lofit_stage2": ("lofit_head_offset",)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tokenizer():
    return word_tokenizer(WORDS)


def _model(tok, seed=0):
    return tiny_llama(seed, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None)


def _adapter_params(model, method):
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if ".default" in n and any(k in n for k in ADAPTER_KEYS[method])}


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


COMMON = dict(report_to=[], save_strategy="no", use_cpu=True, bf16=False, disable_tqdm=True, logging_steps=1,
              seed=0, data_seed=0, dataloader_num_workers=0)

SENTENCES = ["the cat is red .", "the dog is blue .", "the sky is very blue .", "the grass is green ."]


def _sft(tmp_path, model, tok, data, peft_config=None, *, steps=6, lr=3e-2, **kw):
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=steps, per_device_train_batch_size=4,
                         learning_rate=lr, lr_scheduler_type="constant", max_length=32, **COMMON, **kw)
    return trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config)


# ---------------------------------------------------------------- SFTTrainer(peft_config=...)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_sft_trainer_with_peft_config_lowers_the_loss(tmp_path, method):
    tok = _tokenizer()
    trainer = _sft(tmp_path, _model(tok), tok, Dataset.from_dict({"text": SENTENCES}), CONFIGS[method](), steps=8)
    assert isinstance(trainer.model, PeftModel) and trainer.model.peft_type == CONFIGS[method]().peft_type
    start = _adapter_params(trainer.model, method)
    assert start
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05, losses  # the same 4 sentences every step: the loss must go down
    end = _adapter_params(trainer.model, method)
    for name, value in end.items():
        assert torch.isfinite(value).all() and not torch.equal(value, start[name]), name


def test_sft_trainer_l1_penalty_shrinks_the_stage1_scales(tmp_path):
    """Same init and data, λ large vs λ = 0: the penalised scales end up smaller in Σ|A| (TRL builds its own loss
    from the logits; the tuner applies λ·sign(A) through A's gradient)."""
    tok = _tokenizer()
    data = Dataset.from_dict({"text": SENTENCES})
    runs = {}
    for lam in (1.0, 0.0):
        model = _model(tok)
        torch.manual_seed(3)  # the scales are drawn inside the trainer's get_peft_model
        trainer = _sft(tmp_path, model, tok, data, _stage1(l1_lambda=lam, init_std=0.1), steps=5, lr=1e-2)
        start = _adapter_params(trainer.model, "lofit_stage1")
        trainer.train()
        runs[lam] = start, _adapter_params(trainer.model, "lofit_stage1"), _losses(trainer)
    (start_l1, end_l1, losses_l1), (start_0, end_0, losses_0) = runs[1.0], runs[0.0]
    assert len(start_l1) == 2 and start_l1.keys() == start_0.keys()
    for name in start_l1:
        torch.testing.assert_close(start_l1[name], start_0[name], rtol=0, atol=0)  # same init
    l1 = {k: sum(float(v.abs().sum()) for v in d.values()) for k, d in
          (("start", start_l1), ("penalised", end_l1), ("plain", end_0))}
    assert l1["penalised"] < 0.8 * l1["start"], l1  # Adam steps of lr=1e-2 against sign(A), A ~ N(0, 0.1²)
    assert l1["penalised"] < 0.8 * l1["plain"], l1
    # the penalty is not part of the reported loss: the first step's loss is the same with and without it
    assert losses_l1[0] == pytest.approx(losses_0[0], rel=1e-6)


# ---------------------------------------------------------------- SFTTrainer with a chat template that adds tokens

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} : {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant : {% endif %}"
)


def _template_dir(tmp_path):
    """A local tokenizer folder for ``chat_template_path``: our words plus two new special tokens and a template."""
    src = _tokenizer()
    src.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    src.eos_token = "<|im_end|>"
    src.chat_template = CHAT_TEMPLATE
    path = tmp_path / "template_tokenizer"
    src.save_pretrained(str(path))
    return str(path)


CHATS = [[{"role": "user", "content": f"what color of the {thing} ?"},
          {"role": "assistant", "content": f"the {thing} is {color} ."}]
         for thing, color in [("cat", "red"), ("dog", "blue"), ("sky", "blue"), ("grass", "green")]]


@pytest.mark.parametrize("method", list(CONFIGS))
def test_sft_chat_template_adding_tokens_trains_and_saves_those_rows(tmp_path, method):
    from safetensors.torch import load_file

    tok = _tokenizer()
    n_before = len(tok)
    trainer = _sft(tmp_path, _model(tok), tok, Dataset.from_dict({"messages": CHATS}), CONFIGS[method](), steps=4,
                   chat_template_path=_template_dir(tmp_path))
    pm = trainer.model
    tok = trainer.processing_class
    new_ids = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert min(new_ids) >= n_before
    cfg = pm.peft_config["default"]
    indices = cfg.trainable_token_indices["embed_tokens"]  # set by TRL: the added tokens (+ resize padding tokens)
    assert set(new_ids) <= set(indices) and min(indices) >= n_before
    assert "lm_head" in cfg.modules_to_save
    embedding = pm.get_base_model().get_input_embeddings()
    base_rows = embedding.token_adapter.base_layer.weight.detach().clone()
    start = _adapter_params(pm, method)
    trainer.train()
    losses = _losses(trainer)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    # only the added rows changed: embedding(id) - base row is non-zero exactly for the added ids seen in training
    ids = torch.arange(base_rows.shape[0])
    with torch.no_grad():
        delta = embedding(ids) - base_rows
        assert torch.equal(embedding.token_adapter.base_layer.weight, base_rows)  # the base matrix is frozen
    changed = {int(i) for i in torch.nonzero(delta.abs().sum(-1) > 0)}
    assert changed == set(new_ids), (changed, new_ids)  # the resize-padding tokens never occur: their rows stay
    end = _adapter_params(pm, method)
    assert end and all(torch.isfinite(v).all() and not torch.equal(v, start[n]) for n, v in end.items())
    # saved with the adapter (the deltas of exactly those rows) and reloaded to the same outputs
    out = tmp_path / "adapter"
    trainer.save_model(str(out))
    saved = load_file(str(out / "adapter_model.safetensors"))
    deltas = [v for k, v in saved.items() if "trainable_tokens_delta" in k]
    assert len(deltas) == 1 and deltas[0].shape[0] == len(indices)
    batch = tok.apply_chat_template(CHATS[0], tokenize=True, return_dict=True, return_tensors="pt")
    pm.eval()
    with torch.no_grad():
        expected = pm(**batch).logits
    base = copy.deepcopy(pm).unload()  # the resized base model without any adapter
    reloaded = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected)


# ---------------------------------------------------------------- DPOTrainer

PREFS = {"prompt": ["the cat is", "the dog is", "the sky is", "the grass is"],
         "chosen": [" red .", " blue .", " blue .", " green ."],
         "rejected": [" green .", " red .", " small .", " big ."]}


def _dpo(tmp_path, model, tok, peft_config=None, steps=3):
    args = trl.DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=steps, per_device_train_batch_size=4,
                         learning_rate=3e-2, max_length=32, **COMMON)
    return trl.DPOTrainer(model=model, args=args, train_dataset=Dataset.from_dict(PREFS), processing_class=tok,
                          peft_config=peft_config)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_dpo_trainer_with_peft_config(tmp_path, method):
    tok = _tokenizer()
    trainer = _dpo(tmp_path, _model(tok), tok, CONFIGS[method]())
    start = _adapter_params(trainer.model, method)
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    if method != "lofit_stage1":  # identity at init (ψ = 0 / v = 0): the reference is the policy, loss = log 2
        assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert losses[-1] < losses[0], losses
    end = _adapter_params(trainer.model, method)
    for name, value in end.items():
        assert torch.isfinite(value).all() and not torch.equal(value, start[name]), name


def _wrapped(tok, method):
    """An already-wrapped PeftModel whose "default" adapter is not the identity (a "pretrained" adapter)."""
    cfg = CONFIGS[method]()
    pm = get_peft_model(_model(tok), cfg)
    if method == "gift":
        randomise_theta(pm, std=0.1, seed=1)
    else:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lofit_head" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return pm


@pytest.mark.parametrize("method", list(CONFIGS))
def test_dpo_trainer_with_a_wrapped_model_copies_default_into_ref(tmp_path, method):
    tok = _tokenizer()
    pm = _wrapped(tok, method)
    default = _adapter_params(pm, method)
    assert default and all(".default." in n for n in default)  # what TRL's copy looks for
    trainer = _dpo(tmp_path, pm, tok, steps=2)
    assert trainer.ref_model is None and set(pm.peft_config) == {"default", "ref"}
    params = dict(pm.named_parameters())
    ref = {n.replace(".default", ".ref"): v for n, v in default.items()}
    assert len(ref) == len(default) and set(ref) <= set(params), sorted(set(ref) - set(params))
    for name, value in ref.items():  # TRL copied "default" into "ref" by name (".default." → ".ref.")
        torch.testing.assert_close(params[name].detach(), value, rtol=0, atol=0, msg=name)
    _assert_only_default_trainable(params, default, ref)  # as PEFT does for LoRA: the inactive "ref" is frozen
    # the reference is the adapter as it was: the first DPO loss is log 2 (policy = reference), then it goes down
    trainer.train()
    losses = _losses(trainer)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4) and losses[-1] < losses[0], losses
    params = dict(pm.named_parameters())
    for name, value in ref.items():  # "ref" stays as it was, "default" trains
        torch.testing.assert_close(params[name].detach(), value, rtol=0, atol=0, msg=name)
    moved = _adapter_params(pm, method)
    assert all(not torch.equal(moved[n], default[n]) for n in default)
    # TRL switched to "ref" and back (set_adapter) at every step: "default" is active and trainable again
    assert pm.active_adapters == ["default"]
    _assert_only_default_trainable(params, default, ref)


def _assert_only_default_trainable(params, default, ref):
    assert all(params[n].requires_grad for n in default) and not any(params[n].requires_grad for n in ref)


# ---------------------------------------------------------------- transformers.pipeline("text-generation")


@pytest.mark.parametrize("method", list(CONFIGS))
def test_text_generation_pipeline_equals_generate(method):
    from transformers import pipeline

    tok = _tokenizer()
    pm = _wrapped(tok, method).eval()
    prompt = "what color of the cat ?"
    inputs = tok(prompt, return_tensors="pt")
    gen = dict(do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        ids = pm.generate(**inputs, **gen)[0]
        with pm.disable_adapter():
            base_logits = pm(**inputs).logits
        assert not torch.allclose(pm(**inputs).logits, base_logits, atol=1e-3)  # the adapter matters here
    pipe = pipeline("text-generation", model=pm, tokenizer=tok)
    out = pipe(prompt, **gen, return_tensors=True)[0]
    assert out["generated_token_ids"] == ids.tolist()
    text = pipe(prompt, **gen, return_full_text=False)[0]["generated_text"]
    assert text.strip() == tok.decode(ids[inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


# ---------------------------------------------------------------- fresh-process AutoPeftModel load of CLI output

CLI_TRAIN = {"num_train_epochs": 1, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
             "learning_rate": 3e-2, "logging_steps": 100, "disable_tqdm": True}


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory):
    """Run the training CLI (peft_gift.recipes.cli.main, what scripts/train.py calls) for LoFiT (two stages, causal LM)
    and GIFT (sequence classification) on tiny local models; record the saved models' outputs at save time."""
    import yaml
    from tiny_models import tiny_bert

    from peft_gift import hub
    from peft_gift.recipes import cli

    d = tmp_path_factory.mktemp("cli")
    tok = word_tokenizer(WORDS + ["good", "bad", "movie", "film", "was", "Question", "Answer", "\n"])
    _model(tok).save_pretrained(d / "llama")
    tok.save_pretrained(d / "llama")
    bert_tok = word_tokenizer(WORDS + ["good", "bad", "movie", "film", "was"], "bert")
    tiny_bert(vocab_size=len(bert_tok)).save_pretrained(d / "bert")
    bert_tok.save_pretrained(d / "bert")
    colors = {"sky": "blue", "grass": "green", "cat": "red", "dog": "blue"}
    mc = [{"prompt": f"Question: what color of {t} ?\nAnswer:", "choices": ["red", "blue", "green"],
           "label": ["red", "blue", "green"].index(colors[t])} for t in colors for _ in range(3)]
    Dataset.from_list(mc).save_to_disk(d / "mc")
    cls = [{"sentence": f"the {w} was {'very ' * (i % 2)}{s}", "label": int(s == "good")}
           for i, (w, s) in enumerate([(w, s) for w in ("movie", "film", "plot") for s in ("good", "bad")] * 2)]
    Dataset.from_list(cls).save_to_disk(d / "cls")

    probe = {"llama": tok("Question: what color of sky ?\nAnswer: blue", return_tensors="pt"),
             "bert": bert_tok(["the movie was good", "the film was very bad"], return_tensors="pt", padding=True)}
    saved = {}  # adapter folder -> logits of the in-memory model that wrote it
    real_card = hub.write_model_card

    def recording_card(model, folder, *a, **k):
        was_training = model.training
        model.eval()
        kind = "llama" if "CAUSAL" in str(model.peft_config["default"].task_type) else "bert"
        with torch.no_grad():
            saved[str(folder)] = (kind, model(**probe[kind]).logits.tolist())
        model.train(was_training)
        return real_card(model, folder, *a, **k)

    jobs = {
        "lofit": {"model": str(d / "llama"), "task": "causal_lm_mc",
                  "method": {"name": "lofit", "k": 3, "stage1": {"l1_lambda": 1e-3, "init_std": 0.1}},
                  "data": {"dataset": str(d / "mc"), "max_length": 32}, "training": dict(CLI_TRAIN)},
        "gift": {"model": str(d / "bert"), "task": "seq_cls", "method": {"name": "gift", "r": 4},
                 "data": {"dataset": str(d / "cls"), "max_length": 16}, "training": dict(CLI_TRAIN)},
    }
    hub.write_model_card = recording_card
    try:
        for name, cfg in jobs.items():
            path = d / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            assert cli.main([str(path), "--output-dir", str(d / name)]) == 0
    finally:
        hub.write_model_card = real_card
    return d, saved, probe


def test_fresh_process_auto_peft_model_loads_what_the_cli_saved(cli_outputs, fresh_process):
    d, saved, probe = cli_outputs
    folders = {str(d / "lofit" / "stage1_adapter"), str(d / "lofit" / "adapter"), str(d / "gift" / "adapter")}
    assert set(saved) == folders  # the CLI saved (and carded) these three adapters
    for folder in folders:
        card = open(f"{folder}/README.md").read()
        assert all(line in card for line in peft_gift.hub.install_instructions()) and "import peft_gift" in card, folder
        assert json.load(open(f"{folder}/adapter_config.json"))["peft_type"] in ("GIFT", "LOFIT")
    probe_json = {k: {n: t.tolist() for n, t in v.items()} for k, v in probe.items()}
    out = fresh_process(f"""
        import json, torch
        import peft_gift
        from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
        probe = json.loads({json.dumps(json.dumps(probe_json))})
        auto = {{"llama": AutoPeftModelForCausalLM, "bert": AutoPeftModelForSequenceClassification}}
        result = {{}}
        for folder, kind in json.loads({json.dumps(json.dumps({f: saved[f][0] for f in folders}))}).items():
            model = auto[kind].from_pretrained(folder).eval()
            with torch.no_grad():
                result[folder] = model(**{{k: torch.tensor(v) for k, v in probe[kind].items()}}).logits.tolist()
        print(json.dumps(result))
    """)
    got = json.loads(out.strip().splitlines()[-1])
    for folder in folders:
        torch.testing.assert_close(torch.tensor(got[folder]), torch.tensor(saved[folder][1]), atol=1e-5, rtol=0,
                                   msg=folder)
