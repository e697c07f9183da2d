"""Small image helpers: grids and atomic PNG writes."""

from __future__ import annotations

import math
import os

from PIL import Image

from latentdiff.fs import atomic_write


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
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", **save_kwargs), exclusive=exclusive)
