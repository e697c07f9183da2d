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
