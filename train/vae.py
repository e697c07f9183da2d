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

from latentdiff.config import load_config
from latentdiff.evaluation import vae_roundtrip
from latentdiff.images import make_grid, save_png_atomic
from latentdiff.models import ModelConfig

from . import loop
from .common import (
    DataConfig,
    Device,
    EMAConfig,
    MixedPrecision,
    OptimConfig,
    check_loop_settings,
    check_model_source,
    load_image_data,
    load_validation_data,
    psnr,
    run_main,
    to_pixels,
)
from .loop import Run, Task
from .unet import log_image

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
    # Fine-tune the decoder alone (encoder and quant_conv frozen, the init's scaling factor kept): the
    # latent space stays the one a U-Net was trained on, so it keeps working with the new decoder
    # (what Stability's sd-vae-ft-mse did for SD 1.x). Needs init_from.
    train_decoder_only: bool = False
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
        if self.train_decoder_only and not self.init_from:
            raise ValueError("train_decoder_only needs init_from: the VAE (or pipeline folder) whose encoder and "
                             "latent space the new decoder keeps")


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
    """Deterministic reconstructions D(μ(x)) in [0, 1], (N, 3, R, R), on ``device``
    (:func:`latentdiff.evaluation.vae_roundtrip` of the uint8 images)."""
    return vae_roundtrip(vae, images_u8.float() / 255.0, batch_size).to(device)


def heldout_psnr(vae, images_u8: torch.Tensor, batch_size: int, device) -> float:
    """Mean PSNR (dB) of D(μ(x)) against x over ``images_u8``."""
    rec = reconstruct(vae, images_u8, batch_size, device)
    return float(psnr(rec, images_u8.to(device).float() / 255.0).mean())


