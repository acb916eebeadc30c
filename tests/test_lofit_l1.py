"""LoFiT's L1 term λ·Σ|A|: added to A's gradient by the optimizer step, once per step, whatever computes the loss
(plain loop with several torch.optim optimizers, gradient accumulation, two forwards per backward, gradient
checkpointing, torch.compile, HF Trainer, TRL SFTTrainer, layers injected without a PeftModel), never in a loss value.
The reference is the λ = 0 twin whose loss gets λ·Σ|A| added once per step."""

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


def _after_one_step(pm, backward, optimizer_cls=torch.optim.SGD, steps=1):
    """A after ``steps`` ``optimizer_cls`` steps, each with the gradient ``backward(pm)`` builds (any number of
    backward passes). SGD by default: its step is linear in the gradient, so a term counted twice shows (Adam's
    first step, g/|g|, would hide it)."""
    optimizer = optimizer_cls([p for p in pm.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        backward(pm)
        optimizer.step()
    return {n: p.detach().clone() for n, p in _scales(pm).items()}


def _assert_same_scales(got, want):
    assert len(got) == 2
    for name in got:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5)


def _penalty_in_loss(ref):
    """The reference objective's extra term: λ·Σ|A| added to the loss once per step (config λ = 0)."""
    return ref.base_model.l1_penalty(l1_lambda=LAM)


@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.AdamW, torch.optim.Adagrad])
@pytest.mark.parametrize("task_type", [None, "CAUSAL_LM"])
def test_step_equals_loss_plus_penalty_and_loss_value_excludes_it(task_type, optimizer_cls):
    pm, ref = _pair(task_type=task_type)
    batch = text_inputs(2, 8)
    torch.testing.assert_close(_task_loss(pm, batch), _task_loss(ref, batch))  # the reported loss is the task loss
    got = _after_one_step(pm, lambda m: _task_loss(m, batch).backward(), optimizer_cls, steps=3)
    want = _after_one_step(ref, lambda m: (_task_loss(m, batch) + _penalty_in_loss(m)).backward(), optimizer_cls,
                           steps=3)
    _assert_same_scales(got, want)
    sum_abs = sum(p.abs().sum() for p in _scales(pm).values())
    torch.testing.assert_close(pm.l1_penalty(), LAM * sum_abs)  # the documented way to log it


def test_backward_leaves_the_gradient_to_the_data_term():
    """Nothing happens in backward: the gradient of A is the data term's until the optimizer steps."""
    pm, ref = _pair()
    batch = text_inputs(2, 8)
    _task_loss(pm, batch).backward()
    _task_loss(ref, batch).backward()
    for name, param in _scales(pm).items():
        torch.testing.assert_close(param.grad, _scales(ref)[name].grad, rtol=0, atol=0)


def test_penalty_counted_once_per_step_under_gradient_accumulation():
    pm, ref = _pair()
    batches = [text_inputs(2, 8, seed=s) for s in range(3)]

    def accumulate(m, penalty=False):
        for batch in batches:
            (_task_loss(m, batch) / 3).backward()
        if penalty:
            _penalty_in_loss(m).backward()

    _assert_same_scales(_after_one_step(pm, accumulate), _after_one_step(ref, lambda m: accumulate(m, True)))
    # later steps get the term again (once each)
    _assert_same_scales(_after_one_step(pm, accumulate, steps=2), _after_one_step(ref, lambda m: accumulate(m, True), steps=2))


def test_two_forwards_summed_into_one_backward_count_the_penalty_once():
    """Contrastive / siamese steps: two forward passes, one loss, one backward."""
    pm, ref = _pair()
    a, b = text_inputs(2, 8, seed=1), text_inputs(2, 8, seed=2)
    got = _after_one_step(pm, lambda m: (_task_loss(m, a) + _task_loss(m, b)).backward())
    want = _after_one_step(ref, lambda m: (_task_loss(m, a) + _task_loss(m, b) + _penalty_in_loss(m)).backward())
    _assert_same_scales(got, want)


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


