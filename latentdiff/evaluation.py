"""The generic metrics of ``latentdiff eval`` (the CLI is :mod:`latentdiff.eval_cli`): how good is a
text-to-image model trained on a captioned, labelled dataset?

Every measurement is a function returning a plain dict (used by tests and by the CLI, which prints
markdown tables and writes JSON). What is measured:

* **Evaluator** (:class:`EvaluatorNet`): a small residual CNN trained by the project on the real
  training split to predict the label columns (``group`` and ``subgroup`` for the emoji). Its
  accuracy on images generated from the test captions, next to its accuracy on the real test
  images, says whether a generated image shows the right kind of thing (the role the Inception
  classifier plays in the Inception Score, Salimans et al. 2016). It is cached in a folder.
* **Fréchet distance** in the evaluator's penultimate feature space (FID, Heusel et al. 2017),
  generated vs real test images, next to real train vs real test: the natural scale of the number.
* **Emoji checks that need no model** live with the emoji domain (:mod:`latentdiff.emoji_checks`, the
  reports in :mod:`latentdiff.emoji_eval`): a colour word ("red heart") against the dominant named
  colour of the non-background pixels, skin-tone modifiers against skin luminance; the guidance sweep
  takes such a judge as ``colour_rate``.
* **Sampler report**: latent RMSE of DDIM, DDPM and DPM-Solver++(2M) at 5/10/20/50 steps against a
  1000-step DDIM (η = 0) solution from the same initial noise (the ODE's answer; Song et al. 2021,
  Lu et al. 2022), and the evaluator's accuracy at each. DDPM is stochastic: its error against
  the ODE solution does not vanish with more steps (it samples a different image).
* **Guidance sweep**: accuracy, Fréchet distance and colour obedience vs the classifier-free
  guidance scale (Ho & Salimans 2022).
* **Diversity** (:mod:`latentdiff.diversity`): mean pairwise difference between images from 8 seeds
  for generic one-word prompts, next to the real images matching the word.
* **Composition** and **style** (:mod:`latentdiff.emoji_eval`): colour × object prompts the data
  never shows, judged for colour and silhouette; a style classifier's verdict on "…, <style> style".
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger("latentdiff.eval")

EVALUATOR_WEIGHTS = "evaluator.safetensors"
EVALUATOR_META = "evaluator.json"


# --------------------------------------------------------------------------- data


@dataclass
class ImageSet:
    """Images (N, 3, R, R) float32 in [0, 1], their captions, and integer labels per column."""

    images: torch.Tensor
    captions: list[str]
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    label_names: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, index: Sequence[int]) -> "ImageSet":
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return ImageSet(self.images[idx], [self.captions[i] for i in idx.tolist()],
                        {k: v[idx] for k, v in self.labels.items()}, self.label_names)

    @classmethod
    def concat(cls, *sets: "ImageSet") -> "ImageSet":
        """The rows of ``sets`` one after another; their labels must be numbered alike (:func:`align_labels`)."""
        first = sets[0]
        if any(s.label_names != first.label_names or set(s.labels) != set(first.labels) for s in sets):
            raise ValueError("ImageSet.concat: the sets number their labels differently; align_labels them first")
        return cls(torch.cat([s.images for s in sets]), [c for s in sets for c in s.captions],
                   {k: torch.cat([s.labels[k] for s in sets]) for k in first.labels}, first.label_names)


def load_image_set(source: str, split: str, resolution: int, label_columns: Sequence[str] = (), *,
                   image_column: str = "image", caption_column: str = "text", progress: bool = False) -> ImageSet:
    """Read a whole split of any :func:`latentdiff.data.build_dataset` source into memory
    (centre-cropped to ``resolution``). Label ids agree between splits of the shipped emoji."""
    from tqdm.auto import tqdm

    from latentdiff.data.datasets import build_dataset

    ds = build_dataset(source, split=split, image_column=image_column, caption_column=caption_column,
                       label_columns=tuple(label_columns), resolution=resolution, center_crop=True)
    images = torch.empty(len(ds), 3, resolution, resolution)
    captions, labels = [], {c: torch.empty(len(ds), dtype=torch.long) for c in label_columns}
    for i in tqdm(range(len(ds)), desc=f"load {source}:{split}", disable=not progress):
        item = ds[i]
        images[i] = item["pixel_values"] * 0.5 + 0.5
        captions.append(item["caption"])
        for c in label_columns:
            labels[c][i] = item[c]
    return ImageSet(images, captions, labels, {c: list(ds.label_names[c]) for c in label_columns})


def random_affine(x: torch.Tensor, shift: float, scale_jitter: float, generator: torch.Generator,
                  fill: float) -> torch.Tensor:
    """Random per-image translation (±``shift`` pixels) and zoom (1 ± ``scale_jitter``); the border is
    filled with ``fill`` (the background). Random numbers come from a CPU generator, so a run draws
    the same on CPU and GPU."""
    if shift == 0 and scale_jitter == 0:
        return x
    b, _, h, _ = x.shape
    r = torch.rand(b, 3, generator=generator) * 2 - 1  # (B, 3) in [-1, 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 + scale_jitter * r[:, 0]
    theta[:, :, 2] = r[:, 1:] * (2 * shift / h)  # normalised coordinates: 2/h per pixel
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


# --------------------------------------------------------------------------- evaluator network


class _ResBlock(nn.Module):
    """conv3×3 → GN → SiLU → conv3×3 → GN, plus the input (He et al. 2016)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(8, ch), nn.GroupNorm(8, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        return F.silu(x + self.norm2(self.conv2(h)))


class EvaluatorNet(nn.Module):
    """A small ResNet-style classifier with one linear head per label column.

    Input: images (B, 3, H, W) in [0, 1], any size (resized to ``resolution`` with area averaging).
    Stages of ``width × (1, 2, 4)`` channels at R, R/2, R/4, global average pooling → the
    ``features`` (B, 4·width) used for the Fréchet distance → dropout → heads.
    """

    def __init__(self, num_classes: dict[str, int], width: int = 32, resolution: int = 32):
        super().__init__()
        self.resolution, self.width = resolution, width
        self.num_classes = dict(num_classes)
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU())
        self.stages = nn.Sequential(
            _ResBlock(w),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), _ResBlock(2 * w),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), _ResBlock(4 * w),
        )
        self.dropout = nn.Dropout(0.2)
        self.heads = nn.ModuleDict({col: nn.Linear(4 * w, n) for col, n in num_classes.items()})

    @property
    def feature_dim(self) -> int:
        return 4 * self.width

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(next(self.parameters()).device, torch.float32)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            down = x.shape[-1] > self.resolution
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="area" if down else "bilinear",
                              align_corners=None if down else False)
        return x * 2 - 1

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(self.prepare(images))).mean((2, 3))  # (B, 4w)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.dropout(self.features(images))
        return {col: head(f) for col, head in self.heads.items()}


