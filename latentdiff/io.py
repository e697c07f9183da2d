"""Finding and checking model files: built-in names, local folders, Hub repo ids; safetensors only
unless the user explicitly allows pickles.
"""

from __future__ import annotations

import json
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


def share_tree(root: str | os.PathLike) -> None:
    """One permissions rule for everything we write: files 0666 & ~umask, folders 0777 & ~umask, as
    ``open()`` and ``mkdir()`` make them. Library writers (``mkstemp``, ``mkdtemp``) leave 0600/0700."""
    mask = _umask()
    root = Path(root)
    for f in [root, *root.rglob("*")]:
        if f.is_symlink():
            continue
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)
        elif f.is_dir():
            os.chmod(f, 0o777 & ~mask)


def foreign_entries(target: Path, ours: set[str]) -> list[str]:
    """Top-level entries of folder ``target`` that are not in ``ours`` (sorted)."""
    return sorted(p.name for p in target.iterdir() if p.name not in ours)


@contextmanager
def atomic_dir(target: str | os.PathLike, *, also_ours: tuple[str, ...] = (), keep: tuple[str, ...] = (),
               expect: tuple[str, ...] = ()):
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` in one rename,
    on error it is removed, so ``target`` is never left half-written.

    An existing ``target`` is replaced only if it is empty or holds nothing but what we write: the
    entries of the new folder, ``also_ours`` (files our trainers add beside, e.g. a training summary)
    and ``keep`` (moved into the new folder when it lacks them, e.g. a README.md model card). Anything
    else is someone's data: :class:`OutputExistsError`, and nothing is touched. ``expect`` (the names
    the writer will write, when it knows them) lets that check run before the writing, not after."""
    from .errors import OutputExistsError

    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} is a file, not a folder; save to a folder path instead")
    if expect and target.is_dir():
        _refuse_foreign(target, set(expect) | set(also_ours) | set(keep))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        share_tree(tmp)
        if target.exists():
            _refuse_foreign(target, {p.name for p in tmp.iterdir()} | set(also_ours) | set(keep))
            for name in keep:
                if (target / name).exists() and not (tmp / name).exists():
                    os.replace(target / name, tmp / name)
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _refuse_foreign(target: Path, ours: set[str]) -> None:
    from .errors import OutputExistsError

    foreign = foreign_entries(target, ours)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputExistsError(f"{target} already holds files latentdiff did not write ({shown}); nothing was changed. "
                                "Save to a new or empty folder, or move those files away first")


def check_writable_dir(folder: str | os.PathLike, what: str) -> Path:
    """Create ``folder`` if needed and prove we can write into it (a temporary file), so a long job
    fails at its start, not after the work: ``what`` names the option in the message."""
    from .errors import UserError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder; pass a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".latentdiff-write-test-")
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{what} {folder}: a part of this path is a file, not a folder") from None
    except OSError as e:
        reason = e.strerror or str(e)
        raise UserError(f"{what} {folder} is not writable ({reason}); choose a folder you can write to") from None
    return folder


def read_json(path: str | os.PathLike, what: str = "") -> dict:
    """A JSON object from ``path``; a broken or non-object file is an error naming it."""
    from .errors import UserError

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); this file ({what or 'JSON'}) is damaged: re-download or "
                        "re-save it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}; re-download or re-save it")
    return data


def resolve_device(device) -> "torch.device":  # noqa: F821 (torch is imported lazily)
    """A ``torch.device`` this machine can use, else an error naming the choices."""
    import torch

    from .errors import UserError

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
