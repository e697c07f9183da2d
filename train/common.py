"""Pieces the trainers share: typed config sections, the CLI, Accelerate setup, in-memory image
data, the step-keyed sampler and noise, atomic checkpoints, EMA, cache files and hashing.

Design notes
------------
* **Data lives in memory as tensors.** The training set is decoded once into a uint8 tensor
  ``(N, 3, R, R)`` on the training device; a step is tensor indexing only (no PIL, no DataLoader
  workers). That is what makes small-model CPU training fast and keeps the GPU fed.
  Data larger than memory goes through the U-Net's sharded on-disk cache instead
  (``data.streaming``, ``data.aspect_buckets``: train/data.py, train/buckets.py).
* **Randomness is a pure function of (seed, step).** The batch order (a fresh permutation per epoch)
  and every per-step random draw (timesteps, noise, flips, caption dropout) come from generators
  seeded with ``(seed, step)``; each step draws the randomness of the *global* batch (all processes,
  all accumulation micro-steps) and every process takes its slice. So ``--resume`` continues exactly
  (the "sampler state" is the step number, stored in the checkpoint), and a 2-process run sees the
  same samples and noise as a 1-process run with the same global batch.
* **Checkpoints are atomic.** ``accelerator.save_state`` writes into a hidden temporary folder
  which is renamed to ``checkpoint-STEP`` only after everything (weights, optimizer, scheduler, EMA,
  RNG states, resolved config, ``trainer_state.json``) is on disk; ``latest`` only ever resolves to
  a complete checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import yaml

from latentdiff.config import ConfigError, load_config, save_config
from latentdiff.data.datasets import (
    EMOJI_PARQUET,
    EMOJI_STYLES,
    emoji_parquet_path,
    read_emoji_table,
    style_caption,
)
from latentdiff.fs import atomic_write_text
from latentdiff.progress import disable_progress_bars

logger = logging.getLogger("latentdiff.train")

# embedded datasets read straight from their parquet with pyarrow, no `datasets` needed; the style names
# come from latentdiff.data's registry (EMOJI_STYLES): emoji, emoji:noto, emoji:twemoji, ..., emoji:all
_EMBEDDED_STYLES = {"emoji": "noto", "emoji_symbola": "symbola", **{f"emoji:{s}": s for s in EMOJI_STYLES}}
EMBEDDED_DATASETS = tuple(_EMBEDDED_STYLES)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint
CONFIG_FILE = "config.yaml"


# ----------------------------------------------------------------------------------------------
# Config sections shared by the trainers
# ----------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    source: str = ""                  # "emoji" (embedded), "emoji:<style>" (symbola, twemoji, openmoji, fluent, all), an imagefolder, or a datasets name/path
    split: str = "train"              # training split
    validation_split: str = "test"    # held-out split for validation loss / PSNR ("" = none)
    image_column: str = "image"
    caption_column: str = "text"
    resolution: int = 0               # 0 = the model config's resolution
    center_crop: bool = True
    random_flip: bool = False         # off by default: flags and text are not mirror-symmetric
    caption_dropout: float = 0.0      # probability a caption becomes "" (classifier-free guidance)
    style_captions: bool = True       # emoji:all only: every image twice, captioned "<name>" and "<name>, <style> style"
    recolour: int = 0                 # emoji sources: this many recoloured copies of each one-word object, captioned "blue apple" (latentdiff.emoji_recolour)
    recolour_real_repeats: int = 0    # with recolour: the real "<colour> <object>" rows ("green apple") this many extra times
    recolour_colours: list[str] = field(default_factory=list)  # with recolour: the colours painted ([] = the six hues; brown, black, white may be added)
    style_repeats: dict[str, int] = field(default_factory=dict)  # emoji sources: {twemoji: 1}: that style's real training rows (plain and suffixed) this many extra times
    max_samples: int = 0              # 0 = all; else a fixed random subset (quick experiments, tests)
    max_validation_samples: int = 256
    # streaming (U-Net trainer; train/data.py): the training split is encoded shard by shard into a
    # latent + text-embedding cache on disk and read per batch, instead of decoded into memory
    streaming: bool = False
    shard_size: int = 1024            # samples per cache shard (one is held in memory while building)
    num_workers: int = 2              # DataLoader workers decoding images while the cache is built
    # aspect-ratio buckets, kohya semantics (train/buckets.py); imply streaming
    aspect_buckets: bool = False
    min_bucket_reso: int = 0          # 0 = max(bucket_reso_steps, resolution / 2)
    max_bucket_reso: int = 0          # 0 = 2 x resolution
    bucket_reso_steps: int = 64       # bucket sides are multiples of it (of VAE x U-Net downsampling; 64 at SD scale)
    bucket_no_upscale: bool = False   # never enlarge: bucket = the image (shrunk to ~resolution^2) rounded down

    def validate(self):
        if not self.source:
            raise ValueError("data.source is empty: set it to 'emoji' (the embedded dataset), an imagefolder path "
                             "(metadata.jsonl or .txt captions) or a datasets name/path")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"data.caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.resolution < 0 or self.max_samples < 0 or self.max_validation_samples < 0:
            raise ValueError("data.resolution, data.max_samples and data.max_validation_samples must be >= 0")
        if self.recolour < 0:
            raise ValueError(f"data.recolour must be >= 0 (0 = off), got {self.recolour}")
        if self.recolour_real_repeats < 0 or (self.recolour_real_repeats and not self.recolour):
            raise ValueError(f"data.recolour_real_repeats must be >= 0 and needs data.recolour > 0, got "
                             f"{self.recolour_real_repeats} with data.recolour {self.recolour}")
        if self.recolour_colours:
            from latentdiff.emoji_recolour import RECOLOUR_COLOURS

            bad = [c for c in self.recolour_colours if c not in RECOLOUR_COLOURS]
            if bad or not self.recolour or len(set(self.recolour_colours)) != len(self.recolour_colours):
                raise ValueError(f"data.recolour_colours {list(self.recolour_colours)}: name each of "
                                 f"{', '.join(RECOLOUR_COLOURS)} at most once, with data.recolour > 0 "
                                 f"(got data.recolour {self.recolour}); [] paints the six hues")
        in_memory_emoji = self.source in EMBEDDED_DATASETS and not self.streaming and not self.aspect_buckets
        if self.recolour and not in_memory_emoji:
            raise ValueError(f"data.recolour works on the in-memory embedded emoji sources {EMBEDDED_DATASETS} "
                             f"(not {self.source!r}, streaming or aspect buckets): set data.recolour: 0")
        if self.style_repeats:
            bad = {k: v for k, v in self.style_repeats.items() if k not in EMOJI_PARQUET or v < 0}
            if bad or not in_memory_emoji:
                raise ValueError(f"data.style_repeats must map emoji styles ({', '.join(EMOJI_PARQUET)}) to counts "
                                 f">= 0 on an in-memory embedded emoji source (got {dict(self.style_repeats)} "
                                 f"with data.source {self.source!r}): fix it or set data.style_repeats: {{}}")
        if self.shard_size < 1 or self.num_workers < 0 or self.bucket_reso_steps < 1:
            raise ValueError("data.shard_size and data.bucket_reso_steps must be >= 1, data.num_workers >= 0")
        if self.min_bucket_reso < 0 or self.max_bucket_reso < 0 or (
                self.min_bucket_reso and self.max_bucket_reso and self.min_bucket_reso > self.max_bucket_reso):
            raise ValueError("data.min_bucket_reso and data.max_bucket_reso must be >= 0 (0 = default) and min <= max")


@dataclass
class OptimConfig:
    batch_size: int = 64                   # per process and micro-step
    gradient_accumulation_steps: int = 1   # global batch = batch_size x processes x accumulation
    learning_rate: float = 1e-4
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    lr_warmup_steps: int = 0               # linear warm-up from 0, for every scheduler
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0             # 0 = no clipping
    max_train_steps: int = 1000            # optimizer steps

    def validate(self):
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1 or self.max_train_steps < 1:
            raise ValueError("optim.batch_size, optim.gradient_accumulation_steps and optim.max_train_steps must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError(f"optim.learning_rate must be > 0, got {self.learning_rate}")


@dataclass
class EMAConfig:
    """Exponential moving average of the weights (diffusers' ``EMAModel``); decay 0 turns it off."""

    decay: float = 0.0
    use_warmup: bool = True    # decay_t = 1 - (1 + t)^-power, capped at decay (Karras' EMA warm-up)
    power: float = 0.75        # 3/4 reaches 0.999 at ~10k steps (2/3: at ~31k)
    update_after_step: int = 0

    def validate(self):
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1) (0 = off), got {self.decay}")


