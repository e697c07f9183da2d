"""The tiny-CLIP trainer and the evaluation toolkit.

* CLIP: a few contrastive steps on a synthetic captioned folder; the saved ``text_encoder/`` loads as
  a ``CLIPTextModel`` with the U-Net encoder's architecture and reproduces the CLIP text tower.
* Model-free checks: the colour namer on PIL's named colours, HSV against ``colorsys``, the skin
  luminance ordering with distractors that would break it if they were counted.
* Fréchet distance against the closed form computed independently with ``scipy.linalg.sqrtm``.
* The evaluator learns (above chance) from a small emoji subset; ``latentdiff eval`` runs end to end
  on a tiny pipeline and a synthetic dataset, and ``--help`` works.
"""

from __future__ import annotations

import colorsys
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageColor, ImageDraw

from latentdiff import emoji_checks as EC
from latentdiff import eval_cli
from latentdiff import evaluation as E

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("circle", "square")


def shape_image(colour, shape: str, size: int = 32, outline=None, background="white") -> Image.Image:
    """A filled shape of ``colour`` (a PIL colour name or RGB tuple) on ``background``."""
    im = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(im)
    box = (size // 6, size // 6, size - size // 6, size - size // 6)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=colour, outline=outline)
    return im


def to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)


def write_folder_dataset(root: Path, splits=("train", "test"), size: int = 32) -> None:
    """An imagefolder dataset (metadata.jsonl with text + group) of coloured shapes per split."""
    for split in splits:
        folder = root / split
        folder.mkdir(parents=True)
        rows = []
        for colour in EC.COLOUR_WORDS:
            for shape in SHAPES:
                name = f"{colour}_{shape}.png"
                shape_image(colour, shape, size, outline="gray").save(folder / name)
                rows.append({"file_name": name, "text": f"{colour} {shape}", "group": shape})
        (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


# --------------------------------------------------------------------------- CLIP


def test_emoji_clip_text_tower_is_the_unet_text_encoder():
    from latentdiff.config import load_config
    from latentdiff.models import ModelConfig
    from latentdiff.train.clip import load_clip_config

    for clip_yaml, model_yaml in (("emoji_clip.yaml", "emoji.yaml"), ("tiny_clip.yaml", "tiny.yaml")):
        cfg = load_clip_config(ROOT / "configs" / clip_yaml)
        assert cfg.text_encoder == load_config(ROOT / "configs" / model_yaml, ModelConfig).text_encoder


def test_clip_trains_and_saved_text_encoder_equals_the_tower(tmp_path):
    from transformers import CLIPModel, CLIPTextModel

    from latentdiff.train.clip import load_clip_config, text_encoder_from_clip, train

    torch.set_num_threads(1)
    write_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    cfg = load_clip_config(ROOT / "configs" / "tiny_clip.yaml",
                           {"data.source": str(tmp_path / "data"), "optim.batch_size": 18, "validation_steps": 0,
                            "optim.lr_warmup_steps": 2, "optim.learning_rate": 3e-3, "optim.max_train_steps": 40,
                            "output_dir": str(out), "device": "cpu", "checkpointing_steps": 20})
    summary = train(cfg)

    # it learned: the contrastive loss fell well below its value for random embeddings, ln(batch)
    assert summary["final_loss"] < 0.8 * np.log(18)
    assert summary["zero_shot"]["retrieval"]["n"] == 18

    clip = CLIPModel.from_pretrained(out / "clip").eval()
    text_encoder = CLIPTextModel.from_pretrained(out / "text_encoder").eval()
    built = cfg.text_encoder.build().config  # the U-Net encoder's architecture
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "max_position_embeddings", "hidden_act", "eos_token_id"):
        assert getattr(text_encoder.config, key) == getattr(built, key), key
    ids = torch.tensor([[49406, 736, 2866, 49407] + [49407] * 73, [49406, 1746, 4023, 49407] + [49407] * 73])
    with torch.no_grad():
        a = text_encoder(ids)
        b = clip.text_model(ids)
        c = text_encoder_from_clip(clip)(ids)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, rtol=0, atol=0)
    torch.testing.assert_close(c.last_hidden_state, a.last_hidden_state, rtol=0, atol=0)
    # the text tower was trained (it differs from a fresh initialisation with the same seed)
    torch.manual_seed(cfg.seed)
    fresh = cfg.text_encoder.build()
    assert not torch.equal(fresh.get_input_embeddings().weight[736], text_encoder.get_input_embeddings().weight[736])
    for name in ("tokenizer", "config.yaml", "text_encoder/training_summary.json", "checkpoints/checkpoint-40"):
        assert (out / name).exists(), name


