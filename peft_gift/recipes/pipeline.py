"""The fine-tuning pipeline shared by the CLI and the benchmarks: prepare a job, train it, evaluate it, write it.

    from peft_gift.recipes import load_config, run
    results = run(load_config("configs/gift_minilm_sst2.yaml", overrides=["training.num_train_epochs=1"]))

The pieces are public so that a benchmark measures exactly what ``scripts/train.py`` runs: :func:`prepare` (model,
data and task, every check before any weights are loaded), :func:`evaluate` (the task's evaluator on the whole
evaluation split, without a ``Trainer``), :func:`fit` (the method's recipe from :mod:`~peft_gift.recipes.methods`)
and :func:`run` (all of it, plus the saved adapter, its model card (:mod:`~peft_gift.recipes.card`),
``results.json``, the printed table and, with ``export_lora``, the adapter as a plain PEFT LoRA adapter).

Under a launcher (``accelerate launch``, ``torchrun``: ``WORLD_SIZE`` > 1) every process trains its share of each
global batch (data parallel; gloo on CPUs) and evaluates the whole evaluation split itself; only the main process
(rank 0) prints and writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .config import ConfigError, validate_config
from .data import load_data, published_model, resolve_model
from .methods import METHODS, param_counts
from .outputs import check_output_dir, check_outputs, clear_outputs, readable_by_all
from .report import describe_machine, machine_info, markdown_table
from .tasks import TASKS, Task

logger = logging.getLogger(__name__)

DEFAULT_TRAINING = dict(
    num_train_epochs=1, per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=1e-3,
    logging_steps=10, save_strategy="no", eval_strategy="no", report_to="none", dataloader_num_workers=0,
    disable_tqdm=False, remove_unused_columns=False,
    # every trainable tensor of these jobs (adapter, head) takes part in each forward; the Trainer's default for a
    # model that is not a PreTrainedModel (a PeftModel) would make DDP search for unused ones and warn at every run
    ddp_find_unused_parameters=False,
)


@dataclasses.dataclass
class Job:
    """A prepared job: the validated config, the resolved model path, raw and encoded splits, and the task;
    ``base_model`` is the Hub id that the card and adapter_config.json name (None for a local model without
    ``card.base_model``), ``base_copy`` how the local copy differs from it, ``split`` how the splits were cut."""

    cfg: dict
    model_path: str
    task: Task
    train: Any
    eval: Any
    train_enc: Any = None
    eval_enc: Any = None
    base_model: Optional[str] = None
    base_copy: Optional[str] = None
    split: list = dataclasses.field(default_factory=list)

    @property
    def seed(self) -> int:
        return int(self.cfg["seed"])

    def load_model(self):
        """The task's model, named by its Hub id: PEFT then writes that id, not the local path it was loaded from,
        into adapter_config.json and the card."""
        model = self.task.load_model()
        if self.base_model is not None:
            model.config.name_or_path = self.base_model
            model.name_or_path = self.base_model
        return model


def prepare(cfg: dict) -> Job:
    """Resolve the model, load/split/check the data, build the task and encode both splits: everything that can fail
    on bad input, done before any model weights are loaded or trained."""
    from transformers import AutoConfig

    cfg = validate_config(cfg)
    model_path = resolve_model(cfg["model"])
    method = cfg["method"]
    METHODS[method["name"]].check_model({k: v for k, v in method.items() if k != "name"},
                                        AutoConfig.from_pretrained(model_path))
    task_cls = TASKS[cfg["task"]]
    split: list[str] = []
    train, evl, columns = load_data(cfg, task_cls, split)
    task = task_cls(model_path, cfg["data"], columns, train, evl)
    task.quantization = cfg.get("quantization")
    return Job(cfg, model_path, task, train, evl, task.encode(train), task.encode(evl), *published_model(cfg), split)


def _training_args(job: Job, training: dict, out: Optional[Path], stage: str):
    import tempfile

    import torch
    from transformers import TrainingArguments

    args = {**DEFAULT_TRAINING, "dataloader_pin_memory": torch.cuda.is_available(), **training, "seed": job.seed}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        args["use_cpu"] = True  # N processes on CPUs: without it TrainingArguments starts no (gloo) process group
    args.setdefault("data_seed", job.seed)
    args["output_dir"] = str((out if out is not None else Path(tempfile.gettempdir()) / "peft_gift") / "trainer" / stage)
    try:
        return TrainingArguments(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid training arguments: {str(e).splitlines()[0]}") from None


def trainer_for(model, job: Job, training: dict, out: Optional[Path] = None, stage: str = "train"):
    """The ``transformers.Trainer`` the pipeline trains with (``training`` = TrainingArguments fields)."""
    from transformers import Trainer

    targs = _training_args(job, training, out, stage)
    eval_ds = job.eval_enc if targs.eval_strategy != "no" and job.task.compute_metrics else None
    trainer = Trainer(model=model, args=targs, train_dataset=job.train_enc, eval_dataset=eval_ds,
                      data_collator=job.task.collator(), compute_metrics=job.task.compute_metrics)
    # transformers takes any forward(**kwargs) for a loss that counts num_items_in_batch, and then multiplies the loss
    # by the number of processes (and skips the division for gradient accumulation): N times too large for a head's
    # batch-mean loss
    trainer.model_accepts_loss_kwargs = trainer.model_accepts_loss_kwargs and job.task.loss_counts_items
    return trainer


def evaluate(model, job: Job, training: Optional[dict] = None, out: Optional[Path] = None) -> dict:
    """The task's metrics of ``model`` on the job's whole evaluation split (what ``results.json`` reports), computed
    in this process without a ``Trainer``: nothing is sharded across processes, and a bare quantized base (which
    transformers refuses to put in a Trainer) is evaluated like any model."""
    args = _training_args(job, job.cfg["training"] if training is None else training, out, "eval")
    if getattr(model, "hf_device_map", None) is None:  # a model placed while loading (quantized) stays where it is
        model.to(args.device)
    return job.task.evaluate(model, job.eval, job.eval_enc, args.per_device_eval_batch_size,
                             progress=not args.disable_tqdm and _is_main())


def _is_main() -> bool:
    """Whether this process writes: rank 0 under a launcher, or the only process."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@dataclasses.dataclass
