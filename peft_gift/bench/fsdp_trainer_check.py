"""Train a tiny GIFT / LoFiT-stage-1 Llama with the HF Trainer under FSDP2 (accelerate's plugin) on CPU and compare.

    # 2 CPU ranks over gloo (accelerate's FSDP2 plugin, decoder layers + root wrapped)
    accelerate launch --config_file configs/accelerate/fsdp2_cpu.yaml scripts/fsdp_trainer_check.py --out /tmp/f
    torchrun --nproc_per_node 2 scripts/fsdp_trainer_check.py --fsdp --out /tmp/f
    # the single-process reference (same global batch of 4)
    python scripts/fsdp_trainer_check.py --out /tmp/f

Each run trains 3 AdamW steps (lr 1e-2) on the same 4 sequences (global batch 4: 2 per rank on 2 ranks, or 1 per rank
and micro-batch with ``--accumulation 2``), then saves
the adapter with ``trainer.save_model`` (FSDP2: full state dict gathered, written by rank 0) to
``<out>/<method>-<tag>/`` and the losses to ``<out>/<method>-<tag>.json``; ``tag`` is ``fsdp<world>`` or ``single``.

The check behind ``scripts/fsdp_trainer_check.py`` (the tests run it: tests/test_fsdp_trainer.py).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from .tiny import tiny_causal_lm

SEQ, VOCAB, GLOBAL_BATCH = 12, 128, 4


def build_base():
    """The tiny Llama (2 layers, hidden 64, 4 heads / 2 KV heads, vocab 128), seeded."""
    return tiny_causal_lm("llama", seed=0, vocab_size=VOCAB)


def build(method: str):
    """`build_base` with GIFT r=4 on q/v (``gift``) or LoFiT stage 1 with ``l1_lambda=1e-3`` (``lofit``)."""
    from peft import get_peft_model

    import peft_gift

    base = build_base()
    if method == "gift":
        config = peft_gift.GiftConfig(r=4, target_modules=["q_proj", "v_proj"])
    else:
        config = peft_gift.LofitConfig(mode="scale", l1_lambda=1e-3, init_std=0.1)
    return get_peft_model(base, config)


def cpu_fsdp_trainer_class():
    """A Trainer whose accelerator really uses its FSDP plugin on CPU (see --cpu-fsdp)."""
    from transformers import Trainer

    class CpuFsdpTrainer(Trainer):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            state = self.accelerator.state
            from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

            from_env = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"  # accelerate launch
            if (self.args.fsdp_plugin_args is not None or from_env) and state.distributed_type != DistributedType.FSDP:
                # accelerate 1.15 enables an FSDP plugin only for accelerator distributed types (MULTI_GPU, ...);
                # on CPU (MULTI_CPU, gloo) it drops it silently and the Trainer uses DDP. Turn it on explicitly (the
                # Trainer calls this again in train(), where the shared state has been re-initialised).
                if getattr(state, "fsdp_plugin", None) is None:
                    state.fsdp_plugin = FullyShardedDataParallelPlugin(**(self.args.fsdp_plugin_args or {}))
                state.distributed_type = DistributedType.FSDP
                self.is_fsdp_enabled = True

        def save_model(self, *args, **kwargs):
            # the Trainer re-initialises accelerate's shared state during train(), back to MULTI_CPU: without this,
            # save_model takes the non-FSDP path and PEFT fails on the sharded DTensors ("Attempted to access the
            # data pointer on an invalid python storage")
            from accelerate.utils import DistributedType

            if self.is_fsdp_enabled:
                self.accelerator.state.distributed_type = DistributedType.FSDP
            return super().save_model(*args, **kwargs)

    return CpuFsdpTrainer


class Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=g)

    def __len__(self):
        return GLOBAL_BATCH

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="gift,lofit")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fsdp", action="store_true",
                        help="FSDP2 through TrainingArguments (for torchrun; accelerate launch sets it from its config)")
    parser.add_argument("--deepspeed", type=int, choices=(1, 2, 3), default=None,
                        help="DeepSpeed ZeRO stage through the Trainer (DS_ACCELERATOR=cpu on CPU; experimental)")
    parser.add_argument("--accumulation", type=int, default=1,
                        help="gradient accumulation steps (the global batch stays 4: per-device batch shrinks)")
    parser.add_argument("--cpu-fsdp", action="store_true",
                        help="on CPU, make accelerate keep its FSDP plugin (it silently falls back to DDP otherwise)")
    return parser


def main(argv=None) -> int:
    """``scripts/fsdp_trainer_check.py``: train, save and record every ``--method`` (see the module docstring)."""
    args = _parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tag = f"fsdp{world}" if world > 1 else "single"
    if args.deepspeed:
        tag = f"zero{args.deepspeed}-{world}"
    for method in args.method.split(","):
        run_method(args, method, world, tag)
    return 0


def wrapper_arguments(args) -> dict:
    """The ``TrainingArguments`` that turn on FSDP2 (``--fsdp``) or DeepSpeed (``--deepspeed``)."""
    kwargs = {}
    if args.fsdp:
        kwargs.update(fsdp="full_shard auto_wrap", fsdp_config={
            "version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "reshard_after_forward": True,
            "state_dict_type": "FULL_STATE_DICT", "cpu_ram_efficient_loading": False})
    if args.deepspeed:
        kwargs.update(deepspeed={
            "zero_optimization": {"stage": args.deepspeed}, "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "torch_adam": True}},
        }, use_cpu=False)
    return kwargs


def run_method(args, method: str, world: int, tag: str) -> None:
    """Train ``method`` 3 steps, save the adapter, and (rank 0) write the losses and the wrapping found."""
    from torch.distributed.fsdp import FSDPModule
    from transformers import Trainer, TrainingArguments

    from peft_gift.fsdp import FsdpWrappingCheck

    model = build(method)
    targs = TrainingArguments(
        output_dir=os.path.join(args.out, f"trainer-{method}-{tag}"), max_steps=3, learning_rate=1e-2,
        per_device_train_batch_size=GLOBAL_BATCH // (world * args.accumulation),
        gradient_accumulation_steps=args.accumulation, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, optim="adamw_torch", logging_steps=1, save_strategy="no", report_to="none",
        seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True,
        ddp_backend="gloo" if world > 1 else None, **{"use_cpu": True, **wrapper_arguments(args)})
    trainer_cls = cpu_fsdp_trainer_class() if args.cpu_fsdp else Trainer
    trainer = trainer_cls(model=model, args=targs, train_dataset=Data(), callbacks=[FsdpWrappingCheck()])
    trainer.train()
    wrapped = trainer.model_wrapped
    units = sum(isinstance(m, FSDPModule) for m in trainer.model.modules())
    trainer.save_model(os.path.join(args.out, f"{method}-{tag}"))
    if trainer.is_world_process_zero():
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        with open(os.path.join(args.out, f"{method}-{tag}.json"), "w") as f:
            json.dump({"losses": losses, "fsdp_units": units, "wrapped": type(wrapped).__name__,
                       "accelerate_fsdp": bool(trainer.is_fsdp_enabled)}, f)
