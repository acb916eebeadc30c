"""Where a job's model and data come from: asset names, local paths or Hub ids, and the train/eval split."""

from __future__ import annotations

import itertools
from pathlib import Path

from . import assets
from .checks import ConfigError


def _reason(e: BaseException) -> str:
    """The first line of the error; datasets' "An error occurred while generating the dataset" is replaced by the
    reader's error it wraps."""
    cause = e.__cause__ or e.__context__
    if cause is not None and "error occurred while generating" in str(e):
        return _reason(cause)
    return str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__


def _load_file(p: Path):
    """A data file as a one-split DatasetDict; ConfigError for an empty file, a header without rows or a file its
    reader refuses (mixed types in a column, a broken line)."""
    from datasets import load_dataset

    ext = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".tsv": "csv"}.get(p.suffix)
    if ext is None:
        raise ConfigError(f"data file {str(p)!r}: unsupported type; use .json/.jsonl/.csv/.parquet or a "
                          f"save_to_disk dir")
    if ext != "parquet":
        with open(p, errors="replace") as f:
            lines = list(itertools.islice((line for line in f if line.strip()), 2))
        if len(lines) < (2 if ext == "csv" else 1):
            what = "only a header line" if lines else "nothing in it"
            raise ConfigError(f"data file {str(p)!r} has no rows ({what}); data.dataset needs a file with a row per "
                              f"example")
    kw = {"delimiter": "\t"} if p.suffix == ".tsv" else {}
    try:
        return load_dataset(ext, data_files={"train": str(p)}, **kw)
    except Exception as e:  # noqa: BLE001 - the reader's own message is the useful part
        raise ConfigError(f"data file {str(p)!r} could not be read as {p.suffix[1:]} ({_reason(e)}); data.dataset "
                          f"needs one example per row with the same type in every row of a column") from None


def resolve_model(name: str) -> str:
    """Asset name → local dir; local dir → itself; Hub id → itself if its config can be fetched (else ConfigError)."""
    if assets.model_asset_name(name):
        try:
            return assets.model_path(name)
        except assets.AssetError as e:
            raise ConfigError(str(e)) from None
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ConfigError(f"model directory {str(p)!r} has no config.json; pass a save_pretrained() directory")
        return str(p)
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - any failure means "cannot be resolved"
        raise ConfigError(
            f"model {name!r} is not an asset ({', '.join(assets.MODELS)}), not a local directory, and could not be "
            f"loaded from the Hugging Face Hub ({_reason(e)}); use an asset name or a local save_pretrained() directory"
        ) from None
    return name


def published_model(cfg: dict) -> tuple[str | None, str | None]:
    """``(Hub id, how the local copy differs)`` of the job's base model, for the card and adapter_config.json:
    ``card.base_model`` if set, an asset's Hub twin, the model itself when it is a Hub id; ``(None, None)`` for a
    local directory without ``card.base_model`` (nothing published may name a path of this machine)."""
    from ..hub import is_local_path

    given = (cfg.get("card") or {}).get("base_model")
    key = assets.model_asset_name(cfg["model"])
    if given:
        return given, None
    if key:
        return assets.MODELS[key].hub_id, assets.MODELS[key].copy
    return (None, None) if is_local_path(cfg["model"]) else (cfg["model"], None)


