"""Docs that run: every Python block and every command line of README.md and docs/*.md.

* Each ```python block runs on its own, in a fresh namespace and an empty folder, after tests/docs_prelude.py (a
  Hub id becomes a tiny random model of the same family, loaded with the block's own arguments); all blocks share
  one process (tests/docs_blocks.py). A block must define every name it uses.
* Each command of a ```bash block that starts one of our programs (``python scripts/x.py``, ``python -m module``,
  also under ``accelerate launch`` / ``torchrun``) is parsed by that program's own argument parser, and a training
  command's config and ``--set`` overrides are validated (tests/docs_commands.py); files the commands name (configs,
  accelerate configs, tests) must exist. Synopsis lines with placeholders (``configs/<job>.yaml``, ``CONFIG.yaml``,
  ``[--set ...]``) only need the program to exist. Installation lines (``pip``, ``python -m build``, activating a
  venv) and the test command itself are what CI runs anyway.

A block preceded by ``<!-- docs-test: skip: REASON -->`` is not run (the reason says what covers it instead).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(.+?)\s*-->")
PLACEHOLDER = re.compile(r"<[^>]+>|\[.*\]|\.\.\.|^[A-Z_]+(\.yaml)?$|^[A-Z]+/$")
LAUNCHERS = {"accelerate": 2, "torchrun": 1}  # words before the options: `accelerate launch`, `torchrun`


def _blocks(path: Path):
    """(language, first line number, code, skip reason or None) of every fenced block."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, language = i, match.group(1)
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        skip = SKIP.search(before)
        out.append((language, start + 1, "\n".join(lines[start + 1:i]), skip.group(1) if skip else None))
        i += 1
    return out


def _cases(language: str):
    return [pytest.param(path, line, code, marks=[pytest.mark.skip(reason=skip)] if skip else [],
                         id=f"{path.relative_to(ROOT)}:{line}")
            for path in DOCS for lang, line, code, skip in _blocks(path) if lang == language]


def _env():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """{code: traceback or ''} for every documented Python block, run in one process (tests/docs_blocks.py)."""
    blocks = list(dict.fromkeys(case.values[2] for case in _cases("python") if not case.marks))
    folder = tmp_path_factory.mktemp("docs_blocks")
    (folder / "blocks.json").write_text(json.dumps(blocks))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "docs_blocks.py"), str(folder / "blocks.json"),
                           str(folder / "results.json")], cwd=folder, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(zip(blocks, json.loads((folder / "results.json").read_text())))


@pytest.mark.parametrize("path, line, code", _cases("python"))
def test_python_block_runs(path, line, code, ran):
    assert not ran[code], f"{path.name}:{line}\n{code}\n--- traceback ---\n{ran[code]}"


def _commands(code: str):
    """The commands of a shell block: continuation lines joined, comments dropped, ``&&`` chains split."""
    text = re.sub(r"\\\n\s*", " ", code)
    for raw in text.splitlines():
        for command in raw.split("&&"):
            words = shlex.split(command, comments=True)
            if words:
                yield words


def _program(words):
    """(program, args) of a command that starts one of our programs, or None (setup lines, tools)."""
    if words[0] in LAUNCHERS:
        words = words[LAUNCHERS[words[0]]:]
        while words and words[0].startswith("--"):
            words = words[2:] if "=" not in words[0] else words[1:]
        return (words[0], words[1:]) if words else None
    if words[0] in ("python", "python3") and len(words) > 1:
        if words[1] == "-m" and words[2] not in ("pytest", "build", "pip"):
            return f"-m {words[2]}", words[3:]
        if words[1].endswith(".py"):
            return words[1], words[2:]
    return None


def _files_named(words):
    """Repository files a command names (configs, tests, accelerate configs), placeholders excluded."""
    return [w for w in words if re.match(r"^(configs|tests|scripts)/", w) and not PLACEHOLDER.search(w)
            and not w.endswith("/")]


def _parse_plan(code: str):
    """(commands to parse, problems found without running anything) of a shell block."""
    to_parse, problems = [], []
    for words in _commands(code):
        problems += [f"{' '.join(words)}: {f} does not exist" for f in _files_named(words) if not (ROOT / f).exists()]
        program = _program(words)
        if program is None:
            continue
        name, args = program
        if not name.startswith("-m ") and not (ROOT / name).is_file():
            problems.append(f"{' '.join(words)}: no program {name}")
        elif not any(PLACEHOLDER.search(a) for a in args):
            to_parse.append({"program": name if name.startswith("-m ") else str(ROOT / name), "args": args,
                             "command": " ".join(words)})
    return to_parse, problems


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """{command: error or ''} for every documented command, parsed in one process (from the repository root)."""
    commands = {c["command"]: c for _, _, code in (case.values for case in _cases("bash"))
                for c in _parse_plan(code)[0]}
    folder = tmp_path_factory.mktemp("docs_commands")
    (folder / "commands.json").write_text(json.dumps(list(commands.values())))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "docs_commands.py"), str(folder / "commands.json"),
                           str(folder / "results.json")], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((folder / "results.json").read_text())
    return {command: result["error"] for command, result in zip(commands, results)}


@pytest.mark.parametrize("path, line, code", _cases("bash"))
def test_shell_block_commands_parse(path, line, code, parsed):
    to_parse, problems = _parse_plan(code)
    problems += [f"{c['command']}: {parsed[c['command']]}" for c in to_parse if parsed[c["command"]]]
    assert not problems, f"{path.name}:{line}\n" + "\n".join(problems)
