"""The diversity section (latentdiff.diversity): the pairwise statistic against a plain pair loop, the
word-list rule on hand-made captions and on the emoji, and the report on stand-in models whose seed
does nothing (diversity 0) or draws a random matching real image (diversity ~ real)."""

from __future__ import annotations

import itertools

import pytest
import torch
from stand_ins import ImagePipe

from latentdiff.diversity import (
    diversity_markdown,
    diversity_report,
    diversity_words,
    has_word,
    pairwise_mean_difference,
)


def test_pairwise_mean_difference_is_the_mean_over_pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 4, 4, generator=g, dtype=torch.float64)
    pairs = list(itertools.combinations(range(5), 2))
    pixel = sum(float((x[i] - x[j]).abs().mean()) for i, j in pairs) / len(pairs)
    assert pairwise_mean_difference(x) == pytest.approx(pixel, rel=1e-9)
    f = torch.randn(6, 7, generator=g, dtype=torch.float64)
    feature = sum(float((f[i] - f[j]).norm()) for i, j in itertools.combinations(range(6), 2)) / 15
    assert pairwise_mean_difference(f, "feature", chunk=4) == pytest.approx(feature, rel=1e-9)
    assert pairwise_mean_difference(x[:1].expand(4, -1, -1, -1)) == 0
    assert pairwise_mean_difference(torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_mean_difference(x[:1])


def test_diversity_words_rule():
    captions = ["grinning face", "cat face", "face with tears", "cat", "cat with hat", "cat: tail", "red heart",
                "dog: light skin tone", "dog: dark skin tone", "dog: medium skin tone", "with love", "dog"]
    # face heads 3 captions, cat 4 (contained in 4), dog 1 after skin tones are merged, "with" never heads 3
    assert diversity_words(captions, 5, normalise=lambda c: c.split(":")[0]) == ["cat", "face"]
    assert diversity_words(captions, 1, normalise=lambda c: c.split(":")[0]) == ["cat"]
    assert "dog" in diversity_words(captions, 5)  # without merging, the three tone variants count
    assert diversity_words(captions, 5, stop=["cat"], normalise=lambda c: c.split(":")[0]) == ["face"]


def test_emoji_words_are_generic_nouns():
    from latentdiff.data import load_emoji
    from latentdiff.emoji_eval import DIVERSITY_STOP, emoji_diversity_words

    captions = load_emoji("all")["text"]
    words = emoji_diversity_words(captions, 20)
    assert len(words) == 20 and {"flag", "face", "person", "heart", "cat"} <= set(words)
    assert not set(words) & set(DIVERSITY_STOP)
    assert all(sum(has_word(c, w) for c in captions) >= 3 for w in words)


@pytest.fixture(scope="module")
def real():
    from latentdiff.evaluation import load_image_set

    return load_image_set("emoji", "test", 32)


def test_report_zero_for_a_seed_blind_model_about_one_for_a_real_sampler(real):
    words = ["face", "flag"]
    rows = {w: [i for i, c in enumerate(real.captions) if has_word(c, w)] for w in words}
    proj = torch.randn(3 * 32 * 32, 16, generator=torch.Generator().manual_seed(1))
    features = lambda x: x.flatten(1) @ proj  # noqa: E731

    blind = ImagePipe(lambda p, s: real.images[rows[p][0]])
    d = diversity_report(blind, words, real.images, real.captions, features=features, seeds=4, progress=False)
    assert d["pixel"]["generated"] == 0 and d["feature"]["generated"] == 0
    assert d["pixel"]["real"] > 0.05 and all(r["n_real"] == len(rows[r["word"]]) for r in d["rows"])
    assert "| **mean** | | 0.000 |" in "\n".join(diversity_markdown(d))

    sampler = ImagePipe(lambda p, s: real.images[rows[p][(7 * s + 3) % len(rows[p])]])
    d = diversity_report(sampler, words, real.images, real.captions, features=features, seeds=8, progress=False)
    assert 0.6 < d["pixel"]["ratio"] < 1.4 and 0.6 < d["feature"]["ratio"] < 1.4
