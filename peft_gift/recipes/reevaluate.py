"""Re-evaluate what a training run saved (``scripts/evaluate.py OUT/adapter [CONFIG]``) on its job's evaluation
split, with the code the run used to report its "after" metrics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from .checks import ConfigError
from .config import load_config


def load_saved(saved: Path, job):
    """The model a run saved in ``saved`` (``OUT/adapter``: a PEFT adapter on the job's base model; ``OUT/model``: the
    whole model, LoReFT interventions included), as the job's task loads its base."""
    from .methods import METHODS

    if METHODS[job.cfg["method"]["name"]].saves_adapter:
        from peft import PeftModel

        return PeftModel.from_pretrained(job.task.load_model(), str(saved))
    job.task.model_path = str(saved)
    model = job.task.load_model()
    if job.cfg["method"]["name"] == "loreft":
        from .loreft import load_loreft

        model = load_loreft(model, str(saved))
    return model


def _job_config(saved: Path, config: Optional[str]) -> tuple[dict, Optional[dict]]:
    """(config, the run's results or None): ``config`` if given, else the one in ``results.json`` beside ``saved``."""
    results_file = saved.parent / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    if config is not None:
        return load_config(config, []), results
    if results is None:
        raise ConfigError(f"{str(saved)!r} has no results.json beside it ({str(results_file)!r}); pass the job's "
                          "config: evaluate.py SAVED CONFIG")
    return results["config"], results


def reevaluate(saved: str, config: Optional[str] = None) -> tuple[dict, Optional[dict]]:
    """(metrics of the saved model on the job's evaluation split, the run's results.json or None)."""
    from .pipeline import evaluate, prepare

    path = Path(saved)
    if not (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise ConfigError(f"{saved!r} is not an adapter or model folder written by train.py (OUT/adapter or "
                          "OUT/model: no adapter_config.json or config.json in it)")
    cfg, results = _job_config(path, config)
    job = prepare(cfg)
    return evaluate(load_saved(path, job), job), results


def main(argv: list[str] | None = None) -> int:
    from .report import console_logging, markdown_table

    p = argparse.ArgumentParser(prog="evaluate.py", description="Evaluate an adapter (or model) that train.py saved "
                                "on its job's evaluation split, and print the run's table with these metrics.")
    p.add_argument("saved", help="OUT/adapter or OUT/model of a train.py run")
    p.add_argument("config", nargs="?", default=None,
                   help="a job config (YAML) to evaluate with; default: the config in OUT/results.json")
    args = p.parse_args(argv)
    try:
        with console_logging(sys.stdout):
            metrics, results = reevaluate(args.saved, args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if results is not None and args.config is None:
        print(markdown_table([{**results, "after": metrics}]))
    print(json.dumps(metrics))
    return 0
