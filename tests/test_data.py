"""Tests for latentdiff.data: the shipped emoji dataset, its build, and the tolerant loader."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.data import DataReport, build_dataset, collate, emoji_parquet_path, load_emoji
from latentdiff.data import build_emoji as build_mod

EMOJI_COLUMNS = ["image", "text", "group", "subgroup", "codepoints", "split", "style"]


# --------------------------------------------------------------------------- helpers


def save_rgb(path: Path, color=(200, 30, 30), size=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def good_folder(root: Path, n: int = 2) -> Path:
    """A kohya-style folder with ``n`` valid captioned images."""
    for i in range(n):
        save_rgb(root / f"good{i}.png", (10 * i, 100, 200))
        (root / f"good{i}.txt").write_text(f"good image {i}", encoding="utf-8")
    return root


def run_all(ds) -> list[dict]:
    """Iterate the whole dataset through a DataLoader, as training would."""
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b["caption"]) for b in batches) == len(ds)
    for b in batches:
        assert b["pixel_values"].dtype == torch.float32
        assert b["pixel_values"].shape[1:] == (3, ds.resolution, ds.resolution)
        assert b["pixel_values"].min() >= -1.0 and b["pixel_values"].max() <= 1.0
    return batches


def item_for(ds, name: str) -> dict:
    """The item whose file name is ``name``."""
    for i, record in enumerate(ds._records):
        if record.name == name:
            return ds[i]
    raise KeyError(name)


def zero_report_except(report: DataReport, **expected) -> None:
    """Every counter is 0 (or empty) except those given, which must match exactly."""
    skip = {"source", "seen", "kept", "examples", "instance_prompt_used"}
    for name, value in vars(report).items():
        if name in skip:
            continue
        want = expected.get(name, {} if isinstance(value, dict) else 0)
        assert value == want, f"report.{name} = {value!r}, expected {want!r}\n{report.summary()}"


# --------------------------------------------------------------------------- shipped emoji


def test_emoji_parquet_columns_rows_and_images():
    ds = load_emoji("all")
    assert ds.column_names == EMOJI_COLUMNS
    assert len(ds) > 3000
    for i in (0, 1234, len(ds) - 1):
        img = ds[i]["image"]
        assert isinstance(img, Image.Image)
        assert img.size == (64, 64) and img.mode == "RGB"
    assert set(ds.unique("split")) == {"train", "test"}
    # A white background that stays exactly white (the palette keeps pure white).
    assert np.asarray(ds[0]["image"])[0, 0].tolist() == [255, 255, 255]


def test_emoji_splits_are_disjoint_and_about_ten_percent():
    train, test, everything = load_emoji("train"), load_emoji("test"), load_emoji("all")
    assert len(train) + len(test) == len(everything)
    train_cp, test_cp = set(train["codepoints"]), set(test["codepoints"])
    assert not train_cp & test_cp
    assert len(train_cp) == len(train) and len(test_cp) == len(test)
    assert 0.09 <= len(test) / len(everything) <= 0.11
    assert set(test["split"]) == {"test"}
    # Stratified: every subgroup with at least 10 rows has a test row.
    sizes = {}
    for sg in everything["subgroup"]:
        sizes[sg] = sizes.get(sg, 0) + 1
    assert {sg for sg, n in sizes.items() if n >= 10} <= set(test["subgroup"])


def test_load_emoji_bad_split_lists_allowed_values():
    with pytest.raises(ValueError, match=r"allowed: \['train', 'test', 'all'\]"):
        load_emoji("validation")
    with pytest.raises(ValueError, match="noto"):
        load_emoji("train", style="comic")


def test_known_emoji_captions():
    ds = load_emoji("all")
    by_cp = dict(zip(ds["codepoints"], ds["text"]))
    assert by_cp["1F34E"] == "red apple"
    assert by_cp["1F469 1F3FD 200D 1F4BB"] == "woman technologist: medium skin tone"
    if "1F1EB 1F1F7" in by_cp:
        assert by_cp["1F1EB 1F1F7"] == "flag: France"
    row = ds[list(ds["codepoints"]).index("1F34E")]
    assert row["group"] == "Food & Drink" and row["subgroup"] == "food-fruit"


def test_symbola_dataset_is_small_grayscale_line_art_subset():
    noto, sym = load_emoji("all"), load_emoji("all", style="symbola")
    assert emoji_parquet_path("symbola").stat().st_size < 3_000_000
    assert 500 < len(sym) < len(noto)
    assert set(sym["codepoints"]) <= set(noto["codepoints"])
    # Same split as the Noto build for the same emoji.
    noto_split = dict(zip(noto["codepoints"], noto["split"]))
    assert all(noto_split[cp] == s for cp, s in zip(sym["codepoints"], sym["split"]))
    img = np.asarray(sym[0]["image"])
    assert img.shape == (64, 64, 3)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


def test_shipped_readme_matches_parquet():
    readme = (emoji_parquet_path().parent / "README.md").read_text(encoding="utf-8")
    n = len(load_emoji("all"))
    assert f"- rows: {n} " in readme
    assert "fonts-noto-color-emoji" in readme and "Split rule" in readme
    licenses = (emoji_parquet_path().parent / "LICENSES.md").read_text(encoding="utf-8")
    assert "SIL Open Font License" in licenses and "Unicode" in licenses


def test_split_assignment_rule():
    entries = [build_mod.EmojiEntry(f"{i:X}", f"e{i}", "G", f"sg{i % 7}") for i in range(0x1F300, 0x1F300 + 200)]
    splits = build_mod.assign_splits(entries)
    assert sum(s == "test" for s in splits.values()) == 20
    assert splits == build_mod.assign_splits(list(reversed(entries)))  # order-independent
    for k in range(7):
        members = [e.codepoints for e in entries if e.subgroup == f"sg{k}"]
        assert any(splits[cp] == "test" for cp in members)


@pytest.fixture
def hf_cache_in_tmp(tmp_path, monkeypatch):
    """`datasets.load_dataset` caches what it reads: keep that out of ~/.cache during tests."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def fonts_available():
    try:
        build_mod.find_font("noto")
        build_mod.find_emoji_test()
    except FileNotFoundError as e:
        pytest.skip(f"emoji build inputs not installed: {e}")


