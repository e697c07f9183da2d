"""Model resolution, the layer above the Hub: a built-in name, a local folder or a Hub repo id to a
local folder; and the torch device to run on. Safetensors only unless the user explicitly allows
pickles (the checks live in :mod:`latentdiff.fs`).

The filesystem helpers and constants below are defined in :mod:`latentdiff.fs` (the bottom layer)
and re-exported here, where trainers, tests and the dataset builder import them from.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from latentdiff import hub
from latentdiff.errors import UserError
from latentdiff.fs import (  # noqa: F401 (re-exported)
    ASSETS,
    BUILTIN_MODELS,
    PICKLE_SUFFIXES,
    atomic_dir,
    check_safetensors_file,
    check_weights,
    check_writable_dir,
    foreign_entries,
    is_repo_id,
    read_json,
    replace_shared,
    share_tree,
)

logger = logging.getLogger("latentdiff")


def resolve_model_dir(name_or_path: str | os.PathLike, *, revision: str | None = None,
                      kind: str = "model") -> Path:
    """A local folder for a built-in name, a local path or a Hub repo id (downloaded into the
    standard Hub cache; offline mode reads the cache)."""
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        path = BUILTIN_MODELS[name]
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(f"The built-in model {name!r} is not installed at {path}; reinstall latentdiff")
        return path
    path = Path(name).expanduser()
    if path.exists():
        return path
    if is_repo_id(name):
        return hub.download_repo(name, revision=revision, kind=kind)
    raise FileNotFoundError(
        f"{kind} {name!r} not found: not a built-in name ({', '.join(BUILTIN_MODELS)}), "
        f"not an existing path, and not a Hub repo id of the form 'user/name'"
    )


def resolve_device(device) -> "torch.device":  # noqa: F821 (torch is imported lazily)
    """A ``torch.device`` this machine can use, else an error naming the choices."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"device {device!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r}: no CUDA GPU is available on this machine (or torch was built "
                            "without CUDA); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"numbered 0..{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"device {device!r}: Apple MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise UserError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or mps")
    return dev
