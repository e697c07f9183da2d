"""The bottom layer: file names and patterns every module shares, and the filesystem helpers that
write files and folders atomically with the permissions ``open()``/``mkdir()`` would give them.

Imports nothing from latentdiff but :mod:`latentdiff.errors`. Layers above, each importing only
downward: :mod:`latentdiff.model_card` (cards), :mod:`latentdiff.hub` (the Hub),
:mod:`latentdiff.io` (resolving a model name to a folder), then lora, the pipeline, the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from latentdiff.errors import OutputExistsError, UserError

ASSETS = Path(__file__).parent / "assets"
# Built-in models shipped inside the package (short name -> folder in the diffusers layout).
BUILTIN_MODELS = {"emoji": ASSETS / "emoji-model"}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE (load_lora_weights)
REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")  # a Hub repo id, "user/name" (use .fullmatch)


def is_repo_id(name: str) -> bool:
    """``name`` has the form of a Hub repo id and is not an existing local path."""
    return bool(REPO_ID.fullmatch(name)) and not os.path.exists(name)


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------


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


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[str], object], *,
                 exclusive: bool = False) -> Path:
    """Write ``path`` so that a crash or an error leaves the old file (or none), never half a file,
    and no temporary file behind. Returns the path.

    ``data``: bytes, text (written as UTF-8 whatever the locale, newlines untranslated), or a
    function that writes a file at the temporary path it is given (``safetensors.torch.save_file``,
    ``PIL.Image.save``). The temporary file sits beside ``path`` (same filesystem, so the rename is
    atomic), is flushed to disk, gets the permissions ``open()`` would give it, then is renamed over
    ``path``. ``exclusive``: never replace an existing ``path`` (FileExistsError instead), atomically,
    by hard-linking the finished file to its name (where links are unsupported: an ``O_EXCL``
    reservation of the name, then the rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        if callable(data):
            os.close(fd)
            fd = None
            data(tmp)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            with open(fd, "wb", closefd=False) as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.fsync(fd)
        os.close(fd)
        fd = None
        if not exclusive:
            replace_shared(tmp, p)
            return p
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            os.link(tmp, p)  # fails with FileExistsError if the name is taken
            os.unlink(tmp)
        except FileExistsError:
            raise
        except OSError:  # no hard links here (some network or FAT file systems)
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            os.replace(tmp, p)
        return p
    except BaseException:
        if fd is not None:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` for text (UTF-8)."""
    atomic_write(path, text)


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, header: dict[str, str] | None = None) -> Path:
    """A safetensors file (tensors made contiguous on the CPU, ``header`` as its string metadata),
    written with :func:`atomic_write`."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


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
    foreign = foreign_entries(target, ours)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputExistsError(f"{target} already holds files latentdiff did not write ({shown}); nothing was changed. "
                                "Save to a new or empty folder, or move those files away first")


def check_writable_dir(folder: str | os.PathLike, what: str) -> Path:
    """Create ``folder`` if needed and prove we can write into it (a temporary file), so a long job
    fails at its start, not after the work: ``what`` names the option in the message."""
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


# ----------------------------------------------------------------------------------------------
# Reading and checking files
# ----------------------------------------------------------------------------------------------


def file_sha256(*paths: str | os.PathLike) -> str:
    """The sha256 hex digest of the files' bytes, one after another (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` (symlinks resolved) lies inside ``root`` or is it: names never escape their folder."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except OSError:
        return False


def check_plain_name(name: str, kind: str, where: str) -> None:
    """A name a user picks from a folder (a LoRA in --lora-dir, ``<lora:NAME>``) must be one of its
    entries: UserError for folders, "..", absolute paths."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or Path(name).is_absolute():
        raise UserError(f"{kind} name {name!r} is not a plain name: {kind} names must be a plain name of an entry "
                        f"of {where}, without folders, '..' or absolute paths")


def read_json(path: str | os.PathLike, what: str = "") -> dict:
    """A JSON object from ``path``; a broken or non-object file is an error naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); this file ({what or 'JSON'}) is damaged: re-download or "
                        "re-save it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}; re-download or re-save it")
    return data


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
