"""The emoji domain's pixel judges: colour words (the dominant colour of the non-background pixels,
HSV bands calibrated on the Noto renderings) and skin tones (the luminance of skin-coloured pixels).
Plain tensor functions of images in [0, 1]; no model, no dataset. Generic metrics are in
:mod:`latentdiff.evaluation`; the reports that generate and judge are in :mod:`latentdiff.emoji_eval`."""

from __future__ import annotations

import re
from typing import Sequence

import torch

COLOUR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white")
COLOUR_NOUNS = ("heart", "circle", "square", "book")
SHAPE_NOUNS = ("heart", "circle", "square", "diamond", "triangle", "button")  # colour is their only feature
SKIN_TONES = ("light", "medium-light", "medium", "medium-dark", "dark")  # lightest first
SKIN_TONE_RE = re.compile(r"(?<![\w-])(medium-light|medium-dark|light|medium|dark) skin tone")


# --------------------------------------------------------------------------- colour words

# Pixel colour naming in HSV (h in degrees, s and v in [0, 1]). Thresholds chosen so that PIL's named
# colours and the Noto emoji's flat colours (e.g. its light-grey "white" and dark-grey "black"
# shapes) get their names; `colour_reference` in the report checks them on the real images.
BACKGROUND_MIN_V, BACKGROUND_MAX_S = 0.96, 0.06  # near-pure white is background, not "white"
BACKGROUND_BORDER = 2  # pixels of the image frame that estimate the background colour
BACKGROUND_TOLERANCE = 0.05  # … and pixels this close to a whitish background colour are background too
ACHROMATIC_MAX_S = 0.2  # below this saturation a pixel is white / grey / black
WHITE_MIN_V, BLACK_MAX_V = 0.7, 0.45  # achromatic lightness bands (grey in between is not counted)
DARK_MAX_V = 0.2  # any hue this dark looks black
BROWN_MAX_V = 0.78  # red-to-orange hues darker than this are brown (Noto brown: v ≈ 0.71)
HUE_BANDS = (  # upper bound (exclusive) in degrees -> name; wraps to red
    (20, "red"), (45, "orange"), (70, "yellow"), (170, "green"), (260, "blue"), (330, "purple"), (360, "red"))


