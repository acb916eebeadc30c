"""Train a tiny GIFT / LoFiT Llama with the HF Trainer under DeepSpeed ZeRO-2 / ZeRO-3 and dump the trained tensors.

The check behind ``scripts/deepspeed_check.py`` (the tests run it: tests/test_deepspeed.py).

    # 2 ranks over gloo on CPU (DeepSpeed's CPU accelerator), ZeRO stage 2 or 3 (configs/deepspeed/zero<stage>.json)
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 scripts/deepspeed_check.py --zero 3 --out /tmp/ds
    # ZeRO-3 with the base model loaded under deepspeed.zero.Init (partitioned before the adapter is added)
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 scripts/deepspeed_check.py --zero 3 --zero-init --out /tmp/ds
    # the single-process reference (plain Trainer, same global batch of 4)
    python scripts/deepspeed_check.py --out /tmp/ds

Methods (``--method``, comma-separated):

* ``gift``: GIFT r=4 on q/v, one Θ per module type shared by both decoder layers (Θ lives on the tuner);
* ``lofit2``: LoFiT stage 2, offsets on 3 heads;
* ``lofit1``: LoFiT stage 1, scales on every head, ``l1_lambda=1e-3`` in the config (the library adds the L1 term
  at each torch.optim step; under ZeRO the first training forward refuses it: the run records the message);
* ``lofit1-loss``: the same with ``l1_lambda=0`` and ``model.l1_penalty(l1_lambda=1e-3)`` added to the loss (the way
  under DeepSpeed; under ZeRO-3 `l1_penalty` gathers the scales);
* ``lofit1-l0``: no L1 term at all.

Each run trains 3 AdamW steps (lr 1e-2, gradient clipping 1.0) on the same 4 sequences (global batch 4: 2 per rank
on 2 ranks). Then every trainable tensor is gathered (ZeRO-3: ``deepspeed.zero.GatheredParameters``) and rank 0
writes ``<out>/<method>-<tag>.safetensors`` (names as in ``named_parameters``) and ``<out>/<method>-<tag>.json``
(losses, the samples each rank read, the sizes of the Θ tensors the GIFT layers read in their forward);
``trainer.save_model`` writes the adapter to ``<out>/<method>-<tag>/``. ``tag`` is ``zero<stage>-<world>[-init]``
or ``single``.

ZeRO-3 is run with ``stage3_param_persistence_threshold: 0`` so that every parameter is partitioned, Θ included, as
it is in a real-sized model (the Trainer's "auto" threshold, 10·hidden, would keep the tiny model's Θ whole on every
rank and hide what ZeRO-3 does to it).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from .tiny import tiny_causal_lm

# the repository's DeepSpeed configs (the check runs from a checkout)
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "configs", "deepspeed")
SEQ, VOCAB, GLOBAL_BATCH = 12, 128, 4
METHODS = ("gift", "lofit2", "lofit1", "lofit1-loss", "lofit1-l0")
L1_LAMBDA = 1e-3
LOFIT_HEADS = [(0, 1), (1, 2), (1, 3)]


def build_base():
    """The tiny Llama (2 layers, hidden 64, 4 heads / 2 KV heads, vocab 128) with seeded random weights."""
    return tiny_causal_lm("llama", seed=0, vocab_size=VOCAB)


def peft_config(method: str):
    import peft_gift

    if method == "gift":
        return peft_gift.GiftConfig(r=4, target_modules=["q_proj", "v_proj"])
    if method == "lofit2":
        return peft_gift.LofitConfig(mode="bias", heads=LOFIT_HEADS, init_std=0.1)
    if method.startswith("lofit1"):
        # the config's λ only for "lofit1"; the other lofit1-* methods add the term to the loss, or have none
        return peft_gift.LofitConfig(mode="scale", l1_lambda=L1_LAMBDA if method == "lofit1" else 0.0, init_std=0.1)
    raise SystemExit(f"unknown --method {method!r}; choose from {', '.join(METHODS)}")


def build(method: str, base=None):
    """The tiny Llama (seeded random weights, or ``base``) with ``method``'s adapter (seeded)."""
    from peft import get_peft_model

    if base is None:
        base = build_base()
    torch.manual_seed(1)
    return get_peft_model(base, peft_config(method))


