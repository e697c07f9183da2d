"""Train the autoencoder (diffusers ``AutoencoderKL``) of a latent diffusion model.

Objective (Rombach et al. 2022, §3 and App. G; Kingma & Welling 2014):

    z = μ(x) + σ(x)·n,  n ~ N(0, I)                     (reparameterised posterior sample)
    loss = |x - D(z)|₁ (or ²)  +  kl_weight · KL(q(z|x) ‖ N(0, I))  [+ disc_weight · L_adv]

with the KL summed over latent elements and averaged over the batch (kl_weight ~1e-6 keeps the
latent space smooth without blurring), and an optional PatchGAN discriminator (Isola et al. 2017)
with hinge losses, switched on after ``discriminator.start_step``.

At the end the latent scaling factor is measured as SD did: 1 / std of posterior samples over the
training set, so that ``scaling_factor · E(x)`` has unit variance; it is written into the VAE's
config (``vae.register_to_config(scaling_factor=...)``). PSNR on the held-out split is reported,
and the VAE is saved to ``output_dir/vae`` (safetensors) — the ``vae_from`` of ``train unet``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from latentdiff.config import load_config, save_config
from latentdiff.images import make_grid, save_png_atomic
from latentdiff.models import ModelConfig

from .common import (
    CONFIG_FILE,
    DataConfig,
    Device,
    EMAConfig,
    MixedPrecision,
    OptimConfig,
    StepSampler,
    Timer,
    begin_run,
    check_finite,
    check_loop_settings,
    check_model_source,
    ema_copy,
    load_checkpoint,
    load_image_data,
    load_validation_data,
    local_slice,
    make_accelerator,
    make_ema,
    make_lr_scheduler,
    make_optimizer,
    psnr,
    run_main,
    save_checkpoint,
    seed_everything,
    set_cpu_threads,
    start_run,
    step_generator,
    to_pixels,
    write_summary,
)

logger = logging.getLogger("latentdiff.train")


@dataclass
class DiscriminatorConfig:
    enabled: bool = False
    start_step: int = 2000         # adversarial loss only after the reconstruction has settled
    weight: float = 0.1            # weight of the generator's adversarial loss
    learning_rate: float = 1e-4
    channels: int = 64
    layers: int = 3                # strided conv layers: receptive field of a PatchGAN output


@dataclass
class VAETrainConfig:
    CONFIG_REFERENCES: ClassVar[tuple[str, ...]] = ("model",)  # resolved beside the config file
    model: str = ""                # model config YAML (configs/emoji.yaml): its `vae` section and resolution
    init_from: str = ""            # or a pipeline folder / VAE folder to continue from
    output_dir: str = "runs/vae"
    seed: int = 0
    device: Device = "auto"
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False
    cpu_threads: int = 0             # torch CPU threads (0 = torch's default); 1 is fastest on a loaded machine
    data: DataConfig = field(default_factory=lambda: DataConfig(source="emoji"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=1e-3))
    ema: EMAConfig = field(default_factory=EMAConfig)
    reconstruction_loss: Literal["l1", "l2"] = "l1"
    kl_weight: float = 1e-6
    random_crop: int = 0           # >0: train on random crops of this size (the VAE is convolutional)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    scaling_factor_samples: int = 0  # images used to measure the scaling factor (0 = the whole training set)
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    validation_steps: int = 500    # reconstruction grid + held-out PSNR (0 = only at the end)
    num_validation_images: int = 16
    log_every: int = 10

    def validate(self):
        check_loop_settings(self)
        check_model_source(self.model, self.init_from)
        if self.random_crop < 0:
            raise ValueError("random_crop must be >= 0 (0 = full images)")


class PatchDiscriminator(torch.nn.Module):
    """PatchGAN discriminator (Isola et al. 2017, pix2pix's ``NLayerDiscriminator``): strided 4×4
    convolutions; each output logit judges one receptive-field patch as real or reconstructed."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        mods = [torch.nn.Conv2d(in_channels, channels, 4, 2, 1), torch.nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers):
            c_next = channels * min(2**i, 8)
            mods += [torch.nn.Conv2d(c, c_next, 4, 2, 1), torch.nn.GroupNorm(min(32, c_next // 4), c_next),
                     torch.nn.LeakyReLU(0.2)]
            c = c_next
        mods += [torch.nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = torch.nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1, h, w) logits


class AutoencoderStep(torch.nn.Module):
    """One forward of the VAE objective in ``forward`` (so DDP sees a single module call):
    encode → reparameterised sample with the given noise → decode."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, noise: torch.Tensor):
        dist = self.vae.encode(x).latent_dist
        z = dist.mean + dist.std * noise
        return self.vae.decode(z).sample, dist.mean, dist.logvar


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) summed over latent elements, per sample (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def build_vae(cfg: VAETrainConfig):
    """(vae, resolution) from the model config, or loaded from ``init_from``."""
    from diffusers import AutoencoderKL

    if cfg.model:
        mc = load_config(cfg.model, ModelConfig)
        torch.manual_seed(cfg.seed)
        return mc.vae.build(mc.resolution), mc.resolution
    path = Path(cfg.init_from)
    sub = "vae" if (path / "vae").is_dir() else None
    vae = AutoencoderKL.from_pretrained(path, subfolder=sub, use_safetensors=True)
    return vae, int(vae.config.sample_size)


@torch.no_grad()
def encode_stats(vae, images_u8: torch.Tensor, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, (N, C, h, w) each, fp32 on ``device``."""
    means, stds = [], []
    for i in range(0, len(images_u8), batch_size):
        dist = vae.encode(to_pixels(images_u8[i:i + batch_size].to(device))).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def measure_scaling_factor(vae, images_u8: torch.Tensor, batch_size: int, device, seed: int) -> float:
    """1 / std of posterior samples z = μ + σ·n over ``images_u8`` (SD's 0.18215 was measured so)."""
    mean, std = encode_stats(vae, images_u8, batch_size, device)
    g = torch.Generator(device=device).manual_seed(seed)
    z = mean + std * torch.randn(mean.shape, generator=g, device=device)
    return float(1.0 / z.double().std())


@torch.no_grad()
def reconstruct(vae, images_u8: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """Deterministic reconstructions D(μ(x)) in [0, 1], (N, 3, R, R)."""
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = to_pixels(images_u8[i:i + batch_size].to(device))
        out.append((vae.decode(vae.encode(x).latent_dist.mean).sample.float() / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


def heldout_psnr(vae, images_u8: torch.Tensor, batch_size: int, device) -> float:
    """Mean PSNR (dB) of D(μ(x)) against x over ``images_u8``."""
    rec = reconstruct(vae, images_u8, batch_size, device)
    return float(psnr(rec, images_u8.to(device).float() / 255.0).mean())


def train(cfg: VAETrainConfig, resume: str | None = None, config_path: str | None = None, overwrite: bool = False) -> dict:
    """Train the VAE as configured; returns the training summary."""
    timer = Timer()
    set_cpu_threads(cfg.cpu_threads)
    ckpt = start_run(cfg.output_dir, resume, trainer="vae", overwrite=overwrite, exports=("vae",), cfg=cfg)
    out = Path(cfg.output_dir)
    o = cfg.optim

    # ---- models, data (all user errors surface here, before any step)
    vae, model_resolution = build_vae(cfg)
    resolution = cfg.data.resolution or model_resolution
    train_data = load_image_data(cfg.data, cfg.data.split, resolution)
    val_data = load_validation_data(cfg.data, resolution)
    if cfg.random_crop > resolution:
        raise ValueError(f"random_crop {cfg.random_crop} exceeds the resolution {resolution}")

    accelerator = make_accelerator(cfg, out, "latentdiff-vae")
    device = accelerator.device
    seed_everything(cfg.seed)
    if accelerator.is_main_process:
        begin_run(out, trainer="vae", fresh=ckpt is None, overwrite=overwrite)
        save_config(cfg, out / CONFIG_FILE)
    logger.info("VAE training on %s: %d training images (%s), %d held-out, %d processes", device, len(train_data),
                train_data.source, len(val_data) if val_data else 0, accelerator.num_processes)

    if cfg.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    model = AutoencoderStep(vae.train())
    optimizer = make_optimizer(model.parameters(), o)
    lr_scheduler = make_lr_scheduler(optimizer, o)
    disc = disc_optimizer = None
    if cfg.discriminator.enabled:
        dc = cfg.discriminator
        disc = PatchDiscriminator(3, dc.channels, dc.layers)
        disc_optimizer = torch.optim.AdamW(disc.parameters(), lr=dc.learning_rate, betas=(0.5, 0.9))
        model, optimizer, disc, disc_optimizer = accelerator.prepare(model, optimizer, disc, disc_optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    ema = make_ema(accelerator.unwrap_model(model).vae, cfg.ema)
    accelerator.register_for_checkpointing(lr_scheduler)
    if ema is not None:
        ema.to(device)
        accelerator.register_for_checkpointing(ema)

    images = train_data.images.to(device)  # uint8 (N, 3, R, R) on the device: a step is tensor indexing
    global_batch = o.batch_size * accelerator.num_processes * o.gradient_accumulation_steps
    sampler = StepSampler(len(train_data), global_batch, cfg.seed, device)
    latent_channels = vae.config.latent_channels
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    crop = cfg.random_crop or resolution

    # ---- resume
    step, earlier_wall_time = 0, 0.0
    if ckpt is not None:
        state = load_checkpoint(accelerator, ckpt)
        step, earlier_wall_time = state["step"], state.get("wall_time_s", 0.0)
        if ema is not None:
            ema.to(device)
        logger.info("resumed from %s at step %d", ckpt, step)

    # ---- the loop
    bar = tqdm(total=o.max_train_steps, initial=step, disable=not accelerator.is_local_main_process,
               desc="train vae", dynamic_ncols=True)
    running, running_n, last_loss = torch.zeros((), device=device), 0, float("nan")
    while step < o.max_train_steps:
        # randomness of the whole global batch for this step, identical on every process
        g = step_generator(cfg.seed, step, device)
        idx = sampler.indices(step)                                               # (G,)
        flip = torch.rand(global_batch, generator=g, device=device) < 0.5 if cfg.data.random_flip else None
        offs = torch.randint(0, resolution - crop + 1, (global_batch, 2), generator=g, device=device)
        noise = torch.randn((global_batch, latent_channels, crop // factor, crop // factor), generator=g, device=device)
        model.train()
        for micro in range(o.gradient_accumulation_steps):
            sl = local_slice(micro, accelerator, o.batch_size)
            x = to_pixels(images[idx[sl]], None if flip is None else flip[sl])     # (B, 3, R, R) in [-1, 1]
            if crop < resolution:
                x = random_crops(x, offs[sl], crop)
            with accelerator.accumulate(model):
                rec, mean, logvar = model(x, noise[sl])
                rec_loss = F.l1_loss(rec.float(), x) if cfg.reconstruction_loss == "l1" else F.mse_loss(rec.float(), x)
                loss = rec_loss + cfg.kl_weight * kl_divergence(mean.float(), logvar.float()).mean()
                use_disc = disc is not None and step >= cfg.discriminator.start_step
                if use_disc:  # generator's hinge loss through a frozen view of D (no grads into D here)
                    d = accelerator.unwrap_model(disc)
                    params = {k: v.detach() for k, v in d.named_parameters()}
                    loss = loss - cfg.discriminator.weight * torch.func.functional_call(d, params, (rec,)).mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients and o.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), o.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if use_disc:
                with accelerator.accumulate(disc):
                    logits = disc(torch.cat([x, rec.detach()]))                   # real | reconstructed
                    real, fake = logits.chunk(2)
                    d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()  # hinge (Lim & Ye 2017)
                    accelerator.backward(d_loss)
                    disc_optimizer.step()
                    disc_optimizer.zero_grad(set_to_none=True)
            running += loss.detach() / o.gradient_accumulation_steps
        lr_scheduler.step()
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).vae.parameters())
        step += 1
        running_n += 1
        bar.update(1)

        if step % cfg.log_every == 0 or step == o.max_train_steps:
            last_loss = float(accelerator.reduce(running, "mean")) / running_n  # the only host sync
            check_finite(step, out, last_loss)  # a diverged run stops here, before any save
            running.zero_()
            running_n = 0
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
            accelerator.log({"train/loss": last_loss, "train/lr": lr_scheduler.get_last_lr()[0]}, step=step)
        if cfg.validation_steps and step % cfg.validation_steps == 0 and val_data is not None:
            validate(cfg, accelerator, model, ema, val_data, out, step)
        if cfg.checkpointing_steps and (step % cfg.checkpointing_steps == 0 or step == o.max_train_steps):
            save_checkpoint(accelerator, out, step, cfg, {"loss": last_loss, "wall_time_s": earlier_wall_time + timer.elapsed()},
                            cfg.checkpoints_total_limit)
    bar.close()

    # ---- scaling factor, held-out PSNR, export
    # never export a NaN model (checked on every process, so none waits for a main process that stopped)
    check_finite(step, out, modules={"vae": accelerator.unwrap_model(model).vae})
    summary = {}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = ema_copy(accelerator.unwrap_model(model).vae, ema).float()
        n = cfg.scaling_factor_samples or len(train_data)
        sf = measure_scaling_factor(final, train_data.images[:n], 64, device, cfg.seed)
        final.register_to_config(scaling_factor=sf)
        val_psnr = heldout_psnr(final, val_data.images, 64, device) if val_data is not None else None
        final.save_pretrained(out / "vae", safe_serialization=True)
        summary = {"trainer": "vae", "steps": step, "wall_time_s": round(earlier_wall_time + timer.elapsed(), 1), "final_loss": last_loss,
                   "scaling_factor": sf, "heldout_psnr_db": val_psnr, "heldout_images": len(val_data or []),
                   "config_path": config_path, "output": str(out / "vae")}
        write_summary(out / "vae" / "training_summary.json", summary)
        logger.info("VAE saved to %s: scaling_factor=%.5f, held-out PSNR %s dB", out / "vae", sf,
                    f"{val_psnr:.2f}" if val_psnr is not None else "n/a")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def random_crops(x: torch.Tensor, offsets: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample crops: x (B, C, R, R), offsets (B, 2) → (B, C, size, size), by gather indexing."""
    ar = torch.arange(size, device=x.device)
    rows = (offsets[:, 0:1] + ar)[:, :, None]                              # (B, size, 1)
    cols = (offsets[:, 1:2] + ar)[:, None, :]                              # (B, 1, size)
    b = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)       # (B, C, size, size)


def validate(cfg: VAETrainConfig, accelerator, model, ema, val_data, out: Path, step: int) -> None:
    """Held-out PSNR and a grid of originals (top) over reconstructions (bottom)."""
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    vae = ema_copy(accelerator.unwrap_model(model).vae, ema)
    device = accelerator.device
    value = heldout_psnr(vae, val_data.images, 64, device)
    k = min(cfg.num_validation_images, len(val_data))
    rec = reconstruct(vae, val_data.images[:k], 64, device)
    orig = val_data.images[:k].float() / 255.0
    tiles = torch.cat([orig.cpu(), rec.cpu()])
    from PIL import Image

    pil = [Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for t in tiles]
    grid = make_grid(pil, cols=k)
    save_png_atomic(grid, out / "validation" / f"step-{step:07d}.png")
    accelerator.log({"val/psnr_db": value}, step=step)
    _log_image(accelerator, "val/reconstructions", grid, step)
    logger.info("step %d: held-out PSNR %.2f dB", step, value)
    accelerator.wait_for_everyone()


def _log_image(accelerator, tag: str, image, step: int) -> None:
    import numpy as np

    try:
        tracker = accelerator.get_tracker("tensorboard", unwrap=True)
        tracker.add_image(tag, np.asarray(image), step, dataformats="HWC")
    except Exception as e:  # no tensorboard tracker: the PNG on disk is enough
        logger.debug("image not logged to TensorBoard: %s", e)


EPILOG = """examples:
  # the shipped emoji model's VAE (GPU: minutes; CPU: hours)
  latentdiff train vae --config configs/emoji_vae.yaml
  # a quick test-size run on CPU
  latentdiff train vae --config configs/tiny_vae.yaml --output-dir runs/tiny_vae --device cpu
  # continue an interrupted run exactly
  latentdiff train vae --config configs/emoji_vae.yaml --resume latest
  # multi-GPU
  accelerate launch --multi_gpu --num_processes 4 -m latentdiff.train.vae --config configs/emoji_vae.yaml
"""


def main(argv: list[str] | None = None) -> int:
    return run_main(train, VAETrainConfig, argv, "latentdiff train vae",
                    "Train the AutoencoderKL of a latent diffusion model (L1/L2 + KL [+ PatchGAN]); measures "
                    "the latent scaling factor and saves output_dir/vae.", EPILOG)


if __name__ == "__main__":  # `python -m` / `accelerate launch -m latentdiff.train.vae`
    from .common import module_entry

    module_entry(main)