def load_raw(name: str, data_cfg: dict):
    """Dataset name → DatasetDict (asset, save_to_disk dir, data file, or Hub id)."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    if assets.dataset_asset_name(name):
        try:
            return assets.load_dataset_asset(name)
        except assets.AssetError as e:
            raise ConfigError(str(e)) from None
    p = Path(name).expanduser()
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "dataset_info.json").exists()):
        ds = load_from_disk(str(p))
        if isinstance(ds, Dataset):
            ds = DatasetDict({data_cfg.get("train_split") or "train": ds})
        return ds
    if p.is_file():
        return _load_file(p)
    if p.exists() or name.startswith((".", "/", "~")):
        raise ConfigError(f"dataset path {name!r} is neither a datasets.save_to_disk directory nor a data file")
    try:
        return load_dataset(name, data_cfg.get("subset"))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"dataset {name!r} is not an asset ({', '.join(assets.DATASETS)}), not a local path, and could not be "
            f"loaded with datasets.load_dataset ({_reason(e)}); use an asset name or a local save_to_disk directory"
        ) from None


def _pick_split(ds, wanted: str | None, prefer: tuple[str, ...], name: str, role: str) -> str:
    if wanted is not None:
        if wanted in ds:
            return wanted
        if len(ds) == 1:  # a single data file: a copied config's split names do not apply to it
            return next(iter(ds))
        raise ConfigError(f"dataset {name!r} has no split {wanted!r} for {role} (data.{role}_split); available: "
                          f"{', '.join(ds)}")
    for s in prefer:
        if s in ds:
            return s
    return next(iter(ds))


def split_dataset(ds, name: str, data_cfg: dict, notes: list | None = None):
    """(train, eval) Datasets: shuffled with data.seed, cut to train_size / eval_size; disjoint when both come from
    the same split (e.g. the 872 SST-2 validation sentences, or a single CSV file, whatever split names the config
    gives). How the split was made is appended to ``notes`` when both parts come from one split."""
    seed = int(data_cfg.get("seed", 0))
    tr = _pick_split(ds, data_cfg.get("train_split"), ("train",), name, "train")
    ev = _pick_split(ds, data_cfg.get("eval_split"), ("validation", "test", "train"), name, "eval")
    n_train, n_eval = data_cfg.get("train_size"), data_cfg.get("eval_size")
    for key, n in (("train_size", n_train), ("eval_size", n_eval)):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ConfigError(f"data.{key} must be a positive integer, got {n!r}")
    if tr == ev:
        full = ds[tr].shuffle(seed=seed)
        total = len(full)
        if n_train is None and n_eval is None:
            n_eval = max(1, total // 5)
        n_train = n_train if n_train is not None else total - n_eval
        n_eval = n_eval if n_eval is not None else total - n_train
        if n_eval < 1:
            raise ConfigError(f"data.train_size={n_train} leaves no rows to evaluate on: dataset {name!r} split {tr!r} "
                              f"has {total} rows, cut into train and eval; set data.train_size below {total}")
        if n_train < 1:
            raise ConfigError(f"dataset {name!r} split {tr!r} has {total} rows: too few to cut a training part from "
                              f"(eval_size={n_eval}); add rows or lower data.eval_size")
        if n_train + n_eval > total:
            raise ConfigError(
                f"dataset {name!r} split {tr!r} has {total} rows, fewer than train_size + eval_size = "
                f"{n_train + n_eval}; lower the sizes (train and eval are cut disjointly from the same split)"
            )
        if notes is not None:
            named = [s for s in (data_cfg.get("train_split"), data_cfg.get("eval_split")) if s is not None and s != tr]
            why = f" (it has no split {' / '.join(map(repr, dict.fromkeys(named)))})" if named else ""
            shown = Path(name).name  # results.json and the card name no local paths
            notes.append(f"{shown}: train and eval cut disjointly from its only split {tr!r}{why}: {n_train} train / "
                         f"{n_eval} eval rows, shuffled with data.seed={seed}" if len(ds) == 1 else
                         f"{shown}: train and eval cut disjointly from split {tr!r}: {n_train} train / {n_eval} eval "
                         f"rows, shuffled with data.seed={seed}")
        return full.select(range(n_train)), full.select(range(n_train, n_train + n_eval))
    train, evl = ds[tr].shuffle(seed=seed), ds[ev].shuffle(seed=seed)
    for key, n, part, split in (("train_size", n_train, train, tr), ("eval_size", n_eval, evl, ev)):
        if n is not None and n > len(part):
            raise ConfigError(f"data.{key}={n} but dataset {name!r} split {split!r} has only {len(part)} rows")
    for role, part, split in (("train", train, tr), ("eval", evl, ev)):
        if len(part) == 0:
            raise ConfigError(f"dataset {name!r} split {split!r} has no rows; set data.{role}_split to a split with "
                              f"examples")
    train = train.select(range(n_train)) if n_train is not None else train
    evl = evl.select(range(n_eval)) if n_eval is not None else evl
    return train, evl


def load_data(cfg: dict, task_cls, notes: list | None = None) -> tuple:
    """``(train, eval, columns)`` for the job: every listed dataset loaded, split, checked by the task class (which
    names the columns it needs) and, for several datasets, concatenated with a ``source`` column. How each split was
    made is appended to ``notes`` where train and eval come from one split."""
    from datasets import concatenate_datasets

    data_cfg = cfg["data"]
    names = data_cfg["dataset"] if isinstance(data_cfg["dataset"], list) else [data_cfg["dataset"]]
    if len(names) > 1 and not task_cls.multi_dataset:
        raise ConfigError(f"a list of datasets is only supported for tasks that score per source "
                          f"(causal_lm_mc), not {task_cls.name}")
    trains, evals, columns = [], [], None
    for name in names:
        raw = load_raw(str(name), data_cfg)
        train, evl = split_dataset(raw, str(name), data_cfg, notes)
        cols = task_cls.columns(train, data_cfg, str(name))
        task_cls.columns(evl, data_cfg, str(name))
        if columns is not None and cols != columns:
            raise ConfigError(f"datasets {names} have different column layouts; list only datasets of the same format")
        columns = cols
        if len(names) > 1:
            keep = task_cls.kept_columns(columns)
            train = train.select_columns(keep).add_column("source", [str(name)] * len(train))
            evl = evl.select_columns(keep).add_column("source", [str(name)] * len(evl))
        trains.append(train)
        evals.append(evl)
    train = concatenate_datasets(trains).shuffle(seed=int(data_cfg.get("seed", 0))) if len(trains) > 1 else trains[0]
    evl = concatenate_datasets(evals) if len(evals) > 1 else evals[0]
    return train, evl, columns