# --------------------------------------------------------------------------- colour words


def test_rgb_to_hsv_matches_colorsys():
    g = torch.Generator().manual_seed(0)
    px = torch.rand(3, 7, 9, generator=g)
    px[:, 0, 0] = torch.tensor([0.5, 0.5, 0.5])  # grey: hue undefined (0 in both)
    px[:, 0, 1] = 0.0
    h, s, v = EC.rgb_to_hsv(px)
    for i in range(7):
        for j in range(9):
            hh, ss, vv = colorsys.rgb_to_hsv(*px[:, i, j].tolist())
            assert h[i, j].item() == pytest.approx(hh * 360 % 360, abs=1e-3)
            assert s[i, j].item() == pytest.approx(ss, abs=1e-5)
            assert v[i, j].item() == pytest.approx(vv, abs=1e-6)


@pytest.mark.parametrize("colour", EC.COLOUR_WORDS)
def test_dominant_colour_of_pil_named_colours(colour):
    rgb = ImageColor.getrgb(colour)
    solid = to_tensor(Image.new("RGB", (16, 16), rgb))
    assert EC.dominant_colour(solid) == colour
    for shape in SHAPES:  # a shape on a white background with a thin grey outline (grey is not counted)
        assert EC.dominant_colour(to_tensor(shape_image(rgb, shape, 48, outline="gray"))) == colour
        if colour != "white":  # a black outline is a minority of the pixels (on white, it *is* the shape)
            assert EC.dominant_colour(to_tensor(shape_image(rgb, shape, 48, outline="black"))) == colour
        # an off-white background (as a VAE may decode it) is background, not "white"
        assert EC.dominant_colour(to_tensor(shape_image(rgb, shape, 48, background="gainsboro"))) == colour


def test_colour_check_counts_and_confusions():
    prompts = ["red heart", "blue circle", "green square", "grinning face"]
    images = torch.stack([to_tensor(shape_image(c, "circle")) for c in ("red", "orange", "green", "yellow")])
    r = EC.colour_check(images, prompts)
    assert r["n"] == 3 and r["obeyed"] == 2 and r["rate"] == pytest.approx(2 / 3)
    assert r["confusions"] == [("blue circle", "orange")]


# --------------------------------------------------------------------------- skin tones


def skin_colours() -> list[tuple[int, int, int]]:
    """Five skin colours of one hue and saturation, lightest first (value from 0.95 down to 0.45)."""
    return [tuple(round(255 * x) for x in colorsys.hsv_to_rgb(25 / 360, 0.4, v)) for v in (0.95, 0.82, 0.7, 0.57, 0.45)]


def person(skin, hair_rows: int, size: int = 32) -> torch.Tensor:
    """A face (skin disk) with black hair (``hair_rows`` tall), a blue shirt and a yellow badge."""
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((8, 4, 24, 20), fill=skin)
    d.rectangle((8, 2, 24, 2 + hair_rows), fill=(30, 25, 20))
    d.rectangle((4, 22, 28, 31), fill="blue")
    d.rectangle((14, 24, 18, 28), fill="gold")
    return to_tensor(im)


