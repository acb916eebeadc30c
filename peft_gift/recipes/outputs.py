"""What a job writes under its output folder, checked before anything loads: a path in the way of an output is an
error, and so are the outputs of an earlier run unless the job replaces them (``--overwrite``), so that no adapter,
export or results.json of another run is left beside the new ones."""

from __future__ import annotations

import shutil
from pathlib import Path

from .checks import ConfigError

# the entries of OUT that a job owns (whichever of them this job's method writes), and what each one is
OUTPUTS = {"results.json": "results file", "adapter": "adapter folder", "model": "model folder",
           "stage1_adapter": "stage-1 adapter folder", "lora_export": "LoRA export folder",
           "trainer": "Trainer working folder"}


def check_output_dir(path) -> Path:
    """``path`` as a Path, or ConfigError when it names an existing file (everything is written below it)."""
    p = Path(path)
    for parent in (p, *p.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"output_dir {str(p)!r}: {str(parent)!r} is a file, not a directory; pass a directory "
                              f"path (it is created if missing)")
    return p


def check_outputs(out: Path, overwrite: bool) -> list[Path]:
    """The outputs of an earlier run in ``out`` (what :func:`clear_outputs` removes once the job is ready to train).
    ConfigError where an entry is not what the job writes there (a file named ``adapter``, a link, a folder named
    results.json: the job would train and then fail to save), and, without ``overwrite``, where an earlier run's
    outputs are there."""
    found = []
    for name, what in OUTPUTS.items():
        p = out / name
        if not p.exists() and not p.is_symlink():
            continue
        if p.is_symlink() or p.is_dir() != what.endswith("folder"):
            kind = "link" if p.is_symlink() else "folder" if p.is_dir() else "file"
            raise ConfigError(f"output_dir {str(out)!r}: {name} is a {kind}, where the job writes its {what}; move "
                              f"it away or choose another --output-dir")
        found.append(p)
    if found and not overwrite:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found)
        raise ConfigError(f"output_dir {str(out)!r} holds the outputs of an earlier run ({names}); pass --overwrite "
                          f"to replace them (they are removed before training) or choose another --output-dir")
    return found


def clear_outputs(paths: list[Path]) -> None:
    """Remove an earlier run's outputs (found by :func:`check_outputs`)."""
    for p in paths:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def readable_by_all(folder: Path) -> None:
    """Give the files under ``folder`` the mode the process' umask gives new files (safetensors writes its files
    0600, so an adapter the job saved would be readable by its owner only)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for f in Path(folder).rglob("*"):
        if f.is_file() and not f.is_symlink():
            f.chmod(0o666 & ~umask)