class _Context:
    """What a method's ``fit`` may use: the task, a trainer per stage, a fresh base model, the log."""

    job: Job
    out: Optional[Path]
    steps: int = 0  # optimizer steps taken, all stages

    @property
    def main(self) -> bool:
        return _is_main()

    def log(self, message: str) -> None:
        """Progress, through this module's logger; the main process only when launched on several."""
        if self.main:
            logger.info(message)

    @property
    def task(self) -> Task:
        return self.job.task

    @property
    def seed(self) -> int:
        return self.job.seed

    def load_model(self):
        return self.job.load_model()

    def train(self, model, stage: str, overrides: Optional[dict] = None) -> float:
        trainer = trainer_for(model, self.job, {**self.job.cfg["training"], **(overrides or {})}, self.out, stage)
        t0 = time.time()
        self.steps += trainer.train().global_step
        return time.time() - t0


def fit(model, job: Job, out: Optional[Path] = None):
    """Apply the job's method to ``model`` and train it: ``(trained model, stats)``; stats has ``train_time_s``,
    ``optimizer_steps`` and, for two-stage methods, ``stages``."""
    method = job.cfg["method"]
    params = {k: v for k, v in method.items() if k != "name"}
    ctx = _Context(job, out)
    model, stats = METHODS[method["name"]].fit(model, params, ctx)
    return model, {**stats, "optimizer_steps": ctx.steps}


