"""The text-to-image pipeline, unrolled: encode prompt -> initial latents -> sampler -> decode.

It holds no math of its own: schedules come from :mod:`latentdiff.diffusion`, steps from
:mod:`latentdiff.samplers`, guidance from :mod:`latentdiff.denoisers`. Folders are the diffusers
layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``), so diffusers' ``StableDiffusionPipeline`` loads what we save and vice versa.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from latentdiff.config import from_dict
from latentdiff.denoisers import ClassifierFreeGuidance, ClassifierGuidance, Conditioned, UNetDenoiser
from latentdiff.diffusion import TIMESTEP_SPACINGS, make_timesteps, randn
from latentdiff.errors import MemoryLimitError, NonFiniteError, UserError
from latentdiff.io import (
    atomic_dir,
    check_safetensors_file,
    check_weights,
    read_json,
    resolve_device,
    resolve_model_dir,
)
from latentdiff.lora import LoraMixin
from latentdiff.models import ModelConfig, SamplingDefaults, SchedulerConfig, build_components
from latentdiff.samplers import SAMPLERS, get_sampler
from latentdiff.tokenizer import save_tokenizer

logger = logging.getLogger("latentdiff")

OUTPUT_TYPES = ("pil", "np", "latent")
LATENTDIFF_FILE = "latentdiff.json"  # our extras beside model_index.json (sampling defaults)
# beside a saved pipeline: files our trainers add (replaced with the folder), files we keep (moved over)
TRAINER_FILES = ("training_config.yaml", "training_summary.json")
KEPT_FILES = ("README.md", ".gitattributes", ".git")
MAX_SEED = 2**63 - 1


def available_memory(device: torch.device) -> int:
    """Bytes a new allocation can get now: free GPU memory; on CPU the kernel's MemAvailable, or less
    where a cgroup (a container's memory limit) allows less."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    have = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    have = int(line.split()[1]) * 1024
    except OSError:
        pass
    if have is None:
        try:
            have = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 2**62  # unknown platform: do not refuse
    try:  # cgroup v2: the container's limit minus what it uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            have = min(have, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(have, 0)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_number(name: str, value, lo: float | None = None, hi: float | None = None) -> None:
    """``value`` is a finite real number in [lo, hi]: else a message naming ``name``."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")


def _check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_texts(name: str, value, allow_none: bool) -> None:
    """A string or a non-empty list/tuple of strings; TypeError naming the argument and the bad item."""
    if value is None and allow_none or isinstance(value, str):
        return
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} is an empty list: pass a string or a non-empty list of strings")
        bad = [(i, v) for i, v in enumerate(value) if not isinstance(v, str)]
        if bad:
            i, v = bad[0]
            raise TypeError(f"{name}[{i}] must be a string, got {type(v).__name__} {v!r}")
        return
    raise TypeError(f"{name} must be a string or a list of strings, got {type(value).__name__} {value!r}")


def nonfinite_parameters(module: torch.nn.Module, limit: int = 3) -> list[str]:
    """Names of (up to ``limit``) parameters/buffers holding NaN or Inf."""
    bad = []
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


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
        self.alphas_cumprod = scheduler_config.alphas_cumprod()
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

        device = resolve_device(device)  # an unusable device fails before minutes of loading
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

        def load(sub, fn, **kwargs):
            try:
                return fn(path, subfolder=sub, **kwargs)
            except (OSError, ValueError) as e:  # a broken config.json, missing or mismatched weights
                raise UserError(f"{path / sub} cannot be loaded ({' '.join(str(e).split())[:300]}); the model folder "
                                "is damaged or incomplete: re-download or re-save it") from None

        unet = load("unet", UNet2DConditionModel.from_pretrained, torch_dtype=torch_dtype,
                    use_safetensors=use_safetensors)
        vae = load("vae", AutoencoderKL.from_pretrained, torch_dtype=torch_dtype, use_safetensors=use_safetensors)
        text_encoder = load("text_encoder", CLIPTextModel.from_pretrained, dtype=torch_dtype,
                            use_safetensors=use_safetensors)
        tokenizer = load("tokenizer", CLIPTokenizer.from_pretrained)
        sched_file = path / "scheduler" / "scheduler_config.json"
        if not sched_file.is_file():
            raise FileNotFoundError(f"{sched_file} is missing; the pipeline folder {path} is incomplete")
        scheduler_config = SchedulerConfig.from_diffusers(read_json(sched_file, "the scheduler config"))
        defaults = SamplingDefaults()
        extras = path / LATENTDIFF_FILE
        if extras.exists():
            # the same strict loader as the YAML configs: unknown keys, wrong types and values are errors
            defaults = from_dict(SamplingDefaults, read_json(extras, "the sampling defaults").get("defaults", {}),
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
        stores half-precision weights (the shipped model). An existing folder is replaced only if it
        holds nothing but a pipeline we wrote (a README.md model card is kept); a folder with anyone
        else's files is refused before anything is written over it."""
        import diffusers

        for name in ("unet", "vae", "text_encoder"):
            bad = nonfinite_parameters(getattr(self, name))
            if bad:
                raise NonFiniteError(f"not saving {save_directory}: the {name} weights hold NaN/Inf ({', '.join(bad)})")
        layout = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json", LATENTDIFF_FILE)
        with atomic_dir(save_directory, also_ours=TRAINER_FILES, keep=KEPT_FILES, expect=layout) as tmp:
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
        device = resolve_device(device)
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
        """Images in [0, 1], (B, 3, H, W): D(z / scaling_factor). A decode with NaN/Inf raises
        :class:`NonFiniteError` (clamping would turn it into a black or white image)."""
        z = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        x = self.vae.decode(z).sample.float()
        if not torch.isfinite(x).all():
            raise NonFiniteError(self._nonfinite_cause("the decoded images"))
        return (x / 2 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------------ checks, in one place

    def check_inputs(self, prompt, negative_prompt, *, steps, sampler, eta, guidance_scale, guidance_rescale, height,
                     width, num_images_per_prompt, seed, generator, latents, output_type, callback,
                     timestep_spacing, classifier, class_label, classifier_scale) -> None:
        """Every argument of a call, before any work (diffusers' ``check_inputs``): types, finite
        numbers in range, and options that would do nothing. The CLI, the Python API and anything
        built on them get the same messages."""
        _check_texts("prompt", prompt, allow_none=False)
        _check_texts("negative_prompt", negative_prompt, allow_none=True)
        get_sampler(sampler)
        T = self.scheduler_config.num_train_timesteps
        _check_int("num_inference_steps", steps, 1, T)
        _check_number("guidance_scale", guidance_scale)
        _check_number("guidance_rescale", guidance_rescale, 0.0, 1.0)
        _check_number("eta", eta, 0.0, 1.0)
        if eta and sampler != "ddim":
            raise ValueError(f"eta={eta} applies to the ddim sampler only (sampler={sampler!r})")
        _check_int("height", height)
        _check_int("width", width)
        f = self.vae_scale_factor
        if height % f or width % f or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of the VAE factor {f}; got {height}×{width}")
        _check_int("num_images_per_prompt", num_images_per_prompt)
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")
        if seed is not None:
            for i, s in enumerate([seed] if not isinstance(seed, (list, tuple)) else seed):
                _check_int("seed" if not isinstance(seed, (list, tuple)) else f"seed[{i}]", s, 0, MAX_SEED)
        if generator is not None and not isinstance(generator, (torch.Generator, list, tuple)):
            raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
        if latents is not None:
            if not isinstance(latents, torch.Tensor):
                raise TypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
            if not latents.is_floating_point() or not torch.isfinite(latents).all():
                raise NonFiniteError("latents contain NaN or Inf (or are not floating point); pass finite "
                                     "initial noise, or latents=None to draw it")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        if timestep_spacing is not None and timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"Unknown timestep_spacing {timestep_spacing!r}; choose one of {', '.join(TIMESTEP_SPACINGS)}")
        if not callable(classifier_scale):
            _check_number("classifier_scale", classifier_scale)
        # options that would be silently ignored
        if classifier is None and class_label is not None:
            raise ValueError(f"class_label={class_label!r} needs a classifier (classifier=..., --classifier DIR); "
                             "without one it would be ignored")
        if classifier is None and (callable(classifier_scale) or classifier_scale):
            raise ValueError("classifier_scale needs a classifier (classifier=..., --classifier DIR); without one it "
                             "would be ignored")
        if classifier is not None and class_label is None:
            raise ValueError("a classifier needs class_label (--class NAME or index): the class to guide towards")
        if guidance_scale == 1.0 and guidance_rescale:
            raise ValueError(f"guidance_rescale={guidance_rescale} has no effect with guidance_scale=1 (no "
                             "classifier-free guidance); drop it or set guidance_scale > 1")
        if guidance_scale == 1.0 and negative_prompt:
            raise ValueError("negative_prompt has no effect with guidance_scale=1 (no classifier-free guidance); "
                             "drop it or set guidance_scale > 1")

    def estimate_memory(self, batch: int, height: int, width: int, guided: bool = True) -> dict[str, int]:
        """Rough peak bytes of one call, by stage: the U-Net's activations (and attention scores where
        they are materialised) at the batch it runs (2x with classifier-free guidance), and the VAE
        decoder's full-resolution activations (per tile when ``vae.enable_tiling()`` is on). An
        estimate, meant to refuse what cannot fit, not to predict to the byte: the factors (10 live
        U-Net tensors per level, 8 in the decoder) are calibrated on the emoji model at 1024×1024 on
        CPU, where the peak RSS rose by 0.59 GiB while sampling (estimate 0.57) and by 0.47 GiB more
        while decoding (estimate 1.0)."""
        f = self.vae_scale_factor
        item = torch.finfo(self.unet.dtype).bits // 8
        h, w = height // f, width // f
        b = batch * (2 if guided else 1)
        uc = self.unet.config
        unet_bytes, attn_bytes = 0, 0
        sdpa = all(type(p).__name__ in ("AttnProcessor2_0", "XFormersAttnProcessor")
                   for p in getattr(self.unet, "attn_processors", {}).values())
        heads = uc.attention_head_dim if isinstance(uc.attention_head_dim, int) else max(uc.attention_head_dim)
        for i, (c, kind) in enumerate(zip(uc.block_out_channels, uc.down_block_types)):
            n = (h >> i) * (w >> i)
            unet_bytes += 10 * b * c * n * item  # resnet temporaries and the skip connections kept for the up path
            if "CrossAttn" in kind:
                per = n * (c // heads) * 4 if sdpa else n * n  # q, k, v, out per head vs. the score matrix
                attn_bytes = max(attn_bytes, b * heads * per * item)
        vc = self.vae.config
        H, W = height, width
        if getattr(self.vae, "use_tiling", False):
            tile = int(getattr(self.vae, "tile_sample_min_size", 512))
            H, W = min(H, tile), min(W, tile)
        vae_bytes = 8 * batch * max(c * (H >> j) * (W >> j) for j, c in enumerate(vc.block_out_channels)) * item
        vae_attn = batch * (H // f) * (W // f) * (H // f) * (W // f) * item if not sdpa else 0
        return {"unet": unet_bytes + attn_bytes, "vae_decode": vae_bytes + vae_attn}

    def check_memory(self, batch: int, height: int, width: int, guided: bool = True) -> None:
        """:class:`MemoryLimitError` when :meth:`estimate_memory` exceeds the device's available memory."""
        est = self.estimate_memory(batch, height, width, guided)
        need = max(est.values())  # the stages run one after the other
        have = available_memory(self.device)
        if need <= have:
            return
        gib = 2**30
        tiled = getattr(self.vae, "use_tiling", False)
        hint = ""
        if est["vae_decode"] > have and not tiled:
            hint = " The VAE decode would fit in tiles: pipe.vae.enable_tiling() (--vae-tiling)."
        raise MemoryLimitError(
            f"{batch} image(s) of {height}×{width} need about {need / gib:.1f} GiB on {self.device} (U-Net "
            f"{est['unet'] / gib:.1f} GiB, VAE decode {est['vae_decode'] / gib:.1f} GiB) but only "
            f"{have / gib:.1f} GiB is available: lower height/width or the number of images.{hint} "
            "If you know your machine, check_memory=False (--no-memory-check) skips this check.")

    def _nonfinite_cause(self, what: str, cond: torch.Tensor | None = None, guidance_scale: float | None = None,
                         eta: float | None = None) -> str:
        """Why ``what`` holds NaN/Inf: the first module with non-finite weights, else the embeddings, else
        the numbers of the call."""
        for name in ("text_encoder", "unet", "vae"):
            bad = nonfinite_parameters(getattr(self, name))
            if bad:
                return (f"{what} contain NaN/Inf because the {name} weights do ({', '.join(bad)}): the model files "
                        f"of {self.name or 'this pipeline'} are corrupt; re-download or re-save them")
        if cond is not None and not torch.isfinite(cond).all():
            return f"{what} contain NaN/Inf: the text embeddings are not finite (text encoder of {self.name})"
        if guidance_scale is None:
            return f"{what} contain NaN/Inf: the VAE decode overflowed (latents out of range?)"
        return (f"{what} contain NaN/Inf: sampling diverged (guidance_scale={guidance_scale}, eta={eta}); "
                "lower guidance_scale, or try another sampler or more steps")

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
        classifier=None,
        class_label: int | str | None = None,
        classifier_scale: float | Callable[[int], float] = 0.0,
        progress: bool = False,
        check_memory: bool = True,
    ) -> PipelineOutput:
        """Generate images. ``seed`` (int → seeds seed, seed+1, … per image, or a list) makes each
        image reproducible on its own; ``generator`` is the diffusers-style alternative.

        Every argument is checked first (:meth:`check_inputs`), and the memory the call needs is
        estimated against what the device has (:meth:`check_memory`; ``check_memory=False`` skips
        it). NaN or Inf in the latents or the decoded images stop with :class:`NonFiniteError`
        naming the cause, instead of returning a black image."""
        d = self.defaults
        steps = d.num_inference_steps if num_inference_steps is None else num_inference_steps
        sampler = d.sampler if sampler is None else sampler
        guidance_scale = d.guidance_scale if guidance_scale is None else guidance_scale
        eta = (d.eta if sampler == "ddim" else 0.0) if eta is None else eta
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        self.check_inputs(prompt, negative_prompt, steps=steps, sampler=sampler, eta=eta,
                          guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, height=height, width=width,
                          num_images_per_prompt=num_images_per_prompt, seed=seed, generator=generator,
                          latents=latents, output_type=output_type, callback=callback,
                          timestep_spacing=timestep_spacing, classifier=classifier, class_label=class_label,
                          classifier_scale=classifier_scale)
        sample_fn = get_sampler(sampler)
        f = self.vae_scale_factor
        if check_memory:
            n_prompts = 1 if isinstance(prompt, str) else len(prompt)
            self.check_memory(n_prompts * num_images_per_prompt, height, width, guided=guidance_scale != 1.0)

        # 1. prompts -> text embeddings (uncond/negative only when guiding)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
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
        else:
            latents = latents.to(self.device, torch.float32)

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

        # 4. sample
        spacing = timestep_spacing or self.default_timestep_spacing
        timesteps = make_timesteps(steps, self.scheduler_config.num_train_timesteps, spacing,
                                   self.scheduler_config.steps_offset, self.alphas_cumprod)
        options = {}
        if sampler == "ddim":
            options = {"eta": eta, "final_alpha_cumprod": 1.0 if self.scheduler_config.set_alpha_to_one
                       else float(self.alphas_cumprod[0])}
        latents = sample_fn(denoiser, latents, timesteps, generator=generator, callback=callback,
                            progress=progress, **options)
        if not torch.isfinite(latents).all():
            raise NonFiniteError(self._nonfinite_cause("the sampled latents", cond, guidance_scale, eta))

        # 5. decode
        params = [
            {"prompt": p, "negative_prompt": n, "seed": s, "sampler": sampler, "steps": steps, "eta": eta,
             "guidance_scale": guidance_scale, "height": height, "width": width, "model": self.name,
             "timestep_spacing": spacing}
            for p, n, s in zip(prompts, negatives, seeds or [None] * batch)
        ]
        if output_type == "latent":
            return PipelineOutput(latents, latents, params)
        images = self.decode_latents(latents).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "pil":
            images = [Image.fromarray((im * 255).round().astype("uint8")) for im in images]
        return PipelineOutput(images, latents, params)


__all__ = ["TextToImagePipeline", "PipelineOutput", "SAMPLERS"]
