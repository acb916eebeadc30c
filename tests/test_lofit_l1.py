"""LoFiT's L1 term λ·Σ|A|: added to A's gradient by the optimizer step, once per computed gradient, whatever computes
the loss and whatever loop steps (plain loop with several torch.optim optimizers, gradient accumulation, two forwards
per backward, gradient checkpointing, torch.compile, HF Trainer, TRL SFTTrainer/DPOTrainer, LBFGS and other closures,
fused AdamW under GradScaler, ZeroRedundancyOptimizer, subclasses calling super().step(), copied and unpickled
models, layers injected without a PeftModel), never in a reported loss value (only in a closure's, as in the
reference's); where it cannot be right (torch.func, DeepSpeed) a training forward raises. The reference is the λ = 0
twin whose loss gets λ·Σ|A| (`l1_penalty`) added once per step."""

from __future__ import annotations

import copy
import gc
import io
import sys
import types

import pytest
import torch
from peft import get_peft_model, inject_adapter_in_model
from tiny_models import text_inputs, tiny_gpt2, tiny_llama, word_tokenizer
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


@pytest.mark.parametrize("how", ["torch.func.grad", "functional_call + backward"])
def test_functional_training_forward_with_lambda_is_refused_and_the_twin_works(how):
    """A functional gradient never reaches the model's own parameter, so the step hook cannot add the term: with the
    config's λ a training forward through ``functional_call`` raises (naming λ = 0 + `l1_penalty`) before anything is
    updated; evaluation is unaffected; the λ = 0 twin with λ·Σ|A| in the loss gives the penalised gradient."""
    pm, ref = _pair()
    batch = text_inputs(2, 8)

    def loss_fn(model, p, with_penalty=False):
        loss = torch.func.functional_call(model, p, kwargs={**batch, "labels": batch["input_ids"]}).loss
        return loss + LAM * sum(v.abs().sum() for v in p.values()) if with_penalty else loss

    def grads(model, with_penalty=False):
        params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if how == "torch.func.grad":
            return torch.func.grad(lambda p: loss_fn(model, p, with_penalty))(params)
        params = {n: v.requires_grad_() for n, v in params.items()}
        loss_fn(model, params, with_penalty).backward()
        return {n: v.grad for n, v in params.items()}

    before = {n: p.detach().clone() for n, p in _scales(pm).items()}
    with pytest.raises(ValueError, match=r"'default' has l1_lambda > 0.*functional_call.*l1_lambda=0.*l1_penalty"):
        grads(pm)
    assert all(torch.equal(p, before[n]) for n, p in _scales(pm).items())
    with torch.no_grad():
        loss_fn(pm, {n: p.detach() for n, p in pm.named_parameters() if p.requires_grad})
    data, penalised = grads(ref), grads(ref, with_penalty=True)
    _task_loss(ref, batch).backward()
    assert len(data) == 2
    for name, param in _scales(ref).items():
        torch.testing.assert_close(data[name], param.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(penalised[name] - data[name], LAM * param.detach().sign(), atol=1e-6, rtol=1e-5)


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


def test_deepspeed_refuses_the_config_lambda_at_the_first_training_forward(monkeypatch):
    """DeepSpeed's optimizers (ZeRO, fp16/bf16) update flat copies of A that the step hook cannot reach, so the config's
    λ would silently do nothing (tests/test_deepspeed.py runs the real thing). The signal is DeepSpeed's public
    ``deepspeed.comm.is_initialized()`` (faked here: DeepSpeed is not installed in CI): a training forward raises,
    naming the way that works (λ = 0 and `l1_penalty` in the loss); evaluation, λ = 0 and no-grad forwards, and a
    process where DeepSpeed is imported but not initialised, are unaffected."""
    pm, twin = _pair()
    batch = text_inputs()
    state = {"initialised": True}
    monkeypatch.setitem(sys.modules, "deepspeed.comm", types.SimpleNamespace(is_initialized=lambda: state["initialised"]))
    with pytest.raises(ValueError, match=r"'default' has l1_lambda > 0 under DeepSpeed ZeRO.*l1_penalty"):
        _task_loss(pm, batch)
    with torch.no_grad():
        _task_loss(pm, batch)
    _task_loss(twin, batch).backward()
    state["initialised"] = False
    _task_loss(pm, batch).backward()


def test_l1_penalty_value_and_gradient():
    """``l1_penalty`` is λ·Σ|A| with gradient λ·sign(A) (written as A·sign(A) so that ZeRO-3 can gather A for it)."""
    pm, _ = _pair()
    scales = list(_scales(pm).values())
    penalty = pm.base_model.l1_penalty()
    torch.testing.assert_close(penalty, LAM * sum(s.abs().sum() for s in scales))
    penalty.backward()
    for scale in scales:
        torch.testing.assert_close(scale.grad, LAM * torch.sign(scale.detach()))


# ---------------------------------------------------------------------------------------------------- other loops
def _reference_closure(m, optimizer, batch, penalty):
    def closure():
        optimizer.zero_grad()
        loss = _task_loss(m, batch) + (_penalty_in_loss(m) if penalty else 0)
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("optimizer_cls, how", [(torch.optim.LBFGS, "positional"), (torch.optim.SGD, "keyword")])
def test_step_with_a_closure_equals_the_reference_and_its_loss_includes_the_term(optimizer_cls, how):
    """``optimizer.step(closure)`` (LBFGS, PyTorch Lightning): the closure computes the gradient inside the step, so
    the term goes into the closure's gradients, and its returned loss carries λ·Σ|A| as the reference's does."""
    pm, ref = _pair()
    batch = text_inputs(2, 8)
    results = []
    for m, penalty in ((pm, False), (ref, True)):
        optimizer = optimizer_cls([p for p in m.parameters() if p.requires_grad], lr=0.1)
        closure = _reference_closure(m, optimizer, batch, penalty)
        losses = [optimizer.step(closure) if how == "positional" else optimizer.step(closure=closure)
                  for _ in range(2)]
        results.append((losses, {n: p.detach().clone() for n, p in _scales(m).items()}))
    (losses, got), (want_losses, want) = results
    _assert_same_scales(got, want)
    for loss, want_loss in zip(losses, want_losses):
        torch.testing.assert_close(loss.detach(), want_loss.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fused, unscale", [(True, False), (True, True), (False, False)],
                         ids=["fused", "fused-unscale_", "foreach"])
def test_adamw_under_grad_scaler_equals_the_reference(fused, unscale):
    """GradScaler hands a fused optimizer the loss scale to divide by inside its kernel (unless ``unscale_`` ran):
    the term is scaled by it first, so the step equals the reference's (whose scaled loss holds λ·Σ|A|)."""
    pm, ref = _pair()
    batch = text_inputs(2, 8)
    after = []
    for m, penalty in ((pm, False), (ref, True)):
        optimizer = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.01, fused=fused,
                                      foreach=None if fused else True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
        for _ in range(3):
            optimizer.zero_grad()
            loss = _task_loss(m, batch) + (_penalty_in_loss(m) if penalty else 0)
            scaler.scale(loss).backward()
            if unscale:
                scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        after.append({n: p.detach().clone() for n, p in _scales(m).items()})
    _assert_same_scales(*after)


class _SuperStepSGD(torch.optim.SGD):
    """An optimizer subclass whose ``step`` calls ``super().step()``: both steps run the global step pre-hooks."""

    def step(self, closure=None):
        return super().step(closure)


def test_nested_steps_apply_the_term_once():
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # SGD.step itself is wrapped with the hooks from now on
    pm, ref = _pair()
    batch = text_inputs(2, 8)
    got = _after_one_step(pm, lambda m: _task_loss(m, batch).backward(), _SuperStepSGD, steps=2)
    want = _after_one_step(ref, lambda m: (_task_loss(m, batch) + _penalty_in_loss(m)).backward(), steps=2)
    _assert_same_scales(got, want)


def test_zero_redundancy_optimizer_applies_the_term_once(tmp_path):
    """ZeroRedundancyOptimizer steps a local torch.optim optimizer inside its own step (one gloo process here)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    pm, ref = _pair()
    batch = text_inputs(2, 8)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        got = _after_one_step(pm, lambda m: _task_loss(m, batch).backward(), steps=2,
                              optimizer_cls=lambda params, lr: ZeroRedundancyOptimizer(
                                  params, optimizer_class=torch.optim.SGD, lr=lr))
    finally:
        torch.distributed.destroy_process_group()
    want = _after_one_step(ref, lambda m: (_task_loss(m, batch) + _penalty_in_loss(m)).backward(), steps=2)
    _assert_same_scales(got, want)


def test_two_steps_on_one_gradient_use_the_term_once():
    """Stepping again on the same gradient (a retried step, an exception between steps): the reference's gradient
    holds λ·sign(A) once, so does ours."""
    pm, ref = _pair()
    batch = text_inputs(2, 8)
    after = []
    for m, penalty in ((pm, False), (ref, True)):
        optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
        (_task_loss(m, batch) + (_penalty_in_loss(m) if penalty else 0)).backward()
        optimizer.step()
        optimizer.step()
        after.append({n: p.detach().clone() for n, p in _scales(m).items()})
    _assert_same_scales(*after)


def _save_load(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("copy_fn", [copy.deepcopy, _save_load], ids=["deepcopy", "torch.save+load"])
def test_a_copied_or_unpickled_model_keeps_the_term(copy_fn):
    """``copy.deepcopy``, ``torch.save``/``torch.load`` of the whole model and so ``mp.spawn`` (which pickles it) give
    a model that trains as the original would, the original deleted first."""
    pm, ref = _pair()
    batch = text_inputs(2, 8)
    copied = copy_fn(pm)
    del pm
    gc.collect()
    got = _after_one_step(copied, lambda m: _task_loss(m, batch).backward(), steps=2)
    want = _after_one_step(ref, lambda m: (_task_loss(m, batch) + _penalty_in_loss(m)).backward(), steps=2)
    _assert_same_scales(got, want)


def test_an_inactive_adapter_with_zeroed_gradients_is_not_shrunk():
    """``zero_grad(set_to_none=False)`` leaves a zero gradient on an adapter that is no longer active: it stays as it
    is, and the active one trains as the reference (the term on the active adapters only)."""
    pm, ref = _pair()
    batch = text_inputs(2, 8)
    after = []
    for m, penalty in ((pm, False), (ref, True)):
        torch.manual_seed(2)
        m.add_adapter("other", LofitConfig(mode="scale", l1_lambda=LAM if m is pm else 0.0, init_std=0.2))
        params = [p for n, p in m.named_parameters() if "lofit_head_scale" in n]
        optimizer = torch.optim.SGD(params, lr=0.1)
        for active in ("default", "other", "other"):
            m.base_model.set_adapter(active)
            optimizer.zero_grad(set_to_none=False)
            (_task_loss(m, batch) + (_penalty_in_loss(m) if penalty else 0)).backward()
            if active == "other":
                frozen = {n: p.detach().clone() for n, p in m.named_parameters() if ".default." in n}
            optimizer.step()
        assert all(torch.equal(p.detach(), frozen[n]) for n, p in m.named_parameters() if ".default." in n)
        after.append({n: p.detach().clone() for n, p in m.named_parameters() if "lofit_head_scale" in n})
    got, want = after
    assert len(got) == 4
    for name in got:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5)


def test_trl_dpo_trainer_applies_the_penalty_to_the_policy_only(tmp_path):
    """DPO with an already-wrapped model: TRL copies "default" (λ > 0) into the frozen "ref" adapter and switches to it
    for the reference log-probs; one SGD step moves "default" by the data term plus -lr·λ·sign(A), "ref" not at all."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    words = ["the", "cat", "dog", "sky", "is", "red", "blue", "green", "."]
    tok = word_tokenizer(words)
    prefs = {"prompt": ["the cat is", "the dog is", "the sky is", "the cat is"],
             "chosen": [" red .", " blue .", " blue .", " green ."],
             "rejected": [" green .", " red .", " red .", " blue ."]}
    lr = 0.5

    def train(pm):
        args = trl.DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=lr, max_length=32,
                             bf16=False, **SGD_STEP)
        trl.DPOTrainer(model=pm, args=args, train_dataset=Dataset.from_dict(prefs), processing_class=tok).train()

    def llama():
        return tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          bos_token_id=None)

    pm, plain = _pair(llama, task_type="CAUSAL_LM")
    start = {n: p.detach().clone() for n, p in _scales(pm).items()}
    train(pm)
    train(plain)
    for model in (pm, plain):
        refs = {n: p.detach() for n, p in model.named_parameters() if ".ref." in n}
        assert len(refs) == 2 and all(torch.equal(v, start[n.replace(".ref.", ".default.")]) for n, v in refs.items())
    _assert_penalty_step(start, {n: p.detach() for n, p in _scales(pm).items()},
                         {n: p.detach() for n, p in _scales(plain).items()}, lr)
