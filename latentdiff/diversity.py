"""Seed diversity of a text-to-image model, next to the spread of the real images a prompt describes.

For a one-word prompt ("face", "flag", "cat") the model is asked for ``seeds`` images from different
initial noise; their **mean pairwise difference** is compared with the same statistic over the real
images whose caption contains the word. Two distances, both over all unordered pairs i < j:

* pixel: mean |x_i − x_j| over pixels and channels, images in [0, 1] (0 = identical, 1 = black vs white);
* feature: ‖f_i − f_j‖₂ in an evaluator's penultimate features (the space the Fréchet distance uses).

A model whose seed has no effect scores ~0; one that samples the whole set of matching real images
scores ~1× real. Nothing here knows about emoji: the word list comes from any captions.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Sequence

import torch

from latentdiff.evaluation import generate

WORD_RE = re.compile(r"[a-z]+")


def caption_words(caption: str) -> list[str]:
    """Lower-case runs of letters: "flag: Côte d’Ivoire" -> ["flag", "c", "te", "d", "ivoire"]."""
    return WORD_RE.findall(caption.lower())


def has_word(caption: str, word: str) -> bool:
    return word in caption_words(caption)


def pairwise_mean_difference(x: torch.Tensor, metric: str = "pixel", chunk: int = 256) -> float:
    """Mean over the n(n−1)/2 pairs i < j of the distance between rows of ``x``.

    ``metric="pixel"``: ``x`` (N, …) in [0, 1], distance = mean absolute difference per element.
    ``metric="feature"``: ``x`` (N, D), distance = Euclidean norm. Needs N ≥ 2."""
    n = len(x)
    if n < 2:
        raise ValueError(f"a pairwise difference needs at least 2 samples, got {n}")
    flat = x.reshape(n, -1).double()
    p, scale = {"pixel": (1.0, flat.shape[1]), "feature": (2.0, 1)}[metric]
    total = 0.0
    for i in range(0, n, chunk):  # (chunk, N) distance blocks: 258 flags × 12,288 pixels fits easily
        d = torch.cdist(flat[i:i + chunk], flat, p=p)
        total += float(d.sum())
    return total / 2 / scale / (n * (n - 1) / 2)  # each pair counted twice, the diagonal is 0


def diversity_words(captions: Sequence[str], n: int, *, stop: Sequence[str] = (), min_heads: int = 3,
                    normalise: Callable[[str], str] | None = None) -> list[str]:
    """Generic one-word prompts from the captions, deterministically.

    A word qualifies when it is the first or the last word (before any ':') of at least ``min_heads``
    distinct captions — English noun phrases start or end with their head noun ("grinning face",
    "cat face", "flag: France", "woman running") — and is not in ``stop``. Qualifying words are ranked
    by the number of distinct captions containing them (ties alphabetically); the first ``n`` are
    returned. ``normalise`` maps variants to one caption first (e.g. strips skin-tone modifiers, so
    five renderings of one emoji count once)."""
    distinct = sorted({normalise(c) if normalise else c for c in captions})
    stop_set = set(stop)
    heads, contains = Counter(), Counter()
    for c in distinct:
        head_part = caption_words(c.split(":", 1)[0])
        if head_part:
            heads.update({head_part[0], head_part[-1]})
        contains.update(set(caption_words(c)))
    ranked = sorted((w for w, k in heads.items() if k >= min_heads and w not in stop_set and len(w) > 1),
                    key=lambda w: (-contains[w], w))
    return ranked[:n]


def diversity_report(pipe, words: Sequence[str], real_images: torch.Tensor, real_captions: Sequence[str], *,
                     features: Callable[[torch.Tensor], torch.Tensor] | None = None, seeds: int = 8, seed: int = 0,
                     max_real: int = 512, batch_size: int = 32, progress: bool = True, **gen) -> dict:
    """Per word: the mean pairwise pixel (and, with ``features``, feature) difference between
    ``seeds`` images generated from the word alone (seeds ``seed``, ``seed + 1``, …), next to the same
    statistic over the real images whose caption contains the word (the first ``max_real`` of them);
    ratio = generated / real. The summary ratio is mean generated / mean real over the words that
    have ≥ 2 real images. ``features`` maps images (N, 3, H, W) to (N, D)."""

    if seeds < 2:
        raise ValueError(f"diversity needs at least 2 seeds per prompt, got {seeds}")
    prompts = [w for w in words for _ in range(seeds)]
    images, _ = generate(pipe, prompts, seed=seed, batch_size=batch_size, progress=progress, desc="diversity", **gen)
    rows = []
    for k, word in enumerate(words):
        gen_k = images[k * seeds:(k + 1) * seeds]
        idx = [i for i, c in enumerate(real_captions) if has_word(c, word)][:max_real]
        row = {"word": word, "n_real": len(idx), "pixel": pairwise_mean_difference(gen_k)}
        row["real_pixel"] = pairwise_mean_difference(real_images[idx]) if len(idx) >= 2 else None
        if features is not None:
            row["feature"] = pairwise_mean_difference(features(gen_k), "feature")
            row["real_feature"] = pairwise_mean_difference(features(real_images[idx]), "feature") \
                if len(idx) >= 2 else None
        for m in ("pixel", "feature"):
            if row.get(f"real_{m}"):
                row[f"{m}_ratio"] = row[m] / row[f"real_{m}"]
        rows.append(row)
    out = {"seeds": seeds, "n_words": len(words), "rows": rows, "images": images}
    for m in ("pixel", "feature"):
        have = [r for r in rows if r.get(f"real_{m}")]
        if have:
            g, r = (sum(x[key] for x in have) / len(have) for key in (m, f"real_{m}"))
            out[m] = {"generated": g, "real": r, "ratio": g / r}
    return out


def diversity_markdown(d: dict) -> list[str]:
    """Markdown rows for :func:`diversity_report`'s result."""
    def num(x, digits=3):
        return "–" if x is None else f"{x:.{digits}f}"

    out = [f"### Seed diversity ({d['n_words']} one-word prompts × {d['seeds']} seeds; mean pairwise difference)", "",
           "| word | real images | pixel, generated | pixel, real | ratio | feature, generated | feature, real "
           "| ratio |",
           "|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| {r['word']} | {r['n_real']} | {num(r['pixel'])} | {num(r['real_pixel'])} | "
                   f"{num(r.get('pixel_ratio'), 2)} | {num(r.get('feature'))} | {num(r.get('real_feature'))} | "
                   f"{num(r.get('feature_ratio'), 2)} |")
    p, f = d.get("pixel", {}), d.get("feature", {})
    out.append(f"| **mean** | | {num(p.get('generated'))} | {num(p.get('real'))} | **{num(p.get('ratio'), 2)}** | "
               f"{num(f.get('generated'))} | {num(f.get('real'))} | **{num(f.get('ratio'), 2)}** |")
    return out + [""]


__all__ = ["caption_words", "has_word", "pairwise_mean_difference", "diversity_words", "diversity_report",
           "diversity_markdown"]
