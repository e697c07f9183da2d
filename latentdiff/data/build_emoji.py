"""Build the captioned emoji dataset shipped with latentdiff.

Every fully-qualified emoji listed in Unicode's ``emoji-test.txt`` is rendered
with a system font, cropped to its glyph, padded to a square on white and
resized to ``--size`` pixels.  The caption is the emoji's CLDR short name
("red apple", "woman technologist: medium skin tone", "flag: France").

Two styles exist:

* ``noto`` (default): Google's Noto Color Emoji (Debian ``fonts-noto-color-emoji``),
  written to ``latentdiff/data/emoji/``.
* ``symbola``: George Douros' Symbola (Debian ``fonts-symbola``), monochrome line
  art, written to ``latentdiff/data/emoji_symbola/`` (used by the LoRA style demo).
  Only emoji that *both* fonts draw as a single picture are kept.  Symbola covers
  Unicode 9 and has no ZWJ/skin-tone ligatures, so this is about a third of the set
  and under 2 MB; ``--groups`` can restrict either build to some emoji groups.
* ``twemoji``, ``openmoji``, ``fluent``: SVG emoji sets from the npm Iconify JSON packages
  ``@iconify-json/twemoji`` (CC BY 4.0), ``@iconify-json/openmoji`` (CC BY-SA 4.0) and
  ``@iconify-json/fluent-emoji-flat`` (MIT), fetched with ``npm pack`` and passed as
  ``--iconify-tarball``; rendered with resvg-py (``pip install 'latentdiff[data]'``) for exactly
  the rows of the Noto build (same captions, groups and split), written to
  ``latentdiff/data/emoji_<style>/`` with a ``style`` column.

The output is one Parquet file (``emoji.parquet``, columns ``image`` {bytes, path},
``text``, ``group``, ``subgroup``, ``codepoints``, ``split``) that ``datasets``
reads with ``image`` as an :class:`datasets.Image` feature, plus ``README.md`` and
``LICENSES.md``.  With the same Debian font/data packages and the same Pillow,
FreeType and pyarrow versions the Parquet file is byte-identical between builds.

Example::

    python -m latentdiff.data.build_emoji                    # Noto -> latentdiff/data/emoji/
    python -m latentdiff.data.build_emoji --style symbola    # Symbola -> latentdiff/data/emoji_symbola/
    python -m latentdiff.data.build_emoji --limit 50 --out /tmp/emoji_small
    npm pack @iconify-json/twemoji && python -m latentdiff.data.build_emoji --style twemoji \
        --iconify-tarball iconify-json-twemoji-1.2.5.tgz
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont, features

from latentdiff.fs import atomic_write

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = {"noto": PACKAGE_DIR / "emoji", "symbola": PACKAGE_DIR / "emoji_symbola",
               "twemoji": PACKAGE_DIR / "emoji_twemoji", "openmoji": PACKAGE_DIR / "emoji_openmoji",
               "fluent": PACKAGE_DIR / "emoji_fluent"}
PARQUET_NAME = "emoji.parquet"

# Where Debian puts the inputs; other distributions can pass --font / --emoji-test.
EMOJI_TEST_CANDIDATES = (
    "/usr/share/unicode/emoji/emoji-test.txt",
    "/usr/share/unicode-data/emoji/emoji-test.txt",
)
FONT_CANDIDATES = {
    "noto": (
        "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
        "/usr/share/fonts/noto/NotoColorEmoji.ttf",
        "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
    ),
    "symbola": (
        "/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf",
        "/usr/share/fonts/truetype/ancient-scripts/Symbola.ttf",
        "/usr/share/fonts/gdouros-symbola/Symbola.ttf",
    ),
}
FONT_FILE_NAMES = {"noto": ("NotoColorEmoji.ttf",), "symbola": ("Symbola_hint.ttf", "Symbola.ttf")}
DEBIAN_PACKAGES = {
    "noto": ("fonts-noto-color-emoji", "unicode-data"),
    "symbola": ("fonts-symbola", "fonts-noto-color-emoji", "unicode-data"),
}

# Noto Color Emoji is a CBDT bitmap font whose strikes are 109 px; FreeType
# (and therefore Pillow) only loads it at exactly that size.
NOTO_RENDER_SIZE = 109
# Symbola is an outline font: render well above the output size so the
# LANCZOS downscale gives clean anti-aliased lines.
SYMBOLA_RENDER_SIZE = 128

# A code point that is unassigned in every Unicode version (Greek block gap):
# whatever a font draws for it is its .notdef ("tofu") glyph.
UNASSIGNED_CODE_POINT = "\u0378"

# Code points that never produce a picture of their own: joiners, variation
# selectors, tag characters (subdivision flags) and the combining keycap.
_INVISIBLE = {0x200D, 0xFE0E, 0xFE0F, 0x20E3} | set(range(0xE0020, 0xE0080))

# A sequence whose advance exceeds this many times the widest of its visible
# code points was laid out as several pictures side by side (the font has no
# ligature for it), e.g. a skin-toned ZWJ sequence drawn as person + colour swatch.
MULTI_GLYPH_RATIO = 1.25

TEST_FRACTION = 0.1


@dataclass(frozen=True)
class EmojiEntry:
    """One fully-qualified line of emoji-test.txt."""

    codepoints: str  # space-separated upper-case hex, as in emoji-test.txt: "1F469 1F3FD 200D 1F4BB"
    name: str  # CLDR short name: "woman technologist: medium skin tone"
    group: str
    subgroup: str

    @property
    def chars(self) -> str:
        return "".join(chr(int(cp, 16)) for cp in self.codepoints.split())


# --------------------------------------------------------------------------- inputs


def parse_emoji_test(path: str | os.PathLike) -> list[EmojiEntry]:
    """Return the fully-qualified emoji of ``emoji-test.txt`` in file (CLDR) order."""
    entries: list[EmojiEntry] = []
    group = subgroup = ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
                continue
            if line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
                continue
            if not line or line.startswith("#"):
                continue
            # "1F34E    ; fully-qualified     # 🍎 E0.6 red apple"
            fields, _, comment = line.partition("#")
            codepoints, _, status = fields.partition(";")
            if status.strip() != "fully-qualified":
                continue
            # comment = " 🍎 E0.6 red apple": drop the emoji itself and the version.
            parts = comment.strip().split(" ", 2)
            if len(parts) < 3 or not parts[1].startswith("E"):
                raise ValueError(f"{path}: cannot parse the name in line {line!r}")
            entries.append(EmojiEntry(" ".join(codepoints.split()).upper(), parts[2].strip(), group, subgroup))
    if not entries:
        raise ValueError(f"{path}: no fully-qualified emoji found; is this Unicode's emoji-test.txt?")
    return entries


def find_file(explicit: str | None, candidates: Iterable[str], names: Sequence[str], search_root: str, what: str, hint: str) -> Path:
    """Return ``explicit`` if given, else the first existing candidate, else search ``search_root``."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{what} not found at {p}")
        return p
    for c in candidates:
        if Path(c).is_file():
            return Path(c)
    root = Path(search_root)
    if root.is_dir():
        for name in names:
            hits = sorted(root.rglob(name))
            if hits:
                return hits[0]
    raise FileNotFoundError(f"{what} not found (looked in {', '.join(candidates)} and under {search_root}). {hint}")


