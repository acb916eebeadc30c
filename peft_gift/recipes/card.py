"""The model cards the training CLI writes: what was trained, on which data, how well, and how to reproduce it.

A card names Hub ids and file names only, never a path of this machine: the base model by its Hub id (an asset's
Hub twin, ``card.base_model``, or the model itself when it is a Hub id), local data files by their file name. The
facts behind a card are what ``results.json`` keeps under ``"card"`` (its published part); metrics go into the card's
``model-index`` (``huggingface_hub.EvalResult``), which the Hub shows as evaluation results.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional

from ..hub import BASE_PLACEHOLDER, METHOD_NAMES, drop_local_base_model, install_instructions, is_local_path
from . import assets
from .card_code import usage_code, usage_section

HUB_TASKS = {"seq_cls": "text-classification", "image_cls": "image-classification", "causal_lm_mc": "multiple-choice"}
TASK_WORDS = {
    "seq_cls": "sequence classification (a new classification head)",
    "image_cls": "image classification (a new classification head)",
    "causal_lm_mc": "multiple choice (trained on the right answer; evaluated by the most likely choice)",
}
COMMAND = "python scripts/train.py job.yaml"


def _scrub(value):
    """``value`` with every string that is a path of this machine replaced by its last component."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and (os.sep in value or value.startswith("~")) and is_local_path(value):
        return Path(value).name
    return value


def _datasets(cfg: dict) -> list[tuple[str, dict]]:
    """``(source as configured, published entry)`` per dataset; the entry has ``name`` (asset name, Hub id or file
    name), ``hub_id`` and ``config`` (None without a Hub twin)."""
    names = cfg["data"]["dataset"] if isinstance(cfg["data"]["dataset"], list) else [cfg["data"]["dataset"]]
    given = (cfg.get("card") or {}).get("dataset")
    out = []
    for source in map(str, names):
        key = assets.dataset_asset_name(source)
        local = key is None and is_local_path(source)
        if given and len(names) == 1:
            hub_id, config = given, cfg["data"].get("subset")
        elif key:
            hub_id, config = assets.DATASET_HUB_IDS.get(key, (None, None))
        else:
            hub_id, config = (None, None) if local else (source, cfg["data"].get("subset"))
        name = key or (given if given and len(names) == 1 else Path(source).name if local else source)
        out.append((source, {"name": name, "hub_id": hub_id, "config": config}))
    return out


def _job_config(cfg: dict, base_model: Optional[str], datasets: list[tuple[str, dict]]) -> dict:
    """The job config a reader can run: assets and Hub ids as they are, local model / data replaced by the Hub ids
    the card names (or their file names), no output_dir."""
    job = copy.deepcopy(cfg)
    job.pop("output_dir", None)
    if not assets.model_asset_name(cfg["model"]) and is_local_path(cfg["model"]):
        job["model"] = base_model or BASE_PLACEHOLDER
    published = [(entry["hub_id"] or entry["name"]) if is_local_path(source) else source for source, entry in datasets]
    job["data"]["dataset"] = published if isinstance(cfg["data"]["dataset"], list) else published[0]
    return _scrub(job)


def card_facts(cfg: dict, results: dict, base_model: Optional[str], base_copy: Optional[str],
               labels: Optional[list], split: list[str]) -> dict:
    """What the card publishes (``results.json``'s ``"card"``): no path of this machine in it."""
    datasets = _datasets(cfg)
    rows = []
    for key, after in results["after"].items():
        if key == "loss" or isinstance(after, bool) or not isinstance(after, (int, float)):
            continue
        metric, dataset = key, "+".join(e["name"] for _, e in datasets)
        for source, entry in datasets:  # per-dataset metrics of a list of datasets: accuracy_<source>
            if len(datasets) > 1 and key.endswith("_" + source):
                metric, dataset = key[: -len(source) - 1], entry["name"]
        rows.append({"dataset": dataset, "metric": metric, "before": results["before"].get(key), "after": after})
    keep = ("task", "method", "train_examples", "eval_examples", "trainable_params", "head_params", "total_params",
            "optimizer_steps", "train_time_s")
    return {
        "base_model": base_model, "base_model_copy": base_copy, **{k: results.get(k) for k in keep},
        "method": _scrub(cfg["method"]), "datasets": [e for _, e in datasets], "split": split,
        "labels": list(labels) if labels else None, "num_labels": results.get("num_labels"),
        "inputs": results.get("inputs") or {}, "saved": Path(results["saved_to"]).name, "results": rows,
        "command": COMMAND, "config": _job_config(cfg, base_model, datasets),
    }


def _title(facts: dict) -> str:
    base = (facts["base_model"] or "model").split("/")[-1]
    return f"{base} {facts['method']['name']} {'+'.join(d['name'].split('/')[-1] for d in facts['datasets'])}"


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _card_data(card, facts: dict):
    from huggingface_hub import EvalResult

    data = card.data
    drop_local_base_model(data)
    data.base_model = facts["base_model"]
    data["library_name"] = data.get("library_name") or "peft"
    hub_datasets = sorted({d["hub_id"] for d in facts["datasets"] if d["hub_id"]})
    data.datasets = hub_datasets or None
    by_name = {d["name"]: d for d in facts["datasets"]}
    data.model_name = _title(facts)
    data.eval_results = [
        EvalResult(task_type=HUB_TASKS[facts["task"]], dataset_type=(by_name.get(r["dataset"], {}).get("hub_id")
                                                                     or r["dataset"]),
                   dataset_name=r["dataset"], dataset_config=by_name.get(r["dataset"], {}).get("config"),
                   dataset_split="held-out evaluation part", metric_type=r["metric"], metric_value=value,
                   metric_name=f"{r['metric']} ({when} fine-tuning)")
        for r in facts["results"] for when, value in (("before", r["before"]), ("after", r["after"]))
        if value is not None
    ]
    if facts["task"] != "causal_lm_mc":
        data.pipeline_tag = HUB_TASKS[facts["task"]]
    return data


