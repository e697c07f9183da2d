"""Progress bars, process-wide: ``--no-progress`` of every command (train, eval)."""

from __future__ import annotations

import os


def disable_progress_bars() -> None:
    """``--no-progress``: every tqdm bar of this process (ours, diffusers', transformers') is off.
    tqdm reads ``TQDM_DISABLE`` when it is imported, which has happened by now; so the default
    changes too."""
    import functools

    import tqdm
    import tqdm.auto

    os.environ["TQDM_DISABLE"] = "1"
    for cls in {tqdm.tqdm, tqdm.auto.tqdm}:
        if getattr(cls.__init__, "_latentdiff_quiet", False):
            continue
        original = cls.__init__

        @functools.wraps(original)
        def quiet(self, *args, _original=original, **kwargs):  # wins over a caller's own disable=False
            kwargs["disable"] = True
            _original(self, *args, **kwargs)

        quiet._latentdiff_quiet = True
        cls.__init__ = quiet
