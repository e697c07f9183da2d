"""The composition section (latentdiff.emoji_eval): the HSV inverse and hue rotation, the prompt set
(never a colour/object pair of the data), the silhouette judge on recoloured real images, and the
report on stand-in models that draw the object (object right, colour wrong by construction) or fall
back to a heart of the asked colour (colour right, object wrong)."""

from __future__ import annotations

import pytest
import torch
from stand_ins import ImagePipe

from latentdiff import emoji_eval as EE
from latentdiff import eval_cli
from latentdiff.diversity import caption_words
from latentdiff.emoji_checks import COLOUR_NOUNS, COLOUR_WORDS, dominant_colour, rgb_to_hsv
from latentdiff.evaluation import ImageSet, align_labels, load_image_set


@pytest.fixture(scope="module")
def data():
    train = load_image_set("emoji", "train", 64, ["group", "subgroup"])
    test = align_labels(load_image_set("emoji", "test", 64, ["group", "subgroup"]), train.label_names)
    return ImageSet.concat(train, test)


@pytest.fixture(scope="module")
def prompts(data):
    return EE.composition_prompts(data)


def test_hsv_inverse_and_hue_rotation(data):
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(EE.hsv_to_rgb(*rgb_to_hsv(x)), x, atol=1e-9)
    assert torch.allclose(EE.hue_rotate(EE.hue_rotate(EE.hue_rotate(x, 120), 120), 120), x, atol=1e-9)
    heart = data.images[data.captions.index("red heart")]
    assert [dominant_colour(EE.hue_rotate(heart, d)) for d in (0, 120, 240)] == ["red", "green", "blue"]


def test_composition_set_never_occurs_in_the_data(data, prompts):
    captions = set(data.captions)
    words = [set(caption_words(c)) for c in data.captions]
    objects = EE.object_rows(data)
    assert len(prompts) > 1000 and {p["colour"] for p in prompts} == set(COLOUR_WORDS)
    for p in prompts:
        assert p["prompt"] == f"{p['colour']} {p['object']}" and p["prompt"] not in captions
        assert not any(p["colour"] in w and p["object"] in w for w in words), p
        assert p["object"] not in (*COLOUR_NOUNS, *EE.SHAPE_NOUNS) and p["object"] in objects
        for i in objects[p["object"]]:  # the colour is (nearly) absent from every real image of the object
            assert EE.colour_shares(data.images[i]).get(p["colour"], 0) < EE.OBJECT_COLOUR_SHARE
    groups = {data.label_names["group"][int(data.labels["group"][i])] for r in objects.values() for i in r}
    assert groups <= set(EE.OBJECT_GROUPS)
    assert EE.composition_prompts(data, limit=10) == prompts[:10]  # deterministic; the limit takes a prefix


def test_object_judge_sees_recoloured_real_objects(data, monkeypatch):
    gallery = EE.object_gallery(data)
    judged, judge = [], EE.object_judge
    monkeypatch.setattr(EE, "object_judge", lambda x, g, **k: judged.append(x) or judge(x, g, **k))
    v = EE.validate_object_judge(data, gallery, colours=("blue", "white"))
    assert set(v["per_colour"]) == {"blue", "white"} and min(v["per_colour"].values()) > 0.6
    assert v["accuracy"] > 50 * v["chance"]
    for colour, images in zip(("blue", "white"), judged):  # judged as painted in the colour it names
        assert sum(dominant_colour(x) == colour for x in images) > 0.5 * len(images), colour


