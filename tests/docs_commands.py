"""Parse the documented command lines with the programs' own argument parsers, without running the jobs.

    python tests/docs_commands.py COMMANDS.json RESULTS.json

COMMANDS.json is a list of ``{"program": "scripts/x.py" | "-m module", "args": [...]}``. Each program runs as
``__main__`` until its ``argparse`` parser has parsed the arguments, then stops (a wrong option, a missing value or
a bad choice fails as it would for a user). For the training CLI the config file and its ``--set`` overrides are
also loaded and validated (``peft_gift.recipes.load_config``: unknown keys, bad values), which loads no model.
RESULTS.json gets ``{"ok": bool, "error": str}`` per command, in order.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys


class _Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


def _stop_after_parsing(original):
    def parse(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    return parse


def check(program: str, args: list[str]) -> str:
    """'' if ``program`` accepts ``args``, else the error."""
    sys.argv = [program, *args]
    try:
        if program.startswith("-m "):
            runpy.run_module(program[3:], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(program, run_name="__main__")
    except _Parsed as parsed:
        config = getattr(parsed.namespace, "config", None)
        if program.endswith("train.py") or program.endswith("peft_gift.recipes"):
            from peft_gift.recipes import load_config

            try:
                load_config(config, overrides=parsed.namespace.overrides)
            except Exception as error:  # noqa: BLE001 - reported, not raised
                return f"{type(error).__name__}: {error}"
        return ""
    except SystemExit as exit_:
        return f"exited with {exit_.code} while parsing its arguments (see stderr)"
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {error}"
    return "ran to the end without parsing arguments with argparse"


def main() -> None:
    commands_file, results_file = sys.argv[1:3]
    commands = json.load(open(commands_file))
    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = _stop_after_parsing(original)
    results = []
    for command in commands:
        error = check(command["program"], command["args"])
        results.append({"ok": not error, "error": error})
    json.dump(results, open(results_file, "w"))


if __name__ == "__main__":
    main()
