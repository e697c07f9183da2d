"""Recolouring augmentation for the emoji data (issue 14's composition): extra training rows in which
a one-word object ("apple", "apple, twemoji style") is painted another colour and its caption says so
("blue apple", "blue apple, twemoji style"), so that a colour word learns to act on any object rather
than to call up the heart, circle or square that carries that colour in the data.

* **Which rows**: one-word captions (an optional ", <style> style" suffix kept), minus the colour-only
  nouns (:data:`~latentdiff.emoji_checks.COLOUR_NOUNS`, :data:`~latentdiff.emoji_checks.SHAPE_NOUNS`)
  and minus the objects :func:`held_out` keeps aside, so the composition report can say how the model
  does on objects it never saw recoloured.
* **Which colours**: by default :data:`RECOLOUR_HUES` (the hue colours); ``colours`` (``data.recolour_colours``)
  may add the tones :data:`RECOLOUR_TONES` (brown, black, white, which are not a hue change). Minus every
  colour covering :data:`OWN_COLOUR_SHARE` or more of the object's coloured pixels; ``copies`` of them
  drawn per row by a seeded generator (the build is deterministic, so the training cache key is stable).
* **How**: every chromatic pixel (saturation >= the checker's achromatic bound) is painted, so
  outlines, highlights and shading stay; white, grey and black parts stay as they are. A hue colour
  replaces the hue, keeping saturation and value (:func:`recolour`); red, orange and yellow also map the
  value into the band of the real data's pixels of that colour (:data:`RECOLOUR_HUE_VALUES`; real red
  0.82–0.98, orange 0.89–1.00, yellow 0.98–1.00, 10th–90th percentile over emoji:all's "<colour> <noun>"
  images), because their dark shades are brown and olive: with the value kept (stages 3-9), 34-37% of the
  red and orange copies of emoji:all's objects (every 8th row) passed the check below (the other hues
  65-67%), a median 71-79% of their coloured pixels the asked colour (others 88-90%), and the stage-9
  model drew "red" and "orange" objects brown (colour right 62% and 41%, against 85–98% for the others);
  with the bands, 63-65% and 89-90% (stage 10: 77% and 79%). A tone maps the pixel into the band where
  the real data has that colour, keeping its relative lightness (:func:`paint`): brown
  takes hue 18° at 0.72× the value (real brown shapes: hue 14–23°, value 0.41–0.75), black and white
  become grey of value 0.05–0.30 and 0.72–0.92 (real black shapes 0–0.26, white ones 0.80–0.91;
  a white object stays visible on the white background). A copy is kept only when the dominant-colour check
  (:func:`~latentdiff.emoji_checks.dominant_colour`) names it as the target (a dark red turned
  "orange" reads brown, and is dropped).

* **Real rows kept in weight**: the recoloured copies outnumber the real "<colour> <object>" rows
  ("green apple", "orange book, twemoji style") by far, and the fourth stage of issue 14 measured
  colour words on those known captions falling from 89% to 75% as recolouring grew.
  :func:`real_colour_object_rows` finds those real rows, so the loader can repeat them
  (``data.recolour_real_repeats``).

Plain tensor functions; the training data loader (:func:`latentdiff.train.common.load_image_data`)
calls :func:`recolour_rows` when ``data.recolour`` > 0.
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np
import torch

from latentdiff.emoji_checks import (
    ACHROMATIC_MAX_S,
    COLOUR_NOUNS,
    COLOUR_WORDS,
    SHAPE_NOUNS,
    dominant_colour,
    hsv_to_rgb,
    pixel_colour_names,
    rgb_to_hsv,
)

RECOLOUR_HUES = {"red": 0.0, "orange": 32.0, "yellow": 57.0, "green": 120.0, "blue": 215.0, "purple": 290.0}
# hue colour -> (value scale, value offset), v' = offset + scale·v, for the hues whose dark shades are another
# colour (dark red and dark orange are brown, dark yellow is olive); the bands are the real data's (below)
RECOLOUR_HUE_VALUES = {"red": (0.18, 0.80), "orange": (0.14, 0.86), "yellow": (0.10, 0.90)}
# tone -> (hue or None for grey, value scale, value offset): v' = offset + scale·v on the chromatic pixels
RECOLOUR_TONES = {"brown": (18.0, 0.72, 0.0), "black": (None, 0.25, 0.05), "white": (None, 0.2, 0.72)}
RECOLOUR_COLOURS = (*RECOLOUR_HUES, *RECOLOUR_TONES)  # what data.recolour_colours may name
OWN_COLOUR_SHARE = 0.1  # the same bound as the composition set's "colour not new to the object"
HELD_OUT_MODULUS = 4    # objects whose name hashes to 0 mod 4 (about a quarter) are never recoloured
_OBJECT_RE = re.compile(r"([a-z]+)((?:, [a-z ]+ style)?)")


_COLOUR_OBJECT_RE = re.compile(r"(%s) [a-z]+(?:, [a-z ]+ style)?" % "|".join(COLOUR_WORDS))


def held_out(obj: str) -> bool:
    """True for the objects kept out of the augmentation (a fixed quarter, by CRC-32 of the name)."""
    return zlib.crc32(obj.encode()) % HELD_OUT_MODULUS == 0


def split_object_caption(caption: str) -> tuple[str, str] | None:
    """("apple", ", twemoji style") for "apple, twemoji style"; None for a caption that is not one
    recolourable object word (several words, a colour-only noun)."""
    m = _OBJECT_RE.fullmatch(caption)
    if m is None or m.group(1) in COLOUR_NOUNS or m.group(1) in SHAPE_NOUNS or m.group(1) in COLOUR_WORDS:
        return None
    return m.group(1), m.group(2)


def recolour(images: torch.Tensor, hue: float) -> torch.Tensor:
    """(…, 3, H, W) RGB in [0, 1]: every chromatic pixel takes ``hue`` (degrees), s and v kept."""
    h, s, v = rgb_to_hsv(images)
    h = torch.where(s >= ACHROMATIC_MAX_S, torch.full_like(h, hue), h)
    return hsv_to_rgb(h, s, v).clamp(0, 1)


def paint(images: torch.Tensor, colour: str) -> torch.Tensor:
    """(…, 3, H, W) RGB in [0, 1]: every chromatic pixel painted ``colour``, one of
    :data:`RECOLOUR_COLOURS`: a hue by :func:`recolour`, its value mapped by :data:`RECOLOUR_HUE_VALUES`
    for red, orange and yellow; a tone by :data:`RECOLOUR_TONES`."""
    if colour in RECOLOUR_HUES and colour not in RECOLOUR_HUE_VALUES:
        return recolour(images, RECOLOUR_HUES[colour])
    if colour in RECOLOUR_HUES:
        hue, (scale, offset) = RECOLOUR_HUES[colour], RECOLOUR_HUE_VALUES[colour]
    elif colour in RECOLOUR_TONES:
        hue, scale, offset = RECOLOUR_TONES[colour]
    else:
        raise ValueError(f"colour {colour!r} cannot be painted: use one of {', '.join(RECOLOUR_COLOURS)}")
    h, s, v = rgb_to_hsv(images)
    chromatic = s >= ACHROMATIC_MAX_S
    if hue is not None:
        h = torch.where(chromatic, torch.full_like(h, hue), h)
    else:
        s = torch.where(chromatic, torch.zeros_like(s), s)
    v = torch.where(chromatic, offset + scale * v, v)
    return hsv_to_rgb(h, s, v).clamp(0, 1)


def own_colours(image: torch.Tensor) -> set[str]:
    """The colour names covering >= :data:`OWN_COLOUR_SHARE` of one image's coloured pixels."""
    names = pixel_colour_names(image).flatten()
    counts = torch.bincount(names[names >= 0], minlength=len(COLOUR_WORDS)).double()
    total = counts.sum()
    return {c for c, k in zip(COLOUR_WORDS, counts) if total and k / total >= OWN_COLOUR_SHARE}