@pytest.mark.parametrize("style", ["noto", "symbola"])
def test_build_is_byte_identical(tmp_path, fonts_available, hf_cache_in_tmp, style):
    if style == "symbola":
        try:
            build_mod.find_font("symbola")
        except FileNotFoundError as e:
            pytest.skip(str(e))
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert build_mod.main(["--style", style, "--limit", "60", "--out", str(out), "--quiet"]) == 0
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == ["LICENSES.md", "README.md", "emoji.parquet"]
    assert files == sorted(p.name for p in outs[1].iterdir())
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    ds = build_dataset(str(outs[0] / "emoji.parquet"), caption_column="text")
    assert 0 < len(ds) <= 60
    assert not list(outs[0].glob("*.tmp")) and not list(outs[0].glob(".*"))  # atomic writes left no temp files


def test_build_drops_what_the_font_cannot_draw(fonts_available):
    renderer = build_mod.GlyphRenderer(build_mod.find_font("noto"), "noto")
    img, reason = renderer.render("\U0001F34E", 64)  # red apple
    assert reason == "" and img.size == (64, 64) and img.mode == "RGB"
    assert renderer.render("\u0378", 64) == (None, "empty")  # unassigned: Noto's .notdef is blank
    # Two pictures side by side: apple + pear is not a ligature.
    assert renderer.render("\U0001F34E\U0001F350", 64) == (None, "multi-glyph")


def test_build_cli_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        build_mod.main(["--help"])
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out
    assert build_mod.main(["--limit", "0", "--quiet"]) == 2
    assert "--limit must be positive, got 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- emoji training dataset