def find_font(style: str, explicit: str | None = None) -> Path:
    pkg = DEBIAN_PACKAGES[style][0]
    return find_file(explicit, FONT_CANDIDATES[style], FONT_FILE_NAMES[style], "/usr/share/fonts",
                     f"{style} font", f"Install it with `apt-get install {pkg}` or pass --font PATH.")


def find_emoji_test(explicit: str | None = None) -> Path:
    return find_file(explicit, EMOJI_TEST_CANDIDATES, ("emoji-test.txt",), "/usr/share/unicode",
                     "emoji-test.txt", "Install it with `apt-get install unicode-data` or pass --emoji-test PATH.")


def debian_versions(packages: Sequence[str]) -> dict[str, str]:
    """Installed Debian package versions (``dpkg-query -W``), "unknown" where unavailable."""
    versions = {p: "unknown" for p in packages}
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *packages],
                             capture_output=True, text=True, check=False).stdout
    except OSError:  # not a Debian system
        return versions
    for line in out.splitlines():
        name, _, version = line.partition("\t")
        if name in versions and version:
            versions[name] = version
    return versions


# --------------------------------------------------------------------------- rendering


class GlyphRenderer:
    """Renders emoji with one font and recognises what the font cannot draw."""

    def __init__(self, font_path: str | os.PathLike, style: str):
        self.style = style
        self.color = style == "noto"
        size = NOTO_RENDER_SIZE if self.color else SYMBOLA_RENDER_SIZE
        try:
            self.font = ImageFont.truetype(str(font_path), size)
        except OSError as e:
            hint = f" (Noto Color Emoji only loads at size {NOTO_RENDER_SIZE})" if self.color else ""
            raise ValueError(f"cannot load font {font_path}{hint}: {e}") from e
        self.size = size
        self.pad = size // 2  # room for glyphs that overhang their advance box
        # Without raqm, Pillow lays out code points one by one and no ZWJ sequence or flag would
        # form a ligature; everything but single code points would be dropped as multi-glyph.
        if self.font.layout_engine != ImageFont.Layout.RAQM:
            print("warning: Pillow has no raqm layout engine; emoji sequences will not be shaped "
                  "and will be dropped as multi-glyph", file=sys.stderr)
        self.notdef = self._draw(UNASSIGNED_CODE_POINT)

    def _draw(self, text: str) -> Image.Image:
        """Draw ``text`` on a transparent canvas; returns RGBA."""
        width = int(math.ceil(self.font.getlength(text))) + 2 * self.pad
        canvas = Image.new("RGBA", (width, self.size + 2 * self.pad), (0, 0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        draw.text((self.pad, self.pad), text, font=self.font, fill=(0, 0, 0, 255), embedded_color=self.color)
        return canvas

    def advance_ratio(self, text: str) -> float:
        """Advance of ``text`` relative to its widest visible code point (≈1 for one picture)."""
        visible = [c for c in text if ord(c) not in _INVISIBLE]
        widest = max((self.font.getlength(c) for c in visible), default=0.0)
        if widest <= 0:
            return 1.0
        return self.font.getlength(text) / widest

    def render(self, text: str, out_size: int) -> tuple[Image.Image | None, str]:
        """Return ``(RGB image, "")`` or ``(None, reason)`` when the font cannot draw ``text``.

        Reasons: ``"multi-glyph"`` (laid out as several pictures), ``"empty"`` (nothing drawn;
        Noto's .notdef is blank), ``"notdef"`` (the font's tofu box), ``"same-as-base"`` (a
        sequence drawn pixel-identical to its first code point: the font ignored the rest, e.g.
        Symbola draws "flag: England" as a plain black flag, so the caption would name something
        that is not in the picture).
        """
        if len(text) > 1 and self.advance_ratio(text) > MULTI_GLYPH_RATIO:
            return None, "multi-glyph"
        rgba = self._draw(text)
        # Ignore faint anti-aliasing dust when finding the glyph box.
        bbox = rgba.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
        if bbox is None:
            return None, "empty"
        if _same(rgba, self.notdef):
            return None, "notdef"
        base = _base_of(text)
        if base != text and _same(rgba, self._draw(base)):
            return None, "same-as-base"
        glyph = rgba.crop(bbox)
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        rgb = square.convert("RGB").resize((out_size, out_size), Image.Resampling.LANCZOS)
        return rgb, ""


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


def _base_of(text: str) -> str:
    """The first code point of a sequence, with its emoji variation selector if it has one."""
    return text[:2] if text[1:2] == "\ufe0f" else text[:1]


def encode_png(image: Image.Image, style: str) -> tuple[bytes, float]:
    """Deterministic, compact PNG bytes and the PSNR (dB) of what they decode to vs ``image``.

    Noto images are stored as 256-colour palette PNGs (Pillow's deterministic FASTOCTREE
    quantiser, with exact white kept): ~3x smaller than RGB PNGs, which keeps the shipped file a few MB, at ~41 dB
    mean PSNR, far below what a VAE or a 64-pixel diffusion model can resolve.  Symbola images
    are black on white and are stored losslessly as 8-bit grayscale.  Readers convert to RGB.
    """
    stored = image.convert("L") if style == "symbola" else quantize_keep_white(image)
    buf = io.BytesIO()
    stored.save(buf, format="PNG", optimize=True)  # no metadata chunks: bytes depend on pixels only
    return buf.getvalue(), psnr(image, stored.convert("RGB"))


def quantize_keep_white(image: Image.Image) -> Image.Image:
    """256-colour palette image whose pure-white pixels stay exactly (255, 255, 255).

    The quantiser alone maps the white background to a cluster centre such as (254, 254, 254);
    a model trained on that would learn an off-white background.  So: quantise to 255 colours
    and give pure white its own palette entry (index 255).
    """
    import numpy as np

    q = image.quantize(255, method=Image.Quantize.FASTOCTREE)
    indices = np.array(q, dtype=np.uint8)
    indices[(np.asarray(image) == 255).all(axis=-1)] = 255
    palette = (q.getpalette() or [])[: 255 * 3]
    palette += [0] * (255 * 3 - len(palette)) + [255, 255, 255]
    out = Image.fromarray(indices, mode="P")
    out.putpalette(palette)
    return out


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB between two RGB images (inf when identical)."""
    import numpy as np

    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


# --------------------------------------------------------------------------- split


def split_key(codepoints: str) -> str:
    """Stable pseudo-random order inside a subgroup, independent of the build."""
    return hashlib.sha256(codepoints.encode("ascii")).hexdigest()


def assign_splits(entries: Sequence[EmojiEntry], test_fraction: float = TEST_FRACTION) -> dict[str, str]:
    """Deterministic stratified split: ``{codepoints: "train" | "test"}``.

    * The overall number of test items is ``round(test_fraction * N)``.
    * Each subgroup of ``n`` items first gets ``floor(test_fraction * n)`` test items.
    * The remaining test slots go one per subgroup (largest-remainder apportionment): first to
      subgroups with ≥ 2 items that have no test item yet, then by the largest fractional part
      ``test_fraction * n - floor(test_fraction * n)``; ties break by subgroup name.  So small
      subgroups get a test item only while the overall fraction stays at ~10%.
    * Inside a subgroup, the test items are the ones whose SHA-256(codepoints string) sorts first.
    """
    by_subgroup: dict[str, list[EmojiEntry]] = defaultdict(list)
    for e in entries:
        by_subgroup[f"{e.group}/{e.subgroup}"].append(e)
    target = round(test_fraction * len(entries))
    quota = {sg: math.floor(test_fraction * len(items)) for sg, items in by_subgroup.items()}
    remaining = target - sum(quota.values())

    def priority(sg: str) -> tuple:
        n = len(by_subgroup[sg])
        frac = test_fraction * n - math.floor(test_fraction * n)
        return (not (n >= 2 and quota[sg] == 0), -frac, sg)

    for sg in sorted(by_subgroup, key=priority):
        if remaining <= 0:
            break
        if quota[sg] < len(by_subgroup[sg]) - 1:  # always leave training data in a subgroup
            quota[sg] += 1
            remaining -= 1

    splits: dict[str, str] = {}
    for sg, items in by_subgroup.items():
        ordered = sorted(items, key=lambda e: split_key(e.codepoints))
        for i, e in enumerate(ordered):
            splits[e.codepoints] = "test" if i < quota[sg] else "train"
    return splits


# --------------------------------------------------------------------------- output


def hf_features_metadata(with_style: bool = False) -> bytes:
    """Schema metadata that makes ``datasets`` read ``image`` as an Image feature."""
    string = {"dtype": "string", "_type": "Value"}
    # mode="RGB": the PNGs are palette/grayscale for size; readers should get RGB.
    feats = {"image": {"_type": "Image", "mode": "RGB"}, "text": string, "group": string, "subgroup": string,
             "codepoints": string, "split": string}
    if with_style:
        feats["style"] = string
    return json.dumps({"info": {"features": feats}}, sort_keys=True).encode()


def write_parquet(rows: list[dict], path: Path) -> None:
    """Write rows atomically (temp file in the same folder + ``os.replace``).

    Rows that carry a ``style`` key (the Iconify styles) get a ``style`` column; the Noto and
    Symbola files predate it and get theirs at load time.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with_style = bool(rows) and "style" in rows[0]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [("image", image_type), ("text", pa.string()), ("group", pa.string()), ("subgroup", pa.string()),
              ("codepoints", pa.string()), ("split", pa.string())] + ([("style", pa.string())] if with_style else [])
    schema = pa.schema(fields, metadata={b"huggingface": hf_features_metadata(with_style)})
    table = pa.Table.from_pylist(rows, schema=schema)
    # zstd only matters for the text columns: the PNG bytes are already deflated.
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=1024))


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, text)  # UTF-8, newlines as written


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_copyright(package: str) -> str:
    path = Path("/usr/share/doc") / package / "copyright"
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# The essential notices, used verbatim; the full texts from /usr/share/doc are appended when present.
OFL_NOTICE = """\
Noto Color Emoji — Copyright 2013-2017 Google Inc. (with contributions by Arjen Nienhuis).
The font is licensed under the SIL Open Font License, Version 1.1 (https://openfontlicense.org).
The images in this dataset are renderings ("documents created using the Font Software"); the
OFL's requirement to remain under the OFL does not apply to them, but we reproduce the notice
and the license below as a courtesy and so the provenance is clear."""