def recolour_rows(images_u8: torch.Tensor, captions: Sequence[str], copies: int, seed: int = 0,
                  colours: Sequence[str] = tuple(RECOLOUR_HUES)) -> tuple[torch.Tensor, list[str]]:
    """The extra rows for ``images_u8`` (N, 3, H, W) uint8 and their ``captions``: up to ``copies``
    recoloured versions of each recolourable row in ``colours`` (see the module docstring), as
    (M, 3, H, W) uint8 and M captions "<colour> <object><suffix>". Deterministic in (inputs, copies,
    seed, colours)."""
    bad = [c for c in colours if c not in RECOLOUR_COLOURS]
    if bad or not colours:
        raise ValueError(f"recolour colours {list(colours)}: use one or more of {', '.join(RECOLOUR_COLOURS)}")
    rng = np.random.default_rng(seed)
    out_images, out_captions = [], []
    for i, caption in enumerate(captions):
        parts = split_object_caption(caption)
        if parts is None or held_out(parts[0]):
            continue
        image = images_u8[i].float() / 255
        choices = [c for c in colours if c not in own_colours(image)]
        for colour in rng.permutation(choices)[:copies].tolist():
            painted = paint(image, colour)
            if dominant_colour(painted) != colour:
                continue
            out_images.append((painted * 255).round().to(torch.uint8))
            out_captions.append(f"{colour} {parts[0]}{parts[1]}")
    empty = images_u8.new_zeros((0, *images_u8.shape[1:]))
    return (torch.stack(out_images) if out_images else empty), out_captions


def real_colour_object_rows(captions: Sequence[str]) -> list[int]:
    """Indices of the captions of the recoloured rows' form, "<colour word> <one word>" with an
    optional ", <style> style" ("green apple", "orange book, twemoji style"): the real data's own
    colour-word examples."""
    return [i for i, c in enumerate(captions) if _COLOUR_OBJECT_RE.fullmatch(c)]