def _blur(x: torch.Tensor, generator: torch.Generator, p: float) -> torch.Tensor:
    """Blur a random fraction ``p`` of the batch with a 3×3 binomial kernel: generated images are
    softer than the crisp emoji, and the evaluator should judge content, not sharpness."""
    k = torch.tensor([1.0, 2.0, 1.0], device=x.device)
    k = (k[:, None] * k[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])
    pick = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)[:, None, None, None]
    return torch.where(pick, blurred, x)


def save_evaluator(net: EvaluatorNet, folder: str | Path, meta: dict) -> None:
    """``evaluator.safetensors`` + ``evaluator.json`` (architecture, label names, provenance), atomically."""
    from safetensors.torch import save_file

    from latentdiff.io import atomic_dir

    with atomic_dir(folder) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                  str(tmp / EVALUATOR_WEIGHTS))
        info = {"num_classes": net.num_classes, "width": net.width, "resolution": net.resolution, **meta}
        (tmp / EVALUATOR_META).write_text(json.dumps(info, indent=2))


def load_evaluator(folder: str | Path, device: str = "cpu") -> tuple[EvaluatorNet, dict]:
    """(net, meta) from a folder written by :func:`save_evaluator`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / EVALUATOR_META).is_file() or not (folder / EVALUATOR_WEIGHTS).is_file():
        raise FileNotFoundError(f"no evaluator in {folder} ({EVALUATOR_META} + {EVALUATOR_WEIGHTS}); "
                                "train one with `latentdiff eval --train-evaluator --evaluator DIR`")
    meta = json.loads((folder / EVALUATOR_META).read_text())
    net = EvaluatorNet(meta["num_classes"], meta["width"], meta["resolution"])
    net.load_state_dict(load_file(str(folder / EVALUATOR_WEIGHTS)))
    return net.to(device).eval(), meta


@torch.no_grad()
def evaluator_outputs(net: EvaluatorNet, images: torch.Tensor, batch_size: int = 256) -> tuple[dict, torch.Tensor]:
    """({column: predicted ids (N,)}, features (N, F) float64 on the CPU)."""
    preds: dict[str, list] = {c: [] for c in net.heads}
    feats = []
    for i in range(0, len(images), batch_size):
        f = net.features(images[i:i + batch_size])
        feats.append(f.double().cpu())
        for c, head in net.heads.items():
            preds[c].append(head(f).argmax(-1).cpu())
    return {c: torch.cat(v) for c, v in preds.items()}, torch.cat(feats)


def accuracy(preds: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction correct per label column present in both; rows labelled -1 (a class the evaluator
    never saw) are left out."""
    out = {}
    for c in preds:
        if c in labels:
            known = labels[c].cpu() >= 0
            out[c] = float((preds[c][known] == labels[c].cpu()[known]).float().mean()) if known.any() else None
    return out


