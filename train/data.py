"""Data that streams from disk: a sharded, resumable latent + text-embedding cache.

With ``data.streaming: true`` (or ``data.aspect_buckets: true``, which implies it) the U-Net trainer
never holds the training images in memory:

1. :class:`StreamedImages` lists the source (the embedded emoji, an imagefolder with
   metadata.jsonl, a kohya folder of images + .txt, a ``datasets`` folder/file/name, or
   webdataset-style ``.tar`` shards) without decoding it: captions, and for buckets each image's size
   from its header.
2. :func:`prepare_streamed` encodes the images, decoded in ``torch.utils.data.DataLoader`` workers
   a batch at a time, through the frozen VAE (posterior μ, σ, and of the mirror image with
   ``random_flip``) and their captions through the frozen text encoder, into safetensors shards of
   ``data.shard_size`` samples, one folder per bucket shape:

       cache_dir/<split>-<key>/bucket000-32x32/shard-00000.safetensors   mean, std (F, n, C, h, w),
                                                                        text (n, L, D), index (n,)
       cache_dir/<split>-<key>/uncond.safetensors                       the "" embedding (1, L, D)
       cache_dir/<split>-<key>/plan.json                                the bucket plan

   Each shard is written atomically (temp file + rename), so a killed build continues from the last
   complete shard. The key hashes what the tensors depend on: the data (the embedded parquet's
   bytes; each file's path, size and mtime; a ``datasets`` fingerprint), the captions' token ids,
   resolution, bucket plan, flips, crop, and the VAE's and text encoder's weights.
3. :class:`StreamedLatents` reads a micro-batch's rows with ``os.pread`` at offsets from each
   shard's safetensors header: a step touches only its own rows, and nothing is memory-mapped, so
   the process's resident memory does not grow with the dataset (the OS page cache holds hot shards).

The in-memory path (:func:`latentdiff.train.unet.prepare_data`) stays the default; on the same data
the streamed path gives the same batches (same sampler, same randomness) and the same latents up to
the VAE's batch-size rounding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from latentdiff.config import atomic_write_text

from .buckets import BucketPlan, BucketSampler, crop_box, plan_buckets
from .common import EMBEDDED_DATASETS, DataConfig, StepSampler, hash_module, save_tensors_atomic, to_pixels

logger = logging.getLogger("latentdiff.train")
STREAM_CACHE_VERSION = 1
ENCODE_BATCH = 32  # images per VAE call while building


def streams(d: DataConfig) -> bool:
    """Whether the training split goes through the sharded cache instead of memory."""
    return bool(d.streaming or d.aspect_buckets)


def check_streaming(cfg) -> None:
    """Config-time check of a trainer config with the streaming keys (cached latents are needed)."""
    if streams(cfg.data) and (not getattr(cfg, "cache", True) or getattr(cfg, "train_text_encoder", False)):
        raise ValueError("data.streaming / data.aspect_buckets read cached latents and text embeddings: they need "
                         "cache: true and train_text_encoder: false")


# ----------------------------------------------------------------------------------------------
# The source, item by item
# ----------------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def tar_shards(source: str) -> list[Path]:
    """The webdataset-style ``.tar`` shards ``source`` names (a .tar file, or a folder holding only
    tars and no images); [] when it is another kind of source."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".tar":
        return [path]
    if path.is_dir():
        tars = sorted(path.rglob("*.tar"))
        if tars and not any(p.suffix.lower() in _IMAGE_SUFFIXES for p in path.rglob("*")):
            return tars
    return []


def list_tar(shards: list[Path], caption_key: str) -> tuple[list[tuple[str, int, int]], list[str]]:
    """webdataset layout: members sharing a key (the name up to the first dot), one image
    (``key.png``/``.jpg``/…) and a caption (``key.txt``, or the ``caption_key`` field of ``key.json``).
    Returns each sample's image as (tar, byte offset, size) — read later with one pread — and its caption;
    nothing is decoded or held but the member table."""
    import tarfile

    images, captions = [], []
    for tar in shards:
        samples: dict[str, dict] = {}
        with tarfile.open(tar) as tf:  # reads the headers, seeking past the data
            for m in tf:
                if not m.isfile() or "/." in f"/{m.name}":
                    continue
                folder, _, base = m.name.rpartition("/")
                stem, _, ext = base.partition(".")  # webdataset: the key ends at the first dot of the name
                key = f"{folder}/{stem}"
                entry = samples.setdefault(key, {})
                if f".{ext.lower()}" in _IMAGE_SUFFIXES:
                    entry["image"] = (str(tar), m.offset_data, m.size)
                elif ext in ("txt", "json"):
                    entry[ext] = tf.extractfile(m).read()
        for key in sorted(samples):
            e = samples[key]
            if "image" not in e:
                continue
            caption = e.get("txt", b"").decode("utf-8", errors="replace")
            if not caption and "json" in e:
                caption = str(json.loads(e["json"]).get(caption_key, ""))
            images.append(e["image"])
            captions.append(" ".join(caption.split()))
    if not images:
        raise ValueError(f"no images in the tar shards {[str(t) for t in shards[:3]]} (webdataset layout: key.png + "
                         "key.txt or key.json)")
    return images, captions


