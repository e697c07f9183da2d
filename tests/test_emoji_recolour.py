"""Recolouring augmentation (latentdiff.emoji_recolour, `data.recolour`): extra rows "<colour> <object>"
whose pixels the colour checker names as that colour, never for held-out objects or colour-only nouns,
only in the training split, deterministic."""

from __future__ import annotations

import pytest
import torch

from latentdiff.config import ConfigError, from_dict
from latentdiff.emoji_checks import dominant_colour
from latentdiff.emoji_recolour import (
    RECOLOUR_COLOURS,
    RECOLOUR_HUE_VALUES,
    RECOLOUR_HUES,
    RECOLOUR_TONES,
    held_out,
    own_colours,
    paint,
    real_colour_object_rows,
    recolour,
    recolour_rows,
    split_object_caption,
)
from latentdiff.train.common import DataConfig, load_image_data


@pytest.fixture(scope="module")
def noto_train():
    return load_image_data(DataConfig(source="emoji"), "train", 64)


@pytest.fixture(scope="module")
def noto_train_recolour1():
    return load_image_data(DataConfig(source="emoji", recolour=1), "train", 64)


def test_recolour_keeps_white_grey_and_black_and_paints_the_rest():
    img = torch.zeros(3, 4, 4)
    img[:, 0] = 1.0                                        # white row
    img[:, 1] = 0.5                                        # grey row
    img[0, 2], img[1, 2], img[2, 2] = 0.9, 0.1, 0.1        # red row
    img[0, 3], img[1, 3], img[2, 3] = 0.2, 0.6, 0.2        # green row
    out = recolour(img, RECOLOUR_HUES["blue"])
    assert torch.equal(out[:, :2], img[:, :2])
    for row in (2, 3):
        r, g, b = out[:, row, 0].tolist()
        assert b > g > r and max(r, g, b) == pytest.approx(img[:, row, 0].max().item(), abs=1e-6)  # value kept


def test_split_object_caption():
    assert split_object_caption("apple, twemoji style") == ("apple", ", twemoji style")
    assert split_object_caption("apple") == ("apple", "")
    for c in ("red apple", "heart", "circle, noto style", "blue", "flag: France", "cat face"):
        assert split_object_caption(c) is None, c


def test_rows_are_new_colours_of_recolourable_objects_judged_as_asked(noto_train):
    images, captions = noto_train.images, noto_train.captions
    extra, extra_captions = recolour_rows(images, captions, copies=2)
    assert len(extra) == len(extra_captions) > 400
    by_caption = {c: i for i, c in enumerate(captions)}
    counts: dict[str, int] = {}
    for k, caption in enumerate(extra_captions):
        colour, obj = caption.split(" ", 1)
        assert colour in RECOLOUR_HUES and split_object_caption(obj) is not None and not held_out(obj)
        src = images[by_caption[obj]].float() / 255
        assert colour not in own_colours(src), caption        # a colour the object does not have
        assert dominant_colour(extra[k].float() / 255) == colour, caption
        assert not torch.equal(extra[k], images[by_caption[obj]])
        counts[obj] = counts.get(obj, 0) + 1
    assert max(counts.values()) <= 2
    objects = {split_object_caption(c)[0] for c in captions if split_object_caption(c)}
    assert {o for o in objects if held_out(o)} and not any(held_out(o) for o in counts)
    again = recolour_rows(images, captions, copies=2)
    assert torch.equal(again[0], extra) and again[1] == extra_captions


def test_data_recolour_adds_rows_to_training_only(noto_train, noto_train_recolour1):
    d = DataConfig(source="emoji", recolour=1)
    train = noto_train_recolour1
    assert train.captions[:len(noto_train)] == noto_train.captions and len(train) > len(noto_train) + 200
    assert torch.equal(train.images[:len(noto_train)], noto_train.images)
    test_plain = load_image_data(DataConfig(source="emoji"), "test", 64)
    test = load_image_data(d, "test", 64)
    assert test.captions == test_plain.captions and torch.equal(test.images, test_plain.images)


def test_real_colour_object_rows_are_repeated_after_the_recoloured_ones(noto_train, noto_train_recolour1):
    captions = ["green apple", "green apple, twemoji style", "apple", "man: red hair", "light blue heart",
                "red triangle pointed up", "blue"]
    assert real_colour_object_rows(captions) == [0, 1]
    base = noto_train_recolour1
    rep = load_image_data(DataConfig(source="emoji", recolour=1, recolour_real_repeats=3), "train", 64)
    real = real_colour_object_rows(noto_train.captions)
    assert len(real) > 20 and {noto_train.captions[i] for i in real} >= {"red apple", "blue heart", "orange book"}
    assert rep.captions[:len(base)] == base.captions and torch.equal(rep.images[:len(base)], base.images)
    assert rep.captions[len(base):] == [noto_train.captions[i] for i in real] * 3
    assert torch.equal(rep.images[len(base):], noto_train.images[torch.tensor(real * 3)])


