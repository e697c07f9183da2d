"""Finding and checking model files: built-in names, local folders, Hub repo ids; safetensors only
unless the user explicitly allows pickles.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger("latentdiff")

ASSETS = Path(__file__).parent / "assets"
# Built-in models shipped inside the package (short name -> folder in the diffusers layout).
BUILTIN_MODELS = {"emoji": ASSETS / "emoji-model"}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not os.path.exists(name)


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
        from .hub import download_repo

        return download_repo(name, revision=revision, kind=kind)
    raise FileNotFoundError(
        f"{kind} {name!r} not found: not a built-in name ({', '.join(BUILTIN_MODELS)}), "
        f"not an existing path, and not a Hub repo id of the form 'user/name'"
    )


def check_weights(folder: Path, *, allow_pickle: bool = False) -> None:
    """Refuse pickled weights unless allowed, and check every safetensors header parses."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    safes = [p for p in files if p.suffix == ".safetensors"]
    if pickles and not allow_pickle:
        covered = {p.parent for p in safes}
        unsafe = [p for p in pickles if p.parent not in covered]
        if unsafe:
            raise ValueError(
                f"{', '.join(str(p) for p in unsafe)}: pickled weights can run arbitrary code when loaded; "
                "latentdiff loads safetensors only. Convert them to safetensors, or pass allow_pickle=True "
                "(--allow-pickle) if you trust the source."
            )
    for p in safes:
        check_safetensors_file(p)


def check_safetensors_file(path: Path) -> None:
    """ValueError naming the file if its safetensors header or size is wrong (truncated/corrupt)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:
        raise ValueError(f"{path} is not a valid safetensors file ({e}); the download or save was "
                         "interrupted or the file is corrupt: re-download or re-save it") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_shared(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """The last step of every atomic write: give the temporary file the permissions ``open()`` would
    have (0666 & ~umask; ``mkstemp`` makes 0600, which leaves saved models, LoRAs, configs and
    images unreadable to anyone else), then rename it over ``path`` in one step."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


@contextmanager
def atomic_dir(target: str | os.PathLike):
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` in one rename,
    on error it is removed, so ``target`` is never left half-written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a saved model should be readable like any folder
    try:
        yield tmp
        mask = _umask()
        for f in tmp.rglob("*"):  # library writers (safetensors shards via mkstemp) leave 0600 files
            if f.is_file() and not f.is_symlink():
                os.chmod(f, 0o666 & ~mask)
            elif f.is_dir() and not f.is_symlink():
                os.chmod(f, 0o777 & ~mask)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
