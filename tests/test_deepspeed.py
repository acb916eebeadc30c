"""DeepSpeed ZeRO-2 / ZeRO-3 through the HF Trainer on CPU (DeepSpeed's CPU accelerator, gloo, 2 ranks).

`scripts/deepspeed_check.py` (peft_gift/bench/deepspeed_check.py) trains 3 AdamW steps on a fixed global batch of 4 (2 per rank) with the Trainer and
``TrainingArguments(deepspeed=configs/deepspeed/zero<stage>.json)``, gathers every trainable tensor and saves the
adapter with ``trainer.save_model``; the single-process run with a plain Trainer is the reference. ZeRO-3 partitions
every parameter (persistence threshold 0), GIFT's shared Θ on the tuner included. Skipped without deepspeed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("deepspeed")

from safetensors.torch import load_file  # noqa: E402

from peft_gift.bench import deepspeed_check  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "deepspeed_check.py")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false",
               DS_ACCELERATOR="cpu")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(args, port=None, timeout=600):
    """Run the script in one process (``port`` None) or on 2 ranks with torchrun; return the completed process."""
    cmd = [sys.executable, SCRIPT, *args]
    if port is not None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               SCRIPT, *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return str(tmp_path_factory.mktemp("deepspeed"))


@pytest.fixture(scope="module")
def reference(out):
    """``reference(methods)``: make sure the single-process runs of ``methods`` exist in ``out``."""
    done: set[str] = set()

    def ensure(*methods):
        missing = [m for m in methods if m not in done]
        if missing:
            _ok(_run(["--method", ",".join(missing), "--out", out]))
            done.update(missing)

    return ensure


def _tensors(out, method, tag):
    return load_file(os.path.join(out, f"{method}-{tag}.safetensors"))


def _info(out, method, tag):
    with open(os.path.join(out, f"{method}-{tag}.json")) as f:
        return json.load(f)


def _initial(method):
    model = deepspeed_check.build(method)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _max_diff(a, b):
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _check_matches_reference(out, method, tag, reference_method=None, stage=3):
    """The ZeRO run of ``method`` ran sharded on 2 ranks and its trained tensors equal the single-process run of
    ``reference_method`` (default: the same method) to 1e-5; every tensor moved; the saved adapter loads them."""
    info = _info(out, method, tag)
    assert info["wrapped"] == "DeepSpeedEngine" and info["world"] == 2, info
    assert info["optimizer"] == ("DeepSpeedZeroOptimizer_Stage3" if stage == 3 else "DeepSpeedZeroOptimizer"), info
    reads = info["reads"]  # each step the two ranks read disjoint halves of the global batch
    for step in range(3):
        assert sorted(reads[0][2 * step:2 * step + 2] + reads[1][2 * step:2 * step + 2]) == [0, 1, 2, 3], reads
    trained, single = _tensors(out, method, tag), _tensors(out, reference_method or method, "single")
    assert _max_diff(trained, single) < 1e-5, (method, _max_diff(trained, single))
    initial = _initial(method)
    for key in trained:
        assert (trained[key] - initial[key]).abs().max() > 1e-3, key  # it trained
    _check_saved_adapter_loads(out, method, tag, trained)


def _check_saved_adapter_loads(out, method, tag, trained):
    from peft import PeftModel

    import peft_gift  # noqa: F401

    # strict: raises on a mismatch
    model = PeftModel.from_pretrained(deepspeed_check.build_base(), os.path.join(out, f"{method}-{tag}"))
    loaded = {n: p.detach() for n, p in model.named_parameters() if n in trained}
    assert loaded.keys() == trained.keys()
    for key, value in trained.items():
        torch.testing.assert_close(loaded[key], value, atol=0, rtol=0)


def _check_refused(out, tag):
    """LoFiT stage 1 with the config's λ under ZeRO: refused at the first training forward (DeepSpeed's optimizer
    steps flat copies of A, so the torch.optim step hook that adds the L1 term would silently do nothing)."""
    info = _info(out, "lofit1", tag)
    assert "l1_lambda > 0 under DeepSpeed ZeRO" in info["refused"] and "l1_penalty" in info["refused"], info


@pytest.mark.slow  # reason: a 2-rank DeepSpeed launch + 3 reference runs: ~2 min on the shared 2-core box
def test_zero3_gift_shared_theta_lofit_and_l1_in_the_loss_match_single_process(out, reference):
    """ZeRO-3 partitions Θ (on the tuner, read by every GIFT layer): DeepSpeed gathers it when a layer reads it
    in the forward (the layers call the tuner's SharedTheta containers), so training matches one process. LoFiT
    stage 1 with ``l1_penalty`` in the loss (it gathers the partitioned scales) equals the config's λ in one process;
    the config's λ itself is refused."""
    reference("gift", "lofit2", "lofit1")
    _ok(_run(["--zero", "3", "--method", "gift,lofit2,lofit1-loss,lofit1", "--out", out], port=29541))
    for method in ("gift", "lofit2"):
        _check_matches_reference(out, method, "zero3-2")
    assert _info(out, "gift", "zero3-2")["theta_numels"] == [64 * 4]  # every Θ read whole, never a placeholder
    _check_matches_reference(out, "lofit1-loss", "zero3-2", reference_method="lofit1")
    _check_refused(out, "zero3-2")


@pytest.mark.slow  # reason: one more 2-rank DeepSpeed launch and 2 more reference runs (~50 s on the 2-core box)
def test_zero2_gift_lofit_and_stage1_l1_term(out, reference):
    """ZeRO-2: GIFT and LoFiT stage 2 match one process; λ·Σ|A| added to the loss (``l1_penalty``, config λ = 0)
    matches the config's λ in one process, and the config's λ is refused (it mattered: λ vs 0 differ)."""
    reference("gift", "lofit2", "lofit1", "lofit1-l0")
    _ok(_run(["--zero", "2", "--method", "gift,lofit2,lofit1-loss,lofit1", "--out", out], port=29542))
    for method in ("gift", "lofit2"):
        _check_matches_reference(out, method, "zero2-2", stage=2)
    _check_matches_reference(out, "lofit1-loss", "zero2-2", reference_method="lofit1", stage=2)
    assert _max_diff(_tensors(out, "lofit1", "single"), _tensors(out, "lofit1-l0", "single")) > 1e-2
    _check_refused(out, "zero2-2")


@pytest.mark.slow  # reason: one more 2-rank DeepSpeed launch (~45 s on the 2-core box)
def test_zero3_base_loaded_under_zero_init(out, reference):
    """The big-model path: ZeRO-3 arguments first, then ``from_pretrained`` (under ``deepspeed.zero.Init``, every base
    weight partitioned when the adapter is added). GIFT, LoFiT stage 2 and stage 1 with ``l1_penalty`` in the loss
    match one process."""
    reference("gift", "lofit2", "lofit1")
    _ok(_run(["--zero", "3", "--zero-init", "--method", "gift,lofit2,lofit1-loss", "--out", out], port=29543))
    for method in ("gift", "lofit2"):
        assert _info(out, method, "zero3-2-init")["partitioned_base"]
        _check_matches_reference(out, method, "zero3-2-init")
    _check_matches_reference(out, "lofit1-loss", "zero3-2-init", reference_method="lofit1")
