"""Emoji-specific checks of ``latentdiff eval``: composition of colour words with objects, emoji styles,
and the emoji's list of generic one-word prompts for the (generic) diversity check.

**Composition.** Prompts "<colour> <object>" that never occur in the data (:func:`composition_prompts`):

* colours: :data:`latentdiff.emoji_checks.COLOUR_WORDS`;
* objects: captions that are one lower-case word, of the groups in :data:`OBJECT_GROUPS` (things with
  a shape of their own: animals, plants, food, objects, places, vehicles, sports gear — not people,
  faces, symbols or flags), except the nouns whose only feature is their colour
  (:data:`~latentdiff.emoji_checks.COLOUR_NOUNS` and :data:`SHAPE_NOUNS`: hearts, circles, squares, …);
* a pair (colour, object) is kept when no caption contains both words and in no real image of the
  object (any style in the data) that colour covers :data:`OBJECT_COLOUR_SHARE` or more of the
  coloured pixels (the Noto banana is 83% "orange" and 11% "yellow": neither "orange banana" nor
  "yellow banana" is a composition);
* order: sorted, then shuffled with a fixed seed (:data:`COMPOSITION_ORDER_SEED`), so the first N
  (``--composition-limit``) are a spread-out sample.

Each image is judged twice: **colour** by the dominant-colour check
(:func:`latentdiff.emoji_checks.dominant_colour`), **object** by silhouette (:func:`object_judge`): the
foreground mask (non-background pixels, 32×32) is matched by soft IoU against a gallery of real
images — every object of the set plus every "<colour> <shape>" image, the fallback the model takes —
and the object is right when the nearest gallery entry is an image of that object. A silhouette
does not depend on hue, so the judge sees a recoloured object as the object; it is validated on real
gallery images painted in each of the nine colours asked (white and black too), shifted, zoomed and
blurred (:func:`validate_object_judge`; 81.6% on every style's objects, white 83.5%, black 78.3%). The
evaluator's subgroup head was tried first and rejected: it gets 32% of these single objects right
on real train images and 7–10% once they are hue-rotated. So was a silhouette that fills white
enclosed by an outline (the background reached from the border only): 78.8% on the same images.

**Style.** A style classifier is an :class:`~latentdiff.evaluation.EvaluatorNet` with a ``style``
head, trained by :func:`latentdiff.train.evaluator.train_evaluator` on the real training images of every
style (:func:`load_style_set`): the main evaluator when its data has a ``style`` column, otherwise a
separate one cached beside it. :func:`style_report` gives its accuracy per style on real test images,
the share of "<caption>, <style> style" generations judged as that style, and the distribution over
styles of plain-caption generations.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from latentdiff.diversity import caption_words
from latentdiff.emoji_checks import (
    COLOUR_NOUNS,
    COLOUR_WORDS,
    SHAPE_NOUNS,
    SKIN_TONE_RE,
    SKIN_TONES,
    background_mask,
    colour_check,
    default_colour_prompts,
    dominant_colour,
    hsv_to_rgb,
    pixel_colour_names,
    rgb_to_hsv,
    skin_tone_check,
    skin_tone_sets,
)
from latentdiff.emoji_recolour import RECOLOUR_COLOURS, held_out, paint
from latentdiff.evaluation import (
    ImageSet,
    _blur,
    accuracy,
    evaluator_outputs,
    generate,
    load_image_set,
    random_affine,
    vae_roundtrip,
)

OBJECT_GROUPS = ("Activities", "Animals & Nature", "Food & Drink", "Objects", "Travel & Places")
COMPOSITION_ORDER_SEED = 0
SILHOUETTE_SIZE = 32
OBJECT_COLOUR_SHARE = 0.1  # a colour this present in an object's real image is not new to it
# Words that head many emoji captions but are not things to draw (directions, numbers, modifiers).
DIVERSITY_STOP = (*COLOUR_WORDS, "light", "medium", "dark", "skin", "tone", "up", "down", "left", "right", "no",
                  "thirty", "open", "smiling", "japanese", "old", "new", "small", "large", "raised", "o")


# --------------------------------------------------------------------------- diversity word list


def strip_skin_tone(caption: str) -> str:
    """"man running: dark skin tone" -> "man running" (the five tones of one emoji count once)."""
    return SKIN_TONE_RE.sub("", caption).replace(", ,", ",").strip(" :,")


def emoji_diversity_words(captions: Sequence[str], n: int = 20) -> list[str]:
    """:func:`latentdiff.diversity.diversity_words` over the skin-tone-free captions, skipping
    :data:`DIVERSITY_STOP`: flag, face, woman, man, person, … for the shipped emoji."""
    from latentdiff.diversity import diversity_words

    return diversity_words(captions, n, stop=DIVERSITY_STOP, normalise=strip_skin_tone)


# --------------------------------------------------------------------------- colour changes


def hue_rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate every pixel's hue by ``degrees`` (saturation and value kept; white stays white)."""
    h, s, v = rgb_to_hsv(images)
    return hsv_to_rgb(h + degrees, s, v).clamp(0, 1)