def test_emoji_training_dataset_with_labels():
    test = build_dataset("emoji", split="test", label_columns=("group",))
    assert len(test) == len(load_emoji("test"))
    item = test[0]
    assert item["pixel_values"].shape == (3, 64, 64) and item["pixel_values"].dtype == torch.float32
    assert isinstance(item["caption"], str) and item["caption"]
    names = test.label_names["group"]
    assert names == sorted(names) and "Food & Drink" in names
    assert names[item["group"]] == load_emoji("test")[0]["group"]
    # Ids come from the whole file, so a split with fewer groups agrees with the others.
    sym = build_dataset("emoji:symbola", split="test", label_columns=("group",))
    assert sym.label_names["group"] == sorted(set(load_emoji("all", style="symbola")["group"]))
    assert test.report.kept == len(test) and test.report.skipped == 0
    assert test.report.converted_modes == {}  # palette storage is expected, not a conversion


def test_build_dataset_bad_emoji_style():
    with pytest.raises(ValueError, match="emoji:symbola"):
        build_dataset("emoji:comic")


# --------------------------------------------------------------------------- bad data, one class each


def test_truncated_png_is_skipped(tmp_path, caplog):
    root = good_folder(tmp_path / "d")
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="PNG")
    (root / "broken.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "broken.txt").write_text("broken", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="latentdiff.data"):
        ds = build_dataset(str(root))
    assert len(ds) == 2 and ds.report.seen == 3 and ds.report.kept == 2
    zero_report_except(ds.report, skipped_corrupt=1)
    assert ds.report.examples["skipped_corrupt"] == ["broken.png"]
    assert "corrupt, truncated or unreadable image: 1 (e.g. broken.png)" in caplog.text
    run_all(ds)


def test_text_file_renamed_png_is_skipped(tmp_path):
    root = good_folder(tmp_path / "d")
    (root / "notes.png").write_text("this is not an image\n", encoding="utf-8")
    ds = build_dataset(str(root))
    assert len(ds) == 2
    zero_report_except(ds.report, skipped_not_image=1)
    assert "not an image: 1" in ds.report.summary()
    run_all(ds)


def test_cmyk_jpeg_is_converted(tmp_path):
    root = good_folder(tmp_path / "d")
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)  # red
    (root / "cmyk.txt").write_text("red square", encoding="utf-8")
    ds = build_dataset(str(root))
    assert len(ds) == 3
    zero_report_except(ds.report, converted_modes={"CMYK": 1})
    px = item_for(ds, "cmyk.jpg")["pixel_values"][:, 32, 32]
    assert px[0] > 0.9 and px[1] < -0.8 and px[2] < -0.8
    run_all(ds)


def test_palette_png_is_converted(tmp_path):
    root = good_folder(tmp_path / "d")
    Image.new("RGB", (64, 64), (0, 0, 255)).convert("P").save(root / "pal.png")
    (root / "pal.txt").write_text("blue", encoding="utf-8")
    ds = build_dataset(str(root))
    zero_report_except(ds.report, converted_modes={"P": 1})
    assert item_for(ds, "pal.png")["pixel_values"][:, 5, 5].tolist() == [-1.0, -1.0, 1.0]
    run_all(ds)


def test_la_png_is_composited_on_white(tmp_path):
    root = good_folder(tmp_path / "d")
    Image.new("LA", (64, 64), (0, 0)).save(root / "la.png")  # black, fully transparent
    (root / "la.txt").write_text("nothing", encoding="utf-8")
    ds = build_dataset(str(root))
    zero_report_except(ds.report, converted_modes={"LA": 1}, alpha_composited=1)
    assert torch.all(item_for(ds, "la.png")["pixel_values"] == 1.0)
    run_all(ds)


