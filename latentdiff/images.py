"""Small image helpers: grids and atomic PNG writes."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from PIL import Image

from latentdiff.io import _umask, replace_shared


def make_grid(images: list[Image.Image], cols: int | None = None, pad: int = 2) -> Image.Image:
    """Tile PIL images (all the same size) into one image, row by row, on white."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return grid


def save_png_atomic(image: Image.Image, path: str | os.PathLike, *, exclusive: bool = False, **save_kwargs) -> None:
    """Save a PNG via a temporary file and a rename: a crash never leaves a truncated PNG.
    ``exclusive``: never replace an existing ``path`` (FileExistsError instead), atomically, by
    hard-linking the finished file to its name (where links are unsupported: an ``O_EXCL``
    reservation of the name, then the rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        image.save(tmp, format="PNG", **save_kwargs)
        if not exclusive:
            replace_shared(tmp, p)
            return
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            os.link(tmp, p)  # fails with FileExistsError if the name is taken
            os.unlink(tmp)
        except FileExistsError:
            raise
        except OSError:  # no hard links here (some network or FAT file systems)
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