def load_base_under_zero_init(folder: str):
    """The base weights `build` uses (saved to ``folder`` by `save_base`), loaded with ``from_pretrained`` after the
    ZeRO-3 ``TrainingArguments`` exist, so that transformers creates the model under ``deepspeed.zero.Init`` (every
    weight partitioned before the adapter is added), as one loads a model too big for one device."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    assert is_deepspeed_zero3_enabled()
    return AutoModelForCausalLM.from_pretrained(folder)


def save_base(folder: str) -> str:
    """Save `build`'s base model to ``folder`` (before any ZeRO-3 arguments exist: a plain model)."""
    build_base().save_pretrained(folder)
    return folder


def l1_loss_trainer_class():
    """A Trainer adding LoFiT's stage-1 penalty λ·Σ|A| (``model.l1_penalty(l1_lambda=L1_LAMBDA)``) to the training
    loss, for a config with ``l1_lambda=0``. It is added after the Trainer scaled the loss for averaging over ranks,
    so every rank adds it once and the averaged gradient holds it once."""
    from transformers import Trainer

    class L1LossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            loss = loss + self.accelerator.unwrap_model(model).base_model.l1_penalty(l1_lambda=L1_LAMBDA)
            return (loss, outputs) if return_outputs else loss

    return L1LossTrainer


def deepspeed_config(stage: int) -> dict:
    """``configs/deepspeed/zero<stage>.json``, given to ``TrainingArguments(deepspeed=...)`` ("auto" values come from
    the arguments). It has no "optimizer" block: DeepSpeed wraps the Trainer's ``torch.optim.AdamW`` (the reference's
    optimizer). ZeRO-3: ``stage3_param_persistence_threshold`` 0 for this tiny model (see the module docstring)."""
    with open(os.path.join(CONFIGS, f"zero{stage}.json")) as f:
        config = json.load(f)
    if stage == 3:
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return config


class Data(torch.utils.data.Dataset):
    """The 4 fixed sequences; records which indices this process read."""

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=g)
        self.read: list[int] = []

    def __len__(self):
        return GLOBAL_BATCH

    def __getitem__(self, i):
        self.read.append(int(i))
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def watch_theta_shapes(model) -> list:
    """Record the numel of every Θ tensor the GIFT layers read in their forward (they read it by calling the tuner's
    `SharedTheta` containers; 0 would be a ZeRO-3 partition placeholder, i.e. Θ not gathered). Returns the list the
    hooks append to."""
    from peft_gift.gift.layer import SharedTheta

    seen: list[int] = []
    for module in model.modules():
        if isinstance(module, SharedTheta):
            module.register_forward_hook(lambda module, args, output: seen.append(output.numel()))
    return seen