# --------------------------------------------------------------------------- composition set


def object_rows(data: ImageSet) -> dict[str, list[int]]:
    """Object caption -> its rows in ``data`` (one per style): one-word captions of
    :data:`OBJECT_GROUPS` (all one-word captions when ``data`` has no ``group`` label), minus the
    colour-only nouns."""
    groups = None
    if "group" in data.labels:
        names = data.label_names["group"]
        groups = [names[g] if g >= 0 else None for g in data.labels["group"].tolist()]
    out: dict[str, list[int]] = {}
    for i, c in enumerate(data.captions):
        if not re.fullmatch(r"[a-z]+", c) or c in COLOUR_NOUNS or c in SHAPE_NOUNS:
            continue
        if groups is not None and groups[i] not in OBJECT_GROUPS:
            continue
        out.setdefault(c, []).append(i)
    return dict(sorted(out.items()))


def colour_shares(image: torch.Tensor) -> dict[str, float]:
    """Share of each colour name among the counted (non-background, non-grey) pixels of one image."""
    names = pixel_colour_names(image).flatten()
    counts = torch.bincount(names[names >= 0], minlength=len(COLOUR_WORDS)).double()
    total = float(counts.sum())
    return {c: float(k) / total for c, k in zip(COLOUR_WORDS, counts)} if total else {}


def composition_prompts(data: ImageSet, limit: int | None = None) -> list[dict]:
    """The colour × object prompts the data never shows (rule in the module docstring), each
    {"prompt", "colour", "object"}; ``data`` is every real image (train and test, every style)."""
    words = [set(caption_words(c)) for c in data.captions]
    objects = object_rows(data)
    pairs = []
    for obj, rows in objects.items():
        seen = {c for i in rows for c, share in colour_shares(data.images[i]).items() if share >= OBJECT_COLOUR_SHARE}
        with_obj = [w for w in words if obj in w]
        for colour in COLOUR_WORDS:
            if colour in seen or any(colour in w for w in with_obj):
                continue
            pairs.append({"prompt": f"{colour} {obj}", "colour": colour, "object": obj})
    if not pairs:
        raise ValueError(f"no colour × object prompts: the data has no one-word object captions of the groups "
                         f"{', '.join(OBJECT_GROUPS)} (the composition section is built for the emoji data)")
    order = np.random.default_rng(COMPOSITION_ORDER_SEED).permutation(len(pairs))
    return [pairs[i] for i in order][:limit]


# --------------------------------------------------------------------------- object judge


def silhouette(images: torch.Tensor, size: int = SILHOUETTE_SIZE) -> torch.Tensor:
    """Soft foreground masks (N, size·size) in [0, 1]: non-background pixels, area-averaged."""
    fg = (~background_mask(images)).float()[:, None]  # (N, 1, H, W)
    if fg.shape[-1] != size:
        fg = F.interpolate(fg, size=(size, size), mode="area")
    return fg.flatten(1)