UNICODE_NOTICE = """\
Emoji names, groups, subgroups and code point sequences come from emoji-test.txt
(Unicode Emoji 15.0), © 2022 Unicode®, Inc.  Unicode and the Unicode Logo are registered
trademarks of Unicode, Inc. in the U.S. and other countries.  Used under the Unicode License
(UNICODE LICENSE V3 / "Unicode, Inc. License Agreement - Data Files and Software",
https://www.unicode.org/license.txt; terms of use https://www.unicode.org/terms_of_use.html).
The data was modified: only fully-qualified emoji are kept, their names are used as captions and
a train/test split column was added."""

UNICODE_LICENSE_V3 = """\
UNICODE LICENSE V3

COPYRIGHT AND PERMISSION NOTICE

Copyright © 2022 Unicode, Inc.

NOTICE TO USER: Carefully read the following legal agreement. BY
DOWNLOADING, INSTALLING, COPYING OR OTHERWISE USING DATA FILES, AND/OR
SOFTWARE, YOU UNEQUIVOCALLY ACCEPT, AND AGREE TO BE BOUND BY, ALL OF THE
TERMS AND CONDITIONS OF THIS AGREEMENT. IF YOU DO NOT AGREE, DO NOT
DOWNLOAD, INSTALL, COPY, DISTRIBUTE OR USE THE DATA FILES OR SOFTWARE.

Permission is hereby granted, free of charge, to any person obtaining a
copy of data files and any associated documentation (the "Data Files") or
software and any associated documentation (the "Software") to deal in the
Data Files or Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, and/or sell
copies of the Data Files or Software, and to permit persons to whom the
Data Files or Software are furnished to do so, provided that either (a)
this copyright and permission notice appear with all copies of the Data
Files or Software, or (b) this copyright and permission notice appear in
associated Documentation.

THE DATA FILES AND SOFTWARE ARE PROVIDED "AS IS", WITHOUT WARRANTY OF ANY
KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT OF
THIRD PARTY RIGHTS.

IN NO EVENT SHALL THE COPYRIGHT HOLDER OR HOLDERS INCLUDED IN THIS NOTICE
BE LIABLE FOR ANY CLAIM, OR ANY SPECIAL INDIRECT OR CONSEQUENTIAL DAMAGES,
OR ANY DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS,
WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION,
ARISING OUT OF OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THE DATA
FILES OR SOFTWARE.

Except as contained in this notice, the name of a copyright holder shall
not be used in advertising or otherwise to promote the sale, use or other
dealings in these Data Files or Software without prior written
authorization of the copyright holder.

SPDX-License-Identifier: Unicode-3.0
"""