def test_report_separates_colour_from_object(data, prompts):
    sample = prompts[:24]
    index = {c: i for i, c in enumerate(data.captions)}
    draws_object = ImagePipe(lambda p, s: data.images[index[p.split(" ", 1)[-1]]])  # "apple" too: the plain name
    r = EE.composition_report(draws_object, data, sample, progress=False, validate=False)
    # the object's own image: judged as that object; its colours never include the asked one (< 10% share)
    assert r["object"] > 0.9 and r["object_top5"] >= r["object"] and r["colour"] == 0 and r["both"] == 0
    assert r["fallback"] == 0
    assert r["plain_object"]["n"] == len({p["object"] for p in sample}) and r["plain_object"]["object"] > 0.9
    assert r["object_given_plain"] > 0.9
    recoloured = ImagePipe(lambda p, s: EE.hue_rotate(data.images[index[p.split(" ", 1)[-1]]], 180))
    assert EE.composition_report(recoloured, data, sample, progress=False, validate=False)["object"] > 0.8
    # draws the plain name right but a coloured heart when a colour is asked: the ceiling is high, the rest 0
    heart = ImagePipe(lambda p, s: data.images[index[f"{p.split(' ', 1)[0]} heart" if " " in p else p]])
    r = EE.composition_report(heart, data, sample, progress=False, validate=False)
    assert r["object"] == 0 and r["fallback"] == 1 and r["colour"] == 1 and r["both"] == 0
    assert r["plain_object"]["object"] > 0.9 and r["object_given_plain"] == 0
    text = "\n".join(EE.composition_markdown(r))
    assert "| 100.0% | 0.0% | **0.0%** | 100.0% | 0.0% |" in text  # colour, object, both, fallback, top 5
    assert "with the colour asked: **0.0%**" in text
    always_heart = ImagePipe(lambda p, s: data.images[index["red heart"]])  # never the object, plain or not
    r = EE.composition_report(always_heart, data, sample, progress=False, validate=False)
    assert r["plain_object"]["object"] == 0 and r["object_given_plain"] is None


def test_composition_template_asks_each_prompt_through_it(data, prompts):
    sample = prompts[:6]
    index = {c: i for i, c in enumerate(data.captions)}
    asked = []

    def draw(p, s):  # the object's image when the template's AND part names it, a red heart otherwise
        asked.append(p)
        obj = p.split(" AND ")[-1].rsplit(" :", 1)[0] if " AND " in p else p
        return data.images[index.get(obj, index["red heart"])]

    r = EE.composition_report(ImagePipe(draw), data, sample, progress=False, validate=False,
                              template="{prompt} :1 AND {object} :0.5")
    wanted = [f"{p['colour']} {p['object']} :1 AND {p['object']} :0.5" for p in sample]
    assert asked[:len(sample)] == wanted  # the colour x object prompts, through the template
    assert asked[len(sample):] == list(dict.fromkeys(p["object"] for p in sample))  # the plain names as they are
    assert r["template"] == "{prompt} :1 AND {object} :0.5" and r["object"] > 0.9
    assert "asked as `{prompt} :1 AND {object} :0.5`" in "\n".join(EE.composition_markdown(r))
    asked.clear()  # the default asks the prompt unchanged: a red heart for every one
    assert EE.composition_report(ImagePipe(draw), data, sample, progress=False, validate=False)["object"] == 0
    assert asked[:len(sample)] == [p["prompt"] for p in sample]


@pytest.mark.parametrize("template, match", [("{shape} {object}", "KeyError 'shape'"),
                                             ("{prompt", "ValueError"), ("{0}", "IndexError"),
                                             (" :1 AND  :2", "asks for nothing")])
def test_eval_cli_bad_composition_template_is_one_clear_error(tmp_path, tiny_pipeline_dir, template, match):
    out = tmp_path / "r.json"
    with pytest.raises(ValueError, match=f"--composition-prompt.*{match}"):
        eval_cli.main(["--model", str(tiny_pipeline_dir), "--dataset", "emoji", "--sections", "composition",
                       "--composition-prompt", template, "--no-progress", "--out", str(out)])
    assert not out.exists()


def test_image_sets_concatenate_only_when_numbered_alike():
    a = ImageSet(torch.zeros(2, 3, 4, 4), ["x", "y"], {"group": torch.tensor([0, 1])}, {"group": ["A", "B"]})
    b = ImageSet(torch.ones(1, 3, 4, 4), ["z"], {"group": torch.tensor([0])}, {"group": ["B"]})
    with pytest.raises(ValueError, match="align_labels them first"):
        ImageSet.concat(a, b)
    both = ImageSet.concat(a, align_labels(b, a.label_names))
    assert both.captions == ["x", "y", "z"] and both.labels["group"].tolist() == [0, 1, 1]
    assert torch.equal(both.images[2], b.images[0]) and len(both) == 3


def test_no_objects_is_a_clear_error():
    shapes = ImageSet(torch.ones(2, 3, 8, 8), ["red circle", "blue square"])
    with pytest.raises(ValueError, match="no colour × object prompts"):
        EE.composition_prompts(shapes)


