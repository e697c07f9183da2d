"""The Iconify emoji styles (twemoji, openmoji, fluent) shipped beside the Noto set (issue 14).

The committed Parquet files are what these tests read; only the build tests need resvg-py (the
``data`` extra) and skip without it.  ``LATENTDIFF_ICONIFY_DIR`` (a folder with the ``npm pack``
tarballs) additionally checks the shipped files against a fresh build of their first rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from latentdiff.config import ConfigError, from_dict
from latentdiff.data import (
    EMOJI_ALL_STYLES,
    build_dataset,
    emoji_parquet_path,
    emoji_parquet_paths,
    load_emoji,
)
from latentdiff.data import build_emoji as build_mod

ICONIFY = ("twemoji", "openmoji", "fluent")
COLUMNS = ["image", "text", "group", "subgroup", "codepoints", "split", "style"]
TARBALLS = {"twemoji": "iconify-json-twemoji-*.tgz", "openmoji": "iconify-json-openmoji-*.tgz",
            "fluent": "iconify-json-fluent-emoji-flat-*.tgz"}


def _rows(style: str) -> list[dict]:
    return pq.read_table(emoji_parquet_path(style)).to_pylist()


@pytest.fixture(scope="module")
def noto() -> dict[str, dict]:
    return {r["codepoints"]: r for r in _rows("noto")}


def _ink(png: bytes) -> float:
    """Share of pixels more than 24 levels away from white in some channel."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return float(((255 - a).max(axis=-1) > 24).mean())


