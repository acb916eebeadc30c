#!/usr/bin/env python
"""Greedy outputs of a GIFT adapter served by vLLM (as its exported LoRA) vs PEFT's ``generate``; used by
``scripts/check_vllm.sh`` (steps and outputs: peft_gift/bench/vllm_compare.py).

    <project venv>/python scripts/vllm_compare.py prepare --out DIR [--base PATH_OR_ASSET]   # peft_gift, transformers
    <vLLM venv>/python    scripts/vllm_compare.py vllm    --out DIR --dtype float32           # vllm only
    any python            scripts/vllm_compare.py compare --out DIR                           # stdlib only

The vllm and compare steps run where ``import peft_gift`` fails (vLLM's venv has no peft; compare runs under a bare
python3), so the steps' module, which imports only the standard library, is loaded from its file here instead of
through the package (whose ``__init__`` imports peft); ``prepare`` imports the package as usual.
"""

import importlib.util
import logging
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)


def _steps():
    path = os.path.join(ROOT, "peft_gift", "bench", "vllm_compare.py")
    spec = importlib.util.spec_from_file_location("peft_gift_vllm_compare_steps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prepare(args):
    from peft_gift.bench.vllm_prepare import prepare

    prepare(args)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(_steps().main(prepare=_prepare))
