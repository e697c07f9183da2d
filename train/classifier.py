"""``latentdiff train classifier``: a noise-aware latent classifier for classifier guidance.

Dhariwal & Nichol (2021), §4 and guided-diffusion's ``scripts/classifier_train.py``: the classifier
p_φ(y | x_t, t) sees noisy latents and is trained with cross-entropy (notation of
:mod:`latentdiff.diffusion`):

    z   = scaling_factor · (μ(x) + σ(x)·n)     a fresh posterior sample of the frozen VAE (what the U-Net sees)
    t   ~ U{0, …, T-1},   eps ~ N(0, I)
    x_t = q_sample(z, t, eps) = √ᾱ_t z + √(1-ᾱ_t) eps
    loss = CE(classifier(x_t, t), y)

so its gradient ∇_{x_t} log p_φ(y | x_t, t) guides sampling without a VAE decode. μ(x), σ(x) of the
train and test splits are computed once and cached (keyed by a hash of the data, labels and VAE
weights); a step touches only the classifier. Batches are class-balanced by default (the emoji
groups range from 85 to 2,148 images).

Shares the other trainers' machinery (:mod:`latentdiff.train.common`): typed YAML config with
``--set`` overrides, Accelerate (devices, mixed precision, TensorBoard in ``output_dir/logs``),
randomness keyed by (seed, step) so ``--resume latest`` continues exactly, atomic checkpoints.
Outputs: ``output_dir/final/`` (``config.json`` + ``model.safetensors``, loadable by
:func:`latentdiff.classifier.load_classifier`) with the test accuracy versus noise level t
(``accuracy_vs_t.md`` table, ``accuracy_vs_t.png`` plot, ``.json``) and ``training_summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from latentdiff.classifier import ClassifierConfig, NoisyLatentClassifier
from latentdiff.config import ConfigError
from latentdiff.diffusion import q_sample

from . import loop
from .common import (
    DataConfig,
    Device,
    EMAConfig,
    MixedPrecision,
    OptimConfig,
    cache_key,
    check_loop_settings,
    hash_module,
    load_tensors,
    run_main,
    save_tensors_atomic,
    step_generator,
)
from .loop import Run, Task

logger = logging.getLogger("latentdiff.train")
CACHE_VERSION = 1
DEFAULT_EVAL_TIMESTEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)


@dataclass
class ClassifierDataConfig(DataConfig):
    label_column: str = "group"      # the class labels (emoji: group, 9 classes, or subgroup, ~99)
    posterior: str = "sample"        # sample: z = μ + σ·n each step (what the U-Net saw) | mode: z = μ

    def validate(self):
        super().validate()
        if self.posterior not in ("sample", "mode"):
            raise ConfigError(f"data.posterior {self.posterior!r} unknown; choose sample or mode")
        if not self.label_column:
            raise ConfigError("data.label_column is empty: name the dataset column holding the classes "
                              "(emoji: group or subgroup)")


@dataclass
class ClassifierTrainConfig:
    vae_from: str = ""               # pipeline folder, VAE folder, built-in name ("emoji") or Hub repo id
    output_dir: str = "runs/classifier"
    seed: int = 0
    device: Device = "auto"
    mixed_precision: MixedPrecision = "no"
    cpu_threads: int = 0             # torch CPU threads (0 = torch's default)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)  # shape/labels filled in from VAE + data
    data: ClassifierDataConfig = field(default_factory=lambda: ClassifierDataConfig(
        source="emoji", max_validation_samples=0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        batch_size=128, learning_rate=3e-4, lr_scheduler="cosine", lr_warmup_steps=100, adam_weight_decay=0.05,
        max_train_steps=3000))       # guided-diffusion's classifier_train: AdamW 3e-4, weight decay 0.05
    ema: EMAConfig = field(default_factory=EMAConfig)  # decay 0 = off
    balanced: bool = True            # class-balanced batches (each class equally likely)
    label_smoothing: float = 0.0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    validation_steps: int = 500      # test accuracy at t = 0, T/2, T-1 in TensorBoard (0 = only at the end)
    log_every: int = 50
    eval_timesteps: list[int] = field(default_factory=lambda: list(DEFAULT_EVAL_TIMESTEPS))  # accuracy-vs-t report
    eval_noise_draws: int = 4        # (z, ε) draws per test latent and t

    def validate(self):
        check_loop_settings(self)
        if not self.vae_from:
            raise ConfigError("vae_from is empty: set it (--vae-from) to the model whose latents the classifier "
                              "will guide: a pipeline folder, a VAE folder, 'emoji' or a Hub repo id")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.eval_noise_draws < 1:
            raise ConfigError(f"eval_noise_draws must be >= 1, got {self.eval_noise_draws}")


# ---------------------------------------------------------------------------------------------- VAE and latents


def load_frozen_vae(vae_from: str):
    """(vae, image resolution, scheduler config or None) from a pipeline folder, a VAE folder, a
    built-in model name or a Hub repo id. The VAE is frozen (eval, no grad)."""
    from diffusers import AutoencoderKL

    from latentdiff.io import check_weights, resolve_model_dir
    from latentdiff.models import SchedulerConfig

    root = resolve_model_dir(vae_from, kind="VAE")
    folder = root / "vae" if (root / "vae" / "config.json").is_file() else root
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"vae_from {vae_from}: no VAE in {root} (expected a pipeline folder with vae/, "
                                "or an AutoencoderKL folder with config.json)")
    check_weights(folder)
    vae = AutoencoderKL.from_pretrained(folder, use_safetensors=True).eval().requires_grad_(False)
    if float(vae.config.scaling_factor) == 1.0:
        logger.warning("VAE %s has scaling_factor 1.0 (not measured?); latents may not have unit variance", vae_from)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    resolution = int(vae.config.sample_size)
    if (root / "unet" / "config.json").is_file():  # a pipeline: the U-Net fixes the image size
        resolution = int(json.loads((root / "unet" / "config.json").read_text())["sample_size"]) * factor
    sched = None
    if (root / "scheduler" / "scheduler_config.json").is_file():
        sched = SchedulerConfig.from_diffusers(json.loads((root / "scheduler" / "scheduler_config.json").read_text()))
    return vae, resolution, sched


def load_labelled_split(d: ClassifierDataConfig, split: str, resolution: int,
                        label_names: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(pixel_values (N, 3, R, R) in [-1, 1], labels (N,), label names) of one split, through
    :func:`latentdiff.data.build_dataset`. With ``label_names`` (the train split's) labels are
    re-indexed into them; rows whose label the train split lacks are dropped, with a warning."""
    import numpy as np

    from latentdiff.data import build_dataset

    source = "emoji:symbola" if d.source == "emoji_symbola" else d.source
    ds = build_dataset(source, split=split, image_column=d.image_column, caption_column=d.caption_column,
                       label_columns=(d.label_column,), resolution=resolution, center_crop=d.center_crop)
    names = list(ds.label_names[d.label_column])
    items = [ds[i] for i in tqdm(range(len(ds)), desc=f"reading {split}", leave=False, disable=len(ds) < 2048)]
    pixels = torch.stack([it["pixel_values"] for it in items])
    labels = torch.tensor([it[d.label_column] for it in items], dtype=torch.long)
    if label_names is not None and names != label_names:
        lookup = torch.tensor([label_names.index(n) if n in label_names else -1 for n in names])
        labels = lookup[labels]
        unseen = labels < 0
        if unseen.any():
            logger.warning("%d %s rows have %s labels the train split lacks; dropped", int(unseen.sum()), split,
                           d.label_column)
        pixels, labels, names = pixels[~unseen], labels[~unseen], label_names
    limit = d.max_samples if split == d.split else d.max_validation_samples
    if limit and len(labels) > limit:
        keep = torch.from_numpy(np.sort(np.random.default_rng(0).choice(len(labels), size=limit, replace=False)))
        pixels, labels = pixels[keep], labels[keep]
    if "" in names:
        logger.warning("some rows have an empty %s label; they form a class named ''", d.label_column)
    return pixels, labels, names