Device = Literal["auto", "cpu", "cuda"]
MixedPrecision = Literal["no", "fp16", "bf16"]


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser(prog: str, description: str, epilog: str, config_required: bool = True) -> argparse.ArgumentParser:
    """The one command line of every trainer; a trainer may add its own flags to it."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=config_required,
                   help="training config YAML (see configs/*_vae.yaml, configs/*_unet.yaml); flags override it")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--max-train-steps", type=int, help="override optim.max_train_steps")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override device (auto: CUDA when available)")
    p.add_argument("--num-threads", type=int, help="override cpu_threads (torch CPU threads; 0 = torch's default)")
    p.add_argument("--resume", metavar="latest|PATH",
                   help="continue from the newest complete checkpoint in output_dir/checkpoints, or from PATH")
    p.add_argument("--overwrite-output-dir", action="store_true",
                   help="start a fresh run in an output_dir that holds another run (its checkpoints are deleted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, dotted for sections, YAML-typed: --set optim.learning_rate=3e-4")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p


def parse_overrides(items: Sequence[str]) -> dict:
    """``["optim.batch_size=8", "data.random_flip=true"]`` → ``{"optim.batch_size": 8, ...}`` (YAML-typed)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.learning_rate=3e-4")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(e).split())}); quote "
                              "strings with special characters") from None
    return out


