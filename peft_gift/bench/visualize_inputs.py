"""What the visualiser reads: a saved adapter directory with its base model, and the images or texts to show it.

Every failure to read an input is a one-line ``SystemExit("error: ...")`` that says what to pass instead.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

import peft_gift  # noqa: F401 - registers GIFT / LoFiT with PEFT

logger = logging.getLogger(__name__)


def adapter_info(adapter_dir: Path) -> tuple[dict, dict[str, tuple]]:
    """(adapter_config.json, {tensor name: shape} of adapter_model.safetensors) of a saved adapter directory."""
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise SystemExit(f"error: {adapter_dir} has no adapter_config.json (not a saved PEFT adapter directory)")
    try:
        config = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SystemExit(f"error: {cfg_file} is not valid JSON ({err}); re-save the adapter with save_pretrained") from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise SystemExit(f"error: {cfg_file} is not a PEFT adapter config (a JSON object with a 'peft_type'); "
                         f"re-save the adapter with save_pretrained")
    shapes: dict[str, tuple] = {}
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return config, shapes


def _resolve_base(name: str) -> str:
    """A base model asset name, local directory or Hub id → something ``from_pretrained`` loads, or a one-line exit."""
    from ..recipes.config import ConfigError
    from ..recipes.data import resolve_model

    if not isinstance(name, str) or not name.strip():
        raise SystemExit(f"error: base model {name!r} is not a model name or path; pass --base-model")
    try:
        return resolve_model(name)
    except ConfigError as err:
        raise SystemExit(f"error: --base-model / base_model_name_or_path: {err}") from None


def _head_labels(shapes: dict[str, tuple]) -> int | None:
    for key, shape in shapes.items():
        if re.search(r"(classifier|score)\.weight$", key) and len(shape) == 2:
            return shape[0]
    return None


def _model_class(model_config, task, num_labels):
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    if getattr(model_config, "patch_size", None) is not None:
        return AutoModelForImageClassification if num_labels else AutoModel
    if task == "SEQ_CLS" or (num_labels and task != "CAUSAL_LM"):
        return AutoModelForSequenceClassification
    if task == "CAUSAL_LM" or any(a.endswith("ForCausalLM") for a in model_config.architectures or []):
        return AutoModelForCausalLM
    return AutoModel


def load_adapted(adapter_dir: Path, base: str | None):
    """(peft model, tokenizer or None, adapter config dict, base path) for a saved adapter directory."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoTokenizer

    config, shapes = adapter_info(adapter_dir)
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise SystemExit(f"error: {adapter_dir}/adapter_config.json names no base model; pass --base-model")
    path = _resolve_base(base)
    try:
        model_config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: base model {base!r} has no loadable config ({str(err).splitlines()[0][:160]}); "
                         f"pass --base-model with an asset name, a save_pretrained() directory or a Hub id") from None
    num_labels = _head_labels(shapes)
    cls = _model_class(model_config, config.get("task_type"), num_labels)
    try:
        model = cls.from_pretrained(path, **({"num_labels": num_labels} if num_labels else {})).eval()
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: could not load base model {path!r} as {cls.__name__} "
                         f"({str(err).splitlines()[0][:160]}); pass the adapter's base model with --base-model") from None
    try:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise SystemExit(f"error: {adapter_dir} does not load onto {path!r} ({str(err).splitlines()[0][:200]}); "
                         f"check --base-model") from None
    tokenizer = None
    if getattr(model_config, "patch_size", None) is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as err:  # noqa: BLE001 - decoding then shows token ids
            logger.info("note: no tokenizer at %s (%s); showing token ids", path, type(err).__name__)
    return model, tokenizer, config, path


def text_batch(texts: list[str], tokenizer) -> tuple[dict, list[list[str]]]:
    """(model inputs with an attention mask, token strings per text); without a tokenizer the texts are token ids."""
    if tokenizer is not None:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        tokens = [tokenizer.convert_ids_to_tokens(row) for row in enc["input_ids"].tolist()]
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, tokens
    ids = [[int(t) for t in text.split()] for text in texts]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return {"input_ids": input_ids, "attention_mask": mask}, [[str(t) for t in row] for row in input_ids.tolist()]


def normalisation(base_path: str) -> tuple[list[float], list[float]]:
    """(mean, std) of the base model's image processor (ImageNet's when it has none)."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    proc = Path(base_path) / "preprocessor_config.json"
    if proc.is_file():
        pc = json.loads(proc.read_text())
        mean, std = pc.get("image_mean", mean), pc.get("image_std", std)
    return mean, std


def _run_config(adapter_dir: Path) -> dict | None:
    results = adapter_dir.parent / "results.json"
    if results.is_file():
        return json.loads(results.read_text()).get("config")
    return None


def image_files(paths: list[str]):
    """(PIL images, labels, source) of image files."""
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in paths], [Path(p).stem for p in paths], "files given with --images"


def cifar10_images(n: int, adapter_dir: Path):
    """n CIFAR-10 images (PIL) with class names; when the adapter came from scripts/train.py, taken from its held-out
    evaluation split so that none was trained on."""
    from ..recipes import assets

    run_cfg = _run_config(adapter_dir)
    ds = assets.load_dataset_asset("cifar10")
    source = "cifar10 test split (first images)"
    if run_cfg and str(run_cfg.get("data", {}).get("dataset")).lower() in ("cifar10", "cifar-10"):
        from ..recipes.data import split_dataset

        _, ds = split_dataset(ds, "cifar10", run_cfg["data"])
        source = "held-out evaluation split of the training run"
    else:
        ds = ds[next(iter(ds))]
    names = ds.features["label"].names if hasattr(ds.features["label"], "names") else None
    picked, labels, seen = [], [], set()
    for row in ds:  # one image per class first, for variety
        label = int(row["label"])
        if label in seen and len(seen) < min(n, len(names or [])):
            continue
        seen.add(label)
        picked.append(row["image"].convert("RGB"))
        labels.append(names[label] if names else str(label))
        if len(picked) == n:
            break
    return picked, labels, source


def pixel_values(images, size: int, mean, std) -> torch.Tensor:
    """The images resized (bicubic) to size × size and normalised, as a (batch, 3, size, size) tensor."""
    from PIL import Image

    out = []
    for im in images:
        im = im.convert("RGB").resize((size, size), Image.BICUBIC)
        t = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))
    return torch.stack(out)


def image_size(requested: int | None, adapter_dir: Path, model) -> int:
    """``requested``, else the training run's image size, else the model's."""
    if requested:
        return requested
    run_cfg = _run_config(adapter_dir)
    if run_cfg and run_cfg.get("data", {}).get("image_size"):
        return int(run_cfg["data"]["image_size"])
    size = model.get_base_model().config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)