def align_labels(image_set: ImageSet, label_names: dict[str, list[str]]) -> ImageSet:
    """Re-number ``image_set``'s labels by name to ``label_names`` (the evaluator's); names it does not
    know become -1. Splits of one folder dataset may number their labels differently."""
    labels = {}
    for col, ids in image_set.labels.items():
        index = {name: i for i, name in enumerate(label_names[col])}
        table = torch.tensor([index.get(name, -1) for name in image_set.label_names[col]], dtype=torch.long)
        labels[col] = table[ids] if len(table) else ids
    return ImageSet(image_set.images, image_set.captions, labels, label_names)


# --------------------------------------------------------------------------- Fréchet distance


def frechet_distance(features1, features2) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples), Heusel et al.
    (2017): d² = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½).

    The matrix square root's trace is computed from symmetric eigendecompositions (no scipy):
    Σ1 Σ2 is similar to A = Σ1^½ Σ2 Σ1^½, which is symmetric PSD, so tr((Σ1 Σ2)^½) = Σ √eig(A).
    """
    f1, f2 = (np.asarray(f, dtype=np.float64) for f in (features1, features2))
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {f1.shape} and {f2.shape}")
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError("each feature set needs at least 2 samples for a covariance")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(sqrt_s1 @ s2 @ sqrt_s1)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


# --------------------------------------------------------------------------- generation


def generate(pipe, prompts: Sequence[str], *, seed: int = 0, steps: int | None = None, sampler: str | None = None,
             guidance_scale: float | None = None, timestep_spacing: str | None = None, batch_size: int = 32,
             progress: bool = True, desc: str = "generate", sigma_schedule: str | None = None,
             negative_prompts: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, H, W) in [0, 1] on the CPU, final latents (N, C, h, w)). Prompt i always gets
    seed ``seed + i`` (the same initial noise whatever the batching, sampler or guidance), and
    negative prompt ``negative_prompts[i]`` if given (one per prompt)."""
    from tqdm.auto import tqdm

    if negative_prompts is not None and len(negative_prompts) != len(prompts):
        raise ValueError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts")
    images, latents = [], []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress):
        batch = list(prompts[i:i + batch_size])
        negative = None if negative_prompts is None else list(negative_prompts[i:i + batch_size])
        out = pipe(batch, negative_prompt=negative, num_inference_steps=steps, sampler=sampler,
                   guidance_scale=guidance_scale,
                   timestep_spacing=timestep_spacing, seed=[seed + i + k for k in range(len(batch))],
                   output_type="latent", sigma_schedule=sigma_schedule)
        latents.append(out.latents.float().cpu())
        images.append(pipe.decode_latents(out.latents).float().cpu())
    return torch.cat(images), torch.cat(latents)


