"""User errors, and the one place that turns them into a one-line message.

A *user error* is something the person running latentdiff can fix: a bad option, a missing or
unreadable file, a full disk, a folder we must not overwrite. Those print ``error: ...`` (naming the
input and what to do) and exit with status 2. Everything else is a bug in latentdiff and keeps its
traceback, so it gets reported instead of hidden. ``LATENTDIFF_DEBUG=1`` shows the traceback of a
user error too.

This module is at the bottom of the layering: it imports nothing from latentdiff.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable


class UserError(ValueError):
    """Bad input, named with what to do about it. A ``ValueError``, so ``except ValueError`` callers
    keep working."""


class NonFiniteError(UserError):
    """A NaN or Inf appeared (inputs, weights, latents, images or a training loss)."""


class MemoryLimitError(UserError):
    """A call would need more memory than the machine has (estimated before allocating it)."""


class MissingSplitError(UserError, FileNotFoundError):
    """A dataset has no split of that name (a flat image folder has only its one "train" split)."""


class OutputExistsError(UserError, FileExistsError):
    """A folder or file we were asked to write holds something we must not replace."""


# OSError covers FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, a full
# disk (ENOSPC), ConnectionError, PIL's UnidentifiedImageError and huggingface_hub's HTTP errors.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)

_OS_HINTS = {
    errno.ENOSPC: "no space left on the device: free some space or write somewhere else",
    errno.EDQUOT: "disk quota exceeded: free some space or write somewhere else",
    errno.EACCES: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a folder you can write to, or fix its permissions",
    errno.EROFS: "read-only file system: choose a writable folder",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "this is a folder, where a file was expected",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the file name is too long",
}


def describe(e: BaseException) -> str:
    """One line for a user error: our own messages as they are; OS errors as ``path: what, what to do``."""
    if isinstance(e, OSError) and not isinstance(e, UserError) and e.errno in _OS_HINTS and e.filename:
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
        text = f"{where}: {_OS_HINTS[e.errno]}"
    elif isinstance(e, OSError) and e.strerror and not e.filename:
        text = e.strerror  # OSError(errno, message): without the "[Errno N]" prefix
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())  # one line, whatever the library put in the message


def run_cli(fn: Callable[[], int | None], *, stream=None) -> int:
    """Run ``fn``; user errors print ``error: ...`` and return 2, Ctrl-C prints ``interrupted`` and
    returns 130 (the shell's code for SIGINT); any other exception propagates with its traceback."""
    stream = stream or sys.stderr
    try:
        return fn() or 0
    except KeyboardInterrupt:
        _close_progress_bars()
        print("interrupted", file=stream)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("LATENTDIFF_DEBUG"):
            raise
        _close_progress_bars()
        print(f"error: {describe(e)}", file=stream)
        return 2


def _close_progress_bars() -> None:
    """Finish open tqdm bars, so the error starts its own line instead of trailing a bar."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()) or ()):
        try:
            bar.close()
        except Exception:  # a bar that cannot close must not hide the error message
            pass


__all__ = ["UserError", "NonFiniteError", "MemoryLimitError", "MissingSplitError", "OutputExistsError", "USER_ERRORS", "describe",
           "run_cli"]