def run(cfg: dict, output_dir: Optional[str] = None, push_to_hub: Optional[str] = None,
        export_lora: bool = False, overwrite: bool = False) -> dict:
    """Run one job from a config; write the adapter/model, its card and results.json; return the results dict.
    With ``export_lora`` (GIFT, LoFiT), also ``OUT/lora_export/``: the adapter as a plain PEFT LoRA adapter. An
    output folder holding an earlier run's outputs is refused, or with ``overwrite`` cleared of them before training.

    Launched on N processes, each trains on its share of every global batch (N × per_device_train_batch_size) and
    evaluates the whole evaluation split; only the main process logs, saves, writes and pushes, the others wait for
    it. Progress and the results table go through the ``peft_gift.recipes.pipeline`` logger (the CLI shows them)."""
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    t_start = time.time()
    cfg = validate_config(cfg)
    out = check_output_dir(output_dir or cfg["output_dir"])
    cfg["output_dir"] = str(out)
    _check_run_options(cfg, push_to_hub, export_lora)
    earlier = check_outputs(out, overwrite)
    set_seed(int(cfg["seed"]))
    job = prepare(cfg)
    processes = _training_args(job, cfg["training"], out, "train").world_size  # starts torch.distributed if launched
    main = _is_main()
    log = logger.info if main else _silent
    if earlier and main:
        clear_outputs(earlier)
        log(f"--overwrite: removed {', '.join(p.name for p in earlier)} of an earlier run from {out}")
    log(f"model {cfg['model']} -> {job.model_path}; train {len(job.train)}, eval {len(job.eval)} examples"
        + (f"; {processes} processes" if processes > 1 else ""))
    for note in job.split:
        log(note)
    if job.base_model is None:
        log(f"note: model {cfg['model']!r} is a local directory: the card names no base model and adapter_config.json "
            f"keeps the local path; set card.base_model to its Hub id before publishing")
    hf_logging.set_verbosity_error()  # "newly initialized head" warnings etc.; the table below states the setup
    out.mkdir(parents=True, exist_ok=True)

    set_seed(int(cfg["seed"]))
    model, results = _train_and_evaluate(job, out, log)
    results["processes"] = processes
    if main:
        _write_outputs(model, job, out, results, log, push_to_hub, export_lora)
        results["wall_time_s"] = round(time.time() - t_start, 1)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        log(markdown_table([results]))
        log(f"wrote {results['saved_to']} and {out / 'results.json'}")
        if push_to_hub:
            _push(model, push_to_hub, out, log)
    if processes > 1:
        import torch.distributed as dist

        dist.barrier()  # the other processes end once the main one has written everything
    return results


def _check_run_options(cfg: dict, push_to_hub: Optional[str], export_lora: bool) -> None:
    """Refuse --export-lora / --push-to-hub before anything is loaded where they cannot work."""
    name = cfg["method"]["name"]
    if export_lora and not METHODS[name].exports_lora:
        raise ConfigError(f"--export-lora: method {name!r} has no exact LoRA form; it is for gift and lofit "
                          f"(stage-2 offsets){' (a lora adapter already is one)' if name == 'lora' else ''}")
    if push_to_hub and published_model(cfg)[0] is None:
        raise ConfigError(f"--push-to-hub: model {cfg['model']!r} is a local directory; set card.base_model to the Hub "
                          f"id it is a copy of, so that the card and adapter_config.json name no local path")