def rgb_to_hsv(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(…, 3, H, W) RGB in [0, 1] -> hue in degrees [0, 360), saturation, value (each (…, H, W))."""
    r, g, b = images.unbind(-3)
    v, _ = images.max(-3)
    c = v - images.min(-3).values  # chroma
    s = torch.where(v > 0, c / v.clamp_min(1e-8), torch.zeros_like(v))
    cc = c.clamp_min(1e-8)
    h = torch.where(v == r, ((g - b) / cc) % 6, torch.where(v == g, (b - r) / cc + 2, (r - g) / cc + 4))
    h = torch.where(c > 0, h * 60, torch.zeros_like(h)) % 360
    return h, s, v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`latentdiff.emoji_checks.rgb_to_hsv`: (…, H, W) each -> (…, 3, H, W)."""
    h6 = (h % 360) / 60
    c = v * s
    x = c * (1 - (h6 % 2 - 1).abs())
    z = torch.zeros_like(c)
    sector = h6.floor().long().clamp(0, 5)[None]  # (1, …, H, W): which 60° sector
    rgb = [torch.stack(parts).gather(0, sector)[0] for parts in
           ((c, x, z, z, x, c), (x, c, c, x, z, z), (z, z, x, c, c, x))]
    return torch.stack(rgb, -3) + (v - c).unsqueeze(-3)


def background_mask(images: torch.Tensor) -> torch.Tensor:
    """Boolean (…, H, W): near-pure white pixels, and pixels close to the image's background colour
    (the median of its border) when that is whitish, as a generated off-white background may be.
    A coloured border (a solid-colour image) is not background."""
    _, s, v = rgb_to_hsv(images)
    mask = (v >= BACKGROUND_MIN_V) & (s <= BACKGROUND_MAX_S)
    b = BACKGROUND_BORDER
    border = torch.cat([images[..., :b, :].flatten(-2), images[..., -b:, :].flatten(-2),
                        images[..., :, :b].flatten(-2), images[..., :, -b:].flatten(-2)], -1)  # (…, 3, K)
    bg = border.median(-1).values[..., None, None]  # (…, 3, 1, 1)
    _, bs, bv = rgb_to_hsv(bg)
    whitish = (bv >= 0.85) & (bs <= 0.1)  # (…, 1, 1)
    near = (images - bg).abs().amax(-3) < BACKGROUND_TOLERANCE
    return mask | (near & whitish)


def pixel_colour_names(images: torch.Tensor) -> torch.Tensor:
    """Per-pixel colour index into :data:`COLOUR_WORDS`; -1 background, -2 grey (uncounted).
    ``images`` (…, 3, H, W) in [0, 1] -> long (…, H, W)."""
    h, s, v = rgb_to_hsv(images)
    out = torch.full(h.shape, -2, dtype=torch.long)
    hue = torch.full(h.shape, COLOUR_WORDS.index("red"), dtype=torch.long)
    lower = 0.0
    for upper, name in HUE_BANDS:
        hue[(h >= lower) & (h < upper)] = COLOUR_WORDS.index(name)
        lower = upper
    chromatic = s >= ACHROMATIC_MAX_S
    out = torch.where(chromatic, hue, out)
    reddish = chromatic & ((h < 45) | (h >= 345)) & (v < BROWN_MAX_V)
    out[reddish] = COLOUR_WORDS.index("brown")
    out[~chromatic & (v >= WHITE_MIN_V)] = COLOUR_WORDS.index("white")
    out[(~chromatic & (v < BLACK_MAX_V)) | (v < DARK_MAX_V)] = COLOUR_WORDS.index("black")
    out[background_mask(images)] = -1
    return out


def dominant_colour(image: torch.Tensor) -> str:
    """The most frequent colour name among the non-background pixels of one (3, H, W) image in
    [0, 1]. An image with (almost) nothing but background is "white" (a white shape on white)."""
    names = pixel_colour_names(image).flatten()
    counts = torch.bincount(names[names >= 0], minlength=len(COLOUR_WORDS))
    if counts.sum() < 0.01 * names.numel():
        return "white"
    return COLOUR_WORDS[int(counts.argmax())]


def colour_word(caption: str) -> str | None:
    """The colour a caption asks for when it starts with a colour word ("red heart" -> "red")."""
    first = caption.split(" ", 1)[0]
    return first if first in COLOUR_WORDS and " " in caption else None


def default_colour_prompts(nouns: Sequence[str] = COLOUR_NOUNS) -> list[str]:
    """Every colour word × noun: "red heart", "orange heart", …, "white book"."""
    return [f"{c} {n}" for n in nouns for c in COLOUR_WORDS]


def colour_check(images: torch.Tensor, prompts: Sequence[str]) -> dict:
    """How many images show the colour their prompt names. Returns {"n", "obeyed", "rate",
    "per_colour": {colour: rate}, "confusions": [(prompt, seen colour)]}; prompts without a colour
    word are skipped."""
    rows = [(i, p, colour_word(p)) for i, p in enumerate(prompts) if colour_word(p)]
    obeyed, per_colour, confusions = 0, {}, []
    for i, prompt, want in rows:
        got = dominant_colour(images[i])
        ok = got == want
        obeyed += ok
        per_colour.setdefault(want, []).append(ok)
        if not ok:
            confusions.append((prompt, got))
    return {"n": len(rows), "obeyed": obeyed, "rate": obeyed / len(rows) if rows else None,
            "per_colour": {c: sum(v) / len(v) for c, v in per_colour.items()}, "confusions": confusions}


# --------------------------------------------------------------------------- skin tones

# Measured on the Noto emoji: skin is (248,220,188) light, (224,187,149) medium-light, (185,140,103)
# medium, (165,108,67) medium-dark, (112,83,74) dark — hue 14–32°, saturation 0.24–0.59, value ≥ 0.44;
# the hair drawn with them is near-black, golden (hue 43°, s 0.73) or dark brown (value 0.23–0.33).
# With these bounds the real five-tone sets are ordered in 100% of pairs (the report's reference).
SKIN_HUE_MAX = 40.0  # skin hue in [0, 40) degrees (or >= 345): excludes golden hair and yellow emoji skin
SKIN_MIN_S, SKIN_MAX_S = 0.12, 0.75  # excludes white/grey and saturated yellows/oranges
SKIN_MIN_V = 0.38  # excludes outlines and dark-brown hair


def skin_mask(images: torch.Tensor) -> torch.Tensor:
    """Boolean (…, H, W): pixels whose colour can be skin (any of the five Fitzpatrick-based tones)."""
    h, s, v = rgb_to_hsv(images)
    return (((h < SKIN_HUE_MAX) | (h >= 345)) & (s >= SKIN_MIN_S) & (s <= SKIN_MAX_S) & (v >= SKIN_MIN_V)
            & ~background_mask(images))


def skin_luminance(image: torch.Tensor) -> float:
    """Mean Rec. 601 luma (0.299 R + 0.587 G + 0.114 B) of the skin-coloured pixels of one
    (3, H, W) image in [0, 1]; NaN when none are found."""
    mask = skin_mask(image)
    if int(mask.sum()) == 0:
        return float("nan")
    luma = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    return float(luma[mask].mean())


def skin_tone_of(caption: str) -> str | None:
    """The one skin tone a caption names ("thumbs up: dark skin tone" -> "dark"); None for zero or two."""
    tones = set(SKIN_TONE_RE.findall(caption))
    return tones.pop() if len(tones) == 1 else None


def skin_tone_sets(captions: Sequence[str], among: Sequence[str] | None = None) -> list[list[str]]:
    """Groups of five captions that differ only in the skin tone, lightest first, for every base
    that has all five in ``captions``; with ``among``, only bases that occur in ``among`` (e.g. the
    test captions)."""
    by_base: dict[str, dict[str, str]] = {}
    for c in captions:
        tone = skin_tone_of(c)
        if tone:
            by_base.setdefault(SKIN_TONE_RE.sub("{tone} skin tone", c), {})[tone] = c
    wanted = None
    if among is not None:
        wanted = {SKIN_TONE_RE.sub("{tone} skin tone", c) for c in among if skin_tone_of(c)}
    return [[v[t] for t in SKIN_TONES] for base, v in sorted(by_base.items())
            if len(v) == len(SKIN_TONES) and (wanted is None or base in wanted)]


def skin_tone_check(images: torch.Tensor) -> dict:
    """``images`` (S, 5, 3, H, W): S sets of the five tones, lightest first. A set obeys a pair (i < j)
    when tone i's skin is lighter than tone j's; returns {"sets", "pairs_obeyed" (fraction of the 10
    pairs per set), "fully_ordered" (fraction of sets in exact order), "missing_skin" (images with no
    skin pixels, counted as disobeying), "mean_luminance": per tone}."""
    s = images.shape[0]
    lum = torch.tensor([[skin_luminance(images[k, i]) for i in range(len(SKIN_TONES))] for k in range(s)])
    pairs = [(i, j) for i in range(len(SKIN_TONES)) for j in range(i + 1, len(SKIN_TONES))]
    ok = torch.stack([lum[:, i] > lum[:, j] for i, j in pairs], 1)  # NaN compares False
    return {"sets": s, "pairs_obeyed": float(ok.float().mean()) if s else None,
            "fully_ordered": float(ok.all(1).float().mean()) if s else None,
            "missing_skin": int(torch.isnan(lum).sum()),
            "mean_luminance": {t: float(torch.nanmean(lum[:, i])) if s else None for i, t in enumerate(SKIN_TONES)}}