# --------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("style", ICONIFY)
def test_style_loads_with_style_column_and_rgb_images(style):
    ds = load_emoji("all", style)
    assert ds.column_names == COLUMNS
    assert set(ds["style"]) == {style}
    assert len(ds) > (2900 if style == "fluent" else 3500)
    for i in (0, len(ds) // 2, len(ds) - 1):
        img = ds[i]["image"]
        assert img.size == (64, 64) and img.mode == "RGB"
    assert set(ds.unique("split")) == {"train", "test"}
    # The background stays exactly white (the palette keeps pure white): the top-left pixel is 255 in
    # nearly every image, as in the Noto set (LANCZOS ringing makes a few 254 where the drawing is near).
    corners = [np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB"))[0, 0].min()
               for r in _rows(style)]
    assert np.mean(np.array(corners) == 255) > 0.9


@pytest.mark.parametrize("style", ICONIFY)
def test_style_rows_are_noto_rows_with_the_same_split(style, noto):
    rows = _rows(style)
    assert len({r["codepoints"] for r in rows}) == len(rows)
    for r in rows:
        n = noto[r["codepoints"]]  # only emoji of the Noto set
        assert (r["text"], r["group"], r["subgroup"], r["split"]) == (n["text"], n["group"], n["subgroup"], n["split"])
    test = load_emoji("test", style)
    assert set(test["split"]) == {"test"}
    assert 0.09 <= len(test) / len(rows) <= 0.11


@pytest.mark.parametrize("style", ICONIFY)
def test_style_images_have_ink_and_are_not_one_repeated_box(style):
    rows = _rows(style)
    inks = [_ink(r["image"]["bytes"]) for r in rows]
    assert min(inks) > 0.03, rows[int(np.argmin(inks))]["text"]
    # A renderer that drew a placeholder (tofu) for missing icons would repeat one image many times.
    counts: dict[bytes, int] = {}
    for r in rows:
        counts[r["image"]["bytes"]] = counts.get(r["image"]["bytes"], 0) + 1
    assert max(counts.values()) <= 10 and len(counts) > 0.95 * len(rows)
    # Each style really differs from Noto's pictures of the same emoji.
    noto_png = {r["codepoints"]: r["image"]["bytes"] for r in _rows("noto")}
    assert sum(r["image"]["bytes"] == noto_png[r["codepoints"]] for r in rows) == 0


def test_noto_and_symbola_get_their_style_at_load_time():
    assert "style" not in pq.read_schema(emoji_parquet_path("noto")).names  # the files are unchanged
    assert set(load_emoji("test", "noto")["style"]) == {"noto"}
    assert set(load_emoji("test", "symbola")["style"]) == {"symbola"}


def test_all_is_the_four_colour_styles_without_symbola():
    assert EMOJI_ALL_STYLES == ("noto", "twemoji", "openmoji", "fluent")
    every = load_emoji("test", "all")
    assert every.column_names == COLUMNS
    per_style = {s: len(load_emoji("test", s)) for s in EMOJI_ALL_STYLES}
    assert len(every) == sum(per_style.values())
    assert {s: list(every["style"]).count(s) for s in EMOJI_ALL_STYLES} == per_style
    assert len(emoji_parquet_paths("all")) == 4
    with pytest.raises(ValueError, match="emoji_parquet_paths"):
        emoji_parquet_path("all")
    with pytest.raises(ValueError, match="twemoji"):
        load_emoji("test", "comic")


def test_readmes_state_counts_hashes_versions_and_vae_psnr():
    for style in ICONIFY:
        folder = emoji_parquet_path(style).parent
        readme = (folder / "README.md").read_text(encoding="utf-8")
        data = emoji_parquet_path(style).read_bytes()
        assert f"- rows: {len(_rows(style))} " in readme
        assert hashlib.sha256(data).hexdigest() in readme and f"{len(data):,} bytes" in readme
        assert "resvg-py" in readme and "@iconify-json/" in readme and "## The shipped VAE" in readme
        licenses = (folder / "LICENSES.md").read_text(encoding="utf-8")
        assert "Unicode" in licenses
    assert "CC BY 4.0" in (emoji_parquet_path("twemoji").parent / "LICENSES.md").read_text(encoding="utf-8")
    assert "licensed under CC BY-SA 4.0" in (emoji_parquet_path("openmoji").parent / "LICENSES.md").read_text(
        encoding="utf-8")
    assert "MIT License" in (emoji_parquet_path("fluent").parent / "LICENSES.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- training sources


def test_emoji_all_training_dataset_has_plain_and_style_captions():
    plain = load_emoji("test", "all")
    ds = build_dataset("emoji:all", split="test")
    n = len(plain)
    assert len(ds) == 2 * n
    expected = list(plain["text"]) + [f"{t}, {s} style" for t, s in zip(plain["text"], plain["style"])]
    assert ds.captions == expected
    assert "red apple, twemoji style" in ds.captions or "red apple" not in plain["text"]
    assert ds.report.converted_modes == {}
    # Both rows of an image are the same picture.
    assert (ds[0]["pixel_values"] == ds[n]["pixel_values"]).all()
    assert build_dataset("emoji:all", split="test", style_captions=False).captions == list(plain["text"])
    assert all(not c.endswith(" style") for c in build_dataset("emoji:twemoji", split="test").captions)


def test_train_load_image_data_reads_every_style_and_suffixes_half():
    from train.common import DataConfig, load_image_data

    d = from_dict(DataConfig, {"source": "emoji:all", "max_validation_samples": 0})
    assert d.style_captions is True
    data = load_image_data(d, "test", 64)
    plain = load_emoji("test", "all")
    assert data.captions == (list(plain["text"])
                             + [f"{t}, {s} style" for t, s in zip(plain["text"], plain["style"])])
    n = len(plain)
    assert data.images.shape == (2 * n, 3, 64, 64) and (data.images[:n] == data.images[n:]).all()
    off = load_image_data(from_dict(DataConfig, {"source": "emoji:all", "style_captions": False,
                                                 "max_validation_samples": 0}), "test", 64)
    assert off.captions == list(plain["text"])
    for style in ICONIFY:
        one = load_image_data(DataConfig(source=f"emoji:{style}", max_validation_samples=0), "test", 64)
        assert one.captions == list(load_emoji("test", style)["text"])
    with pytest.raises(ConfigError):
        from_dict(DataConfig, {"source": "emoji:all", "style_captions": "sometimes"})
    with pytest.raises(ConfigError, match="style_caption"):
        from_dict(DataConfig, {"source": "emoji:all", "style_caption": True})


# --------------------------------------------------------------------------- build


def _fake_tarball(path: Path, package: str = "@iconify-json/twemoji") -> Path:
    """A tiny Iconify package: a red disc, its mirrored alias, blank icons and a skin-tone twin."""
    disc = '<circle cx="12" cy="18" r="8" fill="#d00"/><rect x="18" y="4" width="4" height="10" fill="#06c"/>'
    icons = {"prefix": "fake", "width": 36, "height": 36,
             "icons": {"disc": {"body": disc}, "blank": {"body": '<g fill="none"/>'},
                       "ghost": {"body": '<circle cx="18" cy="18" r="9" fill="#f6f6f6"/>'}},  # no visible ink
             "aliases": {"disc-flipped": {"parent": "disc", "hFlip": True}}}
    # red apple -> disc, green apple -> the mirrored disc, pear -> blank, lemon -> ghost, tangerine: none,
    # mango (a test emoji in Noto) -> disc;
    # "waving hand: light skin tone" is drawn like "waving hand" (same icon): same-as-shorter.
    chars = {"1f34e": "disc", "1f34f": "disc-flipped", "1f350": "blank", "1f34b": "ghost", "1f96d": "disc",
             "1f44b": "disc-flipped",
             "1f44b-1f3fb": "disc-flipped"}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in (("icons.json", icons), ("chars.json", chars),
                          ("package.json", {"name": package, "version": "0.0.1"})):
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _fake_noto(path: Path) -> Path:
    keep = {"1F34E", "1F34F", "1F350", "1F34A", "1F34B", "1F96D", "1F44B", "1F44B 1F3FB"}
    rows = [r for r in _rows("noto") if r["codepoints"] in keep]
    assert len(rows) == len(keep)
    build_mod.write_parquet(rows, path)
    return path


def test_build_iconify_style_is_deterministic_and_drops_what_it_cannot_draw(tmp_path):
    pytest.importorskip("resvg_py")
    tgz, noto = _fake_tarball(tmp_path / "fake.tgz"), _fake_noto(tmp_path / "noto.parquet")
    args = ["--style", "twemoji", "--iconify-tarball", str(tgz), "--noto-parquet", str(noto), "--quiet"]
    assert build_mod.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert build_mod.main(args + ["--out", str(tmp_path / "b")]) == 0
    a, b = (tmp_path / "a" / "emoji.parquet").read_bytes(), (tmp_path / "b" / "emoji.parquet").read_bytes()
    assert a == b
    rows = {r["codepoints"]: r for r in pq.read_table(tmp_path / "a" / "emoji.parquet").to_pylist()}
    assert sorted(rows) == ["1F34E", "1F34F", "1F44B", "1F96D"]  # pear, lemon blank; tangerine absent;
    # the skin tone ignored
    readme = (tmp_path / "a" / "README.md").read_text(encoding="utf-8")
    assert "not-in-set: 1" in readme and "blank: 2" in readme and "same-as-shorter: 1" in readme
    noto_rows = {r["codepoints"]: r for r in pq.read_table(noto).to_pylist()}
    for cp, r in rows.items():
        assert r["style"] == "twemoji" and r["split"] == noto_rows[cp]["split"] and r["text"] == noto_rows[cp]["text"]
    assert rows["1F96D"]["split"] == "test" and rows["1F34E"]["split"] == "train"
    apple = np.asarray(Image.open(io.BytesIO(rows["1F34E"]["image"]["bytes"])).convert("RGB"), dtype=int)
    mirrored = np.asarray(Image.open(io.BytesIO(rows["1F34F"]["image"]["bytes"])).convert("RGB"), dtype=int)
    assert np.abs(apple[:, ::-1] - mirrored).mean() < 2 < np.abs(apple - mirrored).mean()  # the alias's hFlip
    red = (apple[..., 0] > 180) & (apple[..., 1] < 60) & (apple[..., 2] < 60)
    assert red.mean() > 0.2  # the disc fills the picture: cropped to the drawing, not the 36-unit box
    # The wrong package for the style is refused.
    other = _fake_tarball(tmp_path / "other.tgz", package="@iconify-json/openmoji")
    assert build_mod.main(["--style", "twemoji", "--iconify-tarball", str(other), "--noto-parquet", str(noto),
                           "--quiet", "--out", str(tmp_path / "c")]) == 2
    assert build_mod.main(["--style", "twemoji", "--quiet", "--out", str(tmp_path / "c")]) == 2  # no tarball


@pytest.mark.parametrize("style", ICONIFY)
def test_shipped_style_matches_a_fresh_build_of_its_first_rows(style, tmp_path):
    pytest.importorskip("resvg_py")
    folder = os.environ.get("LATENTDIFF_ICONIFY_DIR", "")
    hits = sorted(Path(folder).glob(TARBALLS[style])) if folder else []
    if not hits:
        pytest.skip("set LATENTDIFF_ICONIFY_DIR to a folder with the `npm pack` tarballs to rebuild")
    out = tmp_path / style
    assert build_mod.main(["--style", style, "--iconify-tarball", str(hits[-1]), "--limit", "60", "--quiet",
                           "--out", str(out)]) == 0
    again = tmp_path / "again"
    assert build_mod.main(["--style", style, "--iconify-tarball", str(hits[-1]), "--limit", "60", "--quiet",
                           "--out", str(again)]) == 0
    assert (out / "emoji.parquet").read_bytes() == (again / "emoji.parquet").read_bytes()
    shipped = {r["codepoints"]: r["image"]["bytes"] for r in _rows(style)}
    fresh = pq.read_table(out / "emoji.parquet").to_pylist()
    assert fresh and all(shipped[r["codepoints"]] == r["image"]["bytes"] for r in fresh)


def test_clip_trainer_loader_reads_emoji_all():
    # train/clip.py reads `dataset: emoji:all` through evaluation.load_image_set -> build_dataset.
    from latentdiff.evaluation import load_image_set

    plain = load_emoji("test", "all")
    images = load_image_set("emoji:all", "test", 64)
    assert images.captions == list(plain["text"]) + [f"{t}, {s} style" for t, s in zip(plain["text"], plain["style"])]
    assert images.images.shape == (2 * len(plain), 3, 64, 64)
