"""`data.style_repeats` (train.common.load_image_data): the real training rows of the named emoji styles,
both their plain and their style-suffixed captions, this many extra times, after every other row; the
held-out split and the other styles untouched; bad settings one-line errors."""

from __future__ import annotations

import pytest
import torch

from latentdiff.config import ConfigError, from_dict
from latentdiff.train.common import DataConfig, load_image_data


@pytest.fixture(scope="module")
def all_train():
    return load_image_data(DataConfig(source="emoji:all"), "train", 64)


def test_only_the_named_style_is_repeated_with_both_captions(all_train):
    rep = load_image_data(DataConfig(source="emoji:all", style_repeats={"twemoji": 2, "noto": 0}), "train", 64)
    n = len(all_train)
    assert rep.captions[:n] == all_train.captions and torch.equal(rep.images[:n], all_train.images)
    tw_suffixed = [i for i, c in enumerate(all_train.captions) if c.endswith(", twemoji style")]
    assert len(tw_suffixed) > 2000
    # the plain twemoji rows are the suffixed ones' images with the suffix dropped (every image twice)
    tw_plain = [i for i in range(n // 2) if all_train.captions[i + n // 2].endswith(", twemoji style")]
    assert len(tw_plain) == len(tw_suffixed)
    extra = rep.captions[n:]
    assert len(extra) == 2 * (len(tw_plain) + len(tw_suffixed))
    assert sorted(extra) == sorted([all_train.captions[i] for i in tw_plain + tw_suffixed] * 2)
    assert not any(c.endswith((", noto style", ", fluent style", ", openmoji style")) for c in extra)
    first = tw_suffixed[0]
    at = n + extra.index(all_train.captions[first])
    assert torch.equal(rep.images[at], all_train.images[first])


def test_held_out_split_is_untouched():
    d = DataConfig(source="emoji", style_repeats={"noto": 3})
    plain = load_image_data(DataConfig(source="emoji"), "test", 64)
    test = load_image_data(d, "test", 64)
    assert test.captions == plain.captions and torch.equal(test.images, plain.images)


@pytest.mark.parametrize("data, match", [
    ({"source": "emoji:all", "style_repeats": {"twemoij": 1}}, "data.style_repeats must map emoji styles"),
    ({"source": "emoji:all", "style_repeats": {"twemoji": -1}}, "data.style_repeats must map emoji styles"),
    ({"source": "runs/my_images", "style_repeats": {"noto": 1}}, "on an in-memory embedded emoji source"),
    ({"source": "emoji:all", "style_repeats": {"noto": 1}, "streaming": True}, "on an in-memory embedded"),
    ({"source": "emoji:all", "style_repeats": {"noto": "two"}}, "expected an integer"),
])
def test_bad_style_repeats_are_one_line_errors(data, match):
    with pytest.raises((ValueError, ConfigError), match=match) as e:
        from_dict(DataConfig, data)
    assert "\n" not in str(e.value)