def soft_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D) × (M, D) soft masks -> (N, M) Σ min / Σ max (1 for equal masks, 0 for disjoint ones)."""
    inter = torch.minimum(a[:, None], b[None]).sum(-1)  # max(x, y) = x + y - min(x, y)
    return inter / (a.sum(-1)[:, None] + b.sum(-1)[None] - inter).clamp_min(1e-6)


@torch.no_grad()
def object_gallery(data: ImageSet) -> tuple[torch.Tensor, list[str]]:
    """(silhouettes (M, D), caption per row): every object image and every "<colour> <shape>" image."""
    objects = object_rows(data)
    shapes = [i for i, c in enumerate(data.captions)
              if len(c.split()) == 2 and c.split()[0] in COLOUR_WORDS and c.split()[1] in (*COLOUR_NOUNS, *SHAPE_NOUNS)]
    rows = [i for r in objects.values() for i in r] + shapes
    return silhouette(data.images[rows]), [data.captions[i] for i in rows]


@torch.no_grad()
def object_judge(images: torch.Tensor, gallery: tuple[torch.Tensor, list[str]], chunk: int = 32,
                 k: int = 1) -> list[str] | list[list[str]]:
    """The caption of the gallery entry whose silhouette is nearest (highest soft IoU), per image;
    with ``k`` > 1 the captions of the ``k`` nearest, nearest first."""
    sil, names = gallery
    out = []
    for i in range(0, len(images), chunk):
        best = soft_iou(silhouette(images[i:i + chunk]), sil).topk(k, dim=1).indices
        out += [[names[int(j)] for j in row] if k > 1 else names[int(row[0])] for row in best]
    return out


def validate_object_judge(data: ImageSet, gallery: tuple[torch.Tensor, list[str]],
                          colours: Sequence[str] = RECOLOUR_COLOURS, seed: int = 0) -> dict:
    """The object judge on real object images painted in each of ``colours`` (every colour the
    composition prompts ask, white and black included: :func:`latentdiff.emoji_recolour.paint`),
    shifted by up to ±2 pixels, zoomed by up to ±8% and blurred (what a generated image differs by):
    the share judged as their own object, per colour and on average. ``chance`` = 1 / number of
    gallery captions."""

    objects = object_rows(data)
    rows = [i for r in objects.values() for i in r]
    truth = [data.captions[i] for i in rows]
    g = torch.Generator().manual_seed(seed)
    per_colour = {}
    for colour in colours:
        x = paint(data.images[rows], colour)
        x = _blur(random_affine(x, shift=2 * x.shape[-1] / 64, scale_jitter=0.08, generator=g, fill=1.0), g, 1.0)
        got = object_judge(x, gallery)
        per_colour[colour] = sum(a == b for a, b in zip(got, truth)) / len(truth)
    return {"n": len(rows), "accuracy": float(np.mean(list(per_colour.values()))), "per_colour": per_colour,
            "chance": 1 / len(set(gallery[1]))}


COMPOSITION_FIELDS = ("prompt", "colour", "object")


def composition_text(template: str, p: dict) -> str:
    """The text generated for composition prompt ``p``: ``template`` with ``{prompt}`` ("blue apple"),
    ``{colour}`` and ``{object}`` filled in, e.g. "{prompt} :1 AND {object} :0.5" (a composable prompt
    that adds guidance towards the plain object). ValueError naming the template if it is malformed."""
    try:
        return template.format(**{k: p[k] for k in COMPOSITION_FIELDS})
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"template {template!r}: {type(e).__name__} {e}; use only the fields "
                         + ", ".join("{" + k + "}" for k in COMPOSITION_FIELDS) + " (double {{ }} for literal braces)") from None


def composition_report(pipe, data: ImageSet, prompts: Sequence[dict], *, seed: int = 0, batch_size: int = 32,
                       progress: bool = True, validate: bool = True, template: str = "{prompt}", **gen) -> dict:
    """Generate each composition prompt once (prompt i: seed + i) and judge colour and object; returns
    rates of "colour", "object", "both", "fallback" (judged as a coloured heart/circle/square/…), per
    colour, the object judge's validation on real images, and the rows.

    ``plain_object``: each object also generated from its plain name ("apple", object j: seed + j) and
    judged, so the object rate has its ceiling beside it: how often the model draws the object at all,
    no colour asked. ``object_given_plain`` is the object rate over the prompts whose object the plain
    prompt drew right: what asking for a colour loses, apart from how well the model draws.

    ``data``: the real images the object judge compares against and validates on (the prompts come
    from wherever ``prompts`` was built). A model that draws several styles needs every style's apple
    in it, or an apple drawn in a style it lacks counts as a wrong object.

    ``template``: how each prompt is asked (:func:`composition_text`); the default asks "blue apple" as
    it is. The plain objects are always asked by their plain name."""
    texts = [composition_text(template, p) for p in prompts]
    images, _ = generate(pipe, texts, seed=seed, batch_size=batch_size, progress=progress, desc="composition", **gen)
    gallery = object_gallery(data)
    names = list(dict.fromkeys(p["object"] for p in prompts))
    plain_images, _ = generate(pipe, names, seed=seed, batch_size=batch_size, progress=progress,
                               desc="composition, plain objects", **gen)
    plain_ok = {o: seen == o for o, seen in zip(names, object_judge(plain_images, gallery))}
    top = object_judge(images, gallery, k=5)
    seen = [t[0] for t in top]
    objects = set(object_rows(data))
    rows = []
    for k, p in enumerate(prompts):
        got_colour = dominant_colour(images[k])
        rows.append({**p, "seen_colour": got_colour, "seen_object": seen[k], "colour_ok": got_colour == p["colour"],
                     "object_ok": seen[k] == p["object"], "object_top5": p["object"] in top[k],
                     "fallback": seen[k] not in objects, "held_out": held_out(p["object"])})
    n = len(rows)

    def rate(key, among=rows):
        return sum(r[key] for r in among) / len(among) if among else None

    def subset(among):
        return {"n": len(among), "colour": rate("colour_ok", among), "object": rate("object_ok", among),
                "both": sum(r["colour_ok"] and r["object_ok"] for r in among) / len(among) if among else None}

    out = {"n": n, "template": template, "colour": rate("colour_ok"), "object": rate("object_ok"),
           "both": sum(r["colour_ok"] and r["object_ok"] for r in rows) / n if n else None,
           # data.recolour trains on recoloured copies of three quarters of the objects: the rest is the test
           "by_recolour": {"held_out": subset([r for r in rows if r["held_out"]]),
                           "recoloured_in_training": subset([r for r in rows if not r["held_out"]])},
           "object_top5": rate("object_top5"), "fallback": rate("fallback"),
           "n_objects": len({r["object"] for r in rows}),
           "plain_object": {"n": len(names), "object": sum(plain_ok.values()) / len(names) if names else None},
           "object_given_plain": rate("object_ok", [r for r in rows if plain_ok[r["object"]]]),
           "per_colour": {c: {"n": len(rs), "colour": rate("colour_ok", rs), "object": rate("object_ok", rs)}
                          for c in COLOUR_WORDS if (rs := [r for r in rows if r["colour"] == c])},
           "rows": rows, "images": images}
    if validate:
        out["judge_validation"] = validate_object_judge(data, gallery, seed=seed)
    return out


def composition_markdown(c: dict) -> list[str]:
    v = c.get("judge_validation")
    asked = f", asked as `{c['template']}`" if c.get("template", "{prompt}") != "{prompt}" else ""
    out = [f"### Composition: colour × object prompts the data never shows ({c['n']} prompts, {c['n_objects']} "
           f"objects{asked})", "",
           "| colour right | object right (silhouette) | both | fell back to a coloured shape "
           "| object in the 5 nearest |",
           "|---|---|---|---|---|",
           f"| {_pct(c['colour'])} | {_pct(c['object'])} | **{_pct(c['both'])}** | {_pct(c['fallback'])} | "
           f"{_pct(c.get('object_top5'))} |", ""]
    po = c.get("plain_object")
    if po:
        out += [f"the same {po['n']} objects from their plain name (no colour asked): object right "
                f"**{_pct(po['object'])}**, the ceiling of the object column; of the prompts whose object the "
                f"plain name drew right, object right with the colour asked: **{_pct(c.get('object_given_plain'))}**", ""]
    br = c.get("by_recolour")
    if br:
        out += ["by object, for a model trained with `data.recolour` (latentdiff.emoji_recolour): "
                + "; ".join(f"{name.replace('_', ' ')} ({x['n']} prompts): colour {_pct(x['colour'])}, object "
                            f"{_pct(x['object'])}, both **{_pct(x['both'])}**" for name, x in br.items()), ""]
    if v:
        gallery = f" (gallery: {c['gallery']})" if c.get("gallery") else ""
        out += [f"object judge{gallery} on {v['n']} real object images, painted each colour, shifted, zoomed and "
                f"blurred: **{_pct(v['accuracy'])}** right (chance {_pct(v['chance'])}); per colour "
                + ", ".join(f"{k} {_pct(x)}" for k, x in v["per_colour"].items()), ""]
    out += ["per colour (colour / object right): " + ", ".join(
        f"{k} {_pct(x['colour'])} / {_pct(x['object'])}" for k, x in c["per_colour"].items()), ""]
    return out


# --------------------------------------------------------------------------- styles


def load_style_set(styles: Sequence[str], split: str, resolution: int, dataset: str = "emoji",
                   progress: bool = False) -> ImageSet:
    """The real ``split`` of every emoji style, one :class:`ImageSet` with a ``style`` label (ids in
    the order of ``sorted(styles)``). Reads ``f"{dataset}:{style}"`` per style."""
    names = sorted(dict.fromkeys(styles))
    if len(names) < 2:
        raise ValueError(f"a style classifier needs at least 2 styles, got {names}")
    parts = [load_image_set(f"{dataset}:{s}", split, resolution, progress=progress) for s in names]
    labels = torch.cat([torch.full((len(p),), k, dtype=torch.long) for k, p in enumerate(parts)])
    return ImageSet(torch.cat([p.images for p in parts]), [c for p in parts for c in p.captions],
                    {"style": labels}, {"style": names})


def style_prompt(caption: str, style: str, amplify: float = 0.0) -> str:
    """The style-suffixed caption the models are trained with: "red apple, twemoji style"; with
    ``amplify`` a > 0 the composable prompt "red apple, twemoji style :1+a AND red apple :-a", i.e.
    ordinary guidance plus a·s times the guidance along what the suffix adds
    (:class:`latentdiff.denoisers.ComposableGuidance`)."""
    if amplify == 0:
        return f"{caption}, {style} style"
    return f"{caption}, {style} style :{1 + amplify:g} AND {caption} :{-amplify:g}"


STYLE_NEGATIVES = ("none", "plain")


def style_report(pipe, net, real_test: ImageSet, captions: Sequence[str], *, seed: int = 0, batch_size: int = 32,
                 progress: bool = True, negative: str = "none", amplify: float = 0.0,
                 groups: torch.Tensor | None = None, **gen) -> dict:
    """``net`` has a ``style`` head (names in ``real_test.label_names["style"]``). Returns the head's
    accuracy per style on ``real_test``; for each style, the share of "<caption>, <style> style"
    generations judged as that style; and the style distribution of plain-caption generations.
    Caption i uses seed + i in every variant (the same noise, only the suffix differs).

    ``negative="plain"`` gives every suffixed generation its plain caption as the negative prompt, so
    classifier-free guidance pushes along what the suffix adds ("red apple, twemoji style" against
    "red apple") instead of along the whole prompt; ``amplify`` a > 0 keeps the ordinary guidance and
    adds a times the guidance along the suffix (:func:`style_prompt`). With ``groups`` (the captions' group ids) and a
    ``group`` head on ``net``, the share of each variant's images judged in the caption's group too:
    what a style trick costs the content."""
    if negative not in STYLE_NEGATIVES:
        raise ValueError(f"unknown style negative {negative!r}; choose from {', '.join(STYLE_NEGATIVES)}")
    names = real_test.label_names["style"]
    pred, _ = evaluator_outputs(net, real_test.images)
    truth = real_test.labels["style"]
    real = {s: float((pred["style"][truth == k] == k).float().mean())
            for k, s in enumerate(names) if (truth == k).any()}
    out = {"styles": names, "n": len(captions), "negative": negative, "amplify": amplify, "real_accuracy": real,
           "real_accuracy_mean": float(np.mean(list(real.values())))}
    judge_group = groups is not None and "group" in net.heads
    if judge_group and "group" in real_test.labels:
        out["real_group_accuracy"] = accuracy(pred, {"group": real_test.labels["group"]})["group"]
    # the same real images through the model's VAE: the ceiling for anything its decoder draws
    rec = evaluator_outputs(net, vae_roundtrip(pipe.vae, real_test.images))[0]["style"]
    out["vae_accuracy"] = {s: float((rec[truth == k] == k).float().mean())
                           for k, s in enumerate(names) if (truth == k).any()}
    out["vae_accuracy_mean"] = float(np.mean(list(out["vae_accuracy"].values())))
    images, _ = generate(pipe, list(captions), seed=seed, batch_size=batch_size, progress=progress,
                         desc="style: plain", **gen)
    p = evaluator_outputs(net, images)[0]
    out["plain_distribution"] = {s: float((p["style"] == k).float().mean()) for k, s in enumerate(names)}
    if judge_group:
        out["plain_group_accuracy"] = accuracy(p, {"group": groups})["group"]
    out["suffixed"] = {}
    for k, s in enumerate(names):
        images, _ = generate(pipe, [style_prompt(c, s, amplify) for c in captions], seed=seed, batch_size=batch_size,
                             progress=progress, desc=f"style: {s}",
                             negative_prompts=list(captions) if negative == "plain" else None, **gen)
        p = evaluator_outputs(net, images)[0]
        out["suffixed"][s] = {"judged_as_asked": float((p["style"] == k).float().mean()),
                              "distribution": {t: float((p["style"] == j).float().mean()) for j, t in enumerate(names)}}
        if judge_group:
            out["suffixed"][s]["group_accuracy"] = accuracy(p, {"group": groups})["group"]
    out["suffixed_mean"] = float(np.mean([v["judged_as_asked"] for v in out["suffixed"].values()]))
    if judge_group:
        out["suffixed_group_accuracy_mean"] = float(np.mean([v["group_accuracy"] for v in out["suffixed"].values()]))
    return out


def style_markdown(s: dict) -> list[str]:
    names = s["styles"]
    group = "plain_group_accuracy" in s  # the judge has a group head too
    neg = " (negative prompt: the plain caption)" if s.get("negative") == "plain" else ""
    neg += f" (the suffix amplified ×{s['amplify']:g}: AND)" if s.get("amplify") else ""
    out = [f"### Styles ({s['n']} test captions per variant; style classifier trained on real images){neg}", "",
           "| images | " + " | ".join(f"judged {n}" for n in names) + (" | group right |" if group else " |"),
           "|---|" + "---|" * (len(names) + group)]
    out.append("| real test (accuracy per style) | " + " | ".join(_pct(s["real_accuracy"].get(n)) for n in names)
               + (f" | {_pct(s.get('real_group_accuracy'))} |" if group else " |"))
    if "vae_accuracy" in s:
        out.append("| real test through the model's VAE (the ceiling) | "
                   + " | ".join(_pct(s["vae_accuracy"].get(n)) for n in names) + (" | |" if group else " |"))
    out.append("| plain caption | " + " | ".join(_pct(s["plain_distribution"][n]) for n in names)
               + (f" | {_pct(s['plain_group_accuracy'])} |" if group else " |"))
    for n in names:
        v = s["suffixed"][n]
        out.append(f"| \"…, {n} style\" | " + " | ".join(_pct(v["distribution"][t]) for t in names)
                   + (f" | {_pct(v['group_accuracy'])} |" if group else " |"))
    out += ["", f"suffixed generations judged as the asked style: **{_pct(s['suffixed_mean'])}** "
            "(mean over styles)", ""]
    return out


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


__all__ = [
    "OBJECT_GROUPS", "SHAPE_NOUNS", "DIVERSITY_STOP", "strip_skin_tone", "emoji_diversity_words", "hsv_to_rgb",
    "hue_rotate", "object_rows", "colour_shares", "composition_prompts", "silhouette", "soft_iou", "object_gallery",
    "object_judge",
    "validate_object_judge", "composition_report", "composition_markdown", "load_style_set", "style_prompt",
    "STYLE_NEGATIVES", "style_report", "style_markdown",
]


# --------------------------------------------------------------------------- colour and skin-tone reports


def colour_report(pipe, prompts: Sequence[str], *, seed: int = 0, seeds: int = 1, batch_size: int = 32,
                  reference: ImageSet | None = None, progress: bool = True, **gen) -> dict:
    """Generate each colour prompt ``seeds`` times (pass k as ``generate`` at ``seed + k``, i.e. what
    ``--seed seed+k`` alone gives) and check its dominant colour over all of them; ``per_seed`` holds
    each pass's rate, since one pass of 36 prompts moves by several points from seed to seed. With
    ``reference``, also run the check on the real images captioned "<colour> <noun>" for a noun of
    :data:`COLOUR_NOUNS` (flat coloured shapes: validates the checker)."""
    if seeds < 1:
        raise ValueError(f"colour seeds must be at least 1, got {seeds}")
    passes = [generate(pipe, prompts, seed=seed + k, batch_size=batch_size, progress=progress,
                       desc=f"colour (seed {seed + k})" if seeds > 1 else "colour", **gen)[0] for k in range(seeds)]
    images = torch.cat(passes)
    out = colour_check(images, list(prompts) * seeds)
    out["seeds"] = seeds
    out["per_seed"] = [colour_check(ims, prompts)["rate"] for ims in passes]
    out["images"] = images
    if reference is not None:
        wanted = set(default_colour_prompts())
        rows = [i for i, c in enumerate(reference.captions) if c in wanted]
        out["reference"] = colour_check(reference.images[rows], [reference.captions[i] for i in rows])
    return out


def skin_report(pipe, sets: list[list[str]], *, seed: int = 0, batch_size: int = 32, reference: ImageSet | None = None,
                progress: bool = True, **gen) -> dict:
    """Generate every set of five tone prompts with one shared initial noise per set (the tone word
    is the only difference) and check the luminance ordering; ``reference`` runs the same check on
    all complete five-tone sets of real images (validates the checker)."""
    prompts = [p for s in sets for p in s]
    seeds_per_prompt = [seed + k for k, s in enumerate(sets) for _ in s]
    images = []
    from tqdm.auto import tqdm

    for i in tqdm(range(0, len(prompts), batch_size), desc="skin tones", disable=not progress):
        batch = prompts[i:i + batch_size]
        out = pipe(batch, seed=seeds_per_prompt[i:i + len(batch)], output_type="latent",
                   num_inference_steps=gen.get("steps"), sampler=gen.get("sampler"),
                   guidance_scale=gen.get("guidance_scale"))
        images.append(pipe.decode_latents(out.latents).float().cpu())
    images = torch.cat(images) if images else torch.empty(0, 3, 1, 1)
    result = skin_tone_check(images.reshape(len(sets), len(SKIN_TONES), *images.shape[1:])) if sets else \
        {"sets": 0, "pairs_obeyed": None, "fully_ordered": None}
    result["images"] = images
    if reference is not None:  # every complete five-tone set of the real images
        index = {c: i for i, c in enumerate(reference.captions)}
        ref_sets = [[index[p] for p in s] for s in skin_tone_sets(reference.captions)]
        if ref_sets:
            ref = reference.images[torch.tensor(ref_sets)]
            result["reference"] = skin_tone_check(ref)
    return result