@torch.no_grad()
def encode_posterior(vae, pixel_values: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of q(z | x), both × scaling_factor: z = mean + std · n, n ~ N(0, I)."""
    sf = float(vae.config.scaling_factor)
    means, stds = [], []
    for i in tqdm(range(0, len(pixel_values), batch_size), desc="encoding latents", leave=False,
                  disable=len(pixel_values) < 2048):
        dist = vae.encode(pixel_values[i : i + batch_size].to(vae.device, vae.dtype)).latent_dist
        means.append((dist.mean * sf).float())
        stds.append((dist.std * sf).float())
    return torch.cat(means), torch.cat(stds)


def prepare_latents(cfg: ClassifierTrainConfig, vae, resolution: int, accelerator, cache_dir: Path) -> dict:
    """Cached {train,test}_{mean,std,labels} and the label names, built once by the main process."""
    d = cfg.data
    train_px, train_y, names = load_labelled_split(d, d.split, resolution)
    test = load_labelled_split(d, d.validation_split, resolution, names) if d.validation_split else None
    h = hash_module(vae)
    parts = {"version": CACHE_VERSION, "vae": h, "train": _fingerprint(train_px, train_y, names),
             "test": _fingerprint(*test) if test else None, "resolution": resolution}
    key = cache_key(parts)
    path = cache_dir / f"latents-{d.label_column}-{key}.safetensors"
    if accelerator.is_main_process and not path.is_file():
        logger.info("encoding %d train and %d test images into the cache %s", len(train_y), len(test[1]) if test else 0,
                    path)
        vae = vae.to(accelerator.device)
        tensors = {"train_labels": train_y}
        tensors["train_mean"], tensors["train_std"] = encode_posterior(vae, train_px)
        if test:
            tensors["test_labels"] = test[1]
            tensors["test_mean"], tensors["test_std"] = encode_posterior(vae, test[0])
        save_tensors_atomic(tensors, path, {"key": key, "label_names": json.dumps(names)})
    elif accelerator.is_main_process:
        logger.info("using cached latents %s", path)
    accelerator.wait_for_everyone()
    return {**load_tensors(path, accelerator.device), "label_names": names, "key": key}


def _fingerprint(pixels: torch.Tensor, labels: torch.Tensor, names: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(((pixels + 1) * 127.5).round().to(torch.uint8).numpy().tobytes())
    h.update(labels.numpy().tobytes())
    h.update("\x00".join(names).encode())
    return h.hexdigest()


def draw_latents(mean: torch.Tensor, std: torch.Tensor, posterior: str, generator: torch.Generator) -> torch.Tensor:
    """z = μ + σ·n (posterior sample) or z = μ (mode)."""
    if posterior == "mode":
        return mean
    return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def accuracy_vs_t(model: NoisyLatentClassifier, mean: torch.Tensor, std: torch.Tensor, labels: torch.Tensor,
                  alphas_cumprod: torch.Tensor, timesteps=DEFAULT_EVAL_TIMESTEPS, noise_draws: int = 4,
                  posterior: str = "sample", batch_size: int = 512, seed: int = 1234) -> list[dict]:
    """Test accuracy, class-balanced accuracy (mean per-class recall) and cross-entropy at each
    noise level t, averaged over ``noise_draws`` (z, ε) draws; seeded, so comparable across runs."""
    was_training = model.training
    model.eval()
    g = torch.Generator(device=mean.device).manual_seed(seed)
    k = model.config.num_classes
    rows = []
    for t in timesteps:
        correct, total, loss_sum = torch.zeros(k), torch.zeros(k), 0.0
        for _ in range(noise_draws):
            for i in range(0, len(mean), batch_size):
                z = draw_latents(mean[i : i + batch_size], std[i : i + batch_size], posterior, g)
                eps = torch.randn(z.shape, generator=g, device=z.device, dtype=z.dtype)
                x_t = q_sample(z, int(t), eps, alphas_cumprod)
                logits = model(x_t.to(model.device, model.dtype), torch.full((len(z),), int(t), device=model.device))
                logits, y = logits.float().cpu(), labels[i : i + batch_size].cpu()
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                hit = (logits.argmax(1) == y).float()
                correct.index_add_(0, y, hit)
                total.index_add_(0, y, torch.ones_like(hit))
        present = total > 0
        rows.append({
            "t": int(t),
            "alpha_bar": float(alphas_cumprod[int(t)]),
            "accuracy": float(correct.sum() / total.sum()),
            "balanced_accuracy": float((correct[present] / total[present]).mean()),
            "loss": loss_sum / float(total.sum()),
        })
    model.train(was_training)
    return rows


def accuracy_table(rows: list[dict], label_names: list[str], labels: torch.Tensor) -> str:
    """Markdown table of :func:`accuracy_vs_t` with the chance levels underneath."""
    counts = torch.bincount(labels, minlength=len(label_names)).float()
    majority = float(counts.max() / counts.sum())
    lines = ["| t | ᾱ_t | SNR | accuracy | balanced accuracy | cross-entropy |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a = r["alpha_bar"]
        lines.append(f"| {r['t']} | {a:.4f} | {a / (1 - a):.3g} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} "
                     f"| {r['loss']:.3f} |")
    lines.append("")
    lines.append(f"{len(labels)} test latents, {len(label_names)} classes; chance: accuracy {majority:.3f} "
                 f"(always the largest class), balanced accuracy {1 / len(label_names):.3f}.")
    return "\n".join(lines)


def line_plot(series: dict[str, tuple[list[float], list[float]]], path: Path, *, title: str, xlabel: str,
              ylabel: str, y_range: tuple[float, float] = (0.0, 1.0), hlines: dict[str, float] | None = None) -> None:
    """One line per series, dashed grey reference lines, a legend: matplotlib (Agg), written atomically.
    Without matplotlib (the ``eval`` extra) the plot is skipped with a note; the table is the record."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("no matplotlib (pip install 'latentdiff[eval]'): %s not drawn", path)
        return
    from latentdiff.fs import atomic_write

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    by_value: dict[float, list[str]] = {}
    for name, y in (hlines or {}).items():
        by_value.setdefault(round(y, 6), []).append(name)
    for y, names in by_value.items():  # equal reference lines share one line and one label
        ax.axhline(y, color="grey", linestyle="--", linewidth=1)
        ax.annotate(" = ".join(names), (0.01, y), xycoords=("axes fraction", "data"), ha="left", va="bottom",
                    color="dimgrey")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=y_range)
    ax.grid(True, color="0.92")
    ax.legend(loc="best")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def write_report(rows: list[dict], label_names: list[str], labels: torch.Tensor, out_dir: Path, title: str) -> str:
    """``accuracy_vs_t.{md,png,json}`` in ``out_dir``; returns the markdown table."""
    from latentdiff.config import atomic_write_text

    table = accuracy_table(rows, label_names, labels)
    atomic_write_text(out_dir / "accuracy_vs_t.md", f"# {title}\n\n{table}\n")
    atomic_write_text(out_dir / "accuracy_vs_t.json", json.dumps({"label_names": label_names, "rows": rows}, indent=2))
    counts = torch.bincount(labels, minlength=len(label_names)).float()
    ts = [r["t"] for r in rows]
    line_plot({"accuracy": (ts, [r["accuracy"] for r in rows]),
               "balanced accuracy": (ts, [r["balanced_accuracy"] for r in rows])},
              out_dir / "accuracy_vs_t.png", title=title, xlabel="noise level t", ylabel="test accuracy",
              hlines={"majority": float(counts.max() / counts.sum()), "1/K": 1 / len(label_names)})
    return table