# --------------------------------------------------------------------------- the reports


def real_report(net: EvaluatorNet, train_set: ImageSet, test_set: ImageSet, seed: int = 0) -> dict:
    """The evaluator on real images: accuracy on the test split, and the Fréchet distance between
    real train and real test features (all of them, and a train subset the size of the test set,
    since the distance is biased upwards for small samples: compare like with like)."""
    test_pred, test_feat = evaluator_outputs(net, test_set.images)
    _, train_feat = evaluator_outputs(net, train_set.images)
    g = torch.Generator().manual_seed(seed)
    sub = torch.randperm(len(train_set), generator=g)[:len(test_set)]
    return {"n_train": len(train_set), "n_test": len(test_set),
            "test_accuracy": accuracy(test_pred, test_set.labels),
            "fd_train_test": frechet_distance(train_feat, test_feat),
            "fd_train_test_matched": frechet_distance(train_feat[sub], test_feat)}


def reference_fd(net: EvaluatorNet, train_set: ImageSet, test_subset: ImageSet, seed: int = 0) -> float:
    """Real train (a random subset of the same size) vs ``test_subset``: the distance that a perfect
    generator would get at this sample size."""
    g = torch.Generator().manual_seed(seed)
    sub = torch.randperm(len(train_set), generator=g)[:len(test_subset)]
    _, f_train = evaluator_outputs(net, train_set.images[sub])
    _, f_test = evaluator_outputs(net, test_subset.images)
    return frechet_distance(f_train, f_test)