SYMBOLA_NOTICE = """\
Symbola — Copyright (C) 2007-2015 George Douros.
"Fonts are free for any use; they may be opened, edited, modified, regenerated, packaged and
redistributed." (Debian package fonts-symbola, /usr/share/doc/fonts-symbola/copyright)"""


def licenses_markdown(style: str) -> str:
    parts = ["# Licenses of the emoji dataset\n",
             "The images are renderings of fonts; the captions are Unicode/CLDR emoji names.\n"]
    if style == "noto":
        parts += ["## Images: Noto Color Emoji (SIL Open Font License 1.1)\n", OFL_NOTICE + "\n"]
        font_pkg = "fonts-noto-color-emoji"
    else:
        parts += ["## Images: Symbola\n", SYMBOLA_NOTICE + "\n",
                  "Which emoji are included was decided by also rendering them with Noto Color Emoji "
                  "(SIL Open Font License 1.1, © Google); no Noto pixels are in this dataset.\n"]
        font_pkg = "fonts-symbola"
    parts += ["## Captions: Unicode emoji data (Unicode License v3)\n", UNICODE_NOTICE + "\n",
              "```text\n" + UNICODE_LICENSE_V3.rstrip() + "\n```\n"]
    for pkg in (font_pkg, "unicode-data"):
        text = read_copyright(pkg)
        if text:
            parts += [f"## As shipped by Debian: /usr/share/doc/{pkg}/copyright\n", "```text\n" + text.rstrip() + "\n```\n"]
    return "\n".join(parts)


def readme_markdown(*, style: str, rows: list[dict], dropped: Counter, dropped_examples: dict,
                    considered: int, groups: Sequence[str] | None, limit: int | None, size: int,
                    versions: dict[str, str], parquet_sha: str, parquet_bytes: int, font: Path,
                    emoji_test: Path, psnrs: Sequence[float]) -> str:
    n_test = sum(r["split"] == "test" for r in rows)
    by_group = Counter(r["group"] for r in rows)
    font_desc = ("Noto Color Emoji (color bitmap font, rendered at 109 px, its only strike)" if style == "noto"
                 else f"Symbola (monochrome outline font, rendered at {SYMBOLA_RENDER_SIZE} px)")
    cmd = "python -m latentdiff.data.build_emoji" + ("" if style == "noto" else " --style symbola")
    texts = {r["text"] for r in rows}
    wanted = ["red apple", "woman technologist: medium skin tone", "flag: France", "cat face", "hot beverage"]
    examples = ", ".join(f"`{t}`" for t in ([t for t in wanted if t in texts][:3] or [r["text"] for r in rows[:3]]))
    if style == "noto":
        finite = [p for p in psnrs if math.isfinite(p)]
        storage = ("Images are stored as 256-colour palette PNGs (Pillow FASTOCTREE quantisation to 255 colours "
                   "plus exact white for the background) to keep the "
                   f"file small; PSNR against the RGB rendering: mean {sum(finite) / max(len(finite), 1):.1f} dB, "
                   f"min {min(finite, default=math.inf):.1f} dB.  Decode them as RGB (`load_emoji` does).\n")
    else:
        storage = ("Images are black-on-white line art stored losslessly as 8-bit grayscale PNGs; decode them as "
                   "RGB (`load_emoji` does).\n")
    lines = [
        f"# Emoji dataset ({style})\n",
        f"{len(rows)} captioned {size}×{size} RGB images of Unicode emoji drawn with {font_desc}, "
        "cropped to the glyph, centred on a white square and resized with LANCZOS.",
        f"Each caption (`text`) is the emoji's CLDR short name, e.g. {examples}.\n",
        f"File: `{PARQUET_NAME}` ({parquet_bytes:,} bytes, sha256 `{parquet_sha}`).\n",
        storage,
        "| column | content |", "|---|---|",
        "| `image` | PNG bytes as a `datasets` Image struct `{bytes, path}` |",
        "| `text` | caption: CLDR name |",
        "| `group`, `subgroup` | Unicode emoji group / subgroup (from `# group:` / `# subgroup:` headers) |",
        "| `codepoints` | space-separated hex code points, e.g. `1F34E`, `1F1EB 1F1F7` |",
        '| `split` | `"train"` or `"test"` |\n',
        "Load it with `latentdiff.data.load_emoji(split=\"train\"" + ("" if style == "noto" else ', style="symbola"')
        + ")` or `datasets.Dataset.from_parquet(...)`; train on it with "
        + ("`build_dataset(\"emoji\")`" if style == "noto" else "`build_dataset(\"emoji:symbola\")`") + ".\n",
        "## Counts\n",
        f"- fully-qualified emoji considered: {considered}"
        + (f" (first {limit} lines only: `--limit {limit}`)" if limit else ""),
    ]
    if groups:
        lines.append(f"- restricted to the groups: {', '.join(groups)}")
    lines += [
        f"- rows: {len(rows)} (train {len(rows) - n_test}, test {n_test})",
        f"- dropped: {sum(dropped.values())}",
    ]
    reasons = {
        "multi-glyph": "the font has no single glyph for the sequence and lays it out as several pictures "
                       "(e.g. person + skin-tone swatch, or two regional-indicator letters for a flag)",
        "empty": "the font draws nothing for it (Noto's .notdef glyph is blank)",
        "notdef": "the font draws its .notdef 'tofu' box",
        "same-as-base": "a sequence drawn pixel-identical to its first code point (the font ignored the "
                        "modifiers/tags, so the caption would name something not in the picture)",
        "not-in-noto": "dropped from the Noto build for one of these reasons (the Symbola build keeps only emoji "
                       "both fonts draw)",
        "group-filter": "outside the selected groups",
    }
    for reason, count in sorted(dropped.items()):
        ex = ", ".join(dropped_examples.get(reason, [])[:3])
        lines.append(f"  - {reason}: {count} — {reasons.get(reason, reason)}" + (f"; e.g. {ex}" if ex else ""))
    lines += [
        "",
        "Every emoji is checked before it is kept: a sequence whose advance is more than "
        f"{MULTI_GLYPH_RATIO}× that of its widest visible code point was laid out as several pictures "
        "(multi-glyph); a rendering with no ink is empty; one identical to the rendering of the unassigned "
        "U+0378 is the font's .notdef box; a sequence identical to its first code point alone lost its "
        "modifiers (same-as-base).",
        "",
        "Rows per group:\n",
    ]
    lines += [f"- {g}: {n}" for g, n in sorted(by_group.items())]
    lines += [
        "\n## Split rule\n",
        "Deterministic, stratified by subgroup, 10% test: the overall test count is "
        "`round(0.1 × rows)`; each subgroup of `n` rows first gets `floor(0.1 × n)` test rows; the "
        "remaining test slots are handed out one per subgroup by largest remainder (subgroups with ≥ 2 "
        "rows and no test row yet first, then the largest fractional part `0.1 × n − floor(0.1 × n)`, ties "
        "by subgroup name), never taking a subgroup's last training row.  Inside a subgroup the test rows "
        "are those whose `sha256(codepoints)` hex digest sorts first, so the choice does not depend on "
        "file order or build machine.",
    ]
    if style == "symbola":
        lines.append("\nThe Symbola rows keep the split of the same emoji in the Noto build (computed over "
                     "everything Noto draws), so a style LoRA is evaluated on emoji the base model never "
                     "trained on.")
    lines += [
        "\n## Rebuild\n",
        "```sh",
        "apt-get install " + " ".join(sorted(DEBIAN_PACKAGES[style])),
        cmd,
        "```\n",
        "The build is deterministic: with the same package versions below, the Parquet file is byte-identical. "
        "It is written atomically (temporary file + `os.replace`).\n",
        "Inputs and versions used for this build:\n",
        f"- font file: `{font}`",
        f"- emoji list: `{emoji_test}`",
    ]
    lines += [f"- Debian `{p}` {v}" for p, v in sorted(versions.items())]
    lines += [
        f"- Pillow {Image.__version__} (FreeType {features.version('freetype2')}, raqm {features.version('raqm')})",
        f"- pyarrow {_pyarrow_version()}",
        "\nLicenses: see `LICENSES.md`.",
    ]
    return "\n".join(lines) + "\n"


