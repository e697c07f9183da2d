"""Model configs and builders: diffusers' ``AutoencoderKL`` and ``UNet2DConditionModel``,
transformers' ``CLIPTextModel`` and ``CLIPTokenizer``. No network is re-implemented here; these
dataclasses only choose the constructor arguments (read from YAML in ``configs/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .diffusion import TimestepSpacing, alphas_cumprod_from_betas, make_betas, rescale_zero_terminal_snr


@dataclass
class VAEConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # one entry per level; factor = 2**(levels-1)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 1.0  # measured on the training set by `latentdiff train vae`
    in_channels: int = 3
    out_channels: int = 3

    def validate(self):
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"vae.block_out_channels {self.block_out_channels} must be multiples of "
                             f"vae.norm_num_groups={self.norm_num_groups}")

    def build(self, sample_size: int):
        from diffusers import AutoencoderKL

        n = len(self.block_out_channels)
        return AutoencoderKL(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            sample_size=sample_size,
            scaling_factor=self.scaling_factor,
        )


@dataclass
class UNetConfig:
    block_out_channels: tuple[int, ...] = (64, 128, 256)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    layers_per_block: int = 1
    attention_head_dim: int = 8  # diffusers' (misnamed) number of heads, as in SD 1.x configs
    norm_num_groups: int = 32
    transformer_layers_per_block: int = 1

    def validate(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"unet: {n} block_out_channels need {n} down_block_types and {n} up_block_types")

    def build(self, sample_size: int, in_channels: int, cross_attention_dim: int):
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels,
            down_block_types=self.down_block_types,
            up_block_types=self.up_block_types,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            attention_head_dim=self.attention_head_dim,
            norm_num_groups=self.norm_num_groups,
            transformer_layers_per_block=self.transformer_layers_per_block,
            cross_attention_dim=cross_attention_dim,
        )


@dataclass
class TextEncoderConfig:
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    projection_dim: int = 512
    hidden_act: str = "quick_gelu"
    max_position_embeddings: int = 77

    def build(self):
        from transformers import CLIPTextConfig, CLIPTextModel

        cfg = CLIPTextConfig(
            vocab_size=49408,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            projection_dim=self.projection_dim,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
        return CLIPTextModel(cfg)


@dataclass
class SchedulerConfig:
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    timestep_spacing: TimestepSpacing = "leading"  # "logsnr" is ours: diffusers' schedulers refuse it
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    rescale_betas_zero_snr: bool = False  # Lin et al. 2024: ᾱ_{T-1} = 0 (use with trailing spacing, v-prediction)

    def alphas_cumprod(self) -> torch.Tensor:
        """The training ᾱ table (float64); with ``rescale_betas_zero_snr`` its last entry is exactly 0."""
        betas = make_betas(self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end)
        if self.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        return alphas_cumprod_from_betas(betas)

    def to_diffusers(self) -> dict:
        """A DDIMScheduler config that diffusers' pipelines load with the same schedule."""
        return {
            "_class_name": "DDIMScheduler",
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "prediction_type": self.prediction_type,
            "timestep_spacing": self.timestep_spacing,
            "steps_offset": self.steps_offset,
            "set_alpha_to_one": self.set_alpha_to_one,
            "rescale_betas_zero_snr": self.rescale_betas_zero_snr,
            "clip_sample": False,
            "trained_betas": None,
        }

    @classmethod
    def from_diffusers(cls, cfg: dict) -> "SchedulerConfig":
        """Read any diffusers scheduler config (DDIM, PNDM, Euler, ...) for its noise schedule."""
        if cfg.get("trained_betas") is not None:
            raise ValueError("scheduler config has trained_betas, which latentdiff does not support")
        schedule = cfg.get("beta_schedule", "linear")
        allowed = ("linear", "scaled_linear", "squaredcos_cap_v2")
        if schedule not in allowed:
            raise ValueError(f"scheduler beta_schedule {schedule!r} is not supported; latentdiff supports {allowed}")
        return cls(
            num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            beta_schedule=schedule,
            beta_start=float(cfg.get("beta_start", 0.0001)),
            beta_end=float(cfg.get("beta_end", 0.02)),
            prediction_type=cfg.get("prediction_type", "epsilon"),
            timestep_spacing=cfg.get("timestep_spacing", "leading"),
            steps_offset=int(cfg.get("steps_offset", 0)),
            set_alpha_to_one=bool(cfg.get("set_alpha_to_one", True)),
            rescale_betas_zero_snr=bool(cfg.get("rescale_betas_zero_snr", False)),
        )


@dataclass
class SamplingDefaults:
    """A model's own sampling defaults (latentdiff.json beside model_index.json; diffusers ignores it)."""

    sampler: str = "dpmpp_2m"
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 0.0
    timestep_spacing: str = ""  # "" = the scheduler config's; "logsnr" lives here, since diffusers' schedulers lack it
    sigma_schedule: str = "default"  # default = σ at the timestep spacing; karras, exponential, ... (diffusion.make_sigmas)

    def validate(self):
        from .diffusion import SIGMA_SCHEDULES, TIMESTEP_SPACINGS
        from .samplers import SAMPLERS

        if self.sampler not in SAMPLERS:
            raise ValueError(f"defaults.sampler {self.sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")
        if self.sigma_schedule not in SIGMA_SCHEDULES:
            raise ValueError(f"defaults.sigma_schedule {self.sigma_schedule!r} is unknown; choose one of "
                             f"{', '.join(SIGMA_SCHEDULES)}")
        if self.timestep_spacing and self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"defaults.timestep_spacing {self.timestep_spacing!r} is unknown; choose one of "
                             f"{', '.join(TIMESTEP_SPACINGS)} or '' (the scheduler's)")
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise ValueError(f"defaults.num_inference_steps must be an integer >= 1, got {self.num_inference_steps!r}")


@dataclass
class ModelConfig:
    """Everything needed to build a (randomly initialised) pipeline."""

    resolution: int = 64
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.block_out_channels) - 1)

    def validate(self):
        if self.resolution % self.vae_scale_factor:
            raise ValueError(f"resolution {self.resolution} must be a multiple of the VAE factor {self.vae_scale_factor}")


def build_components(cfg: ModelConfig, seed: int = 0) -> dict:
    """Randomly initialised unet, vae, text_encoder and tokenizer for ``cfg`` (seeded)."""
    from .tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    vae = cfg.vae.build(cfg.resolution)
    text_encoder = cfg.text_encoder.build()
    unet = cfg.unet.build(cfg.resolution // cfg.vae_scale_factor, cfg.vae.latent_channels, cfg.text_encoder.hidden_size)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": build_clip_tokenizer(),
            "scheduler_config": cfg.scheduler, "defaults": cfg.defaults}
