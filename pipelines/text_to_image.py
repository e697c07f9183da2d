"""The text-to-image pipeline, unrolled: encode prompt -> initial latents -> sampler -> decode.

It holds no math of its own: schedules come from :mod:`latentdiff.diffusion`, steps from
:mod:`latentdiff.samplers`, guidance from :mod:`latentdiff.denoisers`. Folders are the diffusers
layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``), so diffusers' ``StableDiffusionPipeline`` loads what we save and vice versa.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.loaders import TextualInversionLoaderMixin
from PIL import Image

from latentdiff.config import from_dict
from latentdiff.denoisers import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    ComposableGuidance,
    Conditioned,
    ScheduledConditioning,
    UNetDenoiser,
    WeightedConds,
)
from latentdiff.diffusion import (
    TIMESTEP_SPACINGS,
    alphas_cumprod_for_sampling,
    make_sigmas,
    make_timesteps,
    q_sample,
    randn,
    sigma_to_t,
)
from latentdiff.errors import MemoryLimitError, NonFiniteError, UserError
from latentdiff.fs import (
    PICKLE_SUFFIXES,
    atomic_dir,
    check_plain_name,
    check_safetensors_file,
    check_weights,
    is_inside,
    read_json,
    save_safetensors_atomic,
)
from latentdiff.io import resolve_device, resolve_model_dir
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
# beside a saved pipeline: files our trainers add (replaced with the folder), files we keep (moved over)
TRAINER_FILES = ("training_config.yaml", "training_summary.json")
KEPT_FILES = ("README.md", ".gitattributes", ".git")
MAX_SEED = 2**63 - 1
COMPILE_MODES = ("default", "lite", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


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


class TextToImagePipeline(LoraMixin, TextualInversionLoaderMixin):
    """Latent text-to-image diffusion with a diffusers U-Net/VAE and a CLIP text encoder.

    >>> pipe = TextToImagePipeline.from_pretrained("emoji")
    >>> image = pipe("red apple", seed=0).images[0]
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config: SchedulerConfig,
                 defaults: SamplingDefaults | None = None, name: str | None = None):
        super().__init__()  # LoraMixin's state
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler_config = scheduler_config
        self.defaults = defaults or SamplingDefaults()
        self.name = name
        # ᾱ as the samplers use it (a zero-terminal-SNR table gets ᾱ_{T-1} = 2⁻²⁴; see alphas_cumprod_for_sampling)
        self.alphas_cumprod = alphas_cumprod_for_sampling(scheduler_config.alphas_cumprod())
        self.prompt_normalization = "a1111"  # how (word:1.3) weights apply: a1111 | comfy | none
        self.lora_dir: str | None = None     # where <lora:name:w> prompt tags are looked up
        self.compiled: str | None = None     # the torch.compile mode once compile() has run
        for m in (unet, vae, text_encoder):
            m.eval().requires_grad_(False)

    hf_device_map = None  # (diffusers' TextualInversionLoaderMixin asks; we never shard a pipeline)

    @property
    def components(self) -> dict:
        return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer}

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
    def encode_prompt(self, prompts: Sequence[str], normalization: str | None = None,
                      min_chunks: int = 1) -> torch.Tensor:
        """CLIP text embeddings (B, 77·k, D), the last hidden state as Stable Diffusion uses it, with
        A1111 attention syntax and long prompts (:mod:`latentdiff.prompts`): k chunks of 75 tokens,
        the batch's largest count (at least ``min_chunks``). Textual-inversion tokens are expanded
        first. A plain prompt of <= 75 tokens gives diffusers' (B, 77, D) exactly."""
        from latentdiff.prompts import encode_prompts

        texts = [self.maybe_convert_prompt(p, self.tokenizer) for p in prompts]
        return encode_prompts(self.text_encoder, self.tokenizer, texts,
                              normalization=normalization or self.prompt_normalization, min_chunks=min_chunks)

    def _conditioning(self, prompts: Sequence[str], levels, normalization: str | None, chunks: int):
        """Embeddings for ``prompts`` over the sampler's ``levels``, each padded to ``chunks`` chunks
        (:meth:`chunks_needed` of everything that must share a shape): a tensor, or a
        :class:`ScheduledConditioning` when a prompt edits or alternates text between steps."""
        from latentdiff.prompts import prompt_schedule

        steps = max(num_steps(levels), 1)
        schedules = [prompt_schedule(p, steps) for p in prompts]
        k = chunks
        if all(len(sch) == 1 for sch in schedules):
            return self.encode_prompt([sch[0][1] for sch in schedules], normalization, k)
        ends = sorted({end for sch in schedules for end, _ in sch})
        runs = []
        for end in ends:
            at = [next(t for e, t in sch if end - 1 < e) for sch in schedules]
            runs.append((end, self.encode_prompt(at, normalization, k)))
        if torch.is_tensor(levels) and levels.is_floating_point():  # sigmas -> the (fractional) timesteps the
            levels = sigma_to_t(levels[:-1], self.alphas_cumprod)       # denoiser sees
        return ScheduledConditioning(runs, levels)

    def _text_conditions(self, prompts: Sequence[str], negatives: Sequence[str], levels, normalization,
                         guidance_scale: float):
        """(cond, uncond) for the prompts and negative prompts over the sampler's ``levels``, padded
        to one chunk count; uncond is None without guidance. A composable prompt ("a AND b :0.5",
        :func:`latentdiff.prompts.split_and`) makes cond a :class:`WeightedConds` of its parts (part k of
        every prompt, padded with a prompt's first part at weight 0), and uncond is always encoded."""
        from latentdiff.prompts import is_composable, split_and

        if not any(is_composable(p) for p in prompts):
            guided = guidance_scale != 1.0
            k = self.chunks_needed(list(prompts) + (list(negatives) if guided else []), levels)
            return (self._conditioning(prompts, levels, normalization, k),
                    self._conditioning(negatives, levels, normalization, k) if guided else None)
        parts = [split_and(p) for p in prompts]
        n = max(len(q) for q in parts)
        texts = [[q[i][0] if i < len(q) else q[0][0] for q in parts] for i in range(n)]
        weights = torch.tensor([[q[i][1] if i < len(q) else 0.0 for i in range(n)] for q in parts])
        k = self.chunks_needed([t for column in texts for t in column] + list(negatives), levels)
        return (WeightedConds([self._conditioning(column, levels, normalization, k) for column in texts], weights),
                self._conditioning(negatives, levels, normalization, k))

    @staticmethod
    def _unet_inputs_per_image(prompt, guidance_scale: float) -> int:
        """How many U-Net inputs one image costs a step: 1, 2 with classifier-free guidance, K + 1
        when the longest prompt has K parts joined by AND (:meth:`_text_conditions` batches the parts
        and the negative, at any guidance)."""
        from latentdiff.prompts import extract_lora_tags, is_composable, split_and

        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        parts = [len(split_and(extract_lora_tags(p)[0])) for p in prompts
                 if isinstance(p, str) and is_composable(p)]
        return max(parts) + 1 if parts else (2 if guidance_scale != 1.0 else 1)

    def chunks_needed(self, prompts: Sequence[str], levels) -> int:
        from latentdiff.prompts import num_chunks, prompt_schedule

        steps = max(num_steps(levels), 1)
        return max(num_chunks(self.tokenizer, self.maybe_convert_prompt(t, self.tokenizer))
                   for p in prompts for _, t in prompt_schedule(p, steps))

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, H, W): D(z / scaling_factor). A half-precision VAE that overflows
        to NaN/Inf (diffusers #4325, A1111 #10227) is retried once in fp32, with a warning; a decode
        that is still not finite raises :class:`NonFiniteError` (clamping would turn it into a black or
        white image)."""
        dtype = self.vae.dtype  # (a walk over the VAE's modules: once)
        z = latents.to(dtype) / self.vae.config.scaling_factor
        x = self.vae.decode(z).sample.float()
        if dtype != torch.float32 and not torch.isfinite(x).all():
            logger.warning("the %s VAE decoded NaN/Inf; decoding again in float32", dtype)
            x = self._vae_fp32().decode(latents.float() / self.vae.config.scaling_factor).sample.float()
        if not torch.isfinite(x).all():
            raise NonFiniteError(self._nonfinite_cause("the decoded images"))
        return (x / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
        """scaling_factor · z with z ~ q(z | x) a posterior sample, image i drawn from generator i
        (diffusers' ``retrieve_latents(..., sample_mode="sample")``). ``pixels`` (B, 3, H, W) in [-1, 1]."""
        out = []
        for i, g in enumerate(generators):
            x = pixels[i:i + 1].to(self.device, self.vae.dtype)
            z = self.vae.encode(x).latent_dist.sample(g)
            if self.vae.dtype != torch.float32 and not torch.isfinite(z).all():
                logger.warning("the %s VAE encoded NaN/Inf; encoding again in float32", self.vae.dtype)
                z = self._vae_fp32().encode(x.float()).latent_dist.sample(g)
            out.append(z.float())
        return torch.cat(out) * self.vae.config.scaling_factor

    def _vae_fp32(self):
        import copy

        return copy.deepcopy(self.vae).float()

    def compile(self, mode: str | None = None, *, vae: bool = True, backend: str = "inductor") -> "TextToImagePipeline":
        """``torch.compile`` the U-Net (and the VAE decoder) in place, once: later calls reuse the compiled
        code, and Inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) makes the next process's first
        compile much shorter. Shapes are static (``dynamic=False``): every new (batch, height, width) is
        compiled once on its first call, then never again. The weights, ``state_dict`` keys and
        ``save_pretrained`` are unchanged; the outputs equal eager ones to float rounding (≤ 1e-3).

        ``mode``: torch.compile's; by default ``"reduce-overhead"`` (CUDA graphs: one launch per step instead
        of hundreds) for a U-Net under 200 M parameters on CUDA, where launches dominate, else ``"default"``.
        Compiling is slow on first use (about 2 minutes for the tiny test model on one loaded CPU core, 7 s
        with the cache warm), so it pays off for many images with the same shape (``latentdiff serve``,
        ``-n 64``), not for one."""
        if mode is not None and mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}; got {mode!r}")
        if self.compiled is not None:
            return self
        device = self.device
        if mode is None:
            small = sum(p.numel() for p in self.unet.parameters()) < 200_000_000
            mode = "reduce-overhead" if device.type == "cuda" and small else "default"
        options = {"mode": mode} if backend == "inductor" else {}  # (other backends take no mode)
        self.unet.compile(dynamic=False, backend=backend, **options)
        if vae:  # one call per image: CUDA graphs would buy nothing there
            self.vae.decoder.compile(dynamic=False, backend=backend)
        self.compiled = mode
        return self

    def enable_vae_tiling(self, enabled: bool = True) -> None:
        """Tiled VAE encode/decode (diffusers' ``AutoencoderKL.enable_tiling``): memory grows with the
        tile, not the image, for large images; seams are blended."""
        self.vae.enable_tiling() if enabled else self.vae.disable_tiling()

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
        if eta is not None:
            _check_number("eta", eta, 0.0, 1.0)
        if eta and sampler not in ETA_SAMPLERS:
            raise ValueError(f"eta={eta} applies to the samplers {', '.join(ETA_SAMPLERS)} only (sampler={sampler!r})")
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
        from latentdiff.prompts import is_composable

        composable = any(is_composable(p) for p in ([prompt] if isinstance(prompt, str) else list(prompt or [])))
        if composable and guidance_rescale:
            raise ValueError("guidance_rescale is not defined for composable prompts (AND): set it to 0 or "
                             "write the prompt without AND")
        if guidance_scale == 1.0 and negative_prompt and not composable:  # AND guides from the negative at any scale
            raise ValueError("negative_prompt has no effect with guidance_scale=1 (no classifier-free guidance); "
                             "drop it or set guidance_scale > 1")

    def estimate_memory(self, batch: int, height: int, width: int, guided: bool = True,
                        dtype: torch.dtype | None = None, *, inputs_per_image: int | None = None) -> dict[str, int]:
        """Rough peak bytes of one call, by stage: the U-Net's activations (and attention scores where
        they are materialised) at the batch it runs (2x with classifier-free guidance; ``inputs_per_image``,
        when given, instead: K + 1 for a prompt of K parts joined by AND), and the VAE
        decoder's full-resolution activations (per tile when ``vae.enable_tiling()`` is on). An
        estimate, meant to refuse what cannot fit, not to predict to the byte: the factors (10 live
        U-Net tensors per level, 8 in the decoder) are calibrated on the emoji model at 1024×1024 on
        CPU, where the peak RSS rose by 0.59 GiB while sampling (estimate 0.57) and by 0.47 GiB more
        while decoding (estimate 1.0)."""
        f = self.vae_scale_factor
        item = torch.finfo(self.unet.dtype if dtype is None else dtype).bits // 8
        h, w = height // f, width // f
        b = batch * (inputs_per_image if inputs_per_image is not None else (2 if guided else 1))
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

    def check_memory(self, batch: int, height: int, width: int, guided: bool = True, *,
                     device: torch.device | None = None, dtype: torch.dtype | None = None,
                     inputs_per_image: int | None = None) -> None:
        """:class:`MemoryLimitError` when :meth:`estimate_memory` exceeds the device's available memory.
        ``device``/``dtype``: the U-Net's, where the caller has already looked them up."""
        device = self.device if device is None else device
        est = self.estimate_memory(batch, height, width, guided, dtype, inputs_per_image=inputs_per_image)
        need = max(est.values())  # the stages run one after the other
        have = available_memory(device)
        if need <= have:
            return
        gib = 2**30
        tiled = getattr(self.vae, "use_tiling", False)
        hint = ""
        if est["vae_decode"] > have and not tiled:
            hint = " The VAE decode would fit in tiles: pipe.vae.enable_tiling() (--vae-tiling)."
        raise MemoryLimitError(
            f"{batch} image(s) of {height}×{width} need about {need / gib:.1f} GiB on {device} (U-Net "
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
        sigma_schedule: str | Sequence[float] | None = None,
        noise_sampler: str | Callable | None = None,
        classifier=None,
        class_label: int | str | None = None,
        classifier_scale: float | Callable[[int], float] = 0.0,
        progress: bool = False,
        image=None,
        strength: float | None = None,
        strength_steps: str = "diffusers",
        mask_image=None,
        mask_blur: float = 0.0,
        only_masked: bool = False,
        only_masked_padding: int = 32,
        keep_unmasked: bool = False,
        outpaint: tuple[int, int, int, int] | None = None,
        hires_scale: float | None = None,
        hires_strength: float = 0.5,
        hires_upscaler: str = "latent-bilinear",
        hires_steps: int | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_normalization: str | None = None,
        lora_dir: str | os.PathLike | None = None,
        check_memory: bool = True,
        compile: bool | str = False,
    ) -> PipelineOutput:
        """Generate images. ``seed`` (int → seeds seed, seed+1, … per image, or a list) makes each
        image reproducible on its own; ``generator`` is the diffusers-style alternative.
        ``sampler`` is a registry name or an A1111 name ("DPM++ 2M Karras" = dpmpp_2m + karras);
        ``sigma_schedule`` one of :data:`latentdiff.diffusion.SIGMA_SCHEDULES`, ``"sigmas:…"``,
        ``"timesteps:…"`` or a list of sigmas; ``noise_sampler`` ``"generator"`` (default) or
        ``"brownian"`` (per-image Brownian trees, torchsde) or a callable ``(σ, σ_next) -> noise``.

        From an image (SDEdit, Meng et al. 2022): ``image`` with ``strength`` s ∈ [0, 1] (default
        0.8) encodes the image, noises it to the first kept timestep and samples from there. Steps
        (``strength_steps``): ``"diffusers"`` runs the last int(N·s) of the N-step schedule
        (diffusers' convention); ``"exact"`` runs exactly N steps, the tail of an int(N/s)-step schedule
        (ComfyUI's denoise). s = 0 returns the encoded-decoded image; s = 1 starts from pure noise
        (text-to-image; diffusers' img2img instead noises the image to its first timestep).

        Inpainting: ``mask_image`` (white = repaint; default strength 1). A 4-channel U-Net gets the
        known region back, noised to the next timestep, after every step (diffusers'
        ``StableDiffusionInpaintPipeline``); a 9-channel inpainting U-Net sees the mask and the
        masked-image latents as extra input channels. ``mask_blur`` px softens the paste-back;
        ``keep_unmasked`` pastes the input back where the mask is 0 (those pixels then equal the
        input exactly); ``only_masked`` works on the mask's bounding box plus
        ``only_masked_padding`` px at the full working size and pastes the result back.
        ``outpaint`` = (left, right, top, bottom) px extends the canvas and inpaints the new area.

        Hires fix: ``hires_scale`` generates at the base size, upscales (``hires_upscaler``:
        latent-bilinear, latent-bicubic, latent-nearest, or lanczos in pixels) and runs
        image-to-image at ``hires_strength`` (``hires_steps``, default the same N) at the larger size.

        Prompts (:mod:`latentdiff.prompts`): A1111 weights ``(word:1.3)`` applied as
        ``prompt_normalization`` (default ``pipe.prompt_normalization``, "a1111"), prompts longer
        than 75 tokens in chunks, ``BREAK``, prompt editing ``[from:to:when]`` and alternation
        ``[a|b]``, textual-inversion tokens, and ``<lora:name:w>`` tags resolved in ``lora_dir``
        (default ``pipe.lora_dir``) for this call only. ``prompt_embeds`` /
        ``negative_prompt_embeds`` (B, 77·k, D) replace the text, as in diffusers.

        Every argument is checked first (:meth:`check_inputs`), and the memory the call needs is
        estimated against what the device has (:meth:`check_memory`; ``check_memory=False`` skips
        it). NaN or Inf in the latents or the decoded images stop with :class:`NonFiniteError`
        naming the cause, instead of returning a black image.

        ``compile=True`` (or a torch.compile mode) compiles the U-Net and VAE decoder on the first such call
        (:meth:`compile`); the pipeline then stays compiled.
        """
        from latentdiff.prompts import extract_lora_tags

        if compile:
            self.compile(None if compile is True else compile)
        tags: dict[str, float] = {}
        if prompt_embeds is None:
            _check_texts("prompt", prompt, allow_none=False)
            for p in [prompt] if isinstance(prompt, str) else prompt:
                for name, scale in extract_lora_tags(p)[1]:
                    if tags.get(name, scale) != scale:
                        raise ValueError(f"<lora:{name}> appears with weights {tags[name]} and {scale} in one call; "
                                         "use one weight per LoRA")
                    tags[name] = scale
        with self._tagged_loras(tags, lora_dir or self.lora_dir):
            d = self.defaults
            steps = d.num_inference_steps if num_inference_steps is None else num_inference_steps
            if sampler is not None and not isinstance(sampler, str):
                raise TypeError(f"sampler must be a name (e.g. 'dpmpp_2m' or 'DPM++ 2M Karras'), got {type(sampler).__name__}")
            sampler, sigma_schedule = resolve_sampler(d.sampler if sampler is None else sampler, sigma_schedule)
            if sigma_schedule is None:
                sigma_schedule = d.sigma_schedule or "default"
            guidance_scale = d.guidance_scale if guidance_scale is None else guidance_scale
            eta = (d.eta if sampler == "ddim" else None) if eta is None else eta
            f = self.vae_scale_factor
            unet_channels = self.unet.config.in_channels
            latent_channels = self.vae.config.latent_channels
            inpaint_unet = unet_channels == latent_channels * 2 + 1
            if unet_channels not in (latent_channels, latent_channels * 2 + 1):
                raise ValueError(f"the U-Net takes {unet_channels} input channels; expected {latent_channels} "
                                 f"(text-to-image) or {2 * latent_channels + 1} (inpainting)")
            init = self._prepare_image_inputs(image, mask_image, height, width, strength, strength_steps, mask_blur,
                                              only_masked, only_masked_padding, keep_unmasked, outpaint, inpaint_unet)
            if init is not None:
                height, width, strength = init["height"], init["width"], init["strength"]
            height = self.default_size if height is None else height
            width = self.default_size if width is None else width
            self.check_inputs(prompt if prompt_embeds is None else "", negative_prompt, steps=steps, sampler=sampler,
                              eta=eta, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                              height=height, width=width, num_images_per_prompt=num_images_per_prompt, seed=seed,
                              generator=generator, latents=latents, output_type=output_type, callback=callback,
                              timestep_spacing=timestep_spacing, classifier=classifier, class_label=class_label,
                              classifier_scale=classifier_scale)
            sample_fn = get_sampler(sampler)
            # diffusers' ``unet.device``/``unet.dtype`` walk every submodule (~1 ms each for the emoji
            # U-Net): looked up once per call
            device, unet_dtype = self.device, self.unet.dtype
            if hires_scale is not None:
                _check_hires(hires_scale, hires_strength, hires_upscaler, hires_steps, height, width, f)
            if check_memory:
                n_prompts = prompt_embeds.shape[0] if prompt_embeds is not None else \
                    (1 if isinstance(prompt, str) else len(prompt))
                scale = hires_scale or 1.0
                self.check_memory(n_prompts * num_images_per_prompt, int(height * scale) // f * f,
                                  int(width * scale) // f * f, device=device, dtype=unet_dtype,
                                  inputs_per_image=self._unet_inputs_per_image(
                                      prompt if prompt_embeds is None else None, guidance_scale))

            # 1. the sampler's noise levels: the model's integer timesteps (default schedule) or n+1 sigmas;
            #    their tail when starting from an image
            # (a consistency model samples on the DDIM steps it was distilled on)
            spacing = timestep_spacing or ("lcm" if sampler == "lcm" else self.default_timestep_spacing)
            timesteps = self._timesteps(steps, spacing, init["strength"] if init else 1.0, strength_steps,
                                        sigma_schedule)

            # 2. prompts -> text embeddings (uncond/negative only when guiding); LoRA tags were applied
            if prompt_embeds is not None:
                if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != self.text_encoder.config.hidden_size:
                    raise ValueError(f"prompt_embeds must be (B, L, {self.text_encoder.config.hidden_size}); "
                                     f"got {tuple(prompt_embeds.shape)}")
                prompts = [""] * prompt_embeds.shape[0] if prompt is None else \
                    ([prompt] if isinstance(prompt, str) else list(prompt))
            else:
                prompts = [extract_lora_tags(p)[0] for p in ([prompt] if isinstance(prompt, str) else list(prompt))]
            if not prompts:
                raise ValueError("prompt is empty: pass a string or a non-empty list of strings")
            negatives = [negative_prompt or ""] * len(prompts) if not isinstance(negative_prompt, (list, tuple)) \
                else list(negative_prompt)
            if len(negatives) != len(prompts):
                raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
            shown = [p for p in ([prompt] if isinstance(prompt, str) else list(prompt or prompts))
                     for _ in range(num_images_per_prompt)]
            prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
            negatives = [n for n in negatives for _ in range(num_images_per_prompt)]
            batch = len(prompts)
            if prompt_embeds is not None:
                cond = prompt_embeds.to(device, self.text_encoder.dtype).repeat_interleave(num_images_per_prompt, 0)
                length = cond.shape[1]
                if negative_prompt_embeds is not None:
                    uncond = negative_prompt_embeds.to(cond).repeat_interleave(num_images_per_prompt, 0)
                elif guidance_scale != 1.0:
                    uncond = self._conditioning(negatives, timesteps, prompt_normalization,
                                            max(-(-length // 77), self.chunks_needed(negatives, timesteps)))
                else:
                    uncond = None
                if uncond is not None and tuple(uncond.shape) != tuple(cond.shape):
                    raise ValueError(f"negative embeddings {tuple(uncond.shape)} do not match prompt_embeds "
                                     f"{tuple(cond.shape)}; pass negative_prompt_embeds of the same shape")
            else:
                cond, uncond = self._text_conditions(prompts, negatives, timesteps, prompt_normalization,
                                                     guidance_scale)

            # 3. generators: one per image when seeded
            seeds = None
            if seed is not None:
                if generator is not None:
                    raise ValueError("pass either seed or generator, not both")
                seeds = [seed + i for i in range(batch)] if isinstance(seed, int) else list(seed)
                if len(seeds) != batch:
                    raise ValueError(f"{len(seeds)} seeds for {batch} images")
                generator = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            per_image = list(generator) if isinstance(generator, (list, tuple)) else [generator] * batch
            if len(per_image) != batch:
                raise ValueError(f"{len(per_image)} generators for {batch} images")

            shape = (batch, latent_channels, height // f, width // f)

            # 4. initial latents x_T, in diffusers' order of random draws per image: image posterior, noise,
            #    masked-image posterior
            image_latents = mask = concat = None
            if init is not None and strength == 0.0:  # nothing to denoise: the input through the VAE
                latents = self.encode_images(init["pixels"].expand(batch, -1, -1, -1), per_image)
                timesteps = timesteps[:0]  # (no step)
            else:
                if init is not None and (init["mask"] is not None and not inpaint_unet or strength < 1.0):
                    image_latents = self.encode_images(init["pixels"].expand(batch, -1, -1, -1), per_image)
                if latents is None:
                    latents = randn(shape, generator=generator, device=device, dtype=torch.float32)
                elif tuple(latents.shape) != shape:
                    raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
                else:
                    latents = latents.to(device, torch.float32)
                noise = latents
                if init is not None and strength < 1.0:
                    latents = noise_to_level(image_latents, timesteps[0], noise, self.alphas_cumprod)
                if init is not None and init["mask"] is not None:
                    mask = F.interpolate(init["mask"], size=shape[-2:]).to(device).expand(batch, -1, -1, -1)
                    if inpaint_unet:
                        masked = init["pixels"] * (init["mask"] < 0.5)
                        concat = torch.cat([mask, self.encode_images(masked.expand(batch, -1, -1, -1), per_image)], 1)
                    else:
                        callback = _KnownRegion(image_latents, noise, mask, timesteps, self.alphas_cumprod, callback)
            if inpaint_unet and concat is None:
                raise ValueError("this is an inpainting U-Net (9 input channels): pass image= and mask_image=")

            # 5. the denoiser: UNet adapter, wrapped by CFG and classifier guidance; 6. sample
            denoiser = self._denoiser(cond, uncond, guidance_scale, guidance_rescale, classifier, class_label,
                                      classifier_scale, batch, shape, concat, unet_dtype)
            options = {"eta": eta} if eta is not None and sampler in ETA_SAMPLERS else {}
            if sampler == "ddim":
                options["final_alpha_cumprod"] = 1.0 if self.scheduler_config.set_alpha_to_one \
                    else float(self.alphas_cumprod[0])
            if num_steps(timesteps):
                noise_fn = make_noise_sampler(noise_sampler, latents, timesteps, self.alphas_cumprod, seeds=seeds,
                                              generator=generator)
                latents = sample_fn(denoiser, latents, timesteps, generator=generator, noise_sampler=noise_fn,
                                    callback=callback, progress=progress, **options)
            if not torch.isfinite(latents).all():
                raise NonFiniteError(self._nonfinite_cause("the sampled latents", None, guidance_scale, eta))

            # 7. hires fix: upscale, then image-to-image at the larger size (same prompts, guidance, generators)
            base_size = (height, width)
            if hires_scale is not None:
                height, width = int(height * hires_scale) // f * f, int(width * hires_scale) // f * f
                if hires_upscaler.startswith("latent-"):
                    big = F.interpolate(latents, size=(height // f, width // f), mode=hires_upscaler[len("latent-"):])
                else:
                    pils = [Image.fromarray((im * 255).round().astype("uint8"))
                            for im in self.decode_latents(latents).permute(0, 2, 3, 1).cpu().numpy()]
                    pixels = torch.stack([_to_unit_tensor(p.resize((width, height), Image.Resampling.LANCZOS))
                                          for p in pils]) * 2 - 1
                    big = self.encode_images(pixels, per_image)
                hires_ts = self._timesteps(hires_steps or steps, spacing, hires_strength, "diffusers", sigma_schedule)
                noise = randn(big.shape, generator=generator, device=device, dtype=torch.float32)
                latents = noise_to_level(big, hires_ts[0], noise, self.alphas_cumprod) if num_steps(hires_ts) else big
                if num_steps(hires_ts):
                    big_shape = (batch, latent_channels, height // f, width // f)
                    if _scheduled(cond) or _scheduled(uncond):  # the text depends on the step: re-plan it
                        cond, uncond = self._text_conditions(prompts, negatives, hires_ts, prompt_normalization,
                                                             guidance_scale)
                    denoiser = self._denoiser(cond, uncond, guidance_scale, guidance_rescale, classifier, class_label,
                                              classifier_scale, batch, big_shape, None, unet_dtype)
                    noise_fn = make_noise_sampler(noise_sampler, latents, hires_ts, self.alphas_cumprod, seeds=seeds,
                                                  generator=generator)
                    latents = sample_fn(denoiser, latents, hires_ts, generator=generator, noise_sampler=noise_fn,
                                        callback=callback, progress=progress, **options)

            # 8. decode (and paste back)
            params = [
                {"prompt": p, "negative_prompt": n, "seed": s, "sampler": sampler, "steps": steps, "eta": eta,
                 "guidance_scale": guidance_scale, "height": height, "width": width, "model": self.name,
                 "timestep_spacing": spacing,
                 "sigma_schedule": sigma_schedule if isinstance(sigma_schedule, str) else [float(v) for v in sigma_schedule],
                 "a1111_sampler": a1111_name(sampler, sigma_schedule),
                 "noise_sampler": noise_sampler if isinstance(noise_sampler, str) else None,
                 **(init["params"] if init else {}),
                 **({"hires_scale": hires_scale, "hires_strength": hires_strength, "hires_upscaler": hires_upscaler,
                     "hires_steps": hires_steps or steps, "base_height": base_size[0], "base_width": base_size[1]}
                    if hires_scale is not None else {})}
                for p, n, s in zip(shown, negatives, seeds or [None] * batch)
            ]
            if output_type == "latent":
                return PipelineOutput(latents, latents, params)
            images = self.decode_latents(latents).permute(0, 2, 3, 1).cpu().numpy()
            if init is not None and init["paste"] is not None:
                images = init["paste"](images)
            if output_type == "pil":
                images = [Image.fromarray((im * 255).round().astype("uint8")) for im in images]
            return PipelineOutput(images, latents, params)

    # ------------------------------------------------------------------ prompt extras: LoRA tags, embeddings

    @contextlib.contextmanager
    def _tagged_loras(self, tags: dict[str, float], lora_dir):
        """``<lora:name:w>`` tags: load ``name`` from ``lora_dir`` (once; kept loaded) and make it active
        with weight w for this call; the previous adapters and weights come back afterwards."""
        if not tags:
            yield
            return
        if lora_dir is None:
            raise ValueError(f"the prompt has LoRA tags ({', '.join(f'<lora:{n}>' for n in tags)}) but no LoRA folder "
                             "is set: pass lora_dir= (--lora-dir DIR) or set pipe.lora_dir")
        root = Path(lora_dir)
        active = list(self.__dict__.get("_lora_active") or [])
        scales = {n: a.scale for n, a in self._loras.items()}
        tagged = []
        for name, scale in tags.items():
            adapter = "tag_" + re.sub(r"[^\w-]", "_", name)
            if adapter not in self._loras:
                self.load_lora(resolve_in_folder(root, name, LORA_SUFFIXES, "LoRA"), adapter_name=adapter, scale=scale)
            tagged.append((adapter, scale))
        names = [n for n in active if n not in dict(tagged)] + [a for a, _ in tagged]
        self.set_adapters(names, [self._loras[n].scale for n in names[:len(names) - len(tagged)]]
                          + [w for _, w in tagged])
        try:
            yield
        finally:
            for n, sc in scales.items():
                self._loras[n].scale = sc
            for adapter, _ in tagged:  # adapters loaded for this call stay loaded, switched off
                if adapter not in scales:
                    self._loras[adapter].scale = 0.0
            self._apply_lora_scales(active + [a for a, _ in tagged if a not in active])

    def load_textual_inversion(self, path_or_repo, token: str | None = None, *, allow_pickle: bool = False,
                               **kwargs) -> list[str]:
        """Register a textual-inversion embedding (one or several vectors) under ``token``: diffusers'
        ``learned_embeds.safetensors`` ({token: (n, D)}), A1111/ComfyUI ``.safetensors``
        (``emb_params``), or, only with ``allow_pickle``, A1111 ``.pt`` (``string_to_param``). The token
        defaults to the file's own name. Returns the tokens added (``token``, ``token_1``, …)."""
        token, vectors = read_embedding(path_or_repo, token, allow_pickle=allow_pickle)
        width = self.text_encoder.get_input_embeddings().weight.shape[-1]
        if vectors.shape[-1] != width:
            raise ValueError(f"embedding {token!r} has width {vectors.shape[-1]} but this text encoder's is {width}: "
                             "it was trained for another model")
        super().load_textual_inversion(vectors.to(self.text_encoder.dtype), token=token, tokenizer=self.tokenizer,
                                       text_encoder=self.text_encoder)
        return [token] + [f"{token}_{i}" for i in range(1, vectors.shape[0])]

    def save_textual_inversion(self, token: str, path: str | os.PathLike, layout: str = "diffusers") -> Path:
        """Write the vectors of ``token`` (and ``token_1``, …) as diffusers' {token: (n, D)} or A1111's
        {"emb_params": (n, D)} safetensors file, atomically."""
        vocab = self.tokenizer.get_vocab()
        if token not in vocab:
            raise ValueError(f"{token!r} is not a token of this tokenizer; load_textual_inversion() it first")
        ids = [vocab[token]]
        while f"{token}_{len(ids)}" in vocab:
            ids.append(vocab[f"{token}_{len(ids)}"])
        vectors = self.text_encoder.get_input_embeddings().weight[ids].detach().float().cpu().contiguous()
        if layout not in ("diffusers", "a1111"):
            raise ValueError(f"layout must be diffusers or a1111; got {layout!r}")
        state = {token: vectors} if layout == "diffusers" else {"emb_params": vectors}
        path = Path(path)
        save_safetensors_atomic(state, path, {"format": "pt", "token": token, "layout": layout})
        return path

    # ------------------------------------------------------------------ the steps' helpers

    def _denoiser(self, cond, uncond, guidance_scale, guidance_rescale, classifier, class_label, classifier_scale,
                  batch, shape, concat, unet_dtype=None):
        denoiser = UNetDenoiser(self.unet, self.alphas_cumprod, self.scheduler_config.prediction_type, concat=concat,
                                dtype=unet_dtype, cudagraphs=self.compiled == "reduce-overhead")
        if isinstance(cond, WeightedConds):  # "a AND b :w": every part guides (at any scale, 1 included)
            denoiser = ComposableGuidance(denoiser, cond, uncond, guidance_scale)
        elif guidance_scale == 1.0:
            denoiser = Conditioned(denoiser, cond)
        else:
            denoiser = ClassifierFreeGuidance(denoiser, cond, uncond, guidance_scale, guidance_rescale)
        if classifier is not None:
            if hasattr(classifier, "check_compatible"):  # latent channels, size and schedule must match
                classifier.check_compatible(self.unet, shape, self.alphas_cumprod)
            denoiser = ClassifierGuidance(denoiser, classifier.log_prob_fn(class_label, batch), classifier_scale)
        return denoiser

    def _timesteps(self, steps: int, spacing: str, strength: float, strength_steps: str,
                   sigma_schedule="default") -> torch.Tensor:
        """The N-step schedule (N integer timesteps, or N+1 sigmas ending at 0), or its tail for
        image-to-image (see ``__call__``)."""
        sc = self.scheduler_config

        def full(n):
            if isinstance(sigma_schedule, str) and sigma_schedule == "default":
                return make_timesteps(n, sc.num_train_timesteps, spacing, sc.steps_offset, self.alphas_cumprod)
            return make_sigmas(sigma_schedule, n, self.alphas_cumprod, spacing=spacing, steps_offset=sc.steps_offset)

        levels = full(steps)
        extra = int(levels.is_floating_point())  # sigma lists carry the final 0
        if strength >= 1.0:
            return levels
        if strength_steps == "exact" and strength > 0.0:
            return full(int(steps / strength))[-(steps + extra):]
        n = num_steps(levels)
        kept = min(int(n * strength), n)
        if kept < 1 and strength > 0.0:
            raise ValueError(f"strength {strength} x {n} steps leaves no step to run (int(N·strength) = 0); "
                             "raise strength or num_inference_steps, or use strength_steps='exact'")
        return levels[n - kept:]

    def _prepare_image_inputs(self, image, mask_image, height, width, strength, strength_steps, mask_blur,
                              only_masked, padding, keep_unmasked, outpaint, inpaint_unet):
        """All image-to-image/inpainting inputs checked and converted in one place; None without an image."""
        from diffusers.image_processor import VaeImageProcessor

        from .inputs import blur_mask, outpaint_canvas, to_pil, working_size

        if image is None:
            if mask_image is not None or outpaint is not None or strength is not None:
                raise ValueError("mask_image, outpaint and strength need image= (the picture to start from)")
            return None
        if strength_steps not in STRENGTH_STEPS:
            raise ValueError(f"strength_steps must be one of {', '.join(STRENGTH_STEPS)}; got {strength_steps!r}")
        pil = to_pil(image, "image", "RGB")
        mask = to_pil(mask_image, "mask_image", "L") if mask_image is not None else None
        if mask is not None and mask.size != pil.size:
            raise ValueError(f"mask_image is {mask.width}x{mask.height} px but image is {pil.width}x{pil.height}; "
                             "they must have the same size")
        if outpaint is not None:
            pad = tuple(int(v) for v in outpaint)
            if len(pad) != 4:
                raise ValueError(f"outpaint must be (left, right, top, bottom) pixels; got {outpaint!r}")
            pil, mask = outpaint_canvas(pil, mask, pad)
        if strength is None:
            strength = 1.0 if mask is not None else 0.8
        if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be a number in [0, 1] (0 = keep the image, 1 = ignore it); got {strength!r}")
        strength = float(strength)
        f = self.vae_scale_factor
        params = {"strength": strength, "strength_steps": strength_steps}
        paste = None
        if mask is None:
            if only_masked or keep_unmasked or mask_blur:
                raise ValueError("only_masked, keep_unmasked and mask_blur need mask_image=")
            h, w = working_size(pil, f, height, width)
            pixels = VaeImageProcessor(vae_scale_factor=f).preprocess(pil, height=h, width=w).float()
            return {"pixels": pixels, "mask": None, "height": h, "width": w, "strength": strength,
                    "params": params, "paste": None}
        m = np.asarray(mask)
        if m.max() < 128:
            logger.warning("mask_image is all black (nothing to repaint): the result is the image through the VAE")
        if inpaint_unet is False and m.min() >= 128:
            logger.info("mask_image is all white: the whole image is repainted (image-to-image at strength %s)", strength)
        soft = blur_mask(mask, mask_blur)
        params.update({"mask_blur": mask_blur, "only_masked": only_masked, "keep_unmasked": keep_unmasked,
                       "outpaint": list(outpaint) if outpaint is not None else None})
        original = np.asarray(pil, dtype=np.float32) / 255.0
        alpha_full = np.asarray(soft, dtype=np.float32)[..., None] / 255.0
        if only_masked:
            if padding < 0:
                raise ValueError(f"only_masked_padding must be >= 0 px, got {padding}")
            h, w = working_size(pil, f, height, width)
            box = VaeImageProcessor.get_crop_region(mask, w, h, pad=padding)
            work, work_mask = pil.crop(box), mask.crop(box)
            params["only_masked_padding"] = padding
        else:
            h, w = working_size(pil, f, height, width)
            box, work, work_mask = None, pil, mask
            if keep_unmasked and (h, w) != (pil.height, pil.width):
                raise ValueError(f"keep_unmasked pastes the input back pixel for pixel, so the working size {w}x{h} "
                                 f"must equal the image's {pil.width}x{pil.height}: leave height/width unset and "
                                 f"use an image whose sides are multiples of {f}, or use only_masked")
        pixels = VaeImageProcessor(vae_scale_factor=f).preprocess(work, height=h, width=w).float()
        mask_t = VaeImageProcessor(vae_scale_factor=f, do_normalize=False, do_binarize=True,
                                   do_convert_grayscale=True).preprocess(work_mask, height=h, width=w).float()
        if only_masked or keep_unmasked:
            def paste(images: np.ndarray) -> np.ndarray:
                """Generated pixels where the (blurred) mask is white, the input where it is black."""
                out = []
                for im in images:
                    if box is not None:
                        x1, y1, x2, y2 = box
                        crop = Image.fromarray((im * 255).round().astype("uint8")).resize(
                            (x2 - x1, y2 - y1), Image.Resampling.LANCZOS)
                        full = original.copy()
                        full[y1:y2, x1:x2] = np.asarray(crop, dtype=np.float32) / 255.0
                        im = full
                    out.append(alpha_full * im + (1 - alpha_full) * original)
                return np.stack(out).astype(np.float32)
        # sampling runs at (h, w); with only_masked the paste-back returns the input's size
        return {"pixels": pixels, "mask": mask_t, "height": h, "width": w, "strength": strength,
                "params": params, "paste": paste}


LORA_SUFFIXES = (".safetensors",)
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


def resolve_in_folder(root: Path, name: str, suffixes: Sequence[str], kind: str) -> Path:
    """``name`` (a file stem, or a folder holding diffusers' default file) strictly inside ``root``:
    no absolute paths, no "..", no symlinks that lead out."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{kind} folder {root} not found")
    check_plain_name(name, kind, str(root))
    candidates = [root / f"{name}{suf}" for suf in suffixes] + [root / name]
    for c in candidates:
        if c.exists():
            if not is_inside(c, root):
                raise ValueError(f"{kind} {name!r} points outside {root} (a symlink to {c.resolve()}); refused")
            return c
    known = sorted({p.stem for p in root.iterdir() if p.suffix in suffixes or p.is_dir()})
    raise FileNotFoundError(f"no {kind} named {name!r} in {root}; available: {', '.join(known) or 'none'}")


def read_embedding(source, token: str | None, *, allow_pickle: bool = False) -> tuple[str, torch.Tensor]:
    """(token, vectors (n, D)) of a textual-inversion file, folder or Hub repo id (see
    :meth:`TextToImagePipeline.load_textual_inversion`)."""
    from safetensors.torch import load_file

    path = Path(source)
    if not path.exists():
        path = resolve_model_dir(str(source), kind="embedding")
    if path.is_dir():
        found = [path / n for n in ("learned_embeds.safetensors", "learned_embeds.bin") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds no learned_embeds.safetensors")
        path = found[0]
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ValueError(f"{path} is a pickle, which can run arbitrary code when loaded; pass allow_pickle=True "
                             "(--allow-pickle) if you trust it, or convert it to .safetensors")
        state = torch.load(path, map_location="cpu", weights_only=False)
    else:
        check_safetensors_file(path)
        state = load_file(str(path))
    if "string_to_param" in state:           # A1111 .pt
        vectors, name = state["string_to_param"]["*"], state.get("name") or path.stem
    elif "emb_params" in state:               # A1111 / ComfyUI .safetensors
        vectors, name = state["emb_params"], path.stem
    elif len(state) == 1:                     # diffusers learned_embeds: {token: vectors}
        name, vectors = next(iter(state.items()))
    else:
        raise ValueError(f"{path}: not a textual-inversion embedding (expected one tensor, 'emb_params' or "
                         f"'string_to_param'; found keys {sorted(state)[:5]})")
    vectors = vectors.detach().float()
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or not torch.isfinite(vectors).all():
        raise ValueError(f"{path}: embedding must be finite vectors (n, D); got shape {tuple(vectors.shape)}")
    return token or name, vectors


def num_steps(levels) -> int:
    """Sampler steps of a level list: n integer timesteps, or n+1 sigmas."""
    return len(levels) - 1 if torch.is_tensor(levels) and levels.is_floating_point() else len(levels)


def noise_to_level(z: torch.Tensor, level, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """q(x | z) at a noise level: an integer timestep t (ᾱ_t), or a sigma σ (ᾱ = 1/(1+σ²), the
    fractional timestep's ᾱ): √ᾱ z + √(1-ᾱ) noise, in the model's scaling."""
    if torch.is_tensor(level) and level.is_floating_point():
        a = 1.0 / (1.0 + float(level) ** 2)
        return math.sqrt(a) * z + math.sqrt(1.0 - a) * noise
    return q_sample(z, int(level), noise, alphas_cumprod)


STRENGTH_STEPS = ("diffusers", "exact")
HIRES_UPSCALERS = ("latent-bilinear", "latent-bicubic", "latent-nearest", "lanczos")


def _scheduled(cond) -> bool:
    """Whether a conditioning (or any part of a :class:`WeightedConds`) changes with the step."""
    parts = cond.conds if isinstance(cond, WeightedConds) else [cond]
    return any(isinstance(c, ScheduledConditioning) for c in parts)


def _check_hires(scale, strength, upscaler, steps, height, width, factor) -> None:
    if not isinstance(scale, (int, float)) or not 1.0 <= float(scale) <= 8.0:
        raise ValueError(f"hires_scale must be a number in [1, 8] (the upscale factor); got {scale!r}")
    if not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"hires_strength must be in [0, 1] (A1111's denoising strength; 0.5 is usual); got {strength!r}")
    if upscaler not in HIRES_UPSCALERS:
        raise ValueError(f"hires_upscaler must be one of {', '.join(HIRES_UPSCALERS)}; got {upscaler!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"hires_steps must be an integer >= 1; got {steps!r}")
    if int(height * scale) // factor < 1 or int(width * scale) // factor < 1:
        raise ValueError(f"hires_scale {scale} gives an empty image")


def _to_unit_tensor(pil: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


class _KnownRegion:
    """The sampler callback of inpainting with an ordinary U-Net: after step i the known region
    (mask 0) becomes the image latents noised to the next timestep, q(x_{t_{i+1}} | z) with the
    initial noise, or the clean latents after the last step (diffusers' inpaint pipeline). Then the
    user's callback, if any, sees the blended sample."""

    def __init__(self, image_latents, noise, mask, levels, alphas_cumprod, user_callback):
        self.z, self.noise, self.mask, self.levels = image_latents, noise, mask, levels
        self.ac, self.user = alphas_cumprod, user_callback

    def __call__(self, info: dict) -> torch.Tensor:
        i, x = info["i"], info["x"]
        nxt = i + 1
        known = noise_to_level(self.z, self.levels[nxt], self.noise, self.ac) if nxt < len(self.levels) else self.z
        x = (1 - self.mask) * known.to(x.dtype) + self.mask * x
        if self.user is not None:
            out = self.user({**info, "x": x})
            if isinstance(out, torch.Tensor):
                x = out
        return x


__all__ = ["TextToImagePipeline", "PipelineOutput", "SAMPLERS"]