def test_tones_paint_the_chromatic_pixels_into_the_real_bands_keeping_lightness_order():
    img = torch.zeros(3, 3, 4)
    img[:, 0] = 1.0                                        # white row: kept
    img[:, 1] = torch.tensor([0.02, 0.3, 0.5, 0.7])        # greys: kept
    img[0, 2], img[1, 2], img[2, 2] = torch.tensor([0.4, 0.6, 0.8, 1.0]), 0.1, 0.1  # reds, darker to lighter
    for tone in (*RECOLOUR_TONES, *RECOLOUR_HUE_VALUES):
        out = paint(img, tone)
        assert torch.equal(out[:, :2], img[:, :2]), tone
        assert all(dominant_colour(out[:, 2:, j:j + 1].expand(3, 4, 4).contiguous()) == tone for j in range(4)), tone
        value = out[:, 2].amax(0)
        assert torch.all(value[1:] > value[:-1]), tone  # shading kept: lighter stays lighter
    assert torch.equal(paint(img, "blue"), recolour(img, RECOLOUR_HUES["blue"]))
    with pytest.raises(ValueError, match="'pink' cannot be painted: use one of red, orange"):
        paint(img, "pink")


def test_red_orange_and_yellow_copies_are_kept_as_often_as_the_other_hues(noto_train):
    """Painted with the value kept, dark red and orange read brown (and dark yellow olive/black): the
    value bands make those copies pass the colour check as often as blue, green and purple do."""
    dark = torch.zeros(3, 4, 4)
    dark[0], dark[1], dark[2] = 0.55, 0.2, 0.1                 # a dark, saturated brown-red object
    assert dominant_colour(recolour(dark, RECOLOUR_HUES["red"])) == "brown"
    assert dominant_colour(paint(dark, "red")) == "red" and dominant_colour(paint(dark, "orange")) == "orange"
    tried, kept = dict.fromkeys(RECOLOUR_HUES, 0), dict.fromkeys(RECOLOUR_HUES, 0)
    for image, caption in zip(noto_train.images, noto_train.captions):
        if split_object_caption(caption) is None:
            continue
        image = image.float() / 255
        for colour in set(RECOLOUR_HUES) - own_colours(image):
            tried[colour] += 1
            kept[colour] += dominant_colour(paint(image, colour)) == colour
    rate = {c: kept[c] / tried[c] for c in RECOLOUR_HUES}
    assert min(tried.values()) > 250 and min(rate[c] for c in RECOLOUR_HUE_VALUES) > 0.9 * min(
        rate[c] for c in ("green", "blue", "purple")), rate


def test_recolour_colours_adds_the_tones_and_keeps_the_hue_rows(noto_train, monkeypatch):
    images, captions = noto_train.images[:800], noto_train.captions[:800]
    hues = recolour_rows(images, captions, copies=6)
    every = recolour_rows(images, captions, copies=9, colours=RECOLOUR_COLOURS)
    assert set(hues[1]) < set(every[1])
    tones = [k for k, c in enumerate(every[1]) if c.split(" ", 1)[0] in RECOLOUR_TONES]
    assert {every[1][k].split(" ", 1)[0] for k in tones} == set(RECOLOUR_TONES) and len(tones) > 30
    for k in tones:
        colour, obj = every[1][k].split(" ", 1)
        assert dominant_colour(every[0][k].float() / 255) == colour and not held_out(obj)
        assert colour not in own_colours(images[captions.index(obj)].float() / 255)
    with pytest.raises(ValueError, match="recolour colours"):
        recolour_rows(images, captions, copies=1, colours=("teal",))
    import latentdiff.emoji_recolour as R  # data.recolour_colours reaches the augmentation

    seen = []
    monkeypatch.setattr(R, "recolour_rows", lambda *a, **k: seen.append(k) or (images[:0], []))
    load_image_data(from_dict(DataConfig, {"source": "emoji", "recolour": 9, "recolour_colours": ["black", "red"]}),
                    "train", 64)
    load_image_data(DataConfig(source="emoji", recolour=2), "train", 64)
    assert seen == [{"colours": ("black", "red")}, {}]


@pytest.mark.parametrize("data, match", [
    ({"source": "emoji", "recolour": 2, "recolour_colours": ["pink"]}, "data.recolour_colours"),
    ({"source": "emoji", "recolour_colours": ["black"]}, "with data.recolour > 0"),
    ({"source": "emoji", "recolour": 2, "recolour_colours": ["black", "black"]}, "at most once"),
    ({"source": "emoji", "recolour_real_repeats": 2}, "needs data.recolour > 0"),
    ({"source": "emoji", "recolour": 1, "recolour_real_repeats": -1}, "data.recolour_real_repeats must be >= 0"),
    ({"source": "runs/my_images", "recolour": 2}, "data.recolour works on the in-memory embedded emoji sources"),
    ({"source": "emoji", "recolour": 2, "streaming": True}, "data.recolour works on the in-memory"),
    ({"source": "emoji", "recolour": -1}, "data.recolour must be >= 0"),
])
def test_bad_recolour_settings_are_one_line_errors(data, match):
    with pytest.raises((ValueError, ConfigError), match=match):
        from_dict(DataConfig, data)
