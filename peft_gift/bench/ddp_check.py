"""The data-parallel check behind ``scripts/ddp_check.py``: train a tiny GIFT / LoFiT Llama for a few steps data-parallel on CPU (gloo) and dump the adapter tensors.

The same deterministic global batch is used by every launch mode; each of the W ranks takes its contiguous slice of
B/W samples, so a W-process run must reproduce a single-process run with the full global batch B.

    # single process, full global batch (the reference)
    python scripts/ddp_check.py --method gift --out /tmp/dist
    # W processes started here with torch.multiprocessing (gloo, file rendezvous): DDP or FSDP2 (fully_shard)
    python scripts/ddp_check.py --method gift --strategy ddp --spawn 2 --out /tmp/dist
    python scripts/ddp_check.py --method gift --strategy fsdp2 --spawn 2 --out /tmp/dist
    # under a launcher (reads RANK / WORLD_SIZE / MASTER_ADDR from the environment)
    torchrun --nproc_per_node 2 scripts/ddp_check.py --method lofit --strategy ddp --out /tmp/dist
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml scripts/ddp_check.py --strategy accelerate --out /tmp/dist

Each rank writes ``<out>/<method>-<strategy>-rank<r>.safetensors`` with the full (unsharded) trainable adapter
tensors after the last step, named as in ``get_peft_model_state_dict`` (the reference writes ``...-single.safetensors``)
plus a JSON line with the per-step losses.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile

import torch
import torch.distributed as dist

GLOBAL_BATCH = 4
SEQ = 12
VOCAB = 128


def build_base():
    """Tiny random Llama (2 layers, hidden 64, 4 heads / 2 KV heads), seeded."""
    from .tiny import tiny_causal_lm

    return tiny_causal_lm("llama", seed=0, vocab_size=VOCAB)


def build_model(method: str):
    """``build_base()`` with a GIFT or LoFiT adapter, seeded."""
    from peft import get_peft_model

    import peft_gift  # noqa: F401  (registers the tuner types)

    base = build_base()
    if method == "gift":
        # one Θ per module type, shared by both decoder layers: the case distributed wrappers must get right
        config = peft_gift.GiftConfig(r=4, target_modules=["q_proj", "v_proj"], sharing="module")
    elif method == "gift-all":
        config = peft_gift.GiftConfig(r=4, target_modules=["q_proj", "o_proj"], sharing="all")
    elif method == "lofit":
        # stage 1 (scale mode) exercises the L1 term, applied through the gradient of the scales
        config = peft_gift.LofitConfig(mode="scale", l1_lambda=1e-3, init_std=1e-2)
    elif method == "lofit-bias":
        # stage 2: offsets on a few selected heads, no loss term
        config = peft_gift.LofitConfig(mode="bias", heads=[(0, 1), (1, 3)], init_std=1e-2)
    else:
        raise SystemExit(f"unknown --method {method!r}")
    torch.manual_seed(1)
    model = get_peft_model(base, config)
    # start from a non-trivial Θ so that every trainable tensor gets a gradient at step 0
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.train()


def batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=g)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Full (all-gathered where sharded) copies of the trainable tensors, keyed by parameter name."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        t = p.detach()
        if hasattr(t, "full_tensor"):  # FSDP2 DTensor shard
            t = t.full_tensor()
        for prefix in ("module.", "_orig_mod."):
            name = name.removeprefix(prefix)
        out[name] = t.clone().contiguous().float()
    return out


def train(model, rank: int, world: int, steps: int, backward=None, step_fn=None, params=None) -> list[float]:
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    losses = []
    per_rank = GLOBAL_BATCH // world
    for step in range(steps):
        ids = batch(step)[rank * per_rank:(rank + 1) * per_rank]
        loss = model(input_ids=ids, labels=ids).loss
        (backward or (lambda l: l.backward()))(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def fsdp2_wrap(model, reshard_layers_after_forward: bool = True):
    """Supported FSDP2 policy: every decoder layer is its own FSDP unit, and the *root* (the PeftModel) is wrapped
    last, which makes the tuner-level Θ (``base_model.gift_phi`` / ``gift_psi``) a root parameter: all-gathered in
    the root's pre-forward before any decoder layer runs, kept unsharded during forward and backward, and
    reduce-scattered with the root's gradients."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.base_model.model.model.layers:
        fully_shard(layer, reshard_after_forward=reshard_layers_after_forward)
    fully_shard(model)
    return model


def fsdp2_wrap_layers_only(model):
    """Unsupported policy, kept to show what breaks: decoder layers sharded, root not wrapped. Θ (a tuner-level
    parameter outside every FSDP unit) then stays a plain local tensor whose gradient is never reduced across
    ranks."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    return model


def save_fsdp2_adapter(model, path: str, rank: int) -> None:
    """``save_pretrained`` cannot serialise FSDP2's DTensor shards ("Attempted to access the data pointer on an
    invalid python storage"): gather a full state dict on every rank (a collective), then rank 0 saves it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        model.save_pretrained(path, state_dict=state)


