"""The one training loop. Every trainer (unet, lora, vae, classifier, clip, embedding) is a
:class:`Task` on it; the loop owns what they share:

* the run folder: refusing to overwrite another run, ``run.json``, ``--resume latest|PATH``;
* Accelerate: processes, devices, mixed precision, gradient accumulation, TensorBoard logs;
* step-keyed randomness: step ``s`` draws the global batch's indices and noise from generators seeded
  with ``(seed, s)``, every process takes its slice, so a resume continues exactly and N processes
  see what one process with the same global batch sees;
* the optimizer (AdamW), the LR schedule (diffusers' ``get_scheduler``), clipping, EMA (diffusers'
  ``EMAModel``), the NaN guard, the progress bar and the loss log;
* atomic checkpoints every ``checkpointing_steps`` and at the last step (weights, optimizer, LR
  schedule, EMA, RNG, the resolved config), pruned to ``checkpoints_total_limit``;
* wall time summed over resumes; the export and its ``training_summary.json`` and
  ``training_config.yaml``.

A task says what is particular to it, and reads top to bottom in its own module:

    build()                  models and data; every user error surfaces here, before any step
    setup(run) -> module     the module to train, whose parameters with requires_grad are optimised
    draw(run, step, g, idx)  the global batch's inputs and randomness (dict of tensors, first axis = batch)
    loss(run, model, batch)  the scalar loss of one micro-batch (call ``model``: DDP syncs through it)
    validate(run, step)      held-out metrics and sample grids (main process)
    export(run) -> dict      write the result; returns the summary's task-specific fields

and optionally ``ema_target``, ``extra_objects``/``after_micro`` (a second optimiser, e.g. the VAE's
discriminator), ``make_sampler`` (aspect-ratio buckets) and ``start`` (metrics before step 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from latentdiff.config import save_config

from .common import (
    CONFIG_FILE,
    StepSampler,
    Timer,
    begin_run,
    check_finite,
    ema_copy,
    load_checkpoint,
    local_slice,
    make_accelerator,
    make_ema,
    make_lr_scheduler,
    make_optimizer,
    save_checkpoint,
    seed_everything,
    set_cpu_threads,
    start_run,
    step_generator,
    write_summary,
)

logger = logging.getLogger("latentdiff.train")


@dataclass
class Run:
    """What the loop hands a task: the config, Accelerate, the trained module and its EMA, and
    ``state``, task values that travel in every checkpoint (e.g. the initial held-out loss)."""

    cfg: Any
    accelerator: Any
    out: Path
    model: torch.nn.Module | None = None
    ema: Any = None
    optimizer: Any = None
    lr_scheduler: Any = None
    step: int = 0
    global_batch: int = 0
    state: dict = field(default_factory=dict)
    task: Any = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def unwrapped(self) -> torch.nn.Module:
        """The trained module without its DDP/compile wrappers (live weights)."""
        return self.accelerator.unwrap_model(self.model)

    def ema_copy(self, module: torch.nn.Module | None = None) -> torch.nn.Module:
        """A copy of ``module`` (default: the task's EMA target) carrying the EMA weights (the live
        weights when EMA is off); the training module is not touched."""
        return ema_copy(module if module is not None else self.task.ema_target(self.unwrapped()), self.ema)

    def log(self, values: dict) -> None:
        self.accelerator.log(values, step=self.step)


class Task:
    """A trainer on the loop. Override ``build``, ``setup``, ``draw``, ``loss``, ``export``; the rest
    has defaults."""

    name = "task"                # `latentdiff train <name>`; recorded in run.json
    exports: tuple[str, ...] = ("final",)  # output_dir folders the export writes (a fresh run will not overwrite them)
    num_samples = 0              # training set size (the step sampler's permutation)
    progress = True              # the loop's progress bar (False: an in-process call that should stay quiet)

    def __init__(self, cfg):
        self.cfg = cfg

    # ---- required
    def build(self) -> None:
        raise NotImplementedError

    def setup(self, run: Run) -> torch.nn.Module:
        raise NotImplementedError

    def draw(self, run: Run, step: int, g: torch.Generator, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, run: Run, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def export(self, run: Run) -> dict:
        raise NotImplementedError

    # ---- optional
    def parameters(self, model: torch.nn.Module) -> list:
        """What the optimizer trains: parameters, or param groups (dicts with their own "lr")."""
        return [p for p in model.parameters() if p.requires_grad]

    def ema_target(self, model: torch.nn.Module) -> torch.nn.Module:
        """The sub-module whose weights the EMA tracks and the export writes (default: all of it)."""
        return model

    def ema_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The parameters the EMA averages (default: all of :meth:`ema_target`)."""
        return list(self.ema_target(model).parameters())

    def make_sampler(self, run: Run):
        """Step → the global batch's sample indices (exact resume needs it to be a function of the step)."""
        return StepSampler(self.num_samples, run.global_batch, self.cfg.seed, run.device)

    def extra_objects(self) -> list:
        """More objects for ``accelerator.prepare`` (e.g. a discriminator and its optimizer)."""
        return []

    def prepared(self, objects: list) -> None:
        """The prepared versions of :meth:`extra_objects`, in order."""

    def after_micro(self, run: Run, batch: dict[str, torch.Tensor], step: int) -> None:
        """After the main optimizer step of each micro-batch (a second model's update)."""

    def start(self, run: Run) -> None:
        """Once before the first step of a fresh run (``run.state`` is saved in every checkpoint)."""

    def validate(self, run: Run, step: int) -> None:
        """Every ``validation_steps`` (all processes call it; write on the main one)."""


