"""A PNG we write regenerates itself: `latentdiff generate --from-png FILE` alone (no --model, no
other option) reads every setting back from the PNG and gives identical pixels, including settings
that are not the model's defaults."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from latentdiff.cli import PNG_KEY, main


def written(capsys) -> list[Path]:
    return [Path(line) for line in capsys.readouterr().out.split() if line.endswith(".png")]


def test_from_png_alone_regenerates_non_default_settings(tiny_pipeline_dir, tmp_path, capsys):
    settings = {"--sampler": "dpmpp_2m", "--guidance": "5.5", "--spacing": "trailing", "--steps": "4",
                "--negative-prompt": "blurry green", "--seed": "11"}
    argv = ["generate", "red apple", "--model", str(tiny_pipeline_dir), "--out", str(tmp_path / "a")]
    assert main(argv + [x for kv in settings.items() for x in kv]) == 0
    [png] = [p for p in written(capsys) if p.name != "grid.png"]
    params = json.loads(Image.open(png).text[PNG_KEY])
    assert (params["sampler"], params["guidance_scale"], params["timestep_spacing"], params["steps"],
            params["negative_prompt"], params["seed"]) == ("dpmpp_2m", 5.5, "trailing", 4, "blurry green", 11)

    assert main(["generate", "--from-png", str(png), "--out", str(tmp_path / "b")]) == 0
    [again] = written(capsys)
    assert again.parent == tmp_path / "b"
    np.testing.assert_array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(again)))

    # and each setting mattered: the model's defaults give another image
    assert main(["generate", "red apple", "--model", str(tiny_pipeline_dir), "--seed", "11",
                 "--out", str(tmp_path / "c")]) == 0
    [plain] = written(capsys)
    assert np.abs(np.asarray(Image.open(plain)).astype(int) - np.asarray(Image.open(png)).astype(int)).max() > 2


def test_image_to_image_and_inpainting_from_the_command_line_regenerate(tiny_pipeline_dir, tmp_path, capsys):
    """The PNG records strength, mask settings and the sha256 of the init image and mask; --from-png
    regenerates when those files are there (given again or at their recorded path), and refuses
    another file under the same name."""
    rng = np.random.default_rng(0)
    init, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(init)
    m = np.zeros((32, 32), np.uint8)
    m[:, :16] = 255
    Image.fromarray(m).save(mask)
    base = ["generate", "red apple", "--model", str(tiny_pipeline_dir), "--seed", "3", "--steps", "4"]
    assert main(base + ["--image", str(init), "--mask", str(mask), "--mask-blur", "2", "--keep-unmasked",
                        "--out", str(tmp_path / "a")]) == 0
    [png] = written(capsys)
    params = json.loads(Image.open(png).text[PNG_KEY])
    assert params["strength"] == 1.0 and params["mask_blur"] == 2.0 and params["keep_unmasked"] is True
    assert params["image"] == str(init) and len(params["mask_sha256"]) == 64
    out = np.asarray(Image.open(png))
    np.testing.assert_array_equal(out[:, 24:], np.asarray(Image.open(init))[:, 24:])  # kept exactly (past the blur)

    assert main(["generate", "--from-png", str(png), "--out", str(tmp_path / "b")]) == 0
    [again] = written(capsys)
    np.testing.assert_array_equal(out, np.asarray(Image.open(again)))

    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(init)  # another picture, same name
    assert main(["generate", "--from-png", str(png), "--out", str(tmp_path / "c")]) == 2
    assert "is not the image this PNG was made from" in capsys.readouterr().err

    assert main(base + ["--image", str(init), "--strength", "0.5", "--hires", "2", "--out", str(tmp_path / "d")]) == 0
    [hires] = written(capsys)
    assert Image.open(hires).size == (64, 64)
    assert main(["generate", "--from-png", str(hires), "--out", str(tmp_path / "e")]) == 0
    [hires_again] = written(capsys)
    np.testing.assert_array_equal(np.asarray(Image.open(hires)), np.asarray(Image.open(hires_again)))


def test_image_options_errors(tiny_pipeline_dir, tmp_path, capsys):
    base = ["generate", "x", "--model", str(tiny_pipeline_dir), "--steps", "2", "--out", str(tmp_path / "o")]
    assert main(base + ["--strength", "0.5"]) == 2
    assert "--strength needs --image" in capsys.readouterr().err
    assert main(base + ["--image", str(tmp_path / "missing.png")]) == 2
    assert "missing.png not found" in capsys.readouterr().err
    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    assert main(base + ["--image", str(tmp_path / "in.png"), "--outpaint", "1,2"]) == 2
    assert "expected four integers" in capsys.readouterr().err