def test_eval_cli_composition(tmp_path, tiny_pipeline_dir):
    import json


    torch.set_num_threads(1)
    out = tmp_path / "r.json"
    assert eval_cli.main(["--model", str(tiny_pipeline_dir), "--dataset", "emoji", "--sections", "composition",
                   "--composition-limit", "3", "--steps", "2", "--no-progress", "--out", str(out)]) == 0
    r = json.loads(out.read_text())["composition"]
    assert r["n"] == len(r["rows"]) == 3 and 0 <= r["both"] <= 1 and r["judge_validation"]["n"] > 100
    assert {"prompt", "colour", "object", "seen_colour", "seen_object", "colour_ok", "object_ok"} <= set(r["rows"][0])


def test_report_gives_held_out_and_recoloured_objects_apart(data, prompts):
    """A model that composes only the objects `data.recolour` trained on (and draws a coloured heart
    for the held-out quarter) scores high on one row of `by_recolour` and zero on the other."""
    from latentdiff.emoji_recolour import RECOLOUR_HUES, held_out, recolour

    sample = [p for p in prompts if p["colour"] in RECOLOUR_HUES]
    sample = [p for p in sample if held_out(p["object"])][:12] + [p for p in sample if not held_out(p["object"])][:12]
    index = {c: i for i, c in enumerate(data.captions)}

    def draw(p, s):
        if " " not in p:  # the plain object name
            return data.images[index[p]]
        colour, obj = p.split(" ", 1)
        if held_out(obj):
            return data.images[index[f"{colour} heart"]]
        return recolour(data.images[index[obj]], RECOLOUR_HUES[colour])

    r = EE.composition_report(ImagePipe(draw), data, sample, progress=False, validate=False)["by_recolour"]
    assert r["held_out"]["n"] == r["recoloured_in_training"]["n"] == 12
    assert r["held_out"]["both"] == 0 and r["recoloured_in_training"]["both"] > 0.5


def test_gallery_of_every_style_the_model_draws(data, prompts):
    """A model that draws each object exactly as Twemoji does is judged against a Noto-only gallery as
    drawing the wrong object most of the time; with Twemoji's images in the gallery, as right."""
    names = {"group": data.label_names["group"]}
    tw = ImageSet.concat(*(align_labels(load_image_set("emoji:twemoji", split, 64, ["group"]), names)
                           for split in ("train", "test")))
    noto = ImageSet(data.images, data.captions, {"group": data.labels["group"]}, names)
    index = {c: i for i, c in enumerate(tw.captions)}
    sample = [p for p in prompts if p["object"] in index][:40]
    twemoji = ImagePipe(lambda p, s: tw.images[index[p.split(" ", 1)[-1]]])
    noto_only = EE.composition_report(twemoji, noto, sample, progress=False, validate=False)
    with_style = EE.composition_report(twemoji, ImageSet.concat(noto, tw), sample, progress=False, validate=False)
    assert noto_only["object"] < 0.5 and noto_only["plain_object"]["object"] < 0.5
    assert with_style["object"] > 0.9 and with_style["plain_object"]["object"] > 0.9


def test_eval_cli_composition_gallery(tmp_path, tiny_pipeline_dir):
    import json

    torch.set_num_threads(1)
    out = tmp_path / "r.json"
    base = ["--model", str(tiny_pipeline_dir), "--dataset", "emoji", "--sections", "composition",
            "--composition-limit", "2", "--steps", "2", "--no-progress", "--out", str(out)]
    with pytest.raises(ValueError, match="--composition-gallery emoji:nope: unknown emoji style"):
        eval_cli.main(base + ["--composition-gallery", "emoji:nope"])
    assert not out.exists()
    assert eval_cli.main(base + ["--composition-gallery", "emoji:twemoji"]) == 0
    r = json.loads(out.read_text())["composition"]
    assert r["gallery"] == "emoji:twemoji" and r["n"] == 2 and r["judge_validation"]["n"] > 100
    train, test = (load_image_set("emoji:twemoji", split, 64, ["group"]) for split in ("train", "test"))
    twemoji = ImageSet.concat(train, align_labels(test, train.label_names))
    assert r["judge_validation"]["accuracy"] == EE.validate_object_judge(twemoji, EE.object_gallery(twemoji))["accuracy"]
    assert "object judge (gallery: emoji:twemoji)" in "\n".join(EE.composition_markdown(r))