def test_skin_tone_ordering_on_synthetic_people():
    tones = skin_colours()
    # More dark hair on the lighter faces: counting hair as skin would reverse the ordering.
    sets = torch.stack([torch.stack([person(c, hair_rows=8 - 2 * k) for k, c in enumerate(tones)])])
    r = EC.skin_tone_check(sets)
    assert r["sets"] == 1 and r["pairs_obeyed"] == 1.0 and r["fully_ordered"] == 1.0 and r["missing_skin"] == 0
    lum = [r["mean_luminance"][t] for t in EC.SKIN_TONES]
    assert lum == sorted(lum, reverse=True)
    expected = [0.299 * c[0] / 255 + 0.587 * c[1] / 255 + 0.114 * c[2] / 255 for c in tones]
    assert lum == pytest.approx(expected, abs=0.01)  # only skin pixels were averaged

    reversed_sets = sets.flip(1)
    assert EC.skin_tone_check(reversed_sets)["pairs_obeyed"] == 0.0
    no_skin = sets.clone()
    no_skin[0, 2] = to_tensor(shape_image("blue", "circle"))
    r = EC.skin_tone_check(no_skin)
    assert r["missing_skin"] == 1 and r["pairs_obeyed"] == pytest.approx(6 / 10)


def test_skin_tone_sets_group_five_tones():
    tones = EC.SKIN_TONES
    caps = [f"thumbs up: {t} skin tone" for t in tones] + ["thumbs up", "waving hand: dark skin tone",
                                                          "handshake: light skin tone, dark skin tone"]
    assert EC.skin_tone_sets(caps) == [[f"thumbs up: {t} skin tone" for t in tones]]
    assert EC.skin_tone_sets(caps, among=["waving hand: dark skin tone"]) == []
    assert EC.skin_tone_of("person: medium-dark skin tone, white hair") == "medium-dark"


# --------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_of_identical_sets_is_zero():
    f = np.random.default_rng(0).normal(size=(200, 16))
    assert abs(E.frechet_distance(f, f)) < 1e-8


