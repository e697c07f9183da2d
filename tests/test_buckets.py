"""Aspect-ratio buckets with kohya semantics (train/buckets.py): the bucket grid, where each image
goes and how much of it is cut, batches that never mix buckets, a sampler that is a function of
(seed, step), and U-Net training on non-square latents that resumes bit-exactly after SIGKILL and
gives the same batches on 2 processes as on 1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from shapes import MIXED_SIZES, render_shapes
from test_loop import KILL_AFTER_SAVE, assert_equal_tensors, tensors
from test_streaming import streamed, two_process_matches_one
from test_train import ENV, cli_args, unet_cfg

from latentdiff.train.buckets import (
    BucketPlan,
    BucketSampler,
    make_bucket_resolutions,
    plan_buckets,
    select_bucket,
)

GRIDS = [(512, 256, 1024, 64), (32, 16, 64, 4)]  # SD 1.5 at 512 px (kohya's defaults); the tiny model, same shape
# images of many aspect ratios, within the grid's range (1:4 … 4:1) and beyond it
SIZES = [(w, h) for w in (20, 31, 48, 64, 90, 127, 200) for h in (20, 33, 47, 64, 100, 160)] + [(400, 40), (40, 400)]


@pytest.mark.parametrize("R,lo,hi,step", GRIDS)
def test_the_bucket_grid_is_kohyas(R, lo, hi, step):
    grid = make_bucket_resolutions(R, lo, hi, step)
    area = (R // step) ** 2  # in step² units
    assert (R // step * step,) * 2 in grid
    assert set(grid) == {(h, w) for w, h in grid}  # both orientations
    assert {w for w, _ in grid} >= set(range(lo, hi + 1, step))  # every width from min to max
    for w, h in grid:
        assert w % step == 0 and h % step == 0 and h <= hi and w <= hi
        assert (w // step) * (h // step) <= area  # ≈ the target area, never above it
        # one orientation is the largest height for its width (or the height is the max side)
        def maximal(w, h):
            return h == hi or (w // step) * (h // step + 1) > area

        assert maximal(w, h) or maximal(h, w), (w, h)


@pytest.mark.parametrize("R,lo,hi,step", GRIDS)
def test_each_image_goes_to_the_nearest_aspect_bucket_and_covers_it(R, lo, hi, step):
    grid = make_bucket_resolutions(R, lo, hi, step)
    for W, H in SIZES:
        (bw, bh), (rw, rh) = select_bucket(W, H, grid, R, step, no_upscale=False)
        a = W / H
        assert abs(bw / bh - a) == min(abs(w / h - a) for w, h in grid)
        assert rw >= bw and rh >= bh  # covered: the crop cuts, never pads
        assert min(rw - bw, rh - bh) <= 1  # the fitting side is matched exactly (up to rounding)
        assert abs(rw / rh - a) < 0.05 * a + 1 / min(rw, rh)  # resized keeping the aspect
        # what is cut is the aspect mismatch to that bucket, no more
        cut = (rw - bw) / rw if rw - bw > rh - bh else (rh - bh) / rh
        assert cut <= abs(1 - (bw / bh) / a) + abs(1 - (bh / bw) * a) + 2 / min(rw, rh)


@pytest.mark.parametrize("R,lo,hi,step", GRIDS)
def test_with_bucket_no_upscale_nothing_is_enlarged_or_cut_by_more_than_the_rounding(R, lo, hi, step):
    grid = make_bucket_resolutions(R, lo, hi, step)
    for W, H in [(s[0] * 4, s[1] * 4) for s in SIZES] + SIZES:
        (bw, bh), (rw, rh) = select_bucket(W, H, grid, R, step, no_upscale=True)
        assert rw <= W and rh <= H  # never enlarged
        assert 0 <= rw - bw < step and 0 <= rh - bh < step  # cut only by the rounding down to the step
        assert bw % step == 0 and bh % step == 0
        if W * H > R * R:
            assert rw * rh <= 1.1 * R * R and abs(rw / rh - W / H) < 0.05 * W / H  # shrunk to ≈ R², aspect kept


def plan_of(sizes, R=32, step=4):
    return plan_buckets(sizes, R, 16, 64, step, False)


def test_batches_never_mix_buckets_and_every_image_comes_once_per_epoch_pass():
    plan = plan_of(SIZES)
    assert len(plan.buckets) >= 5
    G = 4
    sampler = BucketSampler(plan, G, seed=3, device=torch.device("cpu"))
    seen = []
    for step in range(sampler.batches_per_epoch):
        idx = sampler.indices(step).tolist()
        assert len(idx) == G
        assert len({plan.assignment[i] for i in idx}) == 1, f"step {step} mixes buckets"
        assert {plan.assignment[i] for i in idx} == {sampler.bucket(step)}
        seen += idx
    assert set(seen) == set(range(len(SIZES)))  # every image in the epoch (small buckets wrap around)
    # a pure function of (seed, step): a fresh sampler, asked out of order, agrees; another epoch differs
    again = BucketSampler(plan, G, seed=3, device=torch.device("cpu"))
    E = sampler.batches_per_epoch
    for step in (2 * E + 1, 0, E + 3, 5):
        assert torch.equal(again.indices(step), sampler.indices(step))
    assert [sampler.indices(s).tolist() for s in range(E)] != [sampler.indices(E + s).tolist() for s in range(E)]
    assert sampler.epoch(E) == 1.0


def test_the_plan_round_trips_through_json():
    plan = plan_of(SIZES)
    assert BucketPlan.from_json(plan.to_json()) == plan and BucketPlan.from_json(plan.to_json()).digest() == plan.digest()


BUCKETS = {"data.aspect_buckets": True, "data.bucket_reso_steps": 4, "data.min_bucket_reso": 16,
           "data.max_bucket_reso": 64, "data.shard_size": 4, "data.num_workers": 0, "data.max_samples": 0}


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    return render_shapes(tmp_path_factory.mktemp("shapes") / "img", MIXED_SIZES * 2)


def test_cached_items_are_their_buckets_centre_crops(shapes_folder, tmp_path):
    from PIL import Image

    cfg = unet_cfg(tmp_path / "out", **{**BUCKETS, "data.source": str(shapes_folder)})
    src, _, enc = streamed(cfg, tmp_path / "out", tmp_path / "cache")
    plan = src.plan
    assert len(plan.buckets) >= 3 and any(w != h for w, h in plan.buckets)
    files = sorted(shapes_folder.glob("*.png"))
    for i in range(len(src)):
        w, h = plan.buckets[plan.assignment[i]]
        x = src[i]
        assert x.shape == (3, h, w)
        assert enc.latent_shape(plan.assignment[i]) == (4, h // 2, w // 2)
        # the image resized to cover the bucket, then cut evenly on both sides (the centre crop)
        orig = Image.open(files[i]).convert("RGB")
        rw, rh = plan.resized[i]
        resample = Image.Resampling.LANCZOS if rw < orig.width else Image.Resampling.BICUBIC
        big = torch.from_numpy(np.array(orig.resize((rw, rh), resample))).permute(2, 0, 1)
        left, top = (rw - w) // 2, (rh - h) // 2
        assert torch.equal(x, big[:, top:top + h, left:left + w]), i
    saved = BucketPlan.from_json((tmp_path / "out" / "bucket_plan.json").read_text())
    assert saved == plan and json.loads((enc.root / "plan.json").read_text())["buckets"] == [list(b) for b in plan.buckets]


def test_unet_trains_on_buckets_and_resumes_bit_exactly_after_sigkill(shapes_folder, tmp_path):
    from latentdiff.cli import main

    over = {**BUCKETS, "data.source": str(shapes_folder), "optim.max_train_steps": 6, "checkpointing_steps": 2,
            "checkpoints_total_limit": 0, "optim.batch_size": 4, "ema.decay": 0.9, "ema.use_warmup": False,
            "log_every": 1, "cache_dir": str(tmp_path / "cache")}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert main(["train", "unet", *cli_args(ref, **over)]) == 0
    summary = json.loads((ref / "final/training_summary.json").read_text())
    assert summary["final_loss"] == summary["final_loss"] and summary["final_loss"] < 10  # finite
    assert len(summary["buckets"]) >= 3 and any(b.split("x")[0] != b.split("x")[1] for b in summary["buckets"])
    res = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE.format(step=2), "train", "unet",
                          *cli_args(killed, **over)], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert main(["train", "unet", *cli_args(killed, **over), "--resume", "latest"]) == 0
    assert_equal_tensors(tensors(ref / "checkpoints/checkpoint-6"), tensors(killed / "checkpoints/checkpoint-6"),
                         "buckets checkpoint-6")
    assert_equal_tensors(tensors(ref / "final"), tensors(killed / "final"), "buckets export")
    a, b = tensors(ref / "checkpoints/checkpoint-2"), tensors(ref / "checkpoints/checkpoint-6")
    assert any(not torch.equal(a[k], b[k]) for k in a if "safetensors:" in k)  # training moved the weights


@pytest.mark.slow  # ~35 s; the default suite keeps test_train's and the streamed cache's two-process runs
def test_two_process_run_matches_one_process_with_buckets(shapes_folder, tmp_path):
    two_process_matches_one(tmp_path, {**BUCKETS, "data.source": str(shapes_folder)})