def _pyarrow_version() -> str:
    import pyarrow

    return pyarrow.__version__


# --------------------------------------------------------------------------- Iconify SVG styles


@dataclass(frozen=True)
class IconifySet:
    """An emoji set shipped on npm as an Iconify JSON package (``icons.json`` + ``chars.json``)."""

    package: str  # npm name
    title: str
    author: str
    source_url: str
    license_title: str  # as the package's info.json states it
    license_url: str
    notice: str  # attribution / licence text for LICENSES.md


MIT_FLUENT = """\
MIT License

Copyright (c) Microsoft Corporation.

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE."""

_CHANGES = ("Changes made: each SVG (as packaged by Iconify) was rendered with resvg, cropped to its drawn "
            "area, centred on a white square, resized to 64×64 pixels and stored as a 256-colour PNG.")

ICONIFY_SETS = {
    "twemoji": IconifySet(
        "@iconify-json/twemoji", "Twemoji", "Twitter, Inc. and other contributors", "https://github.com/jdecked/twemoji",
        "CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/",
        "Emoji graphics: **Twemoji**, Copyright 2019–2024 Twitter, Inc. and other contributors "
        "(https://github.com/jdecked/twemoji, formerly https://github.com/twitter/twemoji), licensed under "
        "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/).  " + _CHANGES + "  The images in this "
        "dataset are adaptations of Twemoji and are shared under the same CC BY 4.0 licence; keep this "
        "attribution when you redistribute them or images derived from them."),
    "openmoji": IconifySet(
        "@iconify-json/openmoji", "OpenMoji", "OpenMoji (HfG Schwäbisch Gmünd) and contributors",
        "https://github.com/hfg-gmuend/openmoji", "CC BY-SA 4.0", "https://creativecommons.org/licenses/by-sa/4.0/",
        "Emoji graphics: **OpenMoji** — \"All emojis designed by OpenMoji – the open-source emoji and icon "
        "project. License: CC BY-SA 4.0\" (https://openmoji.org, https://github.com/hfg-gmuend/openmoji), "
        "licensed under CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/).  " + _CHANGES
        + "\n\n**The images in this dataset (`emoji.parquet`) are adapted material and are licensed under "
        "CC BY-SA 4.0** (ShareAlike): anything you distribute that adapts them must carry the same licence "
        "and this attribution.  Only this folder's images are under CC BY-SA; the rest of latentdiff keeps its "
        "own licence."),
    "fluent": IconifySet(
        "@iconify-json/fluent-emoji-flat", "Fluent Emoji (flat)", "Microsoft Corporation",
        "https://github.com/microsoft/fluentui-emoji", "MIT",
        "https://github.com/microsoft/fluentui-emoji/blob/main/LICENSE",
        "Emoji graphics: **Fluent Emoji**, flat variant, Copyright (c) Microsoft Corporation "
        "(https://github.com/microsoft/fluentui-emoji), under the MIT License below.  " + _CHANGES
        + "\n\n```text\n" + MIT_FLUENT + "\n```"),
}
ICONIFY_RENDER_SIZE = 256  # render 4× the output size, then crop and LANCZOS-downscale like the font styles
INK_MIN_FRACTION = 0.01  # a rendering with under 1% non-white pixels is treated as blank


@dataclass
class IconifyData:
    icons: dict
    aliases: dict
    chars: dict[str, str]
    width: int
    height: int
    left: int
    top: int
    package: str
    version: str
    tarball_sha256: str


def read_iconify_tarball(path: str | os.PathLike) -> IconifyData:
    """Read ``icons.json``, ``chars.json`` and ``package.json`` from an ``npm pack`` tarball."""
    import tarfile

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"Iconify tarball not found at {p}; fetch it with `npm pack <package>`")
    try:
        with tarfile.open(p) as tar:
            def member(name: str) -> dict:
                f = tar.extractfile(f"package/{name}")
                if f is None:
                    raise KeyError(name)
                return json.load(f)

            icons, chars, pkg = member("icons.json"), member("chars.json"), member("package.json")
    except (tarfile.TarError, KeyError) as e:
        raise ValueError(f"{p} is not an Iconify JSON npm tarball (needs package/icons.json, chars.json, "
                         f"package.json): {e}") from None
    return IconifyData(icons["icons"], icons.get("aliases", {}), chars, int(icons.get("width", 16)),
                       int(icons.get("height", 16)), int(icons.get("left", 0)), int(icons.get("top", 0)),
                       pkg["name"], pkg["version"], sha256_file(p))


def iconify_key(data: IconifyData, codepoints: str) -> str | None:
    """The icon name ``chars.json`` gives a sequence (tried as is, then without U+FE0F), or None."""
    cps = codepoints.lower().split()
    for key in ("-".join(cps), "-".join(c for c in cps if c != "fe0f")):
        if key in data.chars:
            return data.chars[key]
    return None