# ---------------------------------------------------------------------------------------------- training


def batch_indices(labels: torch.Tensor, num_classes: int, batch: int, balanced: bool,
                  generator: torch.Generator) -> torch.Tensor:
    """(B,) training indices: each class equally likely and uniform within it (balanced), or uniform."""
    if balanced:
        counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
        weights = (1.0 / counts.clamp(min=1))[labels]
    else:
        weights = torch.ones(len(labels), dtype=torch.float64, device=labels.device)
    return torch.multinomial(weights, batch, replacement=True, generator=generator)


class BalancedSampler:
    """Step → (G,) indices drawn with replacement, each class equally likely (or uniform), from the
    step's own generator: a pure function of (seed, step), as exact resume needs."""

    def __init__(self, labels: torch.Tensor, num_classes: int, global_batch: int, balanced: bool, seed: int):
        self.labels, self.num_classes, self.global_batch, self.balanced, self.seed = \
            labels, num_classes, global_batch, balanced, seed

    def indices(self, step: int) -> torch.Tensor:
        g = step_generator(self.seed, step, self.labels.device, stream=1)
        return batch_indices(self.labels, self.num_classes, self.global_batch, self.balanced, g)

    def epoch(self, step: int) -> float:
        return step * self.global_batch / len(self.labels)