def vae_roundtrip(vae, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """D(μ(E(x))) of ``images`` (N, 3, H, W) in [0, 1] through ``vae``, back in [0, 1] on the CPU: the
    real images as the model's own decoder draws them, so a judge's accuracy on them is the ceiling
    for anything generated through that decoder."""
    p = next(vae.parameters())
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(p.device, p.dtype) * 2 - 1
            y = vae.decode(vae.encode(x).latent_dist.mean).sample
            out.append((y.float().cpu() / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


def generated_report(net: EvaluatorNet, images: torch.Tensor, real: ImageSet,
                     reconstructed: torch.Tensor | None = None) -> dict:
    """Evaluator accuracy on images generated from ``real.captions`` (label = the real row's label),
    and their Fréchet distance to the real images of the same rows. With ``reconstructed`` (the same
    real rows through the model's VAE, :func:`vae_roundtrip`), the same two numbers for them: what a
    generator that drew the real latents exactly would score."""
    pred, feat = evaluator_outputs(net, images)
    real_pred, real_feat = evaluator_outputs(net, real.images)
    out = {"n": len(images), "accuracy": accuracy(pred, real.labels),
           "real_accuracy_same_rows": accuracy(real_pred, real.labels),
           "fd_generated_real": frechet_distance(feat, real_feat)}
    if reconstructed is not None:
        rec_pred, rec_feat = evaluator_outputs(net, reconstructed)
        out["vae_accuracy_same_rows"] = accuracy(rec_pred, real.labels)
        out["fd_vae_real"] = frechet_distance(rec_feat, real_feat)
    return out


def sampler_report(pipe, prompts: Sequence[str], labels: dict[str, torch.Tensor], net: EvaluatorNet | None, *,
                   samplers: Sequence[str] = ("ddim", "ddpm", "dpmpp_2m"), steps: Sequence[int] = (5, 10, 20, 50),
                   spacings: Sequence[str | None] = (None,), reference_steps: int = 1000,
                   guidance_scale: float | None = None, seed: int = 0, batch_size: int = 32,
                   progress: bool = True, schedules: Sequence[str] = ("default",),
                   reference_latents: torch.Tensor | None = None) -> dict:
    """Latent RMSE of each sampler at each step count (and timestep spacing; None = the model's)
    against a ``reference_steps`` DDIM (η = 0) solution from the same initial noise, and evaluator
    accuracy of the decoded images. RMSE = √mean((z − z_ref)²) per image, averaged over images. DDPM
    adds fresh noise at every step, so it converges to *a* sample of the model, not to the ODE's: its
    error stays large. The reference visits every timestep (trailing spacing: T-1 … 0).
    ``schedules`` adds a row per sigma schedule (karras, exponential, ...; "default" = the spacing's
    timesteps); each row carries its network evaluations per image ("nfe"; Heun, DPM2, DPM++ 2S/SDE
    cost two per step), the fair axis to compare samplers on (:func:`plot_sampler_report`)."""
    from latentdiff.diffusion import make_sigmas, make_timesteps
    from latentdiff.samplers import ETA_SAMPLERS, count_evaluations, resolve_sampler

    z_ref = reference_latents  # already computed by the caller from the same prompts, seed and guidance
    if z_ref is None:
        _, z_ref = generate(pipe, prompts, seed=seed, steps=reference_steps, sampler="ddim",
                            guidance_scale=guidance_scale, timestep_spacing="trailing", batch_size=batch_size,
                            progress=progress, desc=f"ddim {reference_steps} (reference)")
    rows = []
    sc = pipe.scheduler_config
    for name in samplers:
        for schedule in schedules:
            for spacing in (spacings if schedule == "default" else (None,)):
                spacing = spacing or pipe.default_timestep_spacing
                for n in steps:
                    t0 = time.perf_counter()
                    images, z = generate(pipe, prompts, seed=seed, steps=n, sampler=name,
                                         guidance_scale=guidance_scale, timestep_spacing=spacing,
                                         batch_size=batch_size, progress=progress, desc=f"{name} {schedule} {n}",
                                         sigma_schedule=schedule)
                    key = resolve_sampler(name)[0]
                    levels = make_timesteps(n, sc.num_train_timesteps, spacing, sc.steps_offset, pipe.alphas_cumprod) \
                        if schedule == "default" else make_sigmas(schedule, n, pipe.alphas_cumprod)
                    row = {"sampler": name, "schedule": schedule, "spacing": spacing if schedule == "default" else "",
                           "steps": n, "nfe": count_evaluations(key, levels, pipe.alphas_cumprod),
                           "stochastic": key == "ddpm" or (key in ETA_SAMPLERS and key != "ddim"),
                           "latent_rmse": float((z - z_ref).pow(2).flatten(1).mean(1).sqrt().mean()),
                           "seconds_per_image": (time.perf_counter() - t0) / len(prompts)}
                    if net is not None:
                        row["accuracy"] = accuracy(evaluator_outputs(net, images)[0], labels)
                    rows.append(row)
    return {"n": len(prompts), "reference": f"ddim, {reference_steps} steps, eta=0", "rows": rows}


def plot_sampler_report(report: dict, path: str | Path, title: str | None = None) -> None:
    """Latent RMSE against network evaluations per image, one line per sampler × schedule (log-log), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from latentdiff.images import save_png_atomic

    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    lines: dict[tuple, list] = {}
    for r in report["rows"]:
        lines.setdefault((r["sampler"], r.get("schedule", "default"), r.get("spacing", "")), []).append(r)
    for (name, schedule, spacing), rows in sorted(lines.items()):
        rows = sorted(rows, key=lambda r: r.get("nfe", r["steps"]))
        style = "--" if rows[0]["stochastic"] else "-"
        ax.plot([r.get("nfe", r["steps"]) for r in rows], [r["latent_rmse"] for r in rows], style, marker="o", ms=3,
                label=f"{name} {schedule}" + (f" ({spacing})" if spacing and schedule == "default" else ""))
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("network evaluations per image (NFE)"), ax.set_ylabel(f"latent RMSE vs {report['reference']}")
    ax.set_title(title or f"Sampler convergence ({report['n']} prompts; dashed: stochastic)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    from PIL import Image

    buf.seek(0)
    save_png_atomic(Image.open(buf).convert("RGB"), path)


def guidance_report(pipe, real: ImageSet, net: EvaluatorNet | None, scales: Sequence[float], *,
                    colour_prompts: Sequence[str] = (), colour_rate=None, seed: int = 0, batch_size: int = 32,
                    progress: bool = True, **gen) -> dict:
    """Accuracy, Fréchet distance (to the real images of the same rows) and, with ``colour_prompts``
    and a judge ``colour_rate(images, prompts) -> share obeyed``, colour obedience per
    classifier-free guidance scale."""
    rows = []
    for w in scales:
        row = {"guidance_scale": w}
        if len(real):
            images, _ = generate(pipe, real.captions, seed=seed, guidance_scale=w, batch_size=batch_size,
                                 progress=progress, desc=f"guidance {w}", **gen)
            if net is not None:
                r = generated_report(net, images, real)
                row.update(accuracy=r["accuracy"], fd=r["fd_generated_real"] if len(images) > 1 else None)
        if colour_prompts and colour_rate is not None:
            images, _ = generate(pipe, colour_prompts, seed=seed, guidance_scale=w, batch_size=batch_size,
                                 progress=progress, desc=f"colour, guidance {w}", **gen)
            row["colour_rate"] = colour_rate(images, colour_prompts)
        rows.append(row)
    return {"n": len(real), "n_colour": len(colour_prompts), "rows": rows}


# --------------------------------------------------------------------------- grids


def save_labelled_grid(images: torch.Tensor, captions: Sequence[str], path: str | Path, cols: int = 8,
                       scale: int = 2) -> None:
    """A PNG grid of images (upscaled ``scale``× without smoothing) with each caption underneath."""
    from PIL import Image, ImageDraw, ImageFont

    from latentdiff.images import save_png_atomic

    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    h, w = arr.shape[1] * scale, arr.shape[2] * scale
    text_h, pad = 24, 4
    cell_w = max(w, 96)
    rows = math.ceil(len(arr) / cols)
    grid = Image.new("RGB", (cols * (cell_w + pad) + pad, rows * (h + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for k, (a, caption) in enumerate(zip(arr, captions)):
        x0 = pad + (k % cols) * (cell_w + pad)
        y0 = pad + (k // cols) * (h + text_h + pad)
        grid.paste(Image.fromarray(a).resize((w, h), Image.Resampling.NEAREST), (x0 + (cell_w - w) // 2, y0))
        lines, line = [], ""
        for word in caption.split():
            if line and draw.textlength(f"{line} {word}", font=font) > cell_w:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        for j, text in enumerate(lines[:2]):
            draw.text((x0 + (cell_w - draw.textlength(text, font=font)) / 2, y0 + h + 1 + 11 * j), text,
                      fill="black", font=font)
    save_png_atomic(grid, path)


DEFAULT_GRID_PROMPTS = ("red heart", "blue heart", "green circle", "yellow square", "red apple", "grinning face",
                        "cat face", "thumbs up: dark skin tone", "thumbs up: light skin tone", "flag: France",
                        "pizza", "rocket", "sun", "snowflake", "purple circle", "orange book")

__all__ = [
    "ImageSet", "load_image_set", "random_affine", "EvaluatorNet", "save_evaluator",
    "load_evaluator", "evaluator_outputs", "accuracy", "align_labels", "frechet_distance", "generate", "real_report",
    "generated_report", "sampler_report", "guidance_report",
    "save_labelled_grid",
]