def gathered_trainable(model) -> dict[str, torch.Tensor]:
    """Full copies of the trainable parameters (ZeRO-3: gathered from their partitions)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    partitioned = [p for _, p in params if hasattr(p, "ds_id")]
    if partitioned:
        import deepspeed

        with deepspeed.zero.GatheredParameters(partitioned):
            return {n: p.detach().clone().cpu() for n, p in params}
    return {n: p.detach().clone().cpu() for n, p in params}


def cpu_deepspeed_state() -> None:
    """Set up accelerate's process state for DeepSpeed over gloo on CPU, before ``TrainingArguments`` is created.

    With ``deepspeed=...`` the Trainer's arguments create accelerate's state without a backend; on a machine without
    an accelerator accelerate 1.16 then finds none, DeepSpeed initialises gloo itself, and accelerate reports ONE
    process (``num_processes=1``): DeepSpeed's batch check fails (``train_batch_size`` 2 != 2 * 1 * 2), and with an
    explicit batch size every rank would read the whole global batch. Creating the state here with ``backend="gloo"``
    (and ``accelerator_config={"use_configured_state": True}`` in the arguments) gives the true world size. With
    ``use_cpu=True`` instead, accelerate drops its DeepSpeed plugin altogether and trains with DDP."""
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # a previous Trainer's state (one launch, several runs)
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        state = PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    assert state.num_processes == int(os.environ.get("WORLD_SIZE", "1")), state


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default=",".join(METHODS))
    parser.add_argument("--zero", type=int, choices=(2, 3), default=None, help="DeepSpeed ZeRO stage (omit: reference)")
    parser.add_argument("--zero-init", action="store_true",
                        help="ZeRO-3: load the base model after the arguments exist (under zero.Init, partitioned)")
    parser.add_argument("--out", required=True)
    return parser


def main(argv=None) -> int:
    """``scripts/deepspeed_check.py``: train and dump every ``--method`` (see the module docstring)."""
    args = _parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tag = f"zero{args.zero}-{world}" if args.zero else "single"
    if args.zero_init:
        tag += "-init"
    os.makedirs(args.out, exist_ok=True)
    base_folder = None
    if args.zero_init:  # saved before any process state exists; one folder per rank: no rank waits for another
        base_folder = save_base(os.path.join(args.out, f"base-rank{os.environ.get('RANK', '0')}"))
    for method in args.method.split(","):
        run_method(args, method, world, tag, base_folder)
    return 0


def training_arguments(args, method: str, world: int, tag: str):
    """The Trainer's arguments: 3 AdamW steps, lr 1e-2, clipping 1.0, global batch 4; ZeRO: the DeepSpeed config."""
    from transformers import TrainingArguments

    extra = {"use_cpu": True}
    if args.zero:
        cpu_deepspeed_state()
        extra = {"use_cpu": False, "deepspeed": deepspeed_config(args.zero),
                 "accelerator_config": {"use_configured_state": True}}
    return TrainingArguments(
        output_dir=os.path.join(args.out, f"trainer-{method}-{tag}"), max_steps=3, learning_rate=1e-2,
        per_device_train_batch_size=GLOBAL_BATCH // world, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, optim="adamw_torch", max_grad_norm=1.0, logging_steps=1, save_strategy="no",
        report_to="none", seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True,
        ddp_backend="gloo" if world > 1 else None, **extra)


def run_method(args, method: str, world: int, tag: str, base_folder: str | None) -> None:
    """Train ``method`` and write its outputs (or, for lofit1 under ZeRO, the refusal)."""
    from transformers import Trainer

    # built before the arguments: with ZeRO-3 arguments in place transformers would create it under zero.Init
    model = None if args.zero_init else build(method)
    targs = training_arguments(args, method, world, tag)
    if args.zero_init:
        model = build(method, load_base_under_zero_init(base_folder))
    partitioned_base = any(hasattr(p, "ds_id") for p in model.parameters())
    seen = watch_theta_shapes(model)
    data = Data()
    trainer_cls = l1_loss_trainer_class() if method == "lofit1-loss" else Trainer
    trainer = trainer_cls(model=model, args=targs, train_dataset=data)
    try:
        trainer.train()
    except ValueError as error:  # lofit1 under ZeRO: the config's L1 term is refused before any step
        if method != "lofit1" or not args.zero:
            raise
        if trainer.is_world_process_zero():
            with open(os.path.join(args.out, f"{method}-{tag}.json"), "w") as f:
                json.dump({"refused": str(error), "world": world, "zero_stage": args.zero}, f)
    else:
        write_results(trainer, args, method, world, tag, data.read, seen, partitioned_base)
    if args.zero:
        # the ZeRO-3 arguments register a global DeepSpeed config with transformers, under which a later
        # from_config / from_pretrained in this process would build the next model with zero.Init
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def write_results(trainer, args, method, world, tag, read, seen, partitioned_base) -> None:
    """The gathered trained tensors, the saved adapter and the JSON record (losses, reads, Θ sizes) of one run."""
    from safetensors.torch import save_file

    tensors = gathered_trainable(trainer.model)
    reads = [read]
    if world > 1:
        import torch.distributed as dist

        reads = [None] * world
        dist.all_gather_object(reads, read)
    trainer.save_model(os.path.join(args.out, f"{method}-{tag}"))
    if trainer.is_world_process_zero():
        save_file(tensors, os.path.join(args.out, f"{method}-{tag}.safetensors"))
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        engine = trainer.model_wrapped
        optimizer = getattr(engine, "optimizer", None)
        with open(os.path.join(args.out, f"{method}-{tag}.json"), "w") as f:
            json.dump({"losses": losses, "reads": reads, "theta_numels": sorted(set(seen)),
                       "wrapped": type(engine).__name__, "optimizer": type(optimizer).__name__,
                       "zero_stage": args.zero or 0, "world": world, "partitioned_base": partitioned_base}, f)
