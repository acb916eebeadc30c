"""LoFiT's L1 term λ·Σ|A|: applied through A's gradient once per optimizer step, whatever computes the loss (plain
loop, gradient accumulation, HF Trainer, TRL SFTTrainer, layers injected without a PeftModel), never in a loss value."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model, inject_adapter_in_model
from tiny_models import text_inputs, tiny_gpt2, tiny_llama
from transformers import Trainer, TrainingArguments

import peft_gift  # noqa: F401
from peft_gift import LofitConfig
from peft_gift.lofit import LofitLayer

LAM = 0.05


def _gpt2():
    return tiny_gpt2(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # deterministic training steps


def _scales(model):
    return {n: p for n, p in model.named_parameters() if "lofit_head_scale" in n}


def _pair(factory=tiny_llama, task_type=None):
    """Two identical stage-1 models: one with l1_lambda=LAM, one with 0 (the reference adds λ·Σ|A| by hand)."""
    models = []
    for lam in (LAM, 0.0):
        torch.manual_seed(1)
        pm = get_peft_model(factory(), LofitConfig(mode="scale", l1_lambda=lam, init_std=0.2, task_type=task_type))
        pm.train()
        models.append(pm)
    return models


def _task_loss(pm, batch):
    return pm(**batch, labels=batch["input_ids"]).loss


@pytest.mark.parametrize("task_type", [None, "CAUSAL_LM"])
def test_gradient_is_that_of_loss_plus_penalty_and_loss_value_excludes_it(task_type):
    pm, ref = _pair(task_type=task_type)
    batch = text_inputs(2, 8)
    loss = _task_loss(pm, batch)
    ref_loss = _task_loss(ref, batch)
    torch.testing.assert_close(loss, ref_loss)  # the reported loss is the task loss only
    loss.backward()
    (ref_loss + ref.base_model.l1_penalty(l1_lambda=LAM)).backward()
    got, want = _scales(pm), _scales(ref)
    assert len(got) == 2
    for name in got:
        torch.testing.assert_close(got[name].grad, want[name].grad, atol=1e-6, rtol=1e-5)
    sum_abs = sum(p.abs().sum() for p in got.values())
    torch.testing.assert_close(pm.l1_penalty(), LAM * sum_abs)  # the documented way to log it


def test_penalty_counted_once_per_step_under_gradient_accumulation():
    pm, ref = _pair()
    batches = [text_inputs(2, 8, seed=s) for s in range(3)]
    for batch in batches:
        (_task_loss(pm, batch) / 3).backward()
    ref_objective = sum(_task_loss(ref, b) for b in batches) / 3 + ref.base_model.l1_penalty(l1_lambda=LAM)
    ref_objective.backward()
    got, want = _scales(pm), _scales(ref)
    for name in got:
        torch.testing.assert_close(got[name].grad, want[name].grad, atol=1e-6, rtol=1e-5)
    # after zero_grad the next step gets the term again
    pm.zero_grad()
    _task_loss(pm, batches[0]).backward()
    assert all(torch.isfinite(p.grad).all() for p in got.values())


def test_no_penalty_in_eval_loss_nor_when_disabled():
    pm, ref = _pair()
    batch = text_inputs(2, 8)
    pm.eval()
    with torch.no_grad():
        out = pm(**batch, labels=batch["input_ids"])
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    ce = torch.nn.functional.cross_entropy(logits, batch["input_ids"][:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ce)
    pm.train()
    with pm.disable_adapter():
        assert not _task_loss(pm, batch).requires_grad  # A is not used, so no gradient and no penalty reach it


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing(use_reentrant):
    pm, ref = _pair()
    pm.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    pm.enable_input_require_grads()
    batch = text_inputs(2, 8)
    _task_loss(pm, batch).backward()
    (_task_loss(ref, batch) + ref.base_model.l1_penalty(l1_lambda=LAM)).backward()
    got, want = _scales(pm), _scales(ref)
    for name in got:
        torch.testing.assert_close(got[name].grad, want[name].grad, atol=1e-6, rtol=1e-5)


def _one_step_each(train):
    """Run ``train(pm)`` (one SGD step) on the λ model and on the λ=0 twin; return (start A, A_λ, A_0) per name.
    With the same data gradient g: A_λ - A_0 = -lr·λ·sign(A_start), whatever the trainer's loss normalisation."""
    pm, plain = _pair(_gpt2)
    start = {n: p.detach().clone() for n, p in _scales(pm).items()}
    train(pm)
    train(plain)
    return start, {n: p.detach() for n, p in _scales(pm).items()}, {n: p.detach() for n, p in _scales(plain).items()}


def _assert_penalty_step(start, with_l1, without, lr):
    assert len(start) == 2
    for name in start:
        assert not torch.equal(without[name], start[name])  # the data term moved A
        torch.testing.assert_close(with_l1[name] - without[name], -lr * LAM * start[name].sign(), atol=1e-6, rtol=1e-4)


SGD_STEP = dict(max_steps=1, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
                report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)


def test_hf_trainer_with_gradient_accumulation_applies_the_penalty_once(tmp_path):
    rows = list(text_inputs(8, 8)["input_ids"])
    lr = 0.5

    def train(pm):
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                                 gradient_accumulation_steps=2, learning_rate=lr, **SGD_STEP)
        Trainer(model=pm, args=args, train_dataset=[dict(input_ids=r, labels=r) for r in rows]).train()

    _assert_penalty_step(*_one_step_each(train), lr)


def test_trl_sft_trainer_applies_the_penalty(tmp_path):
    """TRL computes its own loss from the logits and never reads ``outputs.loss``."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    data = Dataset.from_list([{"input_ids": r.tolist()} for r in text_inputs(4, 8)["input_ids"]])
    lr = 0.5

    def train(pm):
        args = trl.SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=lr,
                             dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False,
                             max_length=None, **SGD_STEP)
        trl.SFTTrainer(model=pm, args=args, train_dataset=data, processing_class=_tiny_tokenizer()).train()

    _assert_penalty_step(*_one_step_each(train), lr)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {str(i): i for i in range(128)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="1")))
    tok.pad_token, tok.eos_token, tok.unk_token = "0", "0", "1"
    return tok


def test_layers_injected_without_a_peft_model_keep_the_penalty():
    """``inject_adapter_in_model`` (what transformers' adapter API uses) throws the tuner away."""
    torch.manual_seed(1)
    model = inject_adapter_in_model(LofitConfig(mode="scale", l1_lambda=LAM, init_std=0.2), tiny_llama())
    model.train()
    batch = text_inputs(2, 8)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    torch.manual_seed(1)
    plain = inject_adapter_in_model(LofitConfig(mode="scale", l1_lambda=0.0, init_std=0.2), tiny_llama())
    plain.train()
    plain(**batch, labels=batch["input_ids"]).loss.backward()
    layers = [m for m in model.modules() if isinstance(m, LofitLayer)]
    plain_layers = [m for m in plain.modules() if isinstance(m, LofitLayer)]
    for layer, ref_layer in zip(layers, plain_layers):
        a = layer.lofit_head_scale["default"].weight
        torch.testing.assert_close(a.grad, ref_layer.lofit_head_scale["default"].weight.grad + LAM * a.detach().sign())