class ClassifierTask(Task):
    """Cross-entropy of p(y | x_t, t) on noised VAE latents; exports output_dir/final (config + weights)."""

    name = "classifier"
    exports = ("final",)

    def build(self) -> None:
        cfg = self.cfg
        self.vae, resolution, self.sched = load_frozen_vae(cfg.vae_from)
        self.resolution = cfg.data.resolution or resolution

    def setup(self, run: Run) -> torch.nn.Module:
        cfg, d = self.cfg, self.cfg.data
        self.lat = lat = prepare_latents(cfg, self.vae, self.resolution, run.accelerator, run.out / "cache")
        self.names = lat["label_names"]
        self.train_y = lat["train_labels"]
        self.num_samples = len(self.train_y)
        if len(torch.unique(self.train_y)) < 2:
            raise ValueError(f"label column {d.label_column!r} of {d.source} has fewer than 2 classes in split "
                             f"{d.split!r}; a classifier needs at least 2")
        # the classifier's input shape and classes come from the VAE and the data; t from the pipeline's schedule
        c = dataclasses.replace(cfg.classifier, latent_channels=int(lat["train_mean"].shape[1]),
                                sample_size=int(lat["train_mean"].shape[-1]), num_classes=len(self.names),
                                class_names=tuple(self.names), label_column=d.label_column,
                                vae_scaling_factor=float(self.vae.config.scaling_factor),
                                trained_on=f"vae: {cfg.vae_from}; data: {d.source} ({d.split})")
        if self.sched is not None:
            s = self.sched
            c = dataclasses.replace(c, num_train_timesteps=s.num_train_timesteps, beta_schedule=s.beta_schedule,
                                    beta_start=s.beta_start, beta_end=s.beta_end)
        self.cfg = run.cfg = cfg = dataclasses.replace(cfg, classifier=c)  # the resolved config is what gets saved
        del self.vae
        torch.manual_seed(cfg.seed)
        model = NoisyLatentClassifier(c).train()
        self.alphas_cumprod = model.alphas_cumprod().to(run.device)               # float64 ᾱ_t on the device
        self.T = c.num_train_timesteps
        logger.info("classifier: %d parameters, %d classes of %r, %d train latents %s, T=%d",
                    sum(p.numel() for p in model.parameters()), len(self.names), d.label_column,
                    len(self.train_y), tuple(lat["train_mean"].shape[1:]), self.T)
        return model

    def make_sampler(self, run: Run):
        return BalancedSampler(self.train_y, len(self.names), run.global_batch, self.cfg.balanced, self.cfg.seed)

    def draw(self, run: Run, step: int, g: torch.Generator, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        z = draw_latents(self.lat["train_mean"][idx], self.lat["train_std"][idx], self.cfg.data.posterior, g)
        t = torch.randint(0, self.T, (len(idx),), generator=g, device=run.device)   # t ~ U{0..T-1}
        eps = torch.randn(z.shape, generator=g, device=run.device)
        return {"x_t": q_sample(z, t, eps, self.alphas_cumprod), "t": t, "y": self.train_y[idx]}

    def loss(self, run: Run, model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(b["x_t"], b["t"])                                           # (B, K)
        return F.cross_entropy(logits.float(), b["y"], label_smoothing=self.cfg.label_smoothing)

    def test_rows(self, model, timesteps, draws) -> list[dict]:
        lat = self.lat
        return accuracy_vs_t(model, lat["test_mean"], lat["test_std"], lat["test_labels"], self.alphas_cumprod,
                             timesteps, draws, self.cfg.data.posterior)

    def validate(self, run: Run, step: int) -> None:
        if run.is_main and "test_labels" in self.lat:
            rows = self.test_rows(run.ema_copy(), (0, self.T // 2, self.T - 1), 1)
            run.log({f"test/accuracy_t{r['t']}": r["accuracy"] for r in rows})
        run.accelerator.wait_for_everyone()

    def export(self, run: Run) -> dict:
        """final/: config.json + model.safetensors, and the test accuracy versus t (table and plot)."""
        cfg, d = self.cfg, self.cfg.data
        final = run.ema_copy()
        final.save_pretrained(run.out / "final")
        rows = []
        if "test_labels" in self.lat:
            rows = self.test_rows(final, cfg.eval_timesteps, cfg.eval_noise_draws)
            table = write_report(rows, self.names, self.lat["test_labels"].cpu(), run.out / "final",
                                 f"{d.label_column} classifier on noisy latents: test accuracy vs t")
            logger.info("test accuracy versus noise level t:\n%s", table)
        return {"classes": self.names, "label_column": d.label_column, "cache_key": self.lat["key"],
                "accuracy_vs_t": rows}


def train(cfg: ClassifierTrainConfig, resume: str | None = None, config_path: str | None = None, overwrite: bool = False) -> dict:
    """Train the classifier as configured; returns the training summary (also in final/training_summary.json)."""
    return loop.train(ClassifierTask(cfg), resume=resume, config_path=config_path, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- CLI

DESCRIPTION = ("Train a noise-aware classifier p(y | x_t, t) on a model's VAE latents, for classifier guidance "
               "(`latentdiff generate --classifier DIR --class NAME`). Writes output_dir/final/ (config.json + "
               "model.safetensors, the test accuracy versus noise level t as accuracy_vs_t.md / .png), "
               "checkpoints and TensorBoard logs (output_dir/logs).")
EPILOG = """examples:
  # the emoji groups, on the built-in emoji model's latents
  latentdiff train classifier --config configs/emoji_classifier.yaml --vae-from emoji --output-dir runs/cls-group
  # the ~99 subgroups instead
  latentdiff train classifier --config configs/emoji_classifier.yaml --vae-from emoji --label-column subgroup \\
      --output-dir runs/cls-subgroup
  # a test-size run against a tiny pipeline; continue an interrupted run exactly
  latentdiff train classifier --config configs/tiny_classifier.yaml --vae-from runs/tiny/final --device cpu
  latentdiff train classifier --config configs/emoji_classifier.yaml --vae-from emoji --resume latest
  # then guide generation toward a class
  latentdiff generate "" --classifier runs/cls-group --class "Food & Drink" --classifier-scale 4
"""


def main(argv: list[str] | None = None) -> int:
    return run_main(train, ClassifierTrainConfig, argv, "latentdiff train classifier", DESCRIPTION, EPILOG, flags={
        "--vae-from": ("vae_from", "override vae_from: pipeline/VAE folder, built-in name (emoji) or Hub repo id"),
        "--dataset": ("data.source", "override data.source (emoji, an image folder, a datasets name/path)"),
        "--label-column": ("data.label_column", "override data.label_column (emoji: group | subgroup)")})


if __name__ == "__main__":  # `python -m` / `accelerate launch -m latentdiff.train.classifier`
    from .common import module_entry

    module_entry(main)