def write_card(folder, facts: dict, machine: str = "") -> None:
    """``folder/README.md``: the card of what the CLI saved there (the metadata PEFT wrote is kept; its template
    text is replaced). The GIFT / LoFiT loading section is added afterwards by :func:`peft_gift.write_model_card`."""
    import yaml
    from huggingface_hub import ModelCard, ModelCardData

    path = Path(folder) / "README.md"
    card = ModelCard.load(path) if path.exists() else ModelCard(f"---\n{ModelCardData().to_yaml()}\n---\n")
    data = _card_data(card, facts)
    base, method = facts["base_model"], facts["method"]
    base_md = f"[{base}](https://huggingface.co/{base})" if base else "a local base model"
    names = ", ".join(f"[{d['name']}](https://huggingface.co/datasets/{d['hub_id']})" if d["hub_id"] else d["name"]
                      for d in facts["datasets"])
    settings = ", ".join(f"{k}={v}" for k, v in method.items() if k != "name") or "defaults"
    lines = [
        f"# {_title(facts)}", "",
        f"{METHOD_NAMES.get(method['name'], method['name'])} fine-tune of {base_md} for "
        f"{TASK_WORDS[facts['task']]} on {names}, written by the peft-gift training CLI.",
    ]
    if facts["base_model_copy"]:
        lines += ["", f"Trained on a local copy of {base}: {facts['base_model_copy']}."]
    lines += ["", *usage_section(facts, adapter=facts["saved"] == "adapter")]
    lines += ["## Results", "", "| data | metric | before fine-tuning | after fine-tuning |", "|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['metric']} | {_pct(r['before'])} | {_pct(r['after'])} |" for r in facts["results"]]
    lines += ["", f"On the {facts['eval_examples']:,} held-out evaluation examples (never trained on); \"before\" is the "
              "base model" + (" with the freshly initialised head." if facts["task"] != "causal_lm_mc" else ".")]
    lines += ["", "## Training", "",
              f"- Task: `{facts['task']}`, {TASK_WORDS[facts['task']]}",
              f"- Data: {names}: {facts['train_examples']:,} training / {facts['eval_examples']:,} evaluation examples",
              *[f"  - {note}" for note in facts["split"]]]
    if facts["labels"]:
        lines.append("- Labels: " + ", ".join(f"{i} = `{n}`" for i, n in enumerate(facts["labels"])))
    lines += [f"- Method: `{method['name']}` ({settings})",
              f"- Trainable parameters: {facts['trainable_params']:,} of {facts['total_params']:,}"
              + (f" (classification head: {facts['head_params']:,})" if facts.get("head_params") else ""),
              f"- Optimizer steps: {facts['optimizer_steps']:,}, training time {facts['train_time_s']} s"
              + (f" ({machine})" if machine else ""),
              "", "## Reproduce", "", "```bash", *install_instructions(), facts["command"], "```", "",
              "with `job.yaml`:", "", "```yaml", yaml.safe_dump(facts["config"], sort_keys=False).rstrip(), "```", ""]
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(path)


def write_export_card(folder, facts: dict, lora_config) -> None:
    """``folder/README.md`` for ``peft_gift.export_lora``'s output: a plain PEFT LoRA adapter equal to the trained
    GIFT (or LoFiT stage-2) adapter, loadable and servable without peft-gift."""
    from huggingface_hub import ModelCard, ModelCardData

    data = _card_data(ModelCard(f"---\n{ModelCardData().to_yaml()}\n---\n"), facts)
    data.model_name = _title(facts) + " (LoRA export)"
    data.tags = sorted({"peft", "lora", facts["method"]["name"]}
                       | ({f"base_model:adapter:{facts['base_model']}"} if facts["base_model"] else set()))
    bias = bool(getattr(lora_config, "lora_bias", False))
    lines = [
        f"# {data.model_name}", "",
        f"A plain PEFT LoRA adapter (`peft_type: LORA`) that computes exactly what the trained "
        f"{METHOD_NAMES.get(facts['method']['name'], facts['method']['name'])} adapter computes "
        "(`peft_gift.export_lora`). "
        + ("GIFT is a per-layer LoRA: Ŵx = Wx + s·(Wφ)(ψx), so each layer's lora_B = Wφ, lora_A = ψ and "
           "lora_alpha / r = s." if not bias else
           "Each LoFiT head offset v becomes the constant W_o·v added by a rank-1 LoRA with zero A and B and "
           "`lora_bias: true`."),
        "", "It loads with PEFT alone (peft-gift need not be installed):", "", "```python",
        *usage_code(facts, adapter=True, plugin=False), "```", "",
        ("Any server that runs PEFT LoRA adapters (vLLM, TGI, LoRAX, ...) can serve it, many adapters per base model "
         "and hot-swapped, without a merged copy of the model per adapter." if not bias else
         "Serving needs LoRA-bias support (PEFT's `lora_bias`), which many LoRA servers lack: check yours, or serve "
         "the merged model (`merge_and_unload`)."),
        "", "Its results are those of the adapter it was exported from:", "",
        "| data | metric | after fine-tuning |", "|---|---|---|",
        *[f"| {r['dataset']} | {r['metric']} | {_pct(r['after'])} |" for r in facts["results"]], "",
    ]
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(Path(folder) / "README.md")