def test_rgba_transparent_pixels_become_white(tmp_path):
    root = good_folder(tmp_path / "d")
    im = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # transparent red -> white
    im.paste((0, 128, 0, 255), (0, 0, 32, 64))  # opaque green left half
    im.save(root / "rgba.png")
    (root / "rgba.txt").write_text("half green", encoding="utf-8")
    ds = build_dataset(str(root))
    zero_report_except(ds.report, converted_modes={"RGBA": 1}, alpha_composited=1)
    px = item_for(ds, "rgba.png")["pixel_values"]
    assert torch.all(px[:, :, 40:] == 1.0)
    assert px[:, 10, 10].tolist() == pytest.approx([-1.0, 128 / 127.5 - 1, -1.0], abs=1e-6)
    run_all(ds)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    root = good_folder(tmp_path / "d")
    Image.fromarray(np.full((64, 64), 0x8080, dtype=np.uint16)).save(root / "gray16.png")
    mode = Image.open(root / "gray16.png").mode
    assert mode in ("I;16", "I")
    (root / "gray16.txt").write_text("mid gray", encoding="utf-8")
    ds = build_dataset(str(root))
    zero_report_except(ds.report, converted_modes={mode: 1})
    px = item_for(ds, "gray16.png")["pixel_values"]
    assert px.abs().max() < 0.01  # 0x8080 / 257 = 128 -> ~0 in [-1, 1], not clipped to white
    run_all(ds)


def test_small_image_is_upscaled_and_counted(tmp_path):
    root = good_folder(tmp_path / "d")
    save_rgb(root / "tiny.png", (0, 0, 0), size=(16, 16))
    (root / "tiny.txt").write_text("tiny", encoding="utf-8")
    ds = build_dataset(str(root), resolution=64)
    zero_report_except(ds.report, upscaled=1)
    assert item_for(ds, "tiny.png")["pixel_values"].shape == (3, 64, 64)
    run_all(ds)


def test_empty_caption_file_is_counted(tmp_path):
    root = good_folder(tmp_path / "d")
    save_rgb(root / "blank.png")
    (root / "blank.txt").write_text("  \n", encoding="utf-8")
    ds = build_dataset(str(root))
    zero_report_except(ds.report, empty_caption=1)
    assert item_for(ds, "blank.png")["caption"] == ""
    run_all(ds)


def test_missing_caption_is_counted(tmp_path, caplog):
    root = good_folder(tmp_path / "d")
    save_rgb(root / "nocap.png")
    with caplog.at_level(logging.WARNING, logger="latentdiff.data"):
        ds = build_dataset(str(root))
    zero_report_except(ds.report, missing_caption=1)
    assert item_for(ds, "nocap.png")["caption"] == ""
    assert "missing caption" in caplog.text
    run_all(ds)


def test_invalid_utf8_caption_is_decoded_with_replacement(tmp_path):
    root = good_folder(tmp_path / "d")
    save_rgb(root / "latin1.png")
    (root / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    ds = build_dataset(str(root))
    zero_report_except(ds.report, invalid_utf8_caption=1)
    assert item_for(ds, "latin1.png")["caption"] == "caf\ufffd au lait"
    run_all(ds)


def test_file_changed_after_construction_does_not_kill_the_run(tmp_path):
    root = good_folder(tmp_path / "d", n=3)
    ds = build_dataset(str(root))
    (root / "good1.png").write_bytes(b"gone")
    batches = run_all(ds)
    assert ds.report.load_errors == 1
    assert [c for b in batches for c in b["caption"]] == ["good image 0", "good image 2", "good image 2"]


# --------------------------------------------------------------------------- errors


def test_only_bad_images_is_a_clear_error(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="(?s)no usable images.*not an image: 1"):
        build_dataset(str(root))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no images found .*\.png"):
        build_dataset(str(empty))


def test_missing_folder_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        build_dataset(str(tmp_path / "does-not-exist"))
    with pytest.raises(FileNotFoundError):
        build_dataset("./no/such/folder")


def test_missing_columns_list_the_available_ones(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"img": [Image.new("RGB", (8, 8))], "caption": ["x"]})
    ds = ds.cast_column("img", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=r"image column 'image'.*available columns: \['img', 'caption'\]"):
        build_dataset(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=r"caption column 'text'.*\['img', 'caption'\].*instance-prompt"):
        build_dataset(str(tmp_path / "hf"), image_column="img")
    with pytest.raises(ValueError, match=r"label column\(s\) \['kind'\]"):
        build_dataset(str(tmp_path / "hf"), image_column="img", caption_column="caption", label_columns=["kind"])
    root = good_folder(tmp_path / "d")
    with pytest.raises(ValueError, match=r"label column\(s\) \['kind'\].*available columns"):
        build_dataset(str(root), label_columns=["kind"])