def test_optimizer_without_lofit_parameters_is_untouched():
    pm, _ = _pair()
    other = torch.nn.Parameter(torch.ones(3))
    other.grad = torch.zeros(3)
    torch.optim.SGD([other], lr=1.0).step()
    torch.testing.assert_close(other.detach(), torch.ones(3))


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing(use_reentrant):
    pm, ref = _pair()
    for m in (pm, ref):
        m.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        m.enable_input_require_grads()
    batch = text_inputs(2, 8)
    got = _after_one_step(pm, lambda m: _task_loss(m, batch).backward())
    want = _after_one_step(ref, lambda m: (_task_loss(m, batch) + _penalty_in_loss(m)).backward())
    _assert_same_scales(got, want)


def test_compiled_forward():
    pm, ref = _pair()
    batch = text_inputs(2, 8)
    compiled = torch.compile(pm, backend="aot_eager")
    got = _after_one_step(pm, lambda m: _task_loss(compiled, batch).backward())
    want = _after_one_step(ref, lambda m: (_task_loss(m, batch) + _penalty_in_loss(m)).backward())
    _assert_same_scales(got, want)


def test_torch_func_grad_gives_the_data_gradient():
    """A functional gradient of a stage-1 model works (no custom autograd Function in the forward) and is that of
    the task loss; the documented way to include the term there is l1_penalty in the loss."""
    pm, ref = _pair()
    batch = text_inputs(2, 8)
    params = {n: p.detach() for n, p in pm.named_parameters() if p.requires_grad}

    def loss_fn(p, with_penalty):
        loss = torch.func.functional_call(pm, p, kwargs={**batch, "labels": batch["input_ids"]}).loss
        if with_penalty:
            loss = loss + LAM * sum(v.abs().sum() for v in p.values())
        return loss

    grads = torch.func.grad(loss_fn)(params, False)
    _task_loss(ref, batch).backward()
    for name, param in ref.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(grads[name], param.grad, atol=1e-6, rtol=1e-5)
    with_penalty = torch.func.grad(loss_fn)(params, True)
    for name, value in params.items():
        torch.testing.assert_close(with_penalty[name] - grads[name], LAM * value.sign(), atol=1e-6, rtol=1e-5)


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
    batch = text_inputs(2, 8)
    after = []
    for lam in (LAM, 0.0):
        torch.manual_seed(1)
        model = inject_adapter_in_model(LofitConfig(mode="scale", l1_lambda=lam, init_std=0.2), tiny_llama()).train()
        scales = [m.lofit_head_scale["default"].weight for m in model.modules() if isinstance(m, LofitLayer)]
        start = [a.detach().clone() for a in scales]
        optimizer = torch.optim.SGD(scales, lr=0.5)
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        after.append([a.detach().clone() for a in scales])
    assert len(start) == 2
    for with_l1, without, a0 in zip(*after, start):
        torch.testing.assert_close(with_l1 - without, -0.5 * LAM * a0.sign(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("marker", ["ds_id", "param_idx_in_group"])
def test_deepspeed_zero_owned_scales_refuse_the_config_lambda(marker):
    """DeepSpeed's ZeRO optimizer updates flat copies of A that the step hook cannot reach, so the config's λ would
    silently do nothing (tests/test_deepspeed.py runs the real thing): a training forward raises, naming the way that
    works (λ = 0 and `l1_penalty` in the loss); evaluation, λ = 0 and no-grad forwards are unaffected."""
    pm, twin = _pair()
    batch = text_inputs()
    for model in (pm, twin):
        for scale in _scales(model).values():
            setattr(scale, marker, 0)  # what DeepSpeed sets on the parameters its optimizer owns
    with pytest.raises(ValueError, match=r"'default' has l1_lambda > 0 under DeepSpeed ZeRO.*l1_penalty"):
        _task_loss(pm, batch)
    with torch.no_grad():
        _task_loss(pm, batch)
    _task_loss(twin, batch).backward()


def test_l1_penalty_value_and_gradient():
    """``l1_penalty`` is λ·Σ|A| with gradient λ·sign(A) (written as A·sign(A) so that ZeRO-3 can gather A for it)."""
    pm, _ = _pair()
    scales = list(_scales(pm).values())
    penalty = pm.base_model.l1_penalty()
    torch.testing.assert_close(penalty, LAM * sum(s.abs().sum() for s in scales))
    penalty.backward()
    for scale in scales:
        torch.testing.assert_close(scale.grad, LAM * torch.sign(scale.detach()))
