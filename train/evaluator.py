"""The evaluator of ``latentdiff eval`` trained on the shared loop: a small residual CNN
(:class:`latentdiff.evaluation.EvaluatorNet`) predicting every label column of the real training
images (summed cross-entropies, label smoothing 0.1, AdamW with warm-up and cosine decay, random
shift/zoom and blur augmentation, the randomness keyed by (seed, step) like every other trainer).

:func:`train_evaluator` is the in-process call (a temporary run folder); :func:`get_evaluator` loads
the cached evaluator of a folder or trains and caches it.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from latentdiff.evaluation import (
    EVALUATOR_META,
    EvaluatorNet,
    ImageSet,
    _blur,
    load_evaluator,
    random_affine,
    save_evaluator,
)

from . import loop
from .common import Device, EMAConfig, MixedPrecision, OptimConfig, step_generator
from .loop import Run, Task

logger = logging.getLogger("latentdiff.eval")


@dataclass
class EvaluatorTrainConfig:
    output_dir: str = ""
    seed: int = 0
    device: Device = "cpu"
    mixed_precision: MixedPrecision = "no"
    cpu_threads: int = 0
    width: int = 32
    resolution: int = 32
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        batch_size=128, learning_rate=2e-3, lr_scheduler="cosine", adam_weight_decay=0.05, max_grad_norm=0.0))
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpointing_steps: int = 0
    checkpoints_total_limit: int = 1
    validation_steps: int = 0
    log_every: int = 50


class EvaluatorTask(Task):
    """Cross-entropy of every label head on augmented real images; the trained net is ``self.net``."""

    name = "evaluator"
    exports = ("final",)

    def __init__(self, cfg: EvaluatorTrainConfig, train_set: ImageSet):
        super().__init__(cfg)
        self.train_set = train_set

    def build(self) -> None:
        if not self.train_set.labels:
            raise ValueError("the evaluator needs label columns (e.g. --label-columns group,subgroup)")
        self.num_samples = len(self.train_set)

    def setup(self, run: Run) -> torch.nn.Module:
        c, ts = self.cfg, self.train_set
        torch.manual_seed(c.seed)
        net = EvaluatorNet({k: len(n) for k, n in ts.label_names.items()}, c.width, c.resolution).to(run.device)
        with torch.no_grad():  # resized once: the loop runs at the evaluator's own resolution
            self.images = ((net.prepare(ts.images.to(run.device)) + 1) / 2)
        self.labels = {k: v.to(run.device) for k, v in ts.labels.items()}
        return net.train()

    def draw(self, run: Run, step: int, g: torch.Generator, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        cpu = step_generator(self.cfg.seed, step, torch.device("cpu"), stream=3)  # the augmentations draw on the CPU
        x = random_affine(self.images[idx], shift=self.cfg.resolution / 16, scale_jitter=0.1, generator=cpu, fill=1.0)
        return {"x": _blur(x, cpu, 0.5), **{f"y_{k}": v[idx] for k, v in self.labels.items()}}

    def loss(self, run: Run, model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(b["x"])
        return sum(F.cross_entropy(out[k].float(), b[f"y_{k}"], label_smoothing=0.1) for k in out)

    def export(self, run: Run) -> dict:
        self.net = run.ema_copy().eval()
        save_evaluator(self.net, run.out / "final", {"label_names": self.train_set.label_names})
        return {"n_train": len(self.train_set)}


def train_evaluator(train_set: ImageSet, *, epochs: int = 30, batch_size: int = 128, lr: float = 2e-3,
                    width: int = 32, resolution: int = 32, seed: int = 0, device: str = "cpu",
                    progress: bool = True) -> EvaluatorNet:
    """Train an evaluator on all label columns of ``train_set`` for ``epochs`` passes (in a temporary
    run folder of the shared loop) and return it in eval mode."""
    steps = max(1, epochs * math.ceil(len(train_set) / batch_size))
    with tempfile.TemporaryDirectory(prefix="latentdiff-evaluator-") as tmp:
        cfg = EvaluatorTrainConfig(output_dir=str(Path(tmp) / "run"), seed=seed, device=device, width=width,
                                   resolution=resolution,
                                   optim=OptimConfig(batch_size=batch_size, learning_rate=lr, lr_scheduler="cosine",
                                                     lr_warmup_steps=int(0.15 * steps), adam_weight_decay=0.05,
                                                     max_grad_norm=0.0, max_train_steps=steps))
        task = EvaluatorTask(cfg, train_set)
        task.progress = progress  # (only this loop's bar: nothing process-wide)
        loop.train(task)
    return task.net


def get_evaluator(folder: Path, train_set: ImageSet, *, retrain: bool, epochs: int, width: int, resolution: int,
                  seed: int, device: str, progress: bool, dataset: str) -> tuple[EvaluatorNet, dict]:
    """Load the cached evaluator, or train and cache it (if missing, or ``retrain``). A cached one
    trained on other label names is refused."""
    folder = Path(folder)
    if not retrain and (folder / EVALUATOR_META).is_file():
        net, meta = load_evaluator(folder, device)
        if meta.get("label_names") != train_set.label_names:
            raise ValueError(f"the evaluator in {folder} was trained on other labels ({list(meta.get('label_names', {}))}, "
                             f"dataset {meta.get('dataset')!r}); pass --train-evaluator or another --evaluator folder")
        logger.info("evaluator loaded from %s", folder)
        return net, meta
    logger.info("training the evaluator on %d images (%s) into %s", len(train_set), dataset, folder)
    t0 = time.perf_counter()
    net = train_evaluator(train_set, epochs=epochs, width=width, resolution=resolution, seed=seed, device=device,
                          progress=progress)
    meta = {"dataset": dataset, "label_names": train_set.label_names, "epochs": epochs, "seed": seed,
            "train_seconds": round(time.perf_counter() - t0, 1), "n_train": len(train_set)}
    save_evaluator(net, folder, meta)
    return net, meta


__all__ = ["EvaluatorTrainConfig", "EvaluatorTask", "train_evaluator", "get_evaluator"]