def test_uncaptioned_folder_needs_instance_prompt(tmp_path):
    root = tmp_path / "dog"
    for i in range(3):
        save_rgb(root / f"{i}.jpg", (i * 50, 80, 80), size=(96, 80))
    with pytest.raises(ValueError, match="--instance-prompt"):
        build_dataset(str(root))
    ds = build_dataset(str(root), instance_prompt="a photo of sks dog")
    assert [ds[i]["caption"] for i in range(3)] == ["a photo of sks dog"] * 3
    assert ds.report.instance_prompt_used == 3
    zero_report_except(ds.report)  # the DreamBooth case is not a problem
    run_all(ds)


# --------------------------------------------------------------------------- sources


def test_metadata_jsonl_folder_with_labels_and_nesting(tmp_path):
    root = tmp_path / "imgs"
    save_rgb(root / "a.png", (255, 0, 0))
    save_rgb(root / "b.png", (0, 255, 0))
    save_rgb(root / "sub" / "c.png", (0, 0, 255))
    lines = [
        {"file_name": "a.png", "text": "a red square", "color": "red"},
        {"file_name": "b.png", "text": "a green square", "color": "green"},
        {"file_name": "gone.png", "text": "missing", "color": "red"},
    ]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n", encoding="utf-8")
    (root / "sub" / "metadata.jsonl").write_text(json.dumps({"file_name": "c.png", "text": "blue", "color": "blue"}))
    (root / "README.md").write_text("notes")
    ds = build_dataset(str(root), label_columns=["color"])
    assert len(ds) == 3
    zero_report_except(ds.report, skipped_missing_file=1, bad_metadata_lines=1, ignored_files=1)
    assert ds.label_names == {"color": ["blue", "green", "red"]}
    items = {ds[i]["caption"]: ds[i] for i in range(len(ds))}
    assert set(items) == {"a red square", "a green square", "blue"}
    assert items["a red square"]["color"] == 2 and items["blue"]["color"] == 0
    batch = collate([ds[i] for i in range(3)])
    assert batch["color"].dtype == torch.long and batch["color"].tolist() == [2, 1, 0]


def test_kohya_txt_folder_nested(tmp_path):
    root = tmp_path / "kohya"
    save_rgb(root / "10_style" / "x.png")
    (root / "10_style" / "x.txt").write_text("style x, line art\n", encoding="utf-8")
    save_rgb(root / "10_style" / "deeper" / "y.jpg")
    (root / "10_style" / "deeper" / "y.caption").write_text("style y\nsecond line", encoding="utf-8")
    ds = build_dataset(str(root))
    assert sorted(ds.captions) == ["style x, line art", "style y second line"]
    zero_report_except(ds.report)


def test_folder_split_subfolder(tmp_path):
    good_folder(tmp_path / "d" / "train", n=2)
    good_folder(tmp_path / "d" / "test", n=1)
    assert len(build_dataset(str(tmp_path / "d"), split="train")) == 2
    assert len(build_dataset(str(tmp_path / "d"), split="test")) == 1
    assert len(build_dataset(str(tmp_path / "d"))) == 3
    with pytest.raises(FileNotFoundError, match="validation"):
        build_dataset(str(tmp_path / "d"), split="validation")


def test_save_to_disk_source(tmp_path):
    import datasets

    images = [Image.new("RGB", (80, 64), c) for c in ("red", "green", "blue")]
    ds = datasets.Dataset.from_dict({"image": images, "text": ["r", "g", None], "kind": ["warm", "cool", "cool"]})
    ds = ds.cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "hf"))
    train = build_dataset(str(tmp_path / "hf"), label_columns=("kind",))
    assert len(train) == 3
    zero_report_except(train.report, missing_caption=1)
    assert train.label_names["kind"] == ["cool", "warm"]
    assert [train[i]["caption"] for i in range(3)] == ["r", "g", ""]
    assert train[0]["kind"] == 1
    test = build_dataset(str(tmp_path / "hf"), split="test", label_columns=("kind",))
    assert len(test) == 1 and test.label_names == train.label_names
    with pytest.raises(ValueError, match=r"available splits: \['test', 'train'\]"):
        build_dataset(str(tmp_path / "hf"), split="validation")
    run_all(train)


