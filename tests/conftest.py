import os
import subprocess
import sys
import textwrap

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_in_fresh_process(code: str, timeout: int = 300) -> str:
    """Run `code` with a fresh interpreter (nothing imported yet); return stdout, fail the test on error."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    if proc.returncode != 0:
        pytest.fail(f"fresh process failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture
def fresh_process():
    return run_in_fresh_process