def load_train_config(args: argparse.Namespace, cls):
    """The config file, then ``--set`` overrides, then the named flags; errors name the bad key."""
    overrides = parse_overrides(args.overrides)
    if args.output_dir is not None:
        overrides["output_dir"] = args.output_dir
    if args.max_train_steps is not None:
        overrides["optim.max_train_steps"] = args.max_train_steps
    if args.device is not None:
        overrides["device"] = args.device
    if args.num_threads is not None:
        overrides["cpu_threads"] = args.num_threads
    if "model" not in overrides and args.config:
        found = _model_config_beside(args.config)
        if found:
            overrides["model"] = found
    return load_config(args.config, cls, overrides)


def _model_config_beside(config_path: str) -> str | None:
    """The shipped training configs name their model config as ``configs/tiny.yaml``, a path from the
    repository root; run from anywhere else, that is the file of the same name beside the training
    config. Returns that path when the written one does not exist from here (None otherwise)."""
    try:
        data = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None  # load_config reports it
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, str) or not model or Path(model).is_absolute() or Path(model).is_file():
        return None
    beside = Path(config_path).parent / Path(model).name
    if beside.is_file():
        logger.info("model: %s is not a file from here; using %s beside the config", model, beside)
        return str(beside)
    return None


# ----------------------------------------------------------------------------------------------
# Accelerate, seeds, devices
# ----------------------------------------------------------------------------------------------