class StreamedImages(torch.utils.data.Dataset):
    """A training split listed, not decoded. Item i → uint8 (3, h, w): R×R exactly as the in-memory
    path makes it (:func:`latentdiff.train.common.load_image_data`), or, once :attr:`plan` is set, its
    bucket: resized to cover it and centre-cropped."""

    def __init__(self, d: DataConfig, split: str, resolution: int):
        self.source, self.split, self.resolution, self.center_crop = d.source, split, resolution, d.center_crop
        self.plan: BucketPlan | None = None
        self._png, self._ds, self._tar = None, None, None
        shards = tar_shards(d.source) if d.source not in EMBEDDED_DATASETS else []
        if shards:  # webdataset-style tar shards: samples read by offset, nothing extracted
            self._tar, all_captions = list_tar(shards, d.caption_column)
            self._identity = ":".join(f"{t}:{t.stat().st_size}:{t.stat().st_mtime_ns}" for t in shards)
        elif d.source in EMBEDDED_DATASETS:
            from .common import embedded_parquet, embedded_split

            self._png, all_captions, _ = embedded_split(d, split)            # compressed PNGs (a few MB)
            path = embedded_parquet(d.source)
            self._identity = hashlib.sha256(path.read_bytes()).hexdigest() + f":{split}"
        else:
            from latentdiff.data import build_dataset

            self._ds = build_dataset(d.source, split=split, image_column=d.image_column, caption_column=d.caption_column,
                                     resolution=resolution, center_crop=d.center_crop, random_flip=False,
                                     caption_dropout=0.0)
            logger.info("data %s (%s): %s", d.source, split, self._ds.report)
            all_captions = self._ds.captions
            self._identity = None
        n = len(all_captions)
        if n == 0:
            raise ValueError(f"{d.source} split {split!r} is empty: nothing to train on")
        self.rows = list(range(n))
        if d.max_samples and n > d.max_samples:  # the same fixed subset as the in-memory path
            self.rows = np.sort(np.random.default_rng(0).choice(n, size=d.max_samples, replace=False)).tolist()
        self.captions = [all_captions[r] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def fingerprint(self) -> str:
        """Identifies the content without decoding it (see the module docstring)."""
        h = hashlib.sha256()
        if self._identity is not None:
            h.update(self._identity.encode())
        else:
            for r in self.rows:
                h.update(self._ds.identity(r).encode() + b"\x00")
        h.update(json.dumps(self.rows).encode())
        h.update("\x00".join(self.captions).encode("utf-8"))
        return h.hexdigest()

    def _bytes(self, i: int) -> bytes:
        if self._png is not None:
            return self._png[self.rows[i]]
        tar, offset, size = self._tar[self.rows[i]]
        fd = os.open(tar, os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def size(self, i: int) -> tuple[int, int]:
        """(width, height) of image i, from its header."""
        if self._ds is None:
            import io

            from PIL import Image

            with Image.open(io.BytesIO(self._bytes(i))) as im:
                return im.size
        return self._ds.image_size(self.rows[i])

    def _rgb(self, i: int):
        import io

        from PIL import Image

        if self._ds is None:
            return Image.open(io.BytesIO(self._bytes(i))).convert("RGB")
        return self._ds.rgb(self.rows[i])

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.plan is None:  # the in-memory path's transforms, bit for bit
            if self._ds is None:  # (tar shards: the embedded data's square crop + LANCZOS resize)
                from .common import _decode_rgb

                arr = _decode_rgb(self._bytes(i), self.resolution, self.center_crop)
                return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
            x = self._ds[self.rows[i]]["pixel_values"]
            return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        from PIL import Image

        im = self._rgb(i)
        resized, bucket = self.plan.resized[i], self.plan.buckets[self.plan.assignment[i]]
        if im.size != resized:  # LANCZOS avoids aliasing when shrinking; BICUBIC is smoother when enlarging
            shrink = resized[0] < im.size[0]
            im = im.resize(resized, Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC)
        im = im.crop(crop_box(resized, bucket))
        return torch.from_numpy(np.array(im, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


class _Sizes(torch.utils.data.Dataset):
    def __init__(self, source: StreamedImages):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return torch.tensor(self.source.size(i))


def image_sizes(source: StreamedImages, num_workers: int) -> list[tuple[int, int]]:
    """Every image's (w, h), read from headers in DataLoader workers."""
    loader = torch.utils.data.DataLoader(_Sizes(source), batch_size=256, num_workers=num_workers)
    return [tuple(s) for batch in loader for s in batch.tolist()]


# ----------------------------------------------------------------------------------------------
# Building the cache
# ----------------------------------------------------------------------------------------------


def make_plan(source: StreamedImages, d: DataConfig, factor: int) -> BucketPlan:
    """The bucket plan (a single R×R bucket without ``aspect_buckets``)."""
    R = source.resolution
    if not d.aspect_buckets:
        return BucketPlan([(R, R)], [0] * len(source), [(R, R)] * len(source), [(R, R)] * len(source))
    step = d.bucket_reso_steps
    if step % factor:
        raise ValueError(f"data.bucket_reso_steps {step} must be a multiple of {factor} (the VAE's downsampling × the "
                         "U-Net's, so every bucket has whole latents the U-Net can halve; 64 at SD scale)")
    lo, hi = d.min_bucket_reso or max(step, R // 2), d.max_bucket_reso or 2 * R
    if lo % step or hi % step or not lo <= R <= hi:
        raise ValueError(f"data.min_bucket_reso {lo} and max_bucket_reso {hi} must be multiples of bucket_reso_steps "
                         f"{step} around the resolution {R}")
    return plan_buckets(image_sizes(source, d.num_workers), R, lo, hi, step, d.bucket_no_upscale)


def shard_path(root: Path, plan: BucketPlan, j: int, k: int) -> Path:
    w, h = plan.buckets[j]
    return root / f"bucket{j:03d}-{w}x{h}" / f"shard-{k:05d}.safetensors"


@torch.no_grad()
def build_shards(source: StreamedImages, plan: BucketPlan, root: Path, vae, text_encoder, tokenizer, *, key: str,
                 shard_size: int, flips: bool, num_workers: int, device) -> int:
    """Encode every missing shard; returns how many were written (0: the cache was complete)."""
    from .common import encode_text, tokenize

    chunks: list[tuple[int, int, list[int]]] = []  # (bucket, shard, items), each one VAE batch
    for j in range(len(plan.buckets)):
        members = plan.members(j)
        for k in range(math.ceil(len(members) / shard_size)):
            if not shard_path(root, plan, j, k).is_file():
                items = members[k * shard_size:(k + 1) * shard_size]
                chunks += [(j, k, items[i:i + ENCODE_BATCH]) for i in range(0, len(items), ENCODE_BATCH)]
    if not chunks:
        return 0
    todo = len({(j, k) for j, k, _ in chunks})
    logger.info("encoding %d shard(s) of the streamed cache %s (%d workers)", todo, root, num_workers)
    loader = torch.utils.data.DataLoader(source, batch_sampler=[c for _, _, c in chunks], num_workers=num_workers,
                                         collate_fn=torch.stack)
    buf: dict[str, list] = {"mean": [], "std": [], "index": []}
    from tqdm.auto import tqdm

    for n, ((j, k, items), images) in enumerate(tqdm(zip(chunks, loader), total=len(chunks), desc="cache shards",
                                                     leave=False)):
        x = to_pixels(images.to(device))
        dists = [vae.encode(x.flip(-1) if f else x).latent_dist for f in ([False, True] if flips else [False])]
        buf["mean"].append(torch.stack([dd.mean.float() for dd in dists]))  # (F, b, C, h, w)
        buf["std"].append(torch.stack([dd.std.float() for dd in dists]))
        buf["index"] += items
        if n + 1 == len(chunks) or chunks[n + 1][:2] != (j, k):  # the shard is complete: write it
            captions = [source.captions[i] for i in buf["index"]]
            unique = sorted(set(captions))  # each caption encoded once per shard
            row = {c: r for r, c in enumerate(unique)}
            text = encode_text(text_encoder, tokenize(tokenizer, unique), 256, device)[[row[c] for c in captions]]
            save_tensors_atomic({"mean": torch.cat(buf["mean"], 1), "std": torch.cat(buf["std"], 1), "text": text,
                                 "index": torch.tensor(buf["index"], dtype=torch.long)},
                                shard_path(root, plan, j, k), {"key": key, "bucket": plan.buckets[j], "shard": k})
            buf = {"mean": [], "std": [], "index": []}
    return todo


def prepare_streamed(source: StreamedImages, comps, cfg, run, cache_dir: Path) -> "StreamedLatents":
    """Plan the buckets, build the missing shards (local main process; the others wait), and open
    the cache for per-batch reads. The plan is also written to ``output_dir/bucket_plan.json``."""
    from .common import encode_text, tokenize

    d, accelerator, device = cfg.data, run.accelerator, run.device
    vae, te = comps.vae, comps.text_encoder
    factor = 2 ** (len(vae.config.block_out_channels) - 1) * 2 ** (len(comps.unet.config.block_out_channels) - 1)
    plan = make_plan(source, d, factor)
    source.plan = plan if d.aspect_buckets else None
    from .common import caption_table

    table, caption_index = caption_table(source.captions)  # (the captions themselves are in the fingerprint)
    tokens = hashlib.sha256(tokenize(comps.tokenizer, table).numpy().tobytes() + caption_index.numpy().tobytes())
    parts = {"version": STREAM_CACHE_VERSION, "data": source.fingerprint(), "split": source.split,
             "resolution": source.resolution, "plan": plan.digest(), "vae": hash_module(vae),
             "text_encoder": hash_module(te), "tokens": tokens.hexdigest(), "random_flip": d.random_flip,
             "center_crop": d.center_crop, "shard_size": d.shard_size}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    root = cache_dir / f"{source.split}-{key}"
    if accelerator.is_local_main_process:
        written = build_shards(source, plan, root, vae, te, comps.tokenizer, key=key, shard_size=d.shard_size,
                               flips=d.random_flip, num_workers=d.num_workers, device=device)
        if not (root / "uncond.safetensors").is_file():
            save_tensors_atomic({"text": encode_text(te, tokenize(comps.tokenizer, [""]), 1, device)},
                                root / "uncond.safetensors", {"key": key})
        atomic_write_text(root / "plan.json", plan.to_json())
        if not written:
            logger.info("using the streamed cache %s", root)
    if accelerator.is_main_process and d.aspect_buckets:
        before = run.out / "bucket_plan.json"
        if before.is_file() and BucketPlan.from_json(before.read_text()) != plan:
            logger.warning("the bucket plan differs from %s (the data or the bucket keys changed since that run "
                           "started): a resumed run does not continue its batch order exactly", before)
        atomic_write_text(before, plan.to_json())
        logger.info("aspect buckets (w x h: images): %s", ", ".join(
            f"{w}x{h}: {plan.assignment.count(j)}" for j, (w, h) in enumerate(plan.buckets)))
    accelerator.wait_for_everyone()
    return StreamedLatents(root, plan, d.shard_size, key, device, buckets=d.aspect_buckets)


# ----------------------------------------------------------------------------------------------
# Reading a batch
# ----------------------------------------------------------------------------------------------

_DTYPES = {"F32": (np.float32, torch.float32), "I64": (np.int64, torch.int64)}


class _Shard:
    """One safetensors shard, read row by row with ``os.pread`` (opened on first use)."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def _open(self):
        # the safetensors layout: u64 little-endian header length N, N bytes of JSON
        # {name: {dtype, shape, data_offsets: [begin, end]}}, then the data (offsets relative to 8 + N)
        self.fd = os.open(self.path, os.O_RDONLY)
        n = int.from_bytes(os.pread(self.fd, 8, 0), "little")
        header = json.loads(os.pread(self.fd, n, 8))
        header.pop("__metadata__", None)
        self.base, self.tensors = 8 + n, header

    def shape(self, name: str) -> list[int]:
        if self.fd is None:
            self._open()
        return self.tensors[name]["shape"]

    def rows(self, name: str, rows: list[int]) -> torch.Tensor:
        """Rows ``rows`` of tensor ``name`` viewed as (R, *row_shape) with R = its first dims' product."""
        if self.fd is None:
            self._open()
        t = self.tensors[name]
        np_dtype, _ = _DTYPES[t["dtype"]]
        row_shape = t["shape"][-3:] if name in ("mean", "std") else t["shape"][1:]
        row_bytes = int(np.prod(row_shape)) * np.dtype(np_dtype).itemsize
        start = self.base + t["data_offsets"][0]
        buf = b"".join(os.pread(self.fd, row_bytes, start + r * row_bytes) for r in rows)
        return torch.from_numpy(np.frombuffer(buf, dtype=np_dtype).copy()).view(len(rows), *row_shape)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class StreamedLatents:
    """The sharded cache, open for per-batch reads. ``inputs(idx, …)`` gives the step's z0 and text
    embeddings; all samples of a batch come from one bucket (the sampler draws them so)."""

    mean = None               # (the in-memory EncodedData's fields the U-Net task looks at)
    text_embeddings = True

    def __init__(self, root: Path, plan: BucketPlan, shard_size: int, key: str, device, buckets: bool):
        self.root, self.plan, self.shard_size, self.key, self.device, self.buckets = \
            root, plan, shard_size, key, device, buckets
        self.bucket_of = np.asarray(plan.assignment)
        self.position = np.zeros(len(plan.assignment), dtype=np.int64)
        for j in range(len(plan.buckets)):
            self.position[plan.members(j)] = np.arange(len(plan.members(j)))
        self._shards: dict[tuple[int, int], _Shard] = {}
        from .common import load_tensors

        self.uncond = load_tensors(root / "uncond.safetensors", device)["text"][0]        # (L, D)
        self.sampler = None

    def shard(self, j: int, k: int) -> _Shard:
        if (j, k) not in self._shards:
            self._shards[(j, k)] = _Shard(shard_path(self.root, self.plan, j, k))
        return self._shards[(j, k)]

    def latent_shape(self, j: int) -> tuple[int, ...]:
        """(C, h, w) of bucket j's latents."""
        return tuple(self.shard(j, 0).shape("mean")[-3:])

    def make_sampler(self, run):
        """Buckets: :class:`BucketSampler`; otherwise the plain step sampler (the in-memory path's order)."""
        n = len(self.plan.assignment)
        self.sampler = (BucketSampler(self.plan, run.global_batch, run.cfg.seed, run.device) if self.buckets
                        else StepSampler(n, run.global_batch, run.cfg.seed, run.device))
        return self.sampler

    def step_shape(self, step: int) -> tuple[int, ...]:
        return self.latent_shape(self.sampler.bucket(step) if self.buckets else 0)

    def read(self, idx: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, std, text) of samples ``idx`` (mirrored where ``flip``), on the device."""
        idx_c, flip_c = idx.cpu().numpy(), flip.cpu().numpy()
        buckets = set(self.bucket_of[idx_c].tolist())
        if len(buckets) != 1:
            raise RuntimeError(f"a batch mixes buckets {sorted(buckets)} (a sampler bug)")
        j = buckets.pop()
        pos = self.position[idx_c]
        mean, std, text = [], [], []
        for p, f in zip(pos.tolist(), flip_c.tolist()):
            s = self.shard(j, p // self.shard_size)
            n_rows = s.shape("mean")[1]
            r = int(f) * n_rows + p % self.shard_size                  # row of the (F·n, C, h, w) view
            mean.append(s.rows("mean", [r]))
            std.append(s.rows("std", [r]))
            text.append(s.rows("text", [p % self.shard_size]))
        dev = self.device
        return torch.cat(mean).to(dev), torch.cat(std).to(dev), torch.cat(text).to(dev)

    def inputs(self, idx, flip, drop, posterior_noise, scaling_factor: float):
        """(z0, text embeddings): z0 = scaling_factor·(μ + σ·n), a fresh posterior sample; "" where ``drop``."""
        mean, std, text = self.read(idx, flip)
        z0 = (mean + std * posterior_noise) * scaling_factor
        emb = torch.where(drop[:, None, None], self.uncond.to(text.dtype), text)
        return z0, emb

    def summary(self) -> dict:
        return {"streamed_cache": str(self.root), "buckets": [f"{w}x{h}" for w, h in self.plan.buckets],
                "bucket_counts": [int((self.bucket_of == j).sum()) for j in range(len(self.plan.buckets))]}