def save(out_dir: str, tag: str, state: dict, losses: list[float]) -> None:
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    save_file(state, os.path.join(out_dir, f"{tag}.safetensors"))
    with open(os.path.join(out_dir, f"{tag}.json"), "w") as f:
        json.dump({"losses": losses}, f)


def _run_accelerate(args, methods: list[str]) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    for method in methods:
        model = build_model(method)
        opt_params = [p for p in model.parameters() if p.requires_grad]
        wrapped = accelerator.prepare_model(model)
        losses = train(wrapped, rank, world, args.steps, backward=accelerator.backward, params=opt_params)
        save(args.out, f"{method}-accelerate-rank{rank}", trainable_state(accelerator.unwrap_model(wrapped)), losses)
        accelerator.wait_for_everyone()
    if args.reference and accelerator.is_main_process:
        run_reference(methods, args)
    accelerator.wait_for_everyone()


def _wrap(model, strategy: str, method: str, rank: int):
    """``model`` wrapped for ``strategy`` (see ``--strategy``)."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    if strategy == "fsdp2":
        wrapped = fsdp2_wrap(model)
        if rank == 0 and method.startswith("gift"):
            from torch.distributed.tensor import DTensor

            theta = list(model.base_model.gift_phi.parameters())
            assert theta and all(isinstance(t, DTensor) for t in theta), "Θ was not sharded by the root"
        return wrapped
    if strategy == "fsdp2-keep":
        return fsdp2_wrap(model, reshard_layers_after_forward=False)
    if strategy == "fsdp2-layers-only":
        return fsdp2_wrap_layers_only(model)
    raise SystemExit(f"unknown strategy {strategy!r}")


def _train_and_save(args, strategy: str, method: str, rank: int, world: int) -> None:
    wrapped = _wrap(build_model(method), strategy, method, rank)
    tag = f"{method}-{strategy}-rank{rank}"
    try:
        losses = train(wrapped, rank, world, args.steps)
    except Exception as e:  # recorded for the caller; every rank fails at the same point
        with open(os.path.join(args.out, f"{tag}.error"), "w") as f:
            f.write(f"{type(e).__name__}: {e}")
        return
    save(args.out, tag, trainable_state(wrapped), losses)
    if strategy == "fsdp2":
        save_fsdp2_adapter(wrapped, os.path.join(args.out, f"{method}-{strategy}-adapter"), rank)


def run_rank(rank: int, world: int, args, init_method: str | None) -> None:
    """One rank: every strategy × method of ``args`` trained and saved, then (rank 0) the reference."""
    torch.set_num_threads(1)
    methods = args.method.split(",")
    if args.strategy == "accelerate":
        _run_accelerate(args, methods)
        return
    if init_method is None:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))
    try:
        for strategy in args.strategy.split(","):
            for method in methods:
                _train_and_save(args, strategy, method, rank, world)
                dist.barrier()
        if args.reference and rank == 0:
            run_reference(methods, args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_reference(methods: list[str], args) -> None:
    """Single process, no process group, the full global batch per step."""
    for method in methods:
        model = build_model(method)
        save(args.out, f"{method}-init", trainable_state(model), [])
        losses = train(model, 0, 1, args.steps)
        save(args.out, f"{method}-single", trainable_state(model), losses)


def _spawned(rank: int, world: int, args, init_method: str) -> None:
    run_rank(rank, world, args, init_method)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train a tiny GIFT / LoFiT Llama for a few steps data-parallel on CPU "
                                            "(gloo) and dump the adapter tensors.")
    p.add_argument("--method", default="gift", help="comma list of: gift, gift-all, lofit (stage 1 + L1), lofit-bias (stage 2)")
    p.add_argument("--strategy", default=None,
                   help="comma list of: ddp, fsdp2, fsdp2-keep, fsdp2-layers-only; or 'accelerate' (under accelerate launch). Omit for the "
                        "single-process reference run only")
    p.add_argument("--reference", action="store_true",
                   help="rank 0 also runs the single-process reference after the distributed runs")
    p.add_argument("--spawn", type=int, default=0, help="start this many gloo ranks with torch.multiprocessing")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if GLOBAL_BATCH % max(args.spawn, 1):
        raise SystemExit(f"--spawn must divide the global batch {GLOBAL_BATCH}")

    if args.strategy is None:
        torch.set_num_threads(1)
        run_reference(args.method.split(","), args)
        return 0
    if args.spawn:
        import torch.multiprocessing as mp

        os.makedirs(args.out, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            init_method = "file://" + os.path.join(tmp, "rendezvous")
            mp.spawn(_spawned, args=(args.spawn, args, init_method), nprocs=args.spawn, join=True)
        return 0
    os.makedirs(args.out, exist_ok=True)
    run_rank(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), args, None)
    return 0
