"""Latent consistency distillation of a LoRA: ``latentdiff train lcm`` (Luo et al. 2023, "Latent
Consistency Models" and "LCM-LoRA"; diffusers' ``train_lcm_distill_lora_sd`` is the recipe).

The student is the base U-Net with a LoRA; the teacher is the same U-Net with the LoRA switched off.
On the skipping-step schedule of K = 50 DDIM timesteps τ_1 < … < τ_K (τ_j = j·⌊T/K⌋ − 1), one step:

    n ~ U{1..K},  s = τ_n,  t = s − ⌊T/K⌋ (the previous DDIM timestep, clamped at 0)
    x_s = √ᾱ_s z + √(1−ᾱ_s) ε                                   (z: a latent of the data)
    teacher, guided by w ~ U[w_min, w_max] (x̂0 and ε̂ of the cond/uncond passes, cond + w·(cond − uncond)):
    x_t = √ᾱ_t x̂0^w + √(1−ᾱ_t) ε̂^w                             one DDIM step s → t (the ODE solver)
    f(x, τ) = c_skip(τ) x + c_out(τ) x̂0(x, τ)                   the consistency function (boundary f(x, 0) = x)
    loss = pseudo-Huber( f_student(x_s, s) − sg[f_target(x_t, t)] ),  √(d² + c²) − c

with the target network the EMA of the student's LoRA weights (``ema.decay``; 0 = the student itself, as
diffusers' LoRA script does). The export is a diffusers-format LoRA: load it and sample with the
``lcm`` sampler in 2–8 steps with guidance 1 (ours: ``--sampler lcm``; diffusers: ``LCMScheduler``).
This is the LoRA task (:class:`~latentdiff.train.lora.LoraTask`) with another loss.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch

from latentdiff.diffusion import LCM_ORIGINAL_STEPS, lcm_boundary_scalings, predict_x0_from_eps, q_sample

from . import loop
from .common import EMAConfig, OptimConfig
from .loop import Run
from .lora import LoraDataConfig, LoraNetworkConfig, LoraTask, LoraTrainConfig, _ema_weights
from .lora import main as lora_main
from .unet import batch_latents, caption_rows

logger = logging.getLogger("latentdiff.train")


@dataclass
class LcmTrainConfig(LoraTrainConfig):
    data_has_default = True           # distils on the base model's own data (emoji) unless --data says otherwise
    name: str = "lcm_lora"
    output_dir: str = "runs/lcm"
    lora: LoraNetworkConfig = field(default_factory=lambda: LoraNetworkConfig(rank=8, unet_targets=["attention", "ff"]))
    data: LoraDataConfig = field(default_factory=lambda: LoraDataConfig(source="emoji"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(batch_size=16, learning_rate=1e-4,
                                                                   max_train_steps=1000, adam_weight_decay=0.0))
    ema: EMAConfig = field(default_factory=lambda: EMAConfig(decay=0.95, use_warmup=False))  # the target network
    num_ddim_timesteps: int = LCM_ORIGINAL_STEPS
    w_min: float = 1.0                # teacher guidance cond + w·(cond − uncond): CFG scale w + 1
    w_max: float = 4.0
    huber_c: float = 0.001
    timestep_scaling: float = 10.0
    validation_prompts: list[str] = field(default_factory=lambda: ["red apple", "grinning face"])
    validation_num_inference_steps: int = 4
    validation_guidance_scale: float = 1.0  # LCM samples without classifier-free guidance
    validation_sampler: str = "lcm"

    def validate(self):
        super().validate()
        if self.lora.text_encoder:
            raise ValueError("lora.text_encoder: LCM distillation adapts the U-Net only (the teacher's text "
                             "embeddings are cached); set it to false")
        if self.num_ddim_timesteps != LCM_ORIGINAL_STEPS:
            raise ValueError(f"num_ddim_timesteps must be {LCM_ORIGINAL_STEPS}, the schedule the lcm sampler and "
                             "diffusers' LCMScheduler sample on")
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"need 0 <= w_min <= w_max, got {self.w_min}, {self.w_max}")
        if self.huber_c <= 0 or self.timestep_scaling <= 0:
            raise ValueError("huber_c and timestep_scaling must be > 0")
        if self.prior.weight:
            raise ValueError("prior.weight: prior preservation is a LoRA fine-tuning option, not for distillation")


@contextlib.contextmanager
def adapters_off(model: torch.nn.Module):
    """The base model: every peft LoRA layer of ``model`` switched off inside (the teacher)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