def iconify_svg(data: IconifyData, name: str, px: int) -> tuple[str, str]:
    """``(svg document, resolved icon name)`` for icon/alias ``name``, ``px`` pixels on its longer side."""
    hflip = vflip = False
    rotate = 0
    seen = set()
    while name in data.aliases and name not in data.icons:
        if name in seen:
            raise ValueError(f"alias loop at {name!r}")
        seen.add(name)
        a = data.aliases[name]
        hflip ^= bool(a.get("hFlip", False))
        vflip ^= bool(a.get("vFlip", False))
        rotate += int(a.get("rotate", 0))
        name = a["parent"]
    icon = data.icons[name]
    hflip ^= bool(icon.get("hFlip", False))
    vflip ^= bool(icon.get("vFlip", False))
    rotate += int(icon.get("rotate", 0))
    w, h = int(icon.get("width", data.width)), int(icon.get("height", data.height))
    left, top = int(icon.get("left", data.left)), int(icon.get("top", data.top))
    body = icon["body"]
    transforms = []
    if hflip:
        transforms.append(f"translate({2 * left + w} 0) scale(-1 1)")
    if vflip:
        transforms.append(f"translate(0 {2 * top + h}) scale(1 -1)")
    if rotate % 4:
        transforms.append(f"rotate({90 * (rotate % 4)} {left + w / 2} {top + h / 2})")
    if transforms:
        body = f'<g transform="{" ".join(transforms)}">{body}</g>'
    scale = px / max(w, h)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{round(w * scale)}" height="{round(h * scale)}" viewBox="{left} {top} {w} {h}">{body}</svg>',
            name + (f"|h{int(hflip)}v{int(vflip)}r{rotate % 4}" if hflip or vflip or rotate % 4 else ""))


def render_svg(svg: str, out_size: int) -> Image.Image | None:
    """Rasterise with resvg, crop to the drawn area, centre on white, LANCZOS to ``out_size``; None if blank."""
    try:
        import resvg_py
    except ImportError as e:
        raise ValueError("rendering the Iconify styles needs resvg-py: pip install 'latentdiff[data]'") from e
    png = bytes(resvg_py.svg_to_bytes(svg_string=svg, skip_system_fonts=True))
    rgba = Image.open(io.BytesIO(png)).convert("RGBA")
    # Same cropping as the font styles: ignore faint anti-aliasing dust.
    bbox = rgba.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if bbox is None:
        return None
    glyph = rgba.crop(bbox)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    rgb = square.convert("RGB").resize((out_size, out_size), Image.Resampling.LANCZOS)
    return rgb if ink_fraction(rgb) >= INK_MIN_FRACTION else None


def ink_fraction(image: Image.Image) -> float:
    """Share of pixels that are not (near) white."""
    import numpy as np

    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    return float(((255 - a).max(axis=-1) > 24).mean())


def read_noto_rows(path: str | os.PathLike | None = None) -> list[dict]:
    """The Noto rows (caption, group, subgroup, code points, split) the Iconify styles follow."""
    import pyarrow.parquet as pq

    p = Path(path) if path else DEFAULT_OUT["noto"] / PARQUET_NAME
    if not p.is_file():
        raise FileNotFoundError(f"Noto dataset not found at {p}; build it first (python -m latentdiff.data.build_emoji)")
    return pq.read_table(p, columns=["text", "group", "subgroup", "codepoints", "split"]).to_pylist()


def build_iconify(*, style: str, tarball: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                  noto_parquet: str | os.PathLike | None = None, size: int = 64, limit: int | None = None,
                  quiet: bool = False) -> Path:
    """Render an Iconify emoji set for exactly the emoji (captions, groups, split) of the Noto dataset."""
    spec = ICONIFY_SETS[style]
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    data = read_iconify_tarball(tarball)
    if data.package != spec.package:
        raise ValueError(f"{tarball} is {data.package}, but --style {style} needs {spec.package}")
    noto = read_noto_rows(noto_parquet)
    if limit is not None:
        noto = noto[:limit]
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT[style]
    log(f"rendering {len(noto)} emoji from {data.package} {data.version} ...")
    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    rows, psnrs = [], []
    for r in noto:
        cps = r["codepoints"]
        key = iconify_key(data, cps)
        reason = ""
        if key is None:
            reason = "not-in-set"
        else:
            img = render_svg(iconify_svg(data, key, ICONIFY_RENDER_SIZE)[0], size)
            if img is None:
                reason = "blank"
        if reason:
            dropped[reason] += 1
            examples.setdefault(reason, []).append(f"{cps} ({r['text']})")
            continue
        png, quality = encode_png(img, style)
        psnrs.append(quality)
        rows.append({"image": {"bytes": png, "path": cps.replace(" ", "_") + ".png"}, "text": r["text"],
                     "group": r["group"], "subgroup": r["subgroup"], "codepoints": cps, "split": r["split"],
                     "style": style})
    # A sequence drawn pixel-identical to a shorter one lost its modifiers (e.g. "woman wearing turban"
    # drawn as "person wearing turban", "family: man, woman, boy" as "family"): its caption would name
    # something not in the picture.  Same-length twins ("flag: Norway" / "flag: Bouvet Island") stay.
    shortest: dict[bytes, int] = {}
    for row in rows:
        n = len(row["codepoints"].split())
        shortest[row["image"]["bytes"]] = min(n, shortest.get(row["image"]["bytes"], n))
    kept = []
    for row, quality in zip(rows, psnrs):
        if len(row["codepoints"].split()) > shortest[row["image"]["bytes"]]:
            dropped["same-as-shorter"] += 1
            examples.setdefault("same-as-shorter", []).append(f"{row['codepoints']} ({row['text']})")
        else:
            kept.append((row, quality))
    rows, psnrs = [r for r, _ in kept], [q for _, q in kept]
    if not rows:
        raise ValueError(f"no emoji of {data.package} matched the Noto dataset")
    out.mkdir(parents=True, exist_ok=True)
    parquet = out / PARQUET_NAME
    write_parquet(rows, parquet)
    readme_path = out / "README.md"
    measured = _measured_section(readme_path.read_text(encoding="utf-8")) if readme_path.is_file() else ""
    write_text_atomic(readme_path, iconify_readme(
        style=style, spec=spec, data=data, rows=rows, considered=len(noto), limit=limit, dropped=dropped,
        examples=examples, size=size, parquet_sha=sha256_file(parquet), parquet_bytes=parquet.stat().st_size,
        psnrs=psnrs, measured=measured))
    write_text_atomic(out / "LICENSES.md", iconify_licenses(spec, data))
    n_test = sum(r["split"] == "test" for r in rows)
    log(f"wrote {parquet}: {len(rows)} rows (train {len(rows) - n_test}, test {n_test}), "
        f"{parquet.stat().st_size / 1e6:.2f} MB; dropped {dict(dropped)}")
    return parquet


