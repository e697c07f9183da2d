"""Synthetic training images for the data tests and benchmarks: rendered shapes (an ellipse, a
rectangle or a triangle in a random colour on a random background) with a caption naming them."""

from __future__ import annotations

import random
from pathlib import Path

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def render_shapes(folder: Path, sizes: list[tuple[int, int]], seed: int = 0, captions: str = "txt") -> Path:
    """One PNG per (w, h) in ``sizes`` in ``folder``; captions as kohya ``.txt`` sidecars
    (``captions="txt"``) or ``metadata.jsonl`` (``"jsonl"``)."""
    import json

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (w, h) in enumerate(sizes):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        im = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        d = ImageDraw.Draw(im)
        box = (w * 0.15, h * 0.15, w * 0.85, h * 0.85)
        if shape == "circle":
            d.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            d.rectangle(box, fill=COLOURS[colour])
        else:
            d.polygon([(w / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=COLOURS[colour])
        name = f"{i:06d}.png"
        im.save(folder / name)
        caption = f"a {colour} {shape}"
        if captions == "txt":
            (folder / f"{i:06d}.txt").write_text(caption)
        else:
            lines.append(json.dumps({"file_name": name, "text": caption}))
    if lines:
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


MIXED_SIZES = [(32, 32), (48, 32), (32, 48), (64, 36), (36, 64), (40, 30), (30, 40), (80, 40), (40, 80), (50, 50),
               (45, 35), (35, 45), (60, 24), (24, 60), (44, 33), (33, 44)]