# --------------------------------------------------------------------------- randomness and transforms


def test_caption_dropout(tmp_path):
    root = good_folder(tmp_path / "d", n=4)
    always = build_dataset(str(root), caption_dropout=1.0)
    assert [always[i]["caption"] for i in range(4)] == [""] * 4
    never = build_dataset(str(root), caption_dropout=0.0)
    assert all(never[i]["caption"] for i in range(4))
    with pytest.raises(ValueError, match="caption_dropout"):
        build_dataset(str(root), caption_dropout=1.5)


def test_caption_dropout_is_reproducible_and_changes_with_epoch(tmp_path):
    root = good_folder(tmp_path / "d", n=16)

    def pattern(seed, epoch):
        ds = build_dataset(str(root), caption_dropout=0.5, seed=seed)
        ds.set_epoch(epoch)
        return [ds[i]["caption"] == "" for i in range(len(ds))]

    assert pattern(0, 0) == pattern(0, 0)
    assert 0 < sum(pattern(0, 0)) < 16
    assert pattern(0, 0) != pattern(0, 1) or pattern(0, 0) != pattern(0, 2)
    assert pattern(0, 0) != pattern(1, 0) or pattern(0, 0) != pattern(2, 0)


def test_flip_is_off_by_default_and_random_crop_is_seeded(tmp_path):
    root = tmp_path / "d"
    im = Image.new("RGB", (64, 64), "white")
    im.paste((0, 0, 0), (0, 0, 16, 64))  # black stripe on the left
    root.mkdir()
    im.save(root / "left.png")
    (root / "left.txt").write_text("left stripe")
    ds = build_dataset(str(root))
    for epoch in range(8):
        ds.set_epoch(epoch)
        assert ds[0]["pixel_values"][:, 5, 5].tolist() == [-1.0, -1.0, -1.0]
    flipping = build_dataset(str(root), random_flip=True)
    left = []
    for epoch in range(16):
        flipping.set_epoch(epoch)
        left.append(flipping[0]["pixel_values"][0, 5, 5].item() == -1.0)
    assert any(left) and not all(left)

    save_rgb(root / "wide.png", size=(160, 64))
    Image.effect_noise((160, 64), 80).convert("RGB").save(root / "wide.png")
    (root / "wide.txt").write_text("noise")
    a = build_dataset(str(root), center_crop=False, seed=3)
    b = build_dataset(str(root), center_crop=False, seed=3)
    i = [r.name for r in a._records].index("wide.png")
    assert torch.equal(a[i]["pixel_values"], b[i]["pixel_values"])
    crops = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        crops.add(a[i]["pixel_values"].sum().item())
    assert len(crops) > 1


def test_report_summary_is_readable():
    report = DataReport(source="x")
    assert report.summary() == "data report for x: kept 0 of 0 images"
    report.seen, report.kept = 3, 1
    report.note("skipped_corrupt", "a.png")
    report.note("skipped_not_image", "b.png")
    report.note_mode("CMYK", "c.jpg")
    text = report.summary()
    assert "kept 1 of 3" in text and "skipped 2" in text and "CMYK -> RGB: 1 (e.g. c.jpg)" in text


def test_collate_rejects_empty_batch():
    with pytest.raises(ValueError):
        collate([])


def test_copied_emoji_parquet_as_file_source(tmp_path, hf_cache_in_tmp):
    path = tmp_path / "copy.parquet"
    shutil.copy(emoji_parquet_path("symbola"), path)
    ds = build_dataset(str(path), caption_column="text", label_columns=["split"])
    assert len(ds) == len(load_emoji("all", style="symbola"))
    assert ds.label_names["split"] == ["test", "train"]
    with pytest.raises(ValueError, match="no 'test' split"):
        build_dataset(str(path), split="test")
