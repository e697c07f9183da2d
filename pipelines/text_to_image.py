"""The text-to-image pipeline, unrolled: encode prompt -> initial latents -> sampler -> decode.

It holds no math of its own: schedules come from :mod:`latentdiff.diffusion`, steps from
:mod:`latentdiff.samplers`, guidance from :mod:`latentdiff.denoisers`. Folders are the diffusers
layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``), so diffusers' ``StableDiffusionPipeline`` loads what we save and vice versa.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from latentdiff.config import from_dict
from latentdiff.denoisers import ClassifierFreeGuidance, ClassifierGuidance, Conditioned, UNetDenoiser
from latentdiff.diffusion import alphas_cumprod_for_sampling, make_sigmas, make_timesteps, randn
from latentdiff.io import atomic_dir, check_safetensors_file, check_weights, resolve_model_dir
from latentdiff.lora import LoraMixin
from latentdiff.models import ModelConfig, SamplingDefaults, SchedulerConfig, build_components
from latentdiff.samplers import (
    ETA_SAMPLERS,
    SAMPLERS,
    a1111_name,
    get_sampler,
    make_noise_sampler,
    resolve_sampler,
)
from latentdiff.tokenizer import save_tokenizer

logger = logging.getLogger("latentdiff")

OUTPUT_TYPES = ("pil", "np", "latent")
LATENTDIFF_FILE = "latentdiff.json"  # our extras beside model_index.json (sampling defaults)


@dataclass
class PipelineOutput:
    images: list | np.ndarray | torch.Tensor
    latents: torch.Tensor
    parameters: list[dict] = field(default_factory=list)  # one dict per image: what regenerates it


class TextToImagePipeline(LoraMixin):
    """Latent text-to-image diffusion with a diffusers U-Net/VAE and a CLIP text encoder.

    >>> pipe = TextToImagePipeline.from_pretrained("emoji")
    >>> image = pipe("red apple", seed=0).images[0]
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config: SchedulerConfig,
                 defaults: SamplingDefaults | None = None, name: str | None = None):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler_config = scheduler_config
        self.defaults = defaults or SamplingDefaults()
        self.name = name
        # ᾱ as the samplers use it (a zero-terminal-SNR table gets ᾱ_{T-1} = 2⁻²⁴; see alphas_cumprod_for_sampling)
        self.alphas_cumprod = alphas_cumprod_for_sampling(scheduler_config.alphas_cumprod())
        for m in (unet, vae, text_encoder):
            m.eval().requires_grad_(False)

    # ------------------------------------------------------------------ construction and files

    @classmethod
    def from_config(cls, cfg: ModelConfig, seed: int = 0) -> "TextToImagePipeline":
        """A randomly initialised pipeline (for training from scratch and tests)."""
        c = build_components(cfg, seed)
        return cls(c["unet"], c["vae"], c["text_encoder"], c["tokenizer"], c["scheduler_config"], c["defaults"])

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "emoji", *, revision: str | None = None,
                        torch_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                        allow_pickle: bool = False) -> "TextToImagePipeline":
        """Load a built-in model name (``"emoji"``), a local diffusers folder, or a Hub repo id
        (``"user/name"``, optional ``revision``), e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``
        on a machine that reaches the Hub. Pickled weights are refused unless ``allow_pickle``."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        path = resolve_model_dir(name_or_path, revision=revision)
        if path.is_file():
            raise ValueError(f"{path} is a single file; load single-file checkpoints with "
                             "TextToImagePipeline.from_single_file")
        index = path / "model_index.json"
        if not index.exists():
            raise FileNotFoundError(f"{path} is not a pipeline folder: model_index.json is missing "
                                    "(expected the diffusers layout: unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
        missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (path / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"{path} lacks the component folder(s) {', '.join(missing)}")
        check_weights(path, allow_pickle=allow_pickle)
        use_safetensors = None if allow_pickle else True
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype,
                                                    use_safetensors=use_safetensors)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype,
                                            use_safetensors=use_safetensors)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=torch_dtype,
                                                     use_safetensors=use_safetensors)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        sched_file = path / "scheduler" / "scheduler_config.json"
        scheduler_config = SchedulerConfig.from_diffusers(json.loads(sched_file.read_text()))
        defaults = SamplingDefaults()
        extras = path / LATENTDIFF_FILE
        if extras.exists():
            # the same strict loader as the YAML configs: unknown keys, wrong types and values are errors
            defaults = from_dict(SamplingDefaults, json.loads(extras.read_text()).get("defaults", {}),
                                 where=f"{extras} defaults")
        pipe = cls(unet, vae, text_encoder, tokenizer, scheduler_config, defaults, name=str(name_or_path))
        return pipe.to(device)

    @classmethod
    def from_single_file(cls, checkpoint: str | os.PathLike, *, config: str | os.PathLike,
                         allow_pickle: bool = False, torch_dtype: torch.dtype = torch.float32) -> "TextToImagePipeline":
        """Load an original-format (CompVis/A1111) single-file checkpoint through diffusers' converter.
        ``config`` is a local diffusers pipeline folder of the same architecture (no Hub needed)."""
        from diffusers import StableDiffusionPipeline

        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} not found")
        if ckpt.suffix in (".ckpt", ".bin", ".pt", ".pth") and not allow_pickle:
            raise ValueError(f"{ckpt} is a pickle, which can run arbitrary code when loaded; pass "
                             "allow_pickle=True (--allow-pickle) if you trust it, or use a .safetensors file")
        if ckpt.suffix == ".safetensors":
            check_safetensors_file(ckpt)
        sd = StableDiffusionPipeline.from_single_file(str(ckpt), config=str(config), torch_dtype=torch_dtype,
                                                      local_files_only=True, safety_checker=None)
        sched = SchedulerConfig.from_diffusers(dict(sd.scheduler.config))
        return cls(sd.unet, sd.vae, sd.text_encoder, sd.tokenizer, sched, name=str(ckpt))

    def save_pretrained(self, save_directory: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
        """Write the diffusers folder layout (safetensors only), atomically. ``dtype=torch.float16``
        stores half-precision weights (the shipped model)."""
        import diffusers

        with atomic_dir(save_directory) as tmp:
            for name in ("unet", "vae", "text_encoder"):
                module = getattr(self, name)
                if dtype is None or module.dtype == dtype:
                    module.save_pretrained(tmp / name, safe_serialization=True)
                else:  # save a cast copy; the live model keeps its dtype
                    import copy

                    copy.deepcopy(module).to(dtype).save_pretrained(tmp / name, safe_serialization=True)
            save_tokenizer(self.tokenizer, tmp / "tokenizer")
            sched = {**self.scheduler_config.to_diffusers(), "_diffusers_version": diffusers.__version__}
            (tmp / "scheduler").mkdir()
            (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
            index = {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": diffusers.__version__,
                "feature_extractor": [None, None],
                "image_encoder": [None, None],
                "requires_safety_checker": False,
                "safety_checker": [None, None],
                "scheduler": ["diffusers", "DDIMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            }
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
            (tmp / LATENTDIFF_FILE).write_text(json.dumps({"defaults": asdict(self.defaults)}, indent=2))

    def to(self, device: str | torch.device) -> "TextToImagePipeline":
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def default_timestep_spacing(self) -> str:
        """The model's own spacing (latentdiff.json), else its scheduler config's."""
        return self.defaults.timestep_spacing or self.scheduler_config.timestep_spacing

    # ------------------------------------------------------------------ the unrolled pipeline

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings (B, 77, D): the last hidden state, as Stable Diffusion uses it.
        Prompts longer than 77 tokens are truncated, with a warning naming what was cut."""
        max_len = self.tokenizer.model_max_length
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True,
                             return_tensors="pt").input_ids
        for p in prompts:
            full = self.tokenizer(p, truncation=False).input_ids
            if len(full) > max_len:
                cut = self.tokenizer.decode(full[max_len - 1 : -1])
                logger.warning("Prompt is longer than %d tokens; this part was truncated: %r", max_len, cut)
        return self.text_encoder(ids.to(self.text_encoder.device))[0]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, H, W): D(z / scaling_factor)."""
        z = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        return (self.vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        *,
        num_inference_steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback: Callable[[dict], None] | None = None,
        timestep_spacing: str | None = None,
        sigma_schedule: str | Sequence[float] | None = None,
        noise_sampler: str | Callable | None = None,
        classifier=None,
        class_label: int | str | None = None,
        classifier_scale: float | Callable[[int], float] = 0.0,
        progress: bool = False,
    ) -> PipelineOutput:
        """Generate images. ``seed`` (int → seeds seed, seed+1, … per image, or a list) makes each
        image reproducible on its own; ``generator`` is the diffusers-style alternative.
        ``sampler`` is a registry name or an A1111 name ("DPM++ 2M Karras" = dpmpp_2m + karras);
        ``sigma_schedule`` one of :data:`latentdiff.diffusion.SIGMA_SCHEDULES`, ``"sigmas:…"``,
        ``"timesteps:…"`` or a list of sigmas; ``noise_sampler`` ``"generator"`` (default) or
        ``"brownian"`` (per-image Brownian trees, torchsde) or a callable ``(σ, σ_next) -> noise``."""
        d = self.defaults
        steps = d.num_inference_steps if num_inference_steps is None else num_inference_steps
        sampler, sigma_schedule = resolve_sampler(d.sampler if sampler is None else sampler, sigma_schedule)
        if sigma_schedule is None:
            sigma_schedule = d.sigma_schedule or "default"
        guidance_scale = d.guidance_scale if guidance_scale is None else guidance_scale
        eta = (d.eta if sampler == "ddim" else None) if eta is None else eta
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        sample_fn = get_sampler(sampler)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {steps!r}")
        if eta and sampler not in ETA_SAMPLERS:
            raise ValueError(f"eta={eta} applies to the samplers {', '.join(ETA_SAMPLERS)} only (sampler={sampler!r})")
        f = self.vae_scale_factor
        if height % f or width % f or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of the VAE factor {f}; got {height}×{width}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")

        # 1. prompts -> text embeddings (uncond/negative only when guiding)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt is empty: pass a string or a non-empty list of strings")
        negatives = [negative_prompt or ""] * len(prompts) if not isinstance(negative_prompt, (list, tuple)) \
            else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = [n for n in negatives for _ in range(num_images_per_prompt)]
        batch = len(prompts)
        cond = self.encode_prompt(prompts)

        # 2. initial latents x_T ~ N(0, I), one generator per image when seeded
        seeds = None
        if seed is not None:
            if generator is not None:
                raise ValueError("pass either seed or generator, not both")
            seeds = [seed + i for i in range(batch)] if isinstance(seed, int) else list(seed)
            if len(seeds) != batch:
                raise ValueError(f"{len(seeds)} seeds for {batch} images")
            generator = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (batch, self.unet.config.in_channels, height // f, width // f)
        if latents is None:
            latents = randn(shape, generator=generator, device=self.device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")

        # 3. the denoiser: UNet adapter, wrapped by CFG and classifier guidance
        denoiser = UNetDenoiser(self.unet, self.alphas_cumprod, self.scheduler_config.prediction_type)
        if guidance_scale == 1.0:
            denoiser = Conditioned(denoiser, cond)
        else:
            denoiser = ClassifierFreeGuidance(denoiser, cond, self.encode_prompt(negatives), guidance_scale,
                                              guidance_rescale)
        if classifier is not None:
            if hasattr(classifier, "check_compatible"):  # latent channels, size and schedule must match
                classifier.check_compatible(self.unet, latents.shape, self.alphas_cumprod)
            denoiser = ClassifierGuidance(denoiser, classifier.log_prob_fn(class_label, batch), classifier_scale)

        # 4. sample: the model's integer timesteps (default schedule) or a sigma schedule
        spacing = timestep_spacing or self.default_timestep_spacing
        if isinstance(sigma_schedule, str) and sigma_schedule == "default":
            levels = make_timesteps(steps, self.scheduler_config.num_train_timesteps, spacing,
                                    self.scheduler_config.steps_offset, self.alphas_cumprod)
        else:
            levels = make_sigmas(sigma_schedule, steps, self.alphas_cumprod, spacing=spacing,
                                 steps_offset=self.scheduler_config.steps_offset)
        options = {"eta": eta} if eta is not None and sampler in ETA_SAMPLERS else {}
        if sampler == "ddim":
            options["final_alpha_cumprod"] = 1.0 if self.scheduler_config.set_alpha_to_one \
                else float(self.alphas_cumprod[0])
        noise = make_noise_sampler(noise_sampler, latents, levels, self.alphas_cumprod, seeds=seeds, generator=generator)
        latents = sample_fn(denoiser, latents, levels, generator=generator, noise_sampler=noise, callback=callback,
                            progress=progress, **options)

        # 5. decode
        params = [
            {"prompt": p, "negative_prompt": n, "seed": s, "sampler": sampler, "steps": steps, "eta": eta,
             "guidance_scale": guidance_scale, "height": height, "width": width, "model": self.name,
             "timestep_spacing": spacing,
             "sigma_schedule": sigma_schedule if isinstance(sigma_schedule, str) else [float(v) for v in sigma_schedule],
             "a1111_sampler": a1111_name(sampler, sigma_schedule),
             "noise_sampler": noise_sampler if isinstance(noise_sampler, str) else None}
            for p, n, s in zip(prompts, negatives, seeds or [None] * batch)
        ]
        if output_type == "latent":
            return PipelineOutput(latents, latents, params)
        images = self.decode_latents(latents).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "pil":
            images = [Image.fromarray((im * 255).round().astype("uint8")) for im in images]
        return PipelineOutput(images, latents, params)


__all__ = ["TextToImagePipeline", "PipelineOutput", "SAMPLERS"]
