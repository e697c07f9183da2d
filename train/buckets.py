"""Aspect-ratio buckets with kohya-ss sd-scripts semantics (``train_util.BucketManager``).

Buckets (``make_bucket_resolutions``): sides are multiples of the step s and every bucket holds
about the target area R²: for each width w = min, min+s, …, max the height is
h = min(max, ⌊(R/s)² / (w/s)⌋·s), plus the square (⌊R/s⌋·s)²; both orientations are kept.

An image of size (W, H), aspect a = W/H, goes to (``select_bucket``):

* default: the bucket of nearest aspect ratio (its own size when that is a bucket); it is
  resized to *cover* the bucket (the side that fits is matched exactly, the other is ≥) and
  centre-cropped, so only the aspect mismatch to the nearest bucket is cut off;
* ``bucket_no_upscale``: never enlarged; an image above R² pixels is shrunk to ≈ R² keeping its
  aspect (kohya's rounding of one side to the step, whichever keeps the aspect closer), and its
  bucket is that size rounded *down* to the step: the crop is < s on each axis.

Batches are drawn within one bucket by :class:`BucketSampler`, a pure function of (seed, step):
epoch e shuffles each bucket's images, chops them into global batches (the last one filled up by
wrapping around the bucket, so every batch has the global size and slices over processes and
accumulation steps as the plain sampler's do), and shuffles the list of batches.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from .common import step_generator


def make_bucket_resolutions(resolution: int, min_size: int, max_size: int, step: int) -> list[tuple[int, int]]:
    """kohya's bucket list (width, height), sorted: ≈ ``resolution²`` pixels, sides multiples of ``step``."""
    max_area = (resolution // step) ** 2                       # in step² units
    resos = {(int(math.sqrt(max_area)) * step,) * 2}
    for width in range(min_size, max_size + 1, step):
        height = min(max_size, (max_area // (width // step)) * step)
        resos.add((width, height))
        resos.add((height, width))
    return sorted(resos)


def _round_to_steps(x: float, step: int) -> int:
    x = int(x + 0.5)
    return x - x % step


def select_bucket(width: int, height: int, buckets: list[tuple[int, int]], resolution: int, step: int,
                  no_upscale: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """(bucket (w, h), resized size (w', h') with w' ≥ w, h' ≥ h) of a ``width``×``height`` image."""
    aspect = width / height
    if not no_upscale:
        reso = (width, height)
        if reso not in buckets:
            ratios = np.array([w / h for w, h in buckets])
            reso = buckets[int(np.abs(ratios - aspect).argmin())]
        scale = reso[1] / height if aspect > reso[0] / reso[1] else reso[0] / width  # cover: the fitting side exact
        resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        return reso, (max(resized[0], reso[0]), max(resized[1], reso[1]))
    max_area = resolution * resolution
    if width * height > max_area:  # shrink to ≈ R², keeping the aspect; one side on the step grid
        rw = math.sqrt(max_area * aspect)
        rh = max_area / rw
        bw = _round_to_steps(rw, step)
        ar_w = bw / _round_to_steps(bw / aspect, step) if _round_to_steps(bw / aspect, step) else math.inf
        bh = _round_to_steps(rh, step)
        ar_h = _round_to_steps(bh * aspect, step) / bh if bh else math.inf
        if abs(ar_w - aspect) < abs(ar_h - aspect):
            resized = (bw, int(bw / aspect + 0.5))
        else:
            resized = (int(bh * aspect + 0.5), bh)
    else:
        resized = (width, height)
    reso = (resized[0] - resized[0] % step, resized[1] - resized[1] % step)
    return reso, resized


def crop_box(resized: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centre crop (left, top, right, bottom) of a ``resized`` image to ``bucket``."""
    left, top = (resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2
    return left, top, left + bucket[0], top + bucket[1]


@dataclass
class BucketPlan:
    """Which bucket each training image goes to, and how it is resized: deterministic from the image
    sizes and the config, saved as JSON (``output_dir/bucket_plan.json`` and beside the cache)."""

    buckets: list[tuple[int, int]]          # (w, h) in pixels, the ones that hold images
    assignment: list[int]                   # image i -> its bucket
    resized: list[tuple[int, int]]          # image i -> (w', h') before the centre crop
    sizes: list[tuple[int, int]]            # image i -> its own (w, h)

    def to_json(self) -> str:
        return json.dumps({"buckets": self.buckets, "assignment": self.assignment, "resized": self.resized,
                           "sizes": self.sizes,
                           "counts": [self.assignment.count(j) for j in range(len(self.buckets))]})

    @classmethod
    def from_json(cls, text: str) -> "BucketPlan":
        d = json.loads(text)
        return cls([tuple(b) for b in d["buckets"]], list(d["assignment"]), [tuple(r) for r in d["resized"]],
                   [tuple(s) for s in d["sizes"]])

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def members(self, j: int) -> list[int]:
        return [i for i, b in enumerate(self.assignment) if b == j]


def plan_buckets(sizes: list[tuple[int, int]], resolution: int, min_size: int, max_size: int, step: int,
                 no_upscale: bool) -> BucketPlan:
    """Assign every image (its (w, h)) to a bucket; buckets that get no image are dropped."""
    grid = make_bucket_resolutions(resolution, min_size, max_size, step)
    chosen = [select_bucket(w, h, grid, resolution, step, no_upscale) for w, h in sizes]
    used = sorted({b for b, _ in chosen})
    if any(b[0] < step or b[1] < step for b in used):
        small = [s for s, (b, _) in zip(sizes, chosen) if b[0] < step or b[1] < step][:3]
        raise ValueError(f"images {small} are smaller than one bucket step ({step} px) with bucket_no_upscale; "
                         "lower data.bucket_reso_steps or drop those images")
    index = {b: j for j, b in enumerate(used)}
    return BucketPlan(used, [index[b] for b, _ in chosen], [r for _, r in chosen], list(sizes))


class BucketSampler:
    """Step → global batch indices, all from one bucket; a pure function of (seed, step)."""

    def __init__(self, plan: BucketPlan, global_batch: int, seed: int, device: torch.device):
        self.plan, self.global_batch, self.seed, self.device = plan, global_batch, seed, device
        self.members = [torch.tensor(plan.members(j), dtype=torch.long) for j in range(len(plan.buckets))]
        self.per_bucket = [math.ceil(len(m) / global_batch) for m in self.members]
        self.batches_per_epoch = sum(self.per_bucket)
        self._cache: tuple[int, list] | None = None

    def _epoch_batches(self, epoch: int) -> list[tuple[int, torch.Tensor]]:
        if self._cache is None or self._cache[0] != epoch:
            batches, G = [], self.global_batch
            for j, m in enumerate(self.members):
                perm = m[torch.randperm(len(m), generator=step_generator(self.seed, epoch, "cpu", stream=1000 + j))]
                for k in range(self.per_bucket[j]):
                    batches.append((j, perm[torch.arange(k * G, (k + 1) * G) % len(m)]))  # wraps within the bucket
            order = torch.randperm(len(batches), generator=step_generator(self.seed, epoch, "cpu", stream=999))
            self._cache = (epoch, [batches[i] for i in order.tolist()])
        return self._cache[1]

    def bucket(self, step: int) -> int:
        epoch, k = divmod(step, self.batches_per_epoch)
        return self._epoch_batches(epoch)[k][0]

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.batches_per_epoch)
        return self._epoch_batches(epoch)[k][1].to(self.device)

    def epoch(self, step: int) -> float:
        return step / self.batches_per_epoch