MEASURED_BEGIN, MEASURED_END = "<!-- measured:begin -->", "<!-- measured:end -->"


def _measured_section(text: str) -> str:
    """The hand-measured block of an existing README (kept across rebuilds), or ""."""
    start, end = text.find(MEASURED_BEGIN), text.find(MEASURED_END)
    return text[start:end + len(MEASURED_END)] if 0 <= start < end else ""


def iconify_licenses(spec: IconifySet, data: IconifyData) -> str:
    return "\n".join([
        f"# Licenses of the emoji dataset ({spec.title})\n",
        "The images are renderings of an emoji set's SVG drawings; the captions are Unicode/CLDR emoji names.\n",
        f"## Images: {spec.title} ({spec.license_title})\n",
        spec.notice + "\n",
        f"Licence: {spec.license_title}, {spec.license_url}.  Source of the drawings: {spec.source_url}, as packaged "
        f"in the npm package `{data.package}` {data.version} by Iconify (https://github.com/iconify/icon-sets), "
        "whose package carries the same licence.\n",
        "## Captions: Unicode emoji data (Unicode License v3)\n", UNICODE_NOTICE + "\n",
        "```text\n" + UNICODE_LICENSE_V3.rstrip() + "\n```\n",
    ])


def iconify_readme(*, style: str, spec: IconifySet, data: IconifyData, rows: list[dict], considered: int,
                   limit: int | None, dropped: Counter, examples: dict, size: int, parquet_sha: str,
                   parquet_bytes: int, psnrs: Sequence[float], measured: str) -> str:
    import resvg_py

    n_test = sum(r["split"] == "test" for r in rows)
    finite = [p for p in psnrs if math.isfinite(p)]
    by_group = Counter(r["group"] for r in rows)
    reasons = {"not-in-set": "the set's chars.json has no icon for these code points",
               "same-as-shorter": "drawn pixel-identical to an emoji with fewer code points (the set ignored "
                                  "a modifier, so the caption would name something not in the picture)",
               "blank": f"the rendering has under {INK_MIN_FRACTION:.0%} non-white pixels"}
    tgz = f"{data.package.lstrip('@').replace('/', '-')}-{data.version}.tgz"
    lines = [
        f"# Emoji dataset ({style})\n",
        f"{len(rows)} captioned {size}×{size} RGB images of Unicode emoji drawn by {spec.title} "
        f"({spec.license_title}, see `LICENSES.md`), for the same emoji, captions, groups and train/test split as "
        "the Noto dataset (`../emoji/`).  Each SVG is rendered with resvg at "
        f"{ICONIFY_RENDER_SIZE} px, cropped to its drawn area, centred on a white square and resized with LANCZOS, "
        "like the font styles.\n",
        f"File: `{PARQUET_NAME}` ({parquet_bytes:,} bytes, sha256 `{parquet_sha}`).\n",
        "Images are stored as 256-colour palette PNGs (FASTOCTREE, exact white kept) like the Noto set; PSNR "
        f"against the RGB rendering: mean {sum(finite) / max(len(finite), 1):.1f} dB, "
        f"min {min(finite, default=math.inf):.1f} dB.\n",
        "Columns: those of the Noto set (`image`, `text`, `group`, `subgroup`, `codepoints`, `split`) plus "
        f"`style` (`\"{style}\"`).  Load with `latentdiff.data.load_emoji(split, style=\"{style}\")` "
        f"(or `style=\"all\"`: noto + twemoji + openmoji + fluent); train with `data.source: emoji:{style}` "
        "or `emoji:all`.\n",
        "## Counts\n",
        f"- Noto rows considered: {considered}" + (f" (first {limit} only: `--limit {limit}`)" if limit else ""),
        f"- rows: {len(rows)} (train {len(rows) - n_test}, test {n_test}); coverage "
        f"{len(rows) / max(considered, 1):.1%} of the Noto captions",
        f"- dropped: {sum(dropped.values())}",
    ]
    for reason, count in sorted(dropped.items()):
        ex = ", ".join(examples.get(reason, [])[:3])
        lines.append(f"  - {reason}: {count} — {reasons[reason]}" + (f"; e.g. {ex}" if ex else ""))
    lines += ["", "Code points are looked up in `chars.json` as written in emoji-test.txt, then without U+FE0F.",
              "", "Rows per group:\n"]
    lines += [f"- {g}: {n}" for g, n in sorted(by_group.items())]
    lines += [
        "\n## Split\n",
        "Every row has the split of the Noto row with the same code points (the Noto rule: stratified by "
        "subgroup, 10% test, `sha256(codepoints)` order; see `../emoji/README.md`), so an emoji is a test emoji "
        "in every style.\n",
    ]
    if measured:
        lines += [measured, ""]
    lines += [
        "## Rebuild\n",
        "```sh",
        f"npm pack {data.package}@{data.version}   # in a scratch folder, gives {tgz}",
        "pip install 'latentdiff[data]'            # resvg-py",
        f"python -m latentdiff.data.build_emoji --style {style} --iconify-tarball {tgz}",
        "```\n",
        "The build reads the Noto rows from `latentdiff/data/emoji/emoji.parquet` (captions, groups, split) and is "
        "deterministic: with the same inputs and versions the Parquet file is byte-identical.  It is written "
        "atomically (temporary file + `os.replace`).\n",
        "Inputs and versions used for this build:\n",
        f"- npm `{data.package}` {data.version} (tarball sha256 `{data.tarball_sha256}`)",
        f"- resvg-py {resvg_py.__version__} (resvg {getattr(resvg_py, '__resvg_version__', 'unknown')})",
        f"- Pillow {Image.__version__}",
        f"- pyarrow {_pyarrow_version()}",
        "\nLicenses: see `LICENSES.md`.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- build


def render_all(entries: Sequence[EmojiEntry], renderer: GlyphRenderer, size: int,
               dropped: Counter, examples: dict[str, list[str]]) -> dict[str, Image.Image]:
    """Render every entry; record failures in ``dropped``/``examples``."""
    images: dict[str, Image.Image] = {}
    for e in entries:
        img, reason = renderer.render(e.chars, size)
        if img is None:
            dropped[reason] += 1
            examples.setdefault(reason, []).append(f"{e.codepoints} ({e.name})")
        else:
            images[e.codepoints] = img
    return images


def build(*, style: str = "noto", out_dir: str | os.PathLike | None = None, font: str | None = None,
          noto_font: str | None = None, emoji_test: str | None = None, size: int = 64,
          limit: int | None = None, groups: Sequence[str] | None = None, quiet: bool = False,
          iconify_tarball: str | os.PathLike | None = None, noto_parquet: str | os.PathLike | None = None) -> Path:
    """Build the dataset; returns the path of the Parquet file."""
    if style not in DEFAULT_OUT:
        raise ValueError(f"unknown style {style!r}; choose one of {sorted(DEFAULT_OUT)}")
    if size < 8:
        raise ValueError(f"--size must be at least 8, got {size}")
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    if style in ICONIFY_SETS:
        if not iconify_tarball:
            raise ValueError(f"--style {style} needs --iconify-tarball PATH (`npm pack {ICONIFY_SETS[style].package}`)")
        if groups or font or noto_font or emoji_test:
            raise ValueError(f"--style {style} follows the Noto rows; --groups/--font/--noto-font/--emoji-test "
                             "do not apply")
        return build_iconify(style=style, tarball=iconify_tarball, out_dir=out_dir, noto_parquet=noto_parquet,
                             size=size, limit=limit, quiet=quiet)
    if iconify_tarball:
        raise ValueError(f"--iconify-tarball is for the styles {sorted(ICONIFY_SETS)}, not {style}")
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT[style]
    emoji_test_path = find_emoji_test(emoji_test)
    entries = parse_emoji_test(emoji_test_path)
    if groups:
        unknown = sorted(set(groups) - {e.group for e in entries})
        if unknown:
            raise ValueError(f"unknown emoji group(s) {unknown}; groups are: {sorted({e.group for e in entries})}")
    if limit is not None:
        entries = entries[:limit]
    considered = len(entries)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))

    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    noto_path = find_font("noto", font if style == "noto" else noto_font)
    log(f"rendering {len(entries)} emoji with {noto_path} ...")
    noto_drop: Counter = Counter()
    noto_images = render_all(entries, GlyphRenderer(noto_path, "noto"), size, noto_drop, examples)
    # The split is always computed over what Noto draws, so both styles share it.
    drawable = [e for e in entries if e.codepoints in noto_images]
    splits = assign_splits(drawable)

    if style == "noto":
        font_path, images, dropped = noto_path, noto_images, noto_drop
    else:
        font_path = find_font("symbola", font)
        dropped["not-in-noto"] = sum(noto_drop.values())
        examples["not-in-noto"] = [x for r in sorted(noto_drop) for x in examples.pop(r, [])]
        log(f"rendering {len(drawable)} emoji with {font_path} ...")
        images = render_all(drawable, GlyphRenderer(font_path, "symbola"), size, dropped, examples)
    if groups:
        # Filter after rendering so the split and the drop statistics do not depend on --groups.
        outside = [e.codepoints for e in entries if e.codepoints in images and e.group not in groups]
        for cp in outside:
            del images[cp]
        dropped["group-filter"] = len(outside)
    dropped = Counter({k: v for k, v in dropped.items() if v})

    rows = []
    psnrs = []
    for e in entries:
        img = images.get(e.codepoints)
        if img is None:
            continue
        data, quality = encode_png(img, style)
        psnrs.append(quality)
        rows.append({
            "image": {"bytes": data, "path": e.codepoints.replace(" ", "_") + ".png"},
            "text": e.name, "group": e.group, "subgroup": e.subgroup,
            "codepoints": e.codepoints, "split": splits[e.codepoints],
        })
    if not rows:
        raise ValueError("no emoji could be rendered; check the font (--font) and Pillow's raqm support")

    out.mkdir(parents=True, exist_ok=True)
    parquet = out / PARQUET_NAME
    write_parquet(rows, parquet)
    versions = debian_versions(DEBIAN_PACKAGES[style])
    write_text_atomic(out / "README.md", readme_markdown(
        style=style, rows=rows, dropped=dropped, dropped_examples=examples, considered=considered,
        groups=groups, limit=limit, size=size, versions=versions,
        parquet_sha=sha256_file(parquet), parquet_bytes=parquet.stat().st_size, font=font_path,
        emoji_test=emoji_test_path, psnrs=psnrs))
    write_text_atomic(out / "LICENSES.md", licenses_markdown(style))

    n_test = sum(r["split"] == "test" for r in rows)
    log(f"wrote {parquet}: {len(rows)} rows (train {len(rows) - n_test}, test {n_test}), "
        f"{parquet.stat().st_size / 1e6:.2f} MB")
    log(f"dropped {sum(dropped.values())} of {considered}:")
    for reason, count in sorted(dropped.items()):
        ex = "; ".join(examples.get(reason, [])[:3])
        log(f"  {reason}: {count}" + (f"  (e.g. {ex})" if ex else ""))
    return parquet


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m latentdiff.data.build_emoji",
        description="Render Unicode emoji into a captioned image dataset (Parquet + README + LICENSES).",
        epilog="example:\n  python -m latentdiff.data.build_emoji\n"
               "  python -m latentdiff.data.build_emoji --style symbola\n"
               "  python -m latentdiff.data.build_emoji --style twemoji --iconify-tarball iconify-json-twemoji-1.2.5.tgz\n"
               "  python -m latentdiff.data.build_emoji --limit 100 --out /tmp/emoji_small",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--style", choices=sorted(DEFAULT_OUT), default="noto",
                        help="noto: color emoji (default); symbola: monochrome line art for the LoRA style demo; "
                             "twemoji/openmoji/fluent: SVG sets from npm Iconify packages (need --iconify-tarball)")
    parser.add_argument("--iconify-tarball", default=None,
                        help="`npm pack` tarball of the style's Iconify JSON package, e.g. "
                             "iconify-json-twemoji-1.2.5.tgz (styles twemoji, openmoji, fluent)")
    parser.add_argument("--noto-parquet", default=None,
                        help="Noto dataset whose rows (captions, split) the Iconify styles follow "
                             "(default: latentdiff/data/emoji/emoji.parquet)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: latentdiff/data/emoji or latentdiff/data/emoji_symbola)")
    parser.add_argument("--font", default=None, help="font file for the chosen style (default: the Debian package's)")
    parser.add_argument("--noto-font", default=None,
                        help="Noto Color Emoji file used by --style symbola to keep only emoji both fonts draw")
    parser.add_argument("--emoji-test", default=None,
                        help="Unicode emoji-test.txt (default: /usr/share/unicode/emoji/emoji-test.txt)")
    parser.add_argument("--size", type=int, default=64, help="output image side in pixels (default 64)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N fully-qualified emoji (quick builds and tests)")
    parser.add_argument("--groups", default=None,
                        help='comma-separated emoji groups to keep, e.g. "Animals & Nature,Food & Drink" '
                             "(default: all)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
    try:
        build(style=args.style, out_dir=args.out, font=args.font, noto_font=args.noto_font,
              emoji_test=args.emoji_test, size=args.size, limit=args.limit, groups=groups, quiet=args.quiet,
              iconify_tarball=args.iconify_tarball, noto_parquet=args.noto_parquet)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