def set_cpu_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` when n > 0. On a shared, loaded CPU one thread per process is
    often several times faster than OpenMP threads competing for cores."""
    if n > 0:
        torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_mixed_precision(requested: str, device: str) -> str:
    """``requested`` if the device supports it; on CPU always "no" (bf16 autocast on CPU is slow
    and changes results), bf16 falls back to fp16 on GPUs without bf16."""
    if requested == "no":
        return "no"
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        logger.warning("mixed_precision=%s ignored on CPU; training in fp32", requested)
        return "no"
    if requested == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        logger.warning("this GPU has no bf16; using fp16 mixed precision")
        return "fp16"
    return requested


def make_accelerator(cfg, output_dir: Path, project_name: str):
    """``Accelerator`` with gradient accumulation, mixed precision and TensorBoard logging in
    ``output_dir/logs``. Launchers (``accelerate launch``) set processes and devices."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is available; use --device cpu or --device auto")
    try:
        import tensorboard  # noqa: F401

        log_with = "tensorboard"
    except ImportError:
        log_with = None
        logger.warning("tensorboard is not installed; logging to the console only")
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision, cfg.device),
        cpu=cfg.device == "cpu",
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    if log_with:
        accelerator.init_trackers(project_name, config=flat_hparams(cfg))
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") and \
            accelerator.distributed_type.name != "FSDP":  # accelerate runs CPU processes as DDP, whatever it was told
        logger.warning("FSDP was requested (accelerate config / --use_fsdp) but accelerate runs %s on %s: the "
                       "weights are replicated, not sharded (FSDP through accelerate needs GPUs)",
                       accelerator.distributed_type.name, accelerator.device)
    return accelerator


def flat_hparams(cfg) -> dict:
    """Config as flat scalars for TensorBoard's hparams (lists become strings)."""
    out = {}

    def walk(prefix, obj):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(v):
                walk(key + ".", v)
            elif isinstance(v, (int, float, str, bool)):
                out[key] = v
            else:
                out[key] = str(v)

    walk("", cfg)
    return out


# ----------------------------------------------------------------------------------------------
# Optimizer, LR schedule, EMA
# ----------------------------------------------------------------------------------------------


def make_optimizer(params, o: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019)."""
    return torch.optim.AdamW(params, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2),
                             weight_decay=o.adam_weight_decay, eps=o.adam_epsilon)


def make_lr_scheduler(optimizer, o: OptimConfig):
    """diffusers' schedulers, stepped once per optimizer step (not per process)."""
    from diffusers.optimization import get_scheduler

    name = "constant_with_warmup" if o.lr_scheduler == "constant" and o.lr_warmup_steps else o.lr_scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=o.lr_warmup_steps, num_training_steps=o.max_train_steps)


def make_ema(params, e: EMAConfig):
    """diffusers' ``EMAModel`` over ``params`` (or a module's parameters), or None when ``e.decay == 0``."""
    if not e.decay:
        return None
    from diffusers.training_utils import EMAModel

    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    return EMAModel(params, decay=e.decay, use_ema_warmup=e.use_warmup, power=e.power,
                    update_after_step=e.update_after_step, foreach=True)


def ema_copy(module: torch.nn.Module, ema) -> torch.nn.Module:
    """A detached copy of ``module`` carrying the EMA weights (the training module is untouched)."""
    import copy

    clone = copy.deepcopy(module)
    if ema is not None:
        ema.copy_to(clone.parameters())
    return clone.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# Data: decoded once into tensors
# ----------------------------------------------------------------------------------------------


@dataclass
class ImageData:
    """A split in memory: ``images`` uint8 (N, 3, R, R); ``captions[i]`` its caption."""

    images: torch.Tensor
    captions: list[str]
    source: str
    split: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def fingerprint(self) -> str:
        """sha256 of the pixels and captions: identifies the data content for cache keys."""
        h = hashlib.sha256()
        h.update(self.images.contiguous().cpu().numpy().tobytes())
        h.update("\x00".join(self.captions).encode("utf-8"))
        return h.hexdigest()


def embedded_parquet(name: str) -> Path:
    """The Parquet file of a single-style embedded dataset (``emoji:all`` is several: see read_emoji_table)."""
    return emoji_parquet_path(_EMBEDDED_STYLES[name])


def _decode_rgb(png: bytes, resolution: int, center_crop: bool):
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    if im.size != (resolution, resolution):
        w, h = im.size
        if center_crop and w != h:
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def embedded_split(d: DataConfig, split: str) -> tuple[list[bytes], list[str], list[str]]:
    """The embedded emoji parquet's ``split``, undecoded: (PNG bytes, captions, styles), read with
    pyarrow directly (no ``datasets`` needed). ``emoji:all`` with ``style_captions``: each image a
    second time with its style named ("red apple, twemoji style")."""
    style = _EMBEDDED_STYLES[d.source]
    try:
        table = read_emoji_table("all", style, columns=["image", d.caption_column, "split"])
    except FileNotFoundError as e:
        raise FileNotFoundError(f"embedded dataset {d.source!r} not found ({e}); reinstall latentdiff") from None
    splits = table.column("split").to_pylist()
    if split not in set(splits):
        raise ValueError(f"split {split!r} not in {d.source}; choose one of {sorted(set(splits))}")
    rows = [i for i, s in enumerate(splits) if s == split]
    images_col = table.column("image").to_pylist()
    captions_col = table.column(d.caption_column).to_pylist()
    styles_col = table.column("style").to_pylist()
    pngs, captions = [images_col[i]["bytes"] for i in rows], [captions_col[i] or "" for i in rows]
    styles = [styles_col[i] for i in rows]
    if style == "all" and d.style_captions:
        pngs, styles = pngs + pngs, styles + styles
        captions = captions + [style_caption(c, s) for c, s in zip(captions, styles)]
    return pngs, captions, styles


def _append_rows(images: torch.Tensor, captions: list[str], from_images: torch.Tensor, from_captions: list[str],
                 rows: list[int]) -> tuple[torch.Tensor, list[str]]:
    """``images``/``captions`` with rows ``rows`` of ``from_images``/``from_captions`` (repeats allowed) after them."""
    return torch.cat([images, from_images[torch.tensor(rows, dtype=torch.long)]]), captions + [from_captions[i] for i in rows]


def load_image_data(d: DataConfig, split: str, resolution: int) -> ImageData:
    """Decode a split into memory. The embedded emoji parquet is read with pyarrow directly (no
    ``datasets`` needed); every other source goes through :func:`latentdiff.data.build_dataset`."""
    if d.source in EMBEDDED_DATASETS:
        pngs, captions, styles = embedded_split(d, split)
        arrays = [_decode_rgb(png, resolution, d.center_crop) for png in pngs]
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        real_images, real_captions = images, captions
        if d.recolour and split == d.split:  # training rows only; held-out data stays real
            from latentdiff.emoji_recolour import recolour_rows

            extra, extra_captions = recolour_rows(images, captions, d.recolour,
                                                  **({"colours": tuple(d.recolour_colours)} if d.recolour_colours else {}))
            logger.info("data %s (%s): %d recoloured rows added to %d", d.source, split, len(extra), len(images))
            if d.recolour_real_repeats:  # the real colour-word rows, repeated so the copies do not outweigh them
                from latentdiff.emoji_recolour import real_colour_object_rows

                keep = real_colour_object_rows(captions) * d.recolour_real_repeats
                logger.info("data %s (%s): %d real colour-word rows repeated %d more times",
                            d.source, split, len(keep) // d.recolour_real_repeats, d.recolour_real_repeats)
                extra, extra_captions = _append_rows(extra, extra_captions, images, captions, keep)
            images, captions = torch.cat([images, extra]), captions + extra_captions
        if d.style_repeats and split == d.split:  # real rows of the named styles (both captions), again
            keep = [i for i, s in enumerate(styles) for _ in range(d.style_repeats.get(s, 0))]
            logger.info("data %s (%s): %d rows of styles %s repeated (%d rows added)", d.source, split,
                        sum(1 for s in styles if d.style_repeats.get(s, 0)), dict(d.style_repeats), len(keep))
            images, captions = _append_rows(images, captions, real_images, real_captions, keep)
    else:
        try:
            from latentdiff.data import build_dataset
        except ImportError as e:
            raise ValueError(f"data.source {d.source!r} needs latentdiff.data.build_dataset ({e}); the embedded "
                             f"sources {EMBEDDED_DATASETS} work without it") from None
        ds = build_dataset(d.source, split=split, image_column=d.image_column, caption_column=d.caption_column,
                           resolution=resolution, center_crop=d.center_crop, random_flip=False, caption_dropout=0.0)
        if getattr(ds, "report", None) is not None:
            logger.info("data %s (%s): %s", d.source, split, ds.report)  # converted / skipped items, counted
        items = [ds[i] for i in range(len(ds))]
        # pixel_values in [-1, 1] -> uint8, the in-memory format
        images = torch.stack([((it["pixel_values"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for it in items])
        captions = [it["caption"] for it in items]
    if len(captions) == 0:
        raise ValueError(f"{d.source} split {split!r} is empty: nothing to train on")
    limit = d.max_samples if split == d.split else d.max_validation_samples
    if limit and len(captions) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(captions), size=limit, replace=False))  # fixed subset
        images = images[torch.from_numpy(keep)]
        captions = [captions[i] for i in keep]
    return ImageData(images, captions, d.source, split)


def load_validation_data(d: DataConfig, resolution: int) -> ImageData | None:
    """The held-out split ``d.validation_split``, or None: when it is "" (none), and when the source
    has no such split (a flat image folder, a single Parquet file), with a note saying so; README's
    own-data command then trains without validation instead of failing."""
    from latentdiff.errors import MissingSplitError

    if not d.validation_split:
        return None
    try:
        return load_image_data(d, d.validation_split, resolution)
    except MissingSplitError as e:
        logger.warning("training without validation: %s", e)
        return None


# ----------------------------------------------------------------------------------------------
# Captions: the table of unique captions, token ids, the frozen text encoder's embeddings
# ----------------------------------------------------------------------------------------------


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """(N, 77) input ids, padded and truncated as the pipeline does."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def caption_table(captions: list[str]) -> tuple[list[str], torch.Tensor]:
    """Unique captions (sorted) + "" last, and each sample's row in that table."""
    unique = sorted(set(captions) - {""})
    table = unique + [""]
    row = {c: i for i, c in enumerate(table)}
    return table, torch.tensor([row[c] for c in captions], dtype=torch.long)


@torch.no_grad()
def encode_text(text_encoder, token_ids: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """Last hidden state (U, L, D) of the CLIP text encoder, as Stable Diffusion conditions on it."""
    out = [text_encoder(token_ids[i:i + batch_size].to(device))[0].float() for i in range(0, len(token_ids), batch_size)]
    return torch.cat(out)


def to_pixels(images_u8: torch.Tensor, flip: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
    """uint8 (B, 3, R, R) → float in [-1, 1]; ``flip`` (B,) bool mirrors those images horizontally."""
    x = images_u8.to(dtype) / 127.5 - 1.0
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


# ----------------------------------------------------------------------------------------------
# Step-keyed randomness and batch order
# ----------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int, device: torch.device, stream: int = 0) -> torch.Generator:
    """A generator for optimizer step ``step``: the same numbers on every process and on resume."""
    g = torch.Generator(device=device)
    g.manual_seed(((seed * 1_000_003 + step) * 1_009 + stream) % (2**63 - 1))
    return g


class StepSampler:
    """Sample indices for each optimizer step: epoch e visits ``randperm(N)`` seeded by (seed, e),
    and global sample position p = step·G + j (G = global batch) maps to ``perm_{p // N}[p % N]``.
    The order is a pure function of (seed, step), so the sampler's state is the step number."""

    def __init__(self, num_samples: int, global_batch: int, seed: int, device: torch.device):
        self.n, self.global_batch, self.seed, self.device = num_samples, global_batch, seed, device
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = step_generator(self.seed, epoch, self.device, stream=7)
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=g, device=self.device)
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """(G,) dataset indices of step ``step``'s global batch, on device, no host sync."""
        start = step * self.global_batch
        pos = torch.arange(start, start + self.global_batch, device=self.device)
        out = torch.empty_like(pos)
        for epoch in range(start // self.n, (start + self.global_batch - 1) // self.n + 1):
            mask = (pos // self.n) == epoch
            out = torch.where(mask, self._perm(epoch)[pos % self.n], out)
        return out

    def epoch(self, step: int) -> float:
        return step * self.global_batch / self.n


def local_slice(micro: int, accelerator, batch_size: int) -> slice:
    """This process's part of the global batch in accumulation micro-step ``micro``."""
    start = (micro * accelerator.num_processes + accelerator.process_index) * batch_size
    return slice(start, start + batch_size)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with ``trainer_state.json``), oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


RUN_FILE = "run.json"  # which trainer and run wrote this output_dir (a fresh run writes a new one)


def start_run(output_dir: str, resume: str | None, *, trainer: str, overwrite: bool = False,
              exports: Sequence[str] = ("final",), cfg=None) -> Path | None:
    """Check ``output_dir`` before any long work (reading only) and return the checkpoint to resume
    from, or None for a fresh run; :func:`begin_run` writes, once the run really starts.

    * an empty ``output_dir`` is an error (it would mean the current folder);
    * a fresh run (no ``resume``) into a folder that holds another run (complete checkpoints or an
      export such as ``final/``) is refused: its checkpoints would outrank the new ones when pruning,
      ``final/`` would be replaced and ``--resume latest`` would pick the old run. ``overwrite``
      (``--overwrite-output-dir``) lets :func:`begin_run` delete that run's checkpoints;
    * ``resume`` into a folder written by another trainer is refused;
    * ``resume="latest"`` skips checkpoints whose files are damaged (truncated by a crash or a full
      disk), falling back to the newest intact one, with a warning naming what was skipped;
    * ``--set`` changes that a resume would silently undo (the optimizer's and the LR schedule's
      settings come back from the checkpoint) are refused: see :func:`check_resume_overrides`.
    """
    from latentdiff.errors import OutputExistsError, UserError

    if not str(output_dir).strip():
        raise UserError("output_dir is empty, which would write into the current folder; set --output-dir DIR")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output_dir {out} is a file, not a folder; choose another --output-dir")
    if getattr(cfg, "device", None) == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available (or torch was built without CUDA); use "
                        "--device cpu or --device auto")
    previous = _read_run_record(out)
    if previous.get("trainer") not in (None, trainer):
        raise UserError(f"output_dir {out} holds a `latentdiff train {previous['trainer']}` run, not a {trainer} "
                        "run; choose another --output-dir")
    if resume:
        ckpt = resolve_resume(out, resume)
        if ckpt is not None:
            if cfg is not None:
                check_resume_overrides(ckpt, cfg)
            return ckpt
        # --resume latest with no checkpoint yet starts from scratch: the same checks as a fresh run
    found = list_checkpoints(out)
    exported = [out / e for e in exports if (out / e).exists()]
    if (found or exported) and not overwrite:
        parts = [str(found[-1][1]) + (f" and {len(found) - 1} older checkpoint(s)" if len(found) > 1 else "")
                 ] if found else []
        raise OutputExistsError(
            f"output_dir {out} already holds a training run ({', '.join(parts + [str(p) for p in exported])}); "
            "continue it with --resume latest, choose a new --output-dir, or pass --overwrite-output-dir to "
            "start afresh there")
    return None


# restored by accelerator.load_state (optimizer param groups, LR scheduler state), whatever the config says now
RESTORED_ON_RESUME = ("optim.learning_rate", "optim.lr_scheduler", "optim.lr_warmup_steps", "optim.adam_beta1",
                      "optim.adam_beta2", "optim.adam_weight_decay", "optim.adam_epsilon")


def check_resume_overrides(ckpt: Path, cfg) -> None:
    """A resumed run takes its learning rate, schedule and Adam settings from the checkpoint; a config
    that asks for other values would be silently ignored, so it is an error naming them."""
    from latentdiff.config import to_dict
    from latentdiff.errors import UserError

    try:
        saved = yaml.safe_load((ckpt / CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # an older checkpoint without its config: nothing to compare
    now = to_dict(cfg)

    def get(d, dotted):
        for k in dotted.split("."):
            d = d.get(k) if isinstance(d, dict) else None
        return d

    changed = [f"{k} {get(saved, k)!r} -> {get(now, k)!r}" for k in RESTORED_ON_RESUME
               if get(saved, k) is not None and get(now, k) is not None and get(saved, k) != get(now, k)]
    if changed:
        raise UserError(f"--resume {ckpt}: {', '.join(changed)} would be ignored (the optimizer and the learning-rate "
                        "schedule continue from the checkpoint); keep the checkpoint's values, or start a new run "
                        "(--overwrite-output-dir or another --output-dir) to change them")


def begin_run(output_dir: Path, *, trainer: str, fresh: bool, overwrite: bool = False) -> None:
    """The writes :func:`start_run` checked for (main process, once the run starts): delete the
    previous run's checkpoints when ``overwrite`` (only ``checkpoint-N`` folders we wrote), and
    record which trainer writes this folder (``run.json``)."""
    out = Path(output_dir)
    if fresh and overwrite:
        found = list_checkpoints(out)
        for _, p in found:
            shutil.rmtree(p)
        if found:
            logger.warning("--overwrite-output-dir: deleted the previous run's %d checkpoint(s) in %s", len(found),
                           checkpoint_dir(out))
    if fresh or not (out / RUN_FILE).is_file():
        atomic_write_text(out / RUN_FILE, json.dumps({"trainer": trainer, "run_id": os.urandom(8).hex(),
                                                      "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                                     indent=2))


def _read_run_record(out: Path) -> dict:
    try:
        data = json.loads((out / RUN_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """``None`` → start fresh; ``"latest"`` → newest complete, intact checkpoint (None, with a message,
    when there is none yet); a path → that checkpoint, which must be complete and intact."""
    from latentdiff.errors import UserError

    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("--resume latest: no checkpoint in %s yet; starting from scratch", checkpoint_dir(output_dir))
            return None
        for _, path in reversed(found):
            problem = damaged_files(path)
            if not problem:
                return path
            logger.warning("checkpoint %s is damaged (%s); falling back to the previous complete checkpoint",
                           path, problem)
        raise UserError(f"--resume latest: every checkpoint in {checkpoint_dir(output_dir)} is damaged; start a "
                        "fresh run (--overwrite-output-dir) or restore one from a backup")
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder ({STATE_FILE} missing); "
                                f"pass 'latest' or a folder like {checkpoint_dir(output_dir)}/checkpoint-1000")
    problem = damaged_files(path)
    if problem:
        raise UserError(f"--resume {resume}: the checkpoint is damaged ({problem}); pass an older checkpoint or "
                        "--resume latest (which skips damaged ones)")
    return path


def damaged_files(path: Path) -> str:
    """'' if every file of checkpoint ``path`` reads back whole, else what is wrong with the first bad
    one: safetensors headers and sizes, the zip directory and CRCs of torch.save files, JSON/YAML."""
    import zipfile

    from latentdiff.io import check_safetensors_file

    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            if f.suffix == ".safetensors":
                check_safetensors_file(f)
            elif f.suffix in (".bin", ".pt", ".pth", ".pkl"):
                if not zipfile.is_zipfile(f):
                    return f"{f.name} is truncated or not a torch file"
                with zipfile.ZipFile(f) as z:
                    bad = z.testzip()
                if bad is not None:
                    return f"{f.name}: {bad} is corrupt"
            elif f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix in (".yaml", ".yml"):
                yaml.safe_load(f.read_text())
        except (ValueError, OSError, zipfile.BadZipFile, yaml.YAMLError) as e:
            return f"{f.name}: {' '.join(str(e).split())[:200]}"
    return ""


def check_finite(step: int, output_dir: Path, loss: float | None = None, modules: dict | None = None,
                 hint: str = "lower optim.learning_rate (or set optim.max_grad_norm)",
                 last_good: Path | None = None) -> None:
    """Stop a diverged run before it writes anything: a NaN/Inf ``loss`` or weights of ``modules``
    raise :class:`NonFiniteError` naming the step, the cause and the last good checkpoint
    (``last_good``, else the newest in ``output_dir/checkpoints``)."""
    from latentdiff.errors import NonFiniteError

    problem = ""
    if loss is not None and not math.isfinite(loss):
        problem = f"the training loss is {loss}"
    for name, module in (modules or {}).items():
        if problem:
            break
        bad = [n for n, p in module.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            problem = f"the {name} weights hold NaN/Inf ({', '.join(bad[:3])})"
    if not problem:
        return
    found = [p for _, p in list_checkpoints(output_dir)] if last_good is None else \
        [last_good] if last_good.exists() else []
    last = (f"the last good checkpoint is {found[-1]} (continue from it with --resume once fixed)"
            if found else "no checkpoint was saved yet")
    raise NonFiniteError(f"training diverged at step {step}: {problem}; nothing was saved for this step and {last}; "
                         f"{hint}")


def save_checkpoint(accelerator, output_dir: Path, step: int, cfg, state: dict, keep: int) -> Path | None:
    """``accelerator.save_state`` into a hidden temp folder, then the resolved config and
    ``trainer_state.json``, then one rename to ``checkpoint-STEP``; keep the newest ``keep``.
    A crash anywhere before the rename leaves only a hidden folder that ``latest`` ignores.

    Never a NaN checkpoint: the models' weights and the loss are checked first. A full disk (or any
    write error) removes the partial folder, keeps every earlier checkpoint and says so."""
    from latentdiff.fs import share_tree

    root = checkpoint_dir(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}"
    # (the weights, not state["loss"]: that is the loss of the last log step, NaN before the first one)
    check_finite(step, output_dir, modules={type(accelerator.unwrap_model(m)).__name__: m for m in accelerator._models})
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_config(cfg, tmp / CONFIG_FILE)
            atomic_write_text(tmp / STATE_FILE, json.dumps({"step": step, **state}, indent=2))
            share_tree(tmp)  # one permissions rule: save_state's weights come out 0600 otherwise
            _fsync_tree(tmp)
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, root, step) from None
    if accelerator.is_main_process:
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def _write_error(e: BaseException, root: Path, step: int) -> BaseException:
    """A one-line OSError for a failed checkpoint write; torch reports a full disk as a RuntimeError
    ("... unexpected pos ..."), which is recognised by the free space left."""
    import errno

    found = list_checkpoints(root.parent)
    kept = f"the previous checkpoint {found[-1][1]} is kept" if found else "no earlier checkpoint exists"
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "unexpected pos" in str(e) \
        or (free is not None and free < 64 * 2**20)
    if full:
        return OSError(errno.ENOSPC, f"no space left on {root} while saving checkpoint-{step}: the partial checkpoint "
                                     f"was removed and {kept}; free some space and continue with --resume latest")
    if isinstance(e, OSError):
        return OSError(e.errno, f"cannot write checkpoint-{step} in {root} ({e.strerror or e}); the partial checkpoint "
                                f"was removed and {kept}")
    return e  # a RuntimeError that is not about the disk: a bug, keep it as it is


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (keep <= 0: keep all), and stale temp folders."""
    root = checkpoint_dir(output_dir)
    for p in root.glob(".tmp-checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep > 0:
        for _, p in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(accelerator, path: Path) -> dict:
    """Restore everything ``save_checkpoint`` saved; returns trainer_state.json. A checkpoint of a
    different architecture (shapes or parameter names changed) is an error naming what differs."""
    import pickle
    import zipfile

    from latentdiff.errors import UserError

    def unreadable(e):
        return UserError(f"--resume {path}: the checkpoint cannot be read ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}); resume from an older one (--resume "
                         f"{path.parent}/checkpoint-N) or start afresh (--overwrite-output-dir)")

    try:
        accelerator.load_state(str(path))
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise unreadable(e) from None
    except RuntimeError as e:
        text = " ".join(str(e).split())
        if any(m in text for m in ("PytorchStreamReader", "inline_container", "invalid header", "enforce fail")):
            raise unreadable(e) from None
        if "size mismatch" in text or "Missing key" in text or "Unexpected key" in text or "Error(s) in loading" in text:
            detail = text[text.find("size mismatch"):][:240] if "size mismatch" in text else text[:240]
            raise UserError(f"--resume {path}: the checkpoint does not fit the model being trained (the architecture "
                            f"changed since it was saved: {detail}); resume with the config it was saved with "
                            f"({path / CONFIG_FILE}) or start a new --output-dir") from None
        raise
    return json.loads((path / STATE_FILE).read_text())


# ----------------------------------------------------------------------------------------------
# Hashing and cache files
# ----------------------------------------------------------------------------------------------


def hash_module(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(parts: dict) -> str:
    """A short key over everything the cached tensors depend on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def save_tensors_atomic(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """A safetensors cache or checkpoint file, atomically (:func:`latentdiff.fs.save_safetensors_atomic`)."""
    from latentdiff.fs import save_safetensors_atomic

    save_safetensors_atomic(tensors, path, {k: str(v) for k, v in (metadata or {}).items()})


def load_tensors(path: Path, device) -> dict:
    from safetensors.torch import load_file

    return {k: v.to(device) for k, v in load_file(str(path), device="cpu").items()}


# ----------------------------------------------------------------------------------------------
# Metrics, summaries, small helpers
# ----------------------------------------------------------------------------------------------


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1], shape (B,)."""
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def write_summary(path: Path, summary: dict) -> None:
    atomic_write_text(path, json.dumps(summary, indent=2))


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def check_loop_settings(cfg) -> None:
    """The loop's own settings, shared by the trainers' configs, checked when the config loads (not
    at the first log step or the first validation, minutes in): intervals, limits, the validation
    sampler."""
    from latentdiff.errors import UserError

    if getattr(cfg, "log_every", 1) < 1:
        raise UserError(f"log_every must be >= 1 (steps between loss logs), got {cfg.log_every}")
    for name in ("checkpointing_steps", "validation_steps", "checkpoints_total_limit", "cpu_threads"):
        if getattr(cfg, name, 0) < 0:
            raise UserError(f"{name} must be >= 0 (0 = off / all / torch's default), got {getattr(cfg, name)}")
    if getattr(cfg, "validation_num_inference_steps", 1) < 1:
        raise UserError(f"validation_num_inference_steps must be >= 1, got {cfg.validation_num_inference_steps}")
    sampler = getattr(cfg, "validation_sampler", "")
    if sampler:
        from latentdiff.samplers import SAMPLERS

        if sampler not in SAMPLERS:
            raise UserError(f"validation_sampler {sampler!r} is unknown; choose one of {', '.join(SAMPLERS)} "
                            "or '' (the model's)")


def check_model_source(model: str, init_from: str) -> None:
    if bool(model) == bool(init_from):
        raise ValueError("set exactly one of `model` (a model config YAML such as configs/emoji.yaml, to train from "
                         "scratch) and `init_from` (an existing pipeline folder, to continue from its weights)")
    if model and not Path(model).is_file():
        raise FileNotFoundError(f"model config {model} not found (a relative path is looked up beside the training config, then from the current folder); the shipped ones are configs/emoji.yaml, "
                                "configs/tiny.yaml, configs/sd15.yaml")
    if init_from and not Path(init_from).is_dir():
        raise FileNotFoundError(f"init_from {init_from}: not a folder (expected a pipeline folder with model_index.json)")


def run_main(train_fn, cls, argv, prog, description, epilog, flags: dict | None = None,
             config_required: bool = True) -> int:
    """Parse, load and validate the config (errors before any training), then train. ``flags``:
    a trainer's own ``--flag`` → (config key, help), added to the one parser; without
    ``config_required`` a run from flags alone starts from ``cls``'s defaults."""
    import json as _json

    p = build_parser(prog, description, epilog, config_required=config_required)
    for flag, (_, text) in (flags or {}).items():
        p.add_argument(flag, help=text)
    args = p.parse_args(argv)
    for flag, (key, _) in (flags or {}).items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            args.overrides.append(f"{key}={_json.dumps(value)}")
    if args.no_progress:
        disable_progress_bars()
    cfg = load_train_config(args, cls)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("accelerate", "accelerate.accelerator", "accelerate.checkpointing"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one line per saved file is noise
    train_fn(cfg, resume=args.resume, config_path=args.config, overwrite=args.overwrite_output_dir)
    return 0


def module_entry(main) -> None:
    """``python -m latentdiff.train.X`` / ``accelerate launch -m latentdiff.train.X``: run ``main`` and
    exit with its code; user errors print one line and exit 2 (:func:`latentdiff.errors.run_cli`, as
    the ``latentdiff`` CLI does), instead of a traceback from every process."""
    import sys

    from latentdiff.errors import run_cli

    sys.exit(run_cli(main))


__all__ = [
    "ConfigError", "DataConfig", "OptimConfig", "EMAConfig", "ImageData", "StepSampler", "build_parser",
    "load_train_config", "module_entry", "make_accelerator", "save_checkpoint", "resolve_resume", "list_checkpoints",
    "start_run", "begin_run", "check_finite", "damaged_files",
    "load_image_data", "step_generator", "hash_module", "cache_key", "psnr", "math",
]