class LcmTask(LoraTask):
    """The LoRA task whose loss is latent consistency distillation from the frozen base model."""

    name = "lcm"

    def setup(self, run: Run) -> torch.nn.Module:
        model = super().setup(run)
        T, K = self.T, self.cfg.num_ddim_timesteps
        self.skip = T // K
        self.ddim_timesteps = torch.arange(1, K + 1, device=run.device) * self.skip - 1    # τ_1..τ_K
        return model

    def draw(self, run: Run, step: int, g: torch.Generator, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        n, device, c = len(idx), run.device, self.cfg
        return {
            "idx": idx,
            "index": torch.randint(0, c.num_ddim_timesteps, (n,), generator=g, device=device),
            "eps": torch.randn((n, *self.latent_shape), generator=g, device=device),
            "post": torch.randn((n, *self.latent_shape), generator=g, device=device),
            "w": c.w_min + (c.w_max - c.w_min) * torch.rand(n, generator=g, device=device),
            "flip": torch.rand(n, generator=g, device=device) < (0.5 if c.data.random_flip else 0.0),
        }

    def consistency(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        c_skip, c_out = lcm_boundary_scalings(t, self.cfg.timestep_scaling)
        view = (-1,) + (1,) * (x.ndim - 1)
        x0 = predict_x0_from_eps(x, t, eps, self.alphas_cumprod)
        return c_skip.view(view).float() * x + c_out.view(view).float() * x0

    def loss(self, run: Run, model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        ac, enc = self.alphas_cumprod, self.enc
        z0 = batch_latents(enc, self.pipe.vae, b["idx"], b["flip"], b["post"], self.scaling_factor)
        emb = enc.text_embeddings[caption_rows(enc, b["idx"], torch.zeros_like(b["flip"]))]
        uncond = enc.text_embeddings[enc.uncond_index].expand_as(emb)
        s = self.ddim_timesteps[b["index"]]
        t = (s - self.skip).clamp(min=0)
        x_s = q_sample(z0, s, b["eps"], ac)
        view = (-1,) + (1,) * (z0.ndim - 1)
        with torch.no_grad():
            unet = run.unwrapped().unet
            with adapters_off(unet):  # the teacher, guided: one DDIM step s -> t of the probability-flow ODE
                e_c = unet(x_s, s, encoder_hidden_states=emb).sample.float()
                e_u = unet(x_s, s, encoder_hidden_states=uncond).sample.float()
            x0_c, x0_u = predict_x0_from_eps(x_s, s, e_c, ac), predict_x0_from_eps(x_s, s, e_u, ac)
            w = b["w"].view(view)
            x0_w, e_w = x0_c + w * (x0_c - x0_u), e_c + w * (e_c - e_u)
            a_t = ac[t].view(view).float()
            x_t = a_t.sqrt() * x0_w + (1 - a_t).sqrt() * e_w
            with _ema_weights(run.ema, self.unet_params):  # the target network: EMA of the student
                target = self.consistency(x_t, t, unet(x_t, t, encoder_hidden_states=emb).sample.float())
        pred = self.consistency(x_s, s, model(x_s, s, encoder_hidden_states=emb).sample.float())
        c = self.cfg.huber_c
        return (torch.sqrt((pred - target) ** 2 + c ** 2) - c).mean()

    def export(self, run: Run) -> dict:
        out = super().export(run)
        logger.info("sample it with the lcm sampler: latentdiff generate PROMPT --lora %s --sampler lcm --steps 4 "
                    "--guidance 1", out["lora"])
        return {**out, "sampler": "lcm", "recommended_steps": [2, 4, 8], "w_range": [self.cfg.w_min, self.cfg.w_max]}


def train(cfg: LcmTrainConfig, resume: str | None = None, config_path: str | None = None, overwrite: bool = False) -> dict:
    """Distil ``cfg.base`` into an LCM-LoRA; returns the summary (also in final/training_summary.json)."""
    return loop.train(LcmTask(cfg), resume=resume, config_path=config_path, overwrite=overwrite)


EPILOG = """examples:
  # a 4-step LoRA for the built-in model, distilled on its own training data
  latentdiff train lcm --config configs/emoji_lcm.yaml
  latentdiff generate "red apple" --lora runs/emoji_lcm/final --sampler lcm --steps 4 --guidance 1
  # any pipeline we load; a quick test-size run; continue an interrupted run exactly
  latentdiff train lcm --base runs/tiny_unet/final --data emoji --max-train-steps 20 --device cpu
  latentdiff train lcm --config configs/emoji_lcm.yaml --resume latest
"""


def main(argv: list[str] | None = None) -> int:
    """The LoRA trainer's command line, with the LCM config and task."""
    return lora_main(argv, config_cls=LcmTrainConfig, train_fn=train, prog="latentdiff train lcm",
                     description="Latent consistency distillation of a LoRA (LCM-LoRA): the base model as teacher, "
                                 "2-8-step sampling with the lcm sampler afterwards.", epilog=EPILOG)


if __name__ == "__main__":  # `python -m` / `accelerate launch -m latentdiff.train.lcm`
    from .common import module_entry

    module_entry(main)


__all__ = ["LcmTrainConfig", "LcmTask", "adapters_off", "train", "main"]