def _train_and_evaluate(job: Job, out: Path, log: Callable[[str], None]):
    """Evaluate the untrained model, apply and train the method, evaluate again: (model, results)."""
    from .card import card_facts

    cfg, task = job.cfg, job.task
    model = job.load_model()
    log("evaluating the untrained model ...")
    before = evaluate(model, job, out=out)
    log(f"before: {before}")
    results: dict[str, Any] = {"model": cfg["model"], "model_path": job.model_path, "task": cfg["task"],
                               "method": cfg["method"]["name"], "dataset": cfg["data"]["dataset"],
                               "train_examples": len(job.train), "eval_examples": len(job.eval),
                               "metric": task.metric, "before": before}
    model, stats = fit(model, job, out)
    if "stages" in stats:
        results["stages"] = stats["stages"]
    results.update(param_counts(model))
    results["optimizer_steps"] = stats["optimizer_steps"]
    results["train_time_s"] = round(stats["train_time_s"], 1)
    log("evaluating the fine-tuned model ...")
    results["after"] = evaluate(model, job, out=out)
    log(f"after: {results['after']}")
    saves_adapter = METHODS[cfg["method"]["name"]].saves_adapter
    results["saved_to"] = str(out / ("adapter" if saves_adapter else "model"))
    results["labels"] = getattr(task, "label_names", None)
    results["num_labels"] = getattr(task, "num_labels", None)
    results["inputs"] = task.card_inputs()
    results["split"] = job.split
    results["config"] = cfg
    # the published part: what the card says, naming Hub ids and file names, never a path of this machine
    results["card"] = card_facts(cfg, results, job.base_model, job.base_copy, results["labels"], job.split)
    return model, results


def _save_kwargs(model) -> dict:
    """``save_pretrained`` arguments: a PEFT model saves no base embedding layers. The jobs never resize the
    vocabulary, and PEFT's default (``save_embedding_layers="auto"``) would ask the Hub whether the base model's
    was resized (offline: a warning at every save)."""
    from peft import PeftModel

    return {"save_embedding_layers": False} if isinstance(model, PeftModel) else {}


def _write_outputs(model, job: Job, out: Path, results: dict, log, push_to_hub, export_lora: bool) -> None:
    """Save the adapter (or model) with its cards, and the LoRA export if asked for (the main process only)."""
    from ..hub import plugin_peft_types, write_model_card
    from .card import write_card

    save_dir = Path(results["saved_to"])
    machine = describe_machine(machine_info())
    model.save_pretrained(str(save_dir), **_save_kwargs(model))
    write_card(save_dir, results["card"], machine)
    if plugin_peft_types(model):
        write_model_card(model, str(save_dir))  # the card says how to load a GIFT / LoFiT adapter
    if job.task.tokenizer is not None and not METHODS[job.cfg["method"]["name"]].saves_adapter:
        job.task.tokenizer.save_pretrained(str(save_dir))
    if export_lora:
        results["lora_export"] = str(_export_lora(model, out / "lora_export", results["card"]))
        log(f"wrote {results['lora_export']}: the adapter as a plain PEFT LoRA adapter")
    for folder in (save_dir, out / "lora_export"):
        readable_by_all(folder)
    results["machine"] = machine


class PushError(RuntimeError):
    """Pushing the trained adapter to the Hub failed; the run itself finished and its outputs are on disk."""


def _push(model, repo: str, out: Path, log) -> None:
    from ..hub import plugin_peft_types
    from ..hub import push_to_hub as peft_gift_push_to_hub

    try:
        peft_gift_push_to_hub(model, repo) if plugin_peft_types(model) else model.push_to_hub(repo)
        log(f"pushed to https://huggingface.co/{repo}")
    except Exception as e:  # noqa: BLE001
        raise PushError(f"push_to_hub({repo!r}) failed ({str(e).splitlines()[0][:160]}); the results are saved in "
                        f"{out}; log in with `hf auth login` and check network access") from None


def _export_lora(model, folder: Path, facts: dict) -> Path:
    """``peft_gift.export_lora`` of the trained adapter into ``folder``, with a card saying what it is."""
    from ..export import export_lora
    from .card import write_export_card

    try:
        lora_config = export_lora(model, str(folder))
    except ValueError as e:
        raise ConfigError(f"--export-lora: {str(e).splitlines()[0]}") from None
    write_export_card(folder, facts, lora_config)
    return folder


def _silent(message: str) -> None:
    pass