class VAETask(Task):
    """L1/L2 + KL [+ PatchGAN] on random crops; exports output_dir/vae with the measured scaling factor."""

    name = "vae"
    exports = ("vae",)

    def build(self) -> None:
        cfg = self.cfg
        self.vae, model_resolution = build_vae(cfg)
        self.resolution = cfg.data.resolution or model_resolution
        self.train_data = load_image_data(cfg.data, cfg.data.split, self.resolution)
        self.val_data = load_validation_data(cfg.data, self.resolution)
        if cfg.random_crop > self.resolution:
            raise ValueError(f"random_crop {cfg.random_crop} exceeds the resolution {self.resolution}")
        self.num_samples = len(self.train_data)
        self.disc = self.disc_optimizer = None
        if cfg.discriminator.enabled:
            dc = cfg.discriminator
            self.disc = PatchDiscriminator(3, dc.channels, dc.layers)
            self.disc_optimizer = torch.optim.AdamW(self.disc.parameters(), lr=dc.learning_rate, betas=(0.5, 0.9))

    def setup(self, run: Run) -> torch.nn.Module:
        if self.cfg.gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()
        self.images = self.train_data.images.to(run.device)  # uint8 (N, 3, R, R) on the device: a step is indexing
        self.crop = self.cfg.random_crop or self.resolution
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.cfg.train_decoder_only:
            for module in (self.vae.encoder, self.vae.quant_conv):
                if module is not None:
                    module.requires_grad_(False)
        return AutoencoderStep(self.vae.train())

    def extra_objects(self) -> list:
        return [self.disc, self.disc_optimizer] if self.disc is not None else []

    def prepared(self, objects: list) -> None:
        if objects:
            self.disc, self.disc_optimizer = objects

    def ema_target(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.vae

    def draw(self, run: Run, step: int, g: torch.Generator, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        n, device, r, c = len(idx), run.device, self.resolution, self.crop
        return {
            "idx": idx,
            "flip": torch.rand(n, generator=g, device=device) < (0.5 if self.cfg.data.random_flip else 0.0),
            "offsets": torch.randint(0, r - c + 1, (n, 2), generator=g, device=device),
            "noise": torch.randn((n, self.vae.config.latent_channels, c // self.factor, c // self.factor), generator=g,
                                 device=device),
        }

    def pixels(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        x = to_pixels(self.images[b["idx"]], b["flip"])                     # (B, 3, R, R) in [-1, 1]
        return random_crops(x, b["offsets"], self.crop) if self.crop < self.resolution else x

    def loss(self, run: Run, model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        x = self.pixels(b)
        rec, mean, logvar = model(x, b["noise"])
        rec_loss = F.l1_loss(rec.float(), x) if cfg.reconstruction_loss == "l1" else F.mse_loss(rec.float(), x)
        loss = rec_loss + cfg.kl_weight * kl_divergence(mean.float(), logvar.float()).mean()
        self.last = (x, rec)
        if self.disc is not None and run.step >= cfg.discriminator.start_step:
            # the generator's hinge loss through a frozen view of D (no gradients into D here)
            d = run.accelerator.unwrap_model(self.disc)
            params = {k: v.detach() for k, v in d.named_parameters()}
            loss = loss - cfg.discriminator.weight * torch.func.functional_call(d, params, (rec,)).mean()
        return loss

    def after_micro(self, run: Run, b: dict[str, torch.Tensor], step: int) -> None:
        if self.disc is None or step < self.cfg.discriminator.start_step:
            return
        x, rec = self.last
        with run.accelerator.accumulate(self.disc):
            real, fake = self.disc(torch.cat([x, rec.detach()])).chunk(2)     # real | reconstructed
            d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()        # hinge (Lim & Ye 2017)
            run.accelerator.backward(d_loss)
            self.disc_optimizer.step()
            self.disc_optimizer.zero_grad(set_to_none=True)

    def validate(self, run: Run, step: int) -> None:
        """Held-out PSNR and a grid of originals (top) over reconstructions (bottom)."""
        if run.is_main and self.val_data is not None:
            vae, val = run.ema_copy(), self.val_data
            value = heldout_psnr(vae, val.images, 64, run.device)
            k = min(self.cfg.num_validation_images, len(val))
            rec = reconstruct(vae, val.images[:k], 64, run.device)
            tiles = torch.cat([val.images[:k].float().cpu() / 255.0, rec.cpu()])
            from PIL import Image

            pil = [Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for t in tiles]
            grid = make_grid(pil, cols=k)
            save_png_atomic(grid, run.out / "validation" / f"step-{step:07d}.png")
            run.log({"val/psnr_db": value})
            log_image(run.accelerator, "val/reconstructions", grid, step)
            logger.info("step %d: held-out PSNR %.2f dB", step, value)
        run.accelerator.wait_for_everyone()

    def export(self, run: Run) -> dict:
        """output_dir/vae with the EMA weights and the measured scaling factor."""
        cfg, device = self.cfg, run.device
        final = run.ema_copy().float()
        if cfg.train_decoder_only:  # the latents a U-Net learnt are unchanged: so must be their scale
            sf = float(self.vae.config.scaling_factor)
        else:
            n = cfg.scaling_factor_samples or len(self.train_data)
            sf = measure_scaling_factor(final, self.train_data.images[:n], 64, device, cfg.seed)
        final.register_to_config(scaling_factor=sf)
        val_psnr = heldout_psnr(final, self.val_data.images, 64, device) if self.val_data is not None else None
        final.save_pretrained(run.out / "vae", safe_serialization=True)
        logger.info("VAE: scaling_factor=%.5f, held-out PSNR %s dB", sf, f"{val_psnr:.2f}" if val_psnr else "n/a")
        return {"scaling_factor": sf, "heldout_psnr_db": val_psnr, "heldout_images": len(self.val_data or [])}


def train(cfg: VAETrainConfig, resume: str | None = None, config_path: str | None = None, overwrite: bool = False) -> dict:
    """Train the VAE as configured; returns the training summary (also in vae/training_summary.json)."""
    return loop.train(VAETask(cfg), resume=resume, config_path=config_path, overwrite=overwrite)


def random_crops(x: torch.Tensor, offsets: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample crops: x (B, C, R, R), offsets (B, 2) → (B, C, size, size), by gather indexing."""
    ar = torch.arange(size, device=x.device)
    rows = (offsets[:, 0:1] + ar)[:, :, None]                              # (B, size, 1)
    cols = (offsets[:, 1:2] + ar)[:, None, :]                              # (B, 1, size)
    b = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)       # (B, C, size, size)


EPILOG = """examples:
  # the shipped emoji model's VAE (GPU: minutes; CPU: hours)
  latentdiff train vae --config configs/emoji_vae.yaml
  # a quick test-size run on CPU
  latentdiff train vae --config configs/tiny_vae.yaml --output-dir runs/tiny_vae --device cpu
  # continue an interrupted run exactly
  latentdiff train vae --config configs/emoji_vae.yaml --resume latest
  # a new decoder for the shipped model's latents, on all four emoji styles (encoder frozen)
  latentdiff train vae --config configs/emoji_vae_decoder.yaml
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