def train(task: Task, resume: str | None = None, config_path: str | None = None, overwrite: bool = False) -> dict:
    """Run ``task`` to ``optim.max_train_steps``; returns the summary (also written into the export)."""
    cfg = task.cfg
    o = cfg.optim
    timer = Timer()
    set_cpu_threads(getattr(cfg, "cpu_threads", 0))
    ckpt = start_run(cfg.output_dir, resume, trainer=task.name, overwrite=overwrite, exports=task.exports, cfg=cfg)
    out = Path(cfg.output_dir)

    task.build()  # models and data: user errors surface here, before Accelerate and before any step
    d = getattr(cfg, "data", None)
    if (getattr(d, "streaming", False) or getattr(d, "aspect_buckets", False)) and not getattr(task, "streamed", False):
        from latentdiff.errors import UserError

        raise UserError(f"data.streaming / data.aspect_buckets are not supported by `latentdiff train {task.name}` "
                        "yet (the unet trainer has them)")

    accelerator = make_accelerator(cfg, out, f"latentdiff-{task.name}")
    device = accelerator.device
    if device.type == "cpu":
        # Subnormal floats (|x| < 1.2e-38) take a slow microcode path on x86: a trained U-Net's backward
        # ran 4-8x slower with them than flushed to zero (measured: 20-60 s vs 5-8 s per batch-64 step
        # of the emoji U-Net on this 2-core CPU under load). Both sides of a resume flush alike.
        torch.set_flush_denormal(True)
    seed_everything(cfg.seed)
    run = Run(cfg, accelerator, out, task=task)
    run.global_batch = o.batch_size * accelerator.num_processes * o.gradient_accumulation_steps

    model = task.setup(run)  # (caches, and the config's values only the data can tell, e.g. the classes)
    cfg = run.cfg = task.cfg
    if accelerator.is_main_process:
        begin_run(out, trainer=task.name, fresh=ckpt is None, overwrite=overwrite)
        save_config(cfg, out / CONFIG_FILE)
    groups = task.parameters(model)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]  # clipped together
    optimizer = make_optimizer(groups, o)
    lr_scheduler = make_lr_scheduler(optimizer, o)
    model, optimizer, *extra = accelerator.prepare(model, optimizer, *task.extra_objects())
    task.prepared(extra)
    run.model, run.optimizer, run.lr_scheduler = model, optimizer, lr_scheduler
    run.ema = make_ema(task.ema_parameters(run.unwrapped()), cfg.ema)
    accelerator.register_for_checkpointing(lr_scheduler)
    if run.ema is not None:
        run.ema.to(device)
        accelerator.register_for_checkpointing(run.ema)
    sampler = task.make_sampler(run)

    # ---- resume: the step number is the sampler's whole state
    earlier_wall_time, start_step = 0.0, 0
    if ckpt is not None:
        saved = load_checkpoint(accelerator, ckpt)
        run.step, earlier_wall_time = saved["step"], saved.get("wall_time_s", 0.0)
        run.state = saved.get("task", {})
        start_step = run.step
        if run.ema is not None:
            run.ema.to(device)
        logger.info("resumed from %s at step %d", ckpt, run.step)
    else:
        task.start(run)
    logger.info("%s training on %s: %d samples, global batch %d, %d process(es)", task.name, device,
                task.num_samples, run.global_batch, accelerator.num_processes)

    def wall_time() -> float:
        return earlier_wall_time + timer.elapsed()

    def checkpoint_state(loss: float, grad_norm: float) -> dict:
        return {"loss": loss, "grad_norm": grad_norm, "epoch": sampler.epoch(run.step), "wall_time_s": wall_time(),
                "task": run.state}

    # ---- the loop
    bar = tqdm(total=o.max_train_steps, initial=run.step, desc=f"train {task.name}", dynamic_ncols=True,
               disable=not (accelerator.is_local_main_process and task.progress))
    running, running_n, last_loss = torch.zeros((), device=device), 0, float("nan")
    grad_norm = torch.zeros((), device=device)  # of the summed (accumulated, all-reduced) gradient, before clipping
    while run.step < o.max_train_steps:
        step = run.step
        g = step_generator(cfg.seed, step, device)  # the whole global batch's randomness, the same on every process
        batch = task.draw(run, step, g, sampler.indices(step))
        model.train()
        for micro in range(o.gradient_accumulation_steps):
            sl = local_slice(micro, accelerator, o.batch_size)
            mb = {k: v[sl] for k, v in batch.items()}
            with accelerator.accumulate(model):
                loss = task.loss(run, model, mb)
                accelerator.backward(loss)
                if accelerator.sync_gradients:  # (an infinite max norm only measures)
                    grad_norm = accelerator.clip_grad_norm_(params, o.max_grad_norm or float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            task.after_micro(run, mb, step)
            running += loss.detach() / o.gradient_accumulation_steps
        lr_scheduler.step()
        if run.ema is not None:
            run.ema.step(task.ema_parameters(run.unwrapped()))
        run.step = step = step + 1
        running_n += 1
        bar.update(1)

        last = step == o.max_train_steps
        if step % cfg.log_every == 0 or last:
            last_loss = float(accelerator.reduce(running, "mean")) / running_n  # the only regular host sync
            check_finite(step, out, last_loss)  # a diverged run stops here, before any save
            running.zero_()
            running_n = 0
            lr = lr_scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
            if bar.disable and task.progress and accelerator.is_local_main_process:  # --no-progress: a log line instead
                logger.info("step %d/%d: loss %.4f, lr %.2e, %.0f s so far", step, o.max_train_steps, last_loss, lr,
                            wall_time())
            run.log({"train/loss": last_loss, "train/lr": lr, "train/grad_norm": float(grad_norm)})
        if getattr(cfg, "validation_steps", 0) and step % cfg.validation_steps == 0:
            task.validate(run, step)
            model.train()
        if cfg.checkpointing_steps and (step % cfg.checkpointing_steps == 0 or last):
            save_checkpoint(accelerator, out, step, cfg, checkpoint_state(last_loss, float(grad_norm)),
                            cfg.checkpoints_total_limit)
    bar.close()

    # ---- export: never a NaN model (checked on every process, so none waits for a main process that stopped)
    check_finite(run.step, out, modules={task.name: task.ema_target(run.unwrapped())})
    summary = {}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        specific = task.export(run)
        summary = {"trainer": task.name, "steps": run.step, "wall_time_s": round(wall_time(), 1),
                   "final_loss": last_loss, "global_batch": run.global_batch,
                   "processes": accelerator.num_processes, "device": str(device), "start_step": start_step,
                   "resumed_from": str(ckpt) if ckpt else None, **specific,
                   "config_path": config_path, "output": str(out / task.exports[0])}
        save_config(cfg, out / task.exports[0] / "training_config.yaml")
        write_summary(out / task.exports[0] / "training_summary.json", summary)
        logger.info("%s: %d steps in %.0f s, saved to %s", task.name, run.step, wall_time(), out / task.exports[0])
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


__all__ = ["Run", "Task", "train"]