def test_frechet_distance_matches_closed_form_with_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    a1, a2 = np.array([[1.0, 0.3], [0.0, 0.5]]), np.array([[0.4, 0.0], [0.6, 1.5]])
    f1 = rng.normal(size=(4000, 2)) @ a1.T + mu1
    f2 = rng.normal(size=(4000, 2)) @ a2.T + mu2

    def closed_form(m1, s1, m2, s2):
        covmean = linalg.sqrtm(s1 @ s2).real
        return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))

    got = E.frechet_distance(f1, f2)
    sample = closed_form(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert got == pytest.approx(sample, rel=1e-9, abs=1e-9)  # same statistics, independent sqrtm
    population = closed_form(mu1, a1 @ a1.T, mu2, a2 @ a2.T)
    assert got == pytest.approx(population, rel=0.05)  # and the estimate is near the true distance


# --------------------------------------------------------------------------- evaluator


def emoji_subset(split: str, per_group: int, groups: tuple[str, ...], size: int = 32) -> E.ImageSet:
    """The first ``per_group`` emoji of each group in ``split`` (read straight from the Parquet file)."""
    import pyarrow.parquet as pq

    from latentdiff.data.datasets import emoji_parquet_path

    table = pq.read_table(emoji_parquet_path(), filters=[("split", "==", split)]).to_pylist()
    rows = [r for g in groups for r in [r for r in table if r["group"] == g][:per_group]]
    images = torch.stack([to_tensor(Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB").resize((size, size)))
                          for r in rows])
    labels = torch.tensor([groups.index(r["group"]) for r in rows])
    return E.ImageSet(images, [r["text"] for r in rows], {"group": labels}, {"group": list(groups)})


def test_evaluator_learns_groups_above_chance(tmp_path):
    torch.set_num_threads(1)
    groups = ("Flags", "Smileys & Emotion", "Food & Drink")
    train_set = emoji_subset("train", 40, groups)
    test_set = emoji_subset("test", 12, groups)
    from latentdiff.train.evaluator import train_evaluator

    net = train_evaluator(train_set, epochs=15, batch_size=30, width=16, resolution=16, progress=False)
    preds, feats = E.evaluator_outputs(net, test_set.images)
    acc = E.accuracy(preds, test_set.labels)["group"]
    chance = max(torch.bincount(test_set.labels["group"]).tolist()) / len(test_set)  # majority class
    assert acc > chance + 0.2, (acc, chance)
    assert feats.shape == (len(test_set), net.feature_dim)

    E.save_evaluator(net, tmp_path / "ev", {"label_names": train_set.label_names})
    loaded, meta = E.load_evaluator(tmp_path / "ev")
    assert meta["label_names"] == train_set.label_names
    torch.testing.assert_close(E.evaluator_outputs(loaded, test_set.images)[1], feats)


def test_align_labels_renumbers_by_name():
    s = E.ImageSet(torch.zeros(3, 3, 4, 4), ["a", "b", "c"], {"g": torch.tensor([0, 1, 1])}, {"g": ["x", "z"]})
    aligned = E.align_labels(s, {"g": ["w", "x", "y"]})
    assert aligned.labels["g"].tolist() == [1, -1, -1]
    preds = {"g": torch.tensor([1, 0, 2])}
    assert E.accuracy(preds, aligned.labels) == {"g": 1.0}


# --------------------------------------------------------------------------- the CLI


def test_eval_help(capsys):
    from latentdiff.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--train-evaluator" in text and "--limit" in text and "examples:" in text


def test_eval_end_to_end_on_tiny_pipeline(tmp_path, tiny_pipeline_dir):
    torch.set_num_threads(1)
    write_folder_dataset(tmp_path / "data")
    out, grid = tmp_path / "results.json", tmp_path / "grid.png"
    base = ["--model", str(tiny_pipeline_dir), "--dataset", str(tmp_path / "data"), "--label-columns", "group",
            "--resolution", "32", "--evaluator", str(tmp_path / "ev"), "--evaluator-epochs", "1",
            "--evaluator-resolution", "16", "--evaluator-width", "8", "--no-progress"]
    assert eval_cli.main(base + ["--limit", "6", "--colour-limit", "3", "--sampler-limit", "2", "--samplers", "ddim,dpmpp_2m",
                          "--sampler-steps", "2,4", "--sampler-spacings", "trailing,logsnr", "--reference-steps", "8", "--guidance-scales", "1,3", "--steps", "2",
                          "--batch-size", "8", "--out", str(out), "--grid", str(grid),
                          "--grid-prompts", "red circle|blue square"]) == 0
    r = json.loads(out.read_text())
    assert set(r) >= {"real", "generated", "colour", "skin", "samplers", "guidance", "grid"}
    assert r["generated"]["n"] == 6 and r["colour"]["n"] == 3
    assert 0 <= r["generated"]["vae_accuracy_same_rows"]["group"] <= 1 and np.isfinite(r["generated"]["fd_vae_real"])
    assert "real through the model's VAE" in eval_cli.markdown_report(r)
    assert r["colour"]["reference"]["rate"] == 1.0  # the checker reads the real coloured shapes right
    assert [(row["sampler"], row["spacing"], row["steps"]) for row in r["samplers"]["rows"]] == \
        [(s, sp, n) for s in ("ddim", "dpmpp_2m") for sp in ("trailing", "logsnr") for n in (2, 4)]
    assert all(np.isfinite(row["latent_rmse"]) for row in r["samplers"]["rows"])
    assert [row["guidance_scale"] for row in r["guidance"]["rows"]] == [1.0, 3.0]
    assert Image.open(grid).size[0] > 0
    # the evaluator was cached: a second run loads it instead of training
    meta = tmp_path / "ev" / E.EVALUATOR_META
    stamp = meta.stat().st_mtime_ns
    assert eval_cli.main(base + ["--sections", "real", "--out", str(out)]) == 0
    assert meta.stat().st_mtime_ns == stamp
    assert set(json.loads(out.read_text())) >= {"real", "evaluator"}


def test_eval_test_rows_stride_and_limit():
    """--stride N takes every Nth test row (emoji:all's rows are sorted by style, so --limit alone would
    keep one style), then --limit the first of those; a stride below 1 is a one-line error."""
    from latentdiff.eval_cli import build_parser, check_eval_inputs, select_test_rows

    assert list(select_test_rows(10)) == list(range(10))
    assert list(select_test_rows(10, 4)) == [0, 4, 8]
    assert list(select_test_rows(10, 3, 2)) == [0, 3] and list(select_test_rows(10, 1, 4)) == [0, 1, 2, 3]
    args = build_parser().parse_args(["--stride", "0", "--sections", "real"])
    with pytest.raises(ValueError, match="--stride 0: give 1 or more"):
        check_eval_inputs(args, ["real"])
