"""Train the text-conditioned U-Net of a latent diffusion model (Rombach et al. 2022).

The objective (Ho et al. 2020, Algorithm 1, in latent space; notation of :mod:`latentdiff.diffusion`):

    z   = scaling_factor · (μ(x) + σ(x)·n)            a fresh posterior sample of the frozen VAE
    t   ~ U{0, …, T-1},   eps ~ N(0, I) (+ offset noise, Guttenberg 2023)
    x_t = q_sample(z, t, eps) = √ᾱ_t z + √(1-ᾱ_t) eps
    c   = text_encoder(caption), caption → "" with probability caption_dropout (Ho & Salimans 2022)
    loss = w(t) · ‖unet(x_t, t, c) − target‖²,  target = eps or v (Salimans & Ho 2022),
           w(t) = min-SNR-γ weight (Hang et al. 2023; 1 when γ = 0)

When the VAE and the text encoder are frozen (the default), μ(x), σ(x) and the caption embeddings
are computed once and cached (safetensors, keyed by a hash of data, weights and transforms); a step
then touches only the U-Net, and z is still re-sampled from the posterior every step. The final
pipeline folder (``output_dir/final``) carries the EMA weights and loads in ``TextToImagePipeline``
and in diffusers' ``StableDiffusionPipeline``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from tqdm.auto import tqdm

from latentdiff.config import load_config
from latentdiff.diffusion import min_snr_weights, q_sample, sample_noise, snr, training_target
from latentdiff.images import make_grid, save_png_atomic
from latentdiff.models import ModelConfig, SamplingDefaults, SchedulerConfig

from . import loop
from .common import (
    DataConfig,
    Device,
    EMAConfig,
    ImageData,
    MixedPrecision,
    OptimConfig,
    cache_key,
    caption_table,
    check_loop_settings,
    check_model_source,
    encode_text,
    hash_module,
    load_image_data,
    load_tensors,
    load_validation_data,
    run_main,
    save_tensors_atomic,
    to_pixels,
    tokenize,
)
from .data import StreamedImages, check_streaming, prepare_streamed, streams
from .loop import Run, Task

logger = logging.getLogger("latentdiff.train")
CACHE_VERSION = 1


@dataclass
class UNetTrainConfig:
    CONFIG_REFERENCES: ClassVar[tuple[str, ...]] = ("model",)  # resolved beside the config file
    model: str = ""                  # model config YAML (configs/emoji.yaml): U-Net/VAE/text encoder/schedule
    init_from: str = ""              # or a pipeline folder to continue from (all components + schedule)
    vae_from: str = ""               # folder of `latentdiff train vae` (output_dir/vae) or a pipeline; "random" = tests only
    text_encoder_from: str = ""      # CLIPTextModel folder (e.g. runs/clip/text_encoder); "" = random init from `model`
    train_text_encoder: bool = False # train the text tower with the U-Net (its EMA too); latents stay cached
    text_encoder_learning_rate: float = 0.0  # 0 = optim.learning_rate (kohya's text_encoder_lr)
    output_dir: str = "runs/unet"
    seed: int = 0
    device: Device = "auto"
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False
    cpu_threads: int = 0             # torch CPU threads (0 = torch's default); 1 is fastest on a loaded machine
    data: DataConfig = field(default_factory=lambda: DataConfig(source="emoji", caption_dropout=0.1))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=1e-4, lr_warmup_steps=500))
    ema: EMAConfig = field(default_factory=lambda: EMAConfig(decay=0.999))
    prediction_type: Literal["", "epsilon", "v_prediction"] = ""  # "" = the model's scheduler config
    zero_terminal_snr: bool = False  # Lin et al. 2024: rescaled betas (ᾱ_{T-1} = 0), trailing spacing; needs v_prediction
    min_snr_gamma: float = 5.0       # 0 = unweighted L_simple
    debiased_estimation: bool = False  # sd-scripts: weight 1/√SNR (ε) or 1/(SNR+1) (v), SNR capped at 1000
    loss_type: Literal["l2", "huber"] = "l2"  # huber: pseudo-Huber √(d² + c²) − c
    huber_c: float = 0.1
    offset_noise: float = 0.0        # e.g. 0.05-0.1 (Guttenberg 2023)
    cache: bool = True               # cache latents (VAE frozen) and text embeddings (when the text encoder is frozen)
    cache_dir: str = ""              # "" = output_dir/cache
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 3
    validation_steps: int = 500      # 0 = only the final export
    validation_prompts: list[str] = field(default_factory=lambda: ["red apple", "grinning face", "flag: France"])
    validation_seeds: list[int] = field(default_factory=lambda: [0, 1])
    validation_num_inference_steps: int = 20
    validation_guidance_scale: float = 5.0
    validation_sampler: str = ""     # "" = the model's default sampler
    log_every: int = 10
    export_dtype: Literal["float32", "float16"] = "float32"

    def validate(self):
        check_loop_settings(self)
        check_model_source(self.model, self.init_from)
        check_streaming(self)
        if self.model and not self.vae_from:
            raise ValueError("vae_from is empty: set it to the output of `latentdiff train vae` (e.g. runs/emoji_vae/vae), "
                             "a pipeline folder, or 'random' (an untrained VAE, for tests only)")
        if self.min_snr_gamma < 0 or self.offset_noise < 0:
            raise ValueError("min_snr_gamma and offset_noise must be >= 0 (0 = off)")
        if self.huber_c <= 0:
            raise ValueError(f"huber_c must be > 0, got {self.huber_c}")
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError("zero_terminal_snr: true needs prediction_type: v_prediction (at zero SNR the noise is "
                             "the whole input, so an ε-prediction says nothing about the image; Lin et al. 2024)")
        if self.validation_steps and not self.validation_prompts:
            raise ValueError("validation_steps > 0 needs validation_prompts")


# ----------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------


@dataclass
class Components:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: SchedulerConfig
    defaults: SamplingDefaults
    resolution: int


def _subfolder(path: Path, name: str) -> tuple[Path, str | None]:
    return (path, name) if (path / name).is_dir() else (path, None)


def load_text_encoder(folder: str):
    """A CLIPTextModel folder (or a pipeline folder with text_encoder/) and its tokenizer: the
    sibling ``tokenizer/`` folder, else the offline CLIP tokenizer."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from latentdiff.tokenizer import build_clip_tokenizer

    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"text_encoder_from {folder}: folder not found")
    base, sub = _subfolder(path, "text_encoder")
    te = CLIPTextModel.from_pretrained(base, subfolder=sub or "", use_safetensors=True)
    te_dir = base / sub if sub else base
    for cand in (te_dir.parent / "tokenizer", te_dir / "tokenizer", te_dir):
        if (cand / "tokenizer_config.json").is_file() or (cand / "vocab.json").is_file():
            return te, CLIPTokenizer.from_pretrained(cand)
    return te, build_clip_tokenizer()


def load_vae(folder: str):
    from diffusers import AutoencoderKL

    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"vae_from {folder}: folder not found (expected output_dir/vae of `latentdiff train vae`)")
    base, sub = _subfolder(path, "vae")
    vae = AutoencoderKL.from_pretrained(base, subfolder=sub or "", use_safetensors=True)
    if float(vae.config.scaling_factor) == 1.0:
        logger.warning("VAE %s has scaling_factor 1.0 (not measured?); latents may not have unit variance", folder)
    return vae


def build_components(cfg: UNetTrainConfig) -> Components:
    """U-Net (random init from the model config, or init_from), frozen VAE and text encoder."""
    from latentdiff.pipelines import TextToImagePipeline
    from latentdiff.tokenizer import build_clip_tokenizer

    if cfg.init_from:
        pipe = TextToImagePipeline.from_pretrained(cfg.init_from)
        unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
        sched, defaults, resolution = pipe.scheduler_config, pipe.defaults, pipe.default_size
        if cfg.vae_from:
            vae = load_vae(cfg.vae_from)
        if cfg.text_encoder_from:
            te, tok = load_text_encoder(cfg.text_encoder_from)
    else:
        mc = load_config(cfg.model, ModelConfig)
        sched, defaults, resolution = mc.scheduler, mc.defaults, mc.resolution
        if cfg.text_encoder_from:
            te, tok = load_text_encoder(cfg.text_encoder_from)
        else:
            torch.manual_seed(cfg.seed + 1)
            te, tok = mc.text_encoder.build(), build_clip_tokenizer()
        if cfg.vae_from == "random":
            logger.warning("vae_from=random: an untrained VAE (tests only)")
            torch.manual_seed(cfg.seed + 2)
            vae = mc.vae.build(resolution)
        else:
            vae = load_vae(cfg.vae_from)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if resolution % factor:
            raise ValueError(f"resolution {resolution} is not a multiple of the VAE's factor {factor}")
        torch.manual_seed(cfg.seed)
        unet = mc.unet.build(resolution // factor, vae.config.latent_channels, te.config.hidden_size)
    if cfg.prediction_type:
        sched = dataclasses.replace(sched, prediction_type=cfg.prediction_type)
    if cfg.zero_terminal_snr:  # written into the exported scheduler config, so diffusers samples it the same way
        sched = dataclasses.replace(sched, rescale_betas_zero_snr=True, timestep_spacing="trailing")
        if defaults.timestep_spacing not in ("", "trailing"):
            defaults = dataclasses.replace(defaults, timestep_spacing="trailing")
    if unet.config.cross_attention_dim != te.config.hidden_size:
        raise ValueError(f"the U-Net's cross_attention_dim {unet.config.cross_attention_dim} does not match the text "
                         f"encoder's hidden_size {te.config.hidden_size}")
    vae.requires_grad_(False).eval()
    te.requires_grad_(cfg.train_text_encoder).train(cfg.train_text_encoder)
    unet.requires_grad_(True).train()
    return Components(unet, vae, te, tok, sched, defaults, resolution)




# ----------------------------------------------------------------------------------------------
# The cache: posterior mean/std per image (and its mirror image), one embedding per caption
# ----------------------------------------------------------------------------------------------


@dataclass
class EncodedData:
    """What a step needs. Cached mode: ``mean``/``std`` (F, N, C, h, w) with F = 2 when flips are on
    (index 1 = mirrored image) and ``text_embeddings`` (U+1, L, D), last row = "". Uncached mode:
    ``images`` uint8 on device and ``token_ids`` (U+1, L). ``caption_index`` (N,) in both."""

    caption_index: torch.Tensor
    uncond_index: int
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    text_embeddings: torch.Tensor | None = None
    images: torch.Tensor | None = None
    token_ids: torch.Tensor | None = None
    key: str = ""


def cache_parts(data: ImageData, vae, text_encoder, token_ids: torch.Tensor, flips: bool, center_crop: bool) -> dict:
    """Everything the cached tensors depend on; its hash is the cache key. ``text_encoder`` None: a
    latents-only cache (the tower trains and encodes the captions every step)."""
    return {
        "version": CACHE_VERSION,
        "data": data.fingerprint(),
        "split": data.split,
        "resolution": int(data.images.shape[-1]),
        "vae": hash_module(vae),
        **({"text_encoder": hash_module(text_encoder)} if text_encoder is not None else {"text": "not cached"}),
        "tokens": hashlib.sha256(token_ids.numpy().tobytes()).hexdigest(),
        "random_flip": flips,
        "center_crop": center_crop,
    }


@torch.no_grad()
def encode_latent_stats(vae, images_u8: torch.Tensor, flips: bool, batch_size: int, device) -> tuple:
    """Posterior (mean, std) of every image (and of its mirror image when ``flips``): (F, N, C, h, w)."""
    means, stds = [], []
    for flip in ([False, True] if flips else [False]):
        m, s = [], []
        for i in tqdm(range(0, len(images_u8), batch_size), desc="cache latents", leave=False, disable=len(images_u8) < 2048):
            x = to_pixels(images_u8[i:i + batch_size].to(device))
            dist = vae.encode(x.flip(-1) if flip else x).latent_dist
            m.append(dist.mean.float())
            s.append(dist.std.float())
        means.append(torch.cat(m))
        stds.append(torch.cat(s))
    return torch.stack(means), torch.stack(stds)


def prepare_data(data: ImageData, comps: Components, cfg: UNetTrainConfig, accelerator, cache_dir: Path,
                 flips: bool) -> EncodedData:
    """Cached tensors (built once by the main process, then loaded by all) or the raw tensors."""
    device = accelerator.device
    table, caption_index = caption_table(data.captions)
    token_ids = tokenize(comps.tokenizer, table)
    if not cfg.cache:
        return EncodedData(caption_index.to(device), len(table) - 1, images=data.images.to(device),
                           token_ids=token_ids.to(device))
    # a trained tower encodes the captions every step: the cache holds latents only, whatever the tower
    cached_tower = None if cfg.train_text_encoder else comps.text_encoder
    key = cache_key(cache_parts(data, comps.vae, cached_tower, token_ids, flips, cfg.data.center_crop))
    path = cache_dir / f"{data.split}-{key}.safetensors"
    # one writer per node (an atomic rename makes concurrent writers on a shared filesystem harmless)
    if accelerator.is_local_main_process and not path.is_file():
        what = f"{len(table)} captions" if cached_tower is not None else "no captions (the tower trains)"
        logger.info("encoding %d images and %s into the cache %s", len(data), what, path)
        mean, std = encode_latent_stats(comps.vae.to(device), data.images, flips, 256, device)
        tensors = {"mean": mean, "std": std, "caption_index": caption_index}
        if cached_tower is not None:
            tensors["text_embeddings"] = encode_text(cached_tower.to(device), token_ids, 256, device)
        save_tensors_atomic(tensors, path, {"key": key, "split": data.split, "source": data.source})
    elif accelerator.is_local_main_process:
        logger.info("using the cache %s", path)
    accelerator.wait_for_everyone()
    t = load_tensors(path, device)
    if cfg.train_text_encoder:  # cached latents; the captions are encoded every step by the tower being trained
        return EncodedData(t["caption_index"], len(table) - 1, mean=t["mean"], std=t["std"],
                           token_ids=token_ids.to(device), key=key)
    return EncodedData(t["caption_index"], len(table) - 1, mean=t["mean"], std=t["std"],
                       text_embeddings=t["text_embeddings"], key=key)


# ----------------------------------------------------------------------------------------------
# One step's inputs and the loss
# ----------------------------------------------------------------------------------------------


def batch_latents(enc: EncodedData, vae, idx: torch.Tensor, flip: torch.Tensor, posterior_noise: torch.Tensor,
                  scaling_factor: float) -> torch.Tensor:
    """z = scaling_factor·(μ + σ·n) for samples ``idx``: a fresh posterior sample (cached: indexing)."""
    if enc.mean is not None:
        f = flip.long()
        mean, std = enc.mean[f, idx], enc.std[f, idx]                          # (B, C, h, w)
    else:
        with torch.no_grad():
            dist = vae.encode(to_pixels(enc.images[idx], flip)).latent_dist
        mean, std = dist.mean.float(), dist.std.float()
    return (mean + std * posterior_noise) * scaling_factor


def caption_rows(enc: EncodedData, idx: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """(B,) rows of the caption table for samples ``idx``; "" where ``drop``."""
    return torch.where(drop, enc.uncond_index, enc.caption_index[idx])


def batch_inputs(enc: EncodedData, vae, text_encoder, idx: torch.Tensor, flip: torch.Tensor, drop: torch.Tensor,
                 posterior_noise: torch.Tensor, scaling_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, text embeddings) for samples ``idx``: z = scaling_factor·(μ + σ·n), a fresh posterior
    sample; captions dropped to "" where ``drop``. Cached: pure tensor indexing."""
    z = batch_latents(enc, vae, idx, flip, posterior_noise, scaling_factor)
    rows = caption_rows(enc, idx, drop)
    emb = enc.text_embeddings[rows] if enc.text_embeddings is not None else text_encoder(enc.token_ids[rows])[0]
    return z, emb


def loss_weights(t: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str, min_snr_gamma: float,
                 debiased: bool) -> torch.Tensor | None:
    """Per-sample weights (B,) of the MSE: min-SNR-γ (Hang et al. 2023; diffusers' examples) and/or
    sd-scripts' debiased estimation (1/√SNR for ε, 1/(SNR+1) for v, SNR capped at 1000); None = 1."""
    w = None
    if min_snr_gamma > 0:
        w = min_snr_weights(t, alphas_cumprod, min_snr_gamma, prediction_type)
    if debiased:
        s = snr(alphas_cumprod, t).clamp(max=1000.0)
        d = (1.0 / (s + 1) if prediction_type == "v_prediction" else s.rsqrt()).float()
        w = d if w is None else w * d
    return w


def diffusion_loss(unet, z0: torch.Tensor, emb: torch.Tensor | None, t: torch.Tensor, eps: torch.Tensor,
                   alphas_cumprod: torch.Tensor, prediction_type: str, min_snr_gamma: float, *,
                   loss_type: str = "l2", huber_c: float = 0.1, debiased: bool = False,
                   token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted distance between the U-Net output and the eps/v target (scalar): the MSE (L_simple),
    or the pseudo-Huber loss √((ε̂−ε)² + c²) − c (as in diffusers' LCM example; robust to outliers).
    ``unet`` may be a :class:`DenoiserStep` that encodes ``token_ids`` itself (a trained text encoder)."""
    x_t = q_sample(z0, t, eps, alphas_cumprod)
    target = training_target(z0, eps, t, alphas_cumprod, prediction_type)
    cond = {"token_ids": token_ids} if token_ids is not None else {}
    pred = unet(x_t, t, encoder_hidden_states=emb, **cond).sample
    diff = pred.float() - target.float()
    if loss_type == "huber":
        per_elem = torch.sqrt(diff ** 2 + huber_c ** 2) - huber_c
    else:
        per_elem = diff ** 2
    per_sample = per_elem.flatten(1).mean(1)                                    # (B,)
    w = loss_weights(t, alphas_cumprod, prediction_type, min_snr_gamma, debiased)
    return (per_sample * w).mean() if w is not None else per_sample.mean()


class DenoiserStep(torch.nn.Module):
    """The module a U-Net step trains: the U-Net, and the text encoder when the captions are encoded
    every step (a trained or an uncached one). One module, so one DDP wrapper syncs both."""

    def __init__(self, unet, text_encoder=None):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, sample, timestep, encoder_hidden_states=None, token_ids=None):
        if token_ids is not None:
            encoder_hidden_states = self.text_encoder(token_ids)[0]
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)


@dataclass
class HeldOutBatch:
    """A fixed held-out batch with fixed t, eps and posterior noise: comparable losses over training."""

    z0: torch.Tensor
    emb: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor


def make_heldout_batch(enc: EncodedData, scaling_factor: float, num_train_timesteps: int, seed: int,
                       vae=None, text_encoder=None) -> HeldOutBatch:
    device = enc.caption_index.device
    n = len(enc.caption_index)
    g = torch.Generator(device="cpu").manual_seed(seed + 4242)
    shape = (n, *(enc.mean.shape[2:] if enc.mean is not None else _latent_shape(vae, enc.images)))
    post = torch.randn(shape, generator=g).to(device)
    t = torch.randint(0, num_train_timesteps, (n,), generator=g).to(device)
    eps = torch.randn(shape, generator=g).to(device)
    idx = torch.arange(n, device=device)
    no = torch.zeros(n, dtype=torch.bool, device=device)
    with torch.no_grad():
        z0, emb = batch_inputs(enc, vae, text_encoder, idx, no, no, post, scaling_factor)
    return HeldOutBatch(z0, emb.detach(), t, eps)


def with_captions_encoded_by(batch: HeldOutBatch, enc: EncodedData, text_encoder) -> HeldOutBatch:
    """``batch`` with its captions encoded by ``text_encoder`` (a trained tower or one with adapters),
    instead of the embeddings fixed when the batch was made."""
    with torch.no_grad():
        emb = text_encoder(enc.token_ids[enc.caption_index])[0]
    return dataclasses.replace(batch, emb=emb)


def _latent_shape(vae, images):
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    return (vae.config.latent_channels, images.shape[-2] // f, images.shape[-1] // f)


@torch.no_grad()
def heldout_loss(unet, batch: HeldOutBatch, alphas_cumprod, prediction_type: str, min_snr_gamma: float,
                 batch_size: int = 256, **loss_options) -> float:
    """The training loss on the fixed held-out batch (no dropout, no weight updates)."""
    total, n = 0.0, len(batch.t)
    for i in range(0, n, batch_size):
        s = slice(i, i + batch_size)
        loss = diffusion_loss(unet, batch.z0[s], batch.emb[s], batch.t[s], batch.eps[s], alphas_cumprod,
                              prediction_type, min_snr_gamma, **loss_options)
        total += float(loss) * len(batch.t[s])
    return total / n


# ----------------------------------------------------------------------------------------------
# The task on the shared loop (train/loop.py)
# ----------------------------------------------------------------------------------------------


class UNetTask(Task):
    """ε/v-prediction on cached latents and text embeddings; exports a pipeline folder with the EMA U-Net."""

    name = "unet"
    exports = ("final",)
    streamed = False  # set by build: data.streaming / data.aspect_buckets (train/data.py)

    def build(self) -> None:
        cfg = self.cfg
        self.comps = build_components(cfg)
        self.streamed = streams(cfg.data)  # the sharded on-disk cache (train/data.py), with aspect buckets or not
        self.train_data = (StreamedImages(cfg.data, cfg.data.split, cfg.data.aspect_buckets and cfg.data.resolution
                                          or self.comps.resolution) if self.streamed
                           else load_image_data(cfg.data, cfg.data.split, self.comps.resolution))
        self.val_data = load_validation_data(cfg.data, self.comps.resolution)
        for d in (self.train_data, self.val_data):
            if isinstance(d, ImageData) and d.images.shape[-1] != self.comps.resolution:
                raise ValueError(f"data resolution {d.images.shape[-1]} differs from the model's {self.comps.resolution}")
        self.num_samples = len(self.train_data)

    def loss_options(self) -> dict:
        c = self.cfg
        return {"loss_type": c.loss_type, "huber_c": c.huber_c, "debiased": c.debiased_estimation}

    def setup(self, run: Run) -> torch.nn.Module:
        cfg, comps, device = self.cfg, self.comps, run.device
        sched = comps.scheduler_config
        self.prediction_type = sched.prediction_type
        self.alphas_cumprod = sched.alphas_cumprod().to(device)                   # float64 ᾱ_t, on the device
        self.T = sched.num_train_timesteps
        self.scaling_factor = float(comps.vae.config.scaling_factor)
        comps.vae.to(device)
        comps.text_encoder.to(device)
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run.out / "cache"
        self.enc = (prepare_streamed(self.train_data, comps, cfg, run, cache_dir) if self.streamed else
                    prepare_data(self.train_data, comps, cfg, run.accelerator, cache_dir, flips=cfg.data.random_flip))
        val_enc = (prepare_data(self.val_data, comps, cfg, run.accelerator, cache_dir, flips=False)
                   if self.val_data is not None else None)
        self.heldout = (make_heldout_batch(val_enc, self.scaling_factor, self.T, cfg.seed, comps.vae, comps.text_encoder)
                        if val_enc is not None else None)
        self.val_enc = val_enc
        self.latent_shape = (comps.unet.config.in_channels, comps.unet.config.sample_size, comps.unet.config.sample_size)
        logger.info("U-Net on %s: %s, prediction_type=%s%s", device,
                    "streamed cache" if self.streamed else
                    "cached latents" + ("+embeddings" if self.enc.text_embeddings is not None else ", captions encoded "
                                        "every step") if self.enc.mean is not None else "encoding every step",
                    self.prediction_type, ", zero terminal SNR" if sched.rescale_betas_zero_snr else "")
        if cfg.gradient_checkpointing:
            comps.unet.enable_gradient_checkpointing()
        encodes = self.enc.text_embeddings is None
        return DenoiserStep(comps.unet, comps.text_encoder if encodes else None)

    def parameters(self, model: torch.nn.Module) -> list:
        groups = [{"params": list(model.unet.parameters()), "lr": self.cfg.optim.learning_rate}]
        if self.trains_text_encoder:
            groups.append({"params": list(model.text_encoder.parameters()),
                           "lr": self.cfg.text_encoder_learning_rate or self.cfg.optim.learning_rate})
        return groups

    def ema_target(self, model: torch.nn.Module) -> torch.nn.Module:
        """The U-Net; with a trained text encoder the whole DenoiserStep, so the exported pair is
        averaged over the same steps (an EMA U-Net beside the raw text tower would not match it)."""
        return model if self.trains_text_encoder else model.unet

    @property
    def trains_text_encoder(self) -> bool:  # the full tower (LoraTask's adapters have their own EMA rule)
        return isinstance(self.cfg, UNetTrainConfig) and self.cfg.train_text_encoder

    def make_sampler(self, run: Run):
        return self.enc.make_sampler(run) if self.streamed else super().make_sampler(run)  # buckets: one per batch

    def start(self, run: Run) -> None:
        if self.heldout is not None and run.is_main:
            run.state["heldout_loss_initial"] = self.heldout_value(run.unwrapped().unet, run.unwrapped().text_encoder)
            run.log({"val/loss": run.state["heldout_loss_initial"]})

    def draw(self, run: Run, step: int, g: torch.Generator, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        n, device, d = len(idx), run.device, self.cfg.data
        shape = self.enc.step_shape(step) if self.streamed else self.latent_shape  # (C, h, w) of this step's bucket
        return {
            "idx": idx,
            "t": torch.randint(0, self.T, (n,), generator=g, device=device),
            "eps": sample_noise((n, *shape), generator=g, offset_noise=self.cfg.offset_noise, device=device),
            "post": torch.randn((n, *shape), generator=g, device=device),                 # posterior sample noise
            "drop": torch.rand(n, generator=g, device=device) < d.caption_dropout,
            "flip": torch.rand(n, generator=g, device=device) < (0.5 if d.random_flip else 0.0),
        }

    def loss(self, run: Run, model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.streamed:  # this micro-batch's rows, read from the shards
            z0, emb = self.enc.inputs(b["idx"], b["flip"], b["drop"], b["post"], self.scaling_factor)
            return diffusion_loss(model, z0, emb, b["t"], b["eps"], self.alphas_cumprod, self.prediction_type,
                                  self.cfg.min_snr_gamma, **self.loss_options())
        z0 = batch_latents(self.enc, self.comps.vae, b["idx"], b["flip"], b["post"], self.scaling_factor)
        rows = caption_rows(self.enc, b["idx"], b["drop"])
        if self.enc.text_embeddings is not None:
            emb, tokens = self.enc.text_embeddings[rows], None
        else:
            emb, tokens = None, self.enc.token_ids[rows]
        return diffusion_loss(model, z0, emb, b["t"], b["eps"], self.alphas_cumprod, self.prediction_type,
                              self.cfg.min_snr_gamma, token_ids=tokens, **self.loss_options())

    def heldout_value(self, unet, text_encoder=None) -> float | None:
        """The loss on the fixed held-out batch; with a trained text tower, its captions are encoded by
        ``text_encoder`` (the one paired with ``unet``), not by the tower as it was at the start."""
        if self.heldout is None:
            return None
        batch = self.heldout
        if self.trains_text_encoder and text_encoder is not None:
            batch = with_captions_encoded_by(batch, self.val_enc, text_encoder)
        return heldout_loss(unet, batch, self.alphas_cumprod, self.prediction_type, self.cfg.min_snr_gamma,
                            **self.loss_options())

    def pipeline(self, run: Run):
        """A TextToImagePipeline around copies of the current (EMA) weights; training modules untouched."""
        from latentdiff.pipelines import TextToImagePipeline

        comps = self.comps
        averaged = run.ema_copy().float()
        unet, te = (averaged.unet, averaged.text_encoder) if self.trains_text_encoder else (averaged, comps.text_encoder)
        return TextToImagePipeline(unet, comps.vae, te, comps.tokenizer, comps.scheduler_config, comps.defaults)

    def validate(self, run: Run, step: int) -> None:
        """Held-out loss (fixed t/eps) and a grid of samples for fixed prompts (columns) and seeds (rows)."""
        cfg = self.cfg
        if run.is_main:
            pipe = self.pipeline(run)
            value = self.heldout_value(pipe.unet, pipe.text_encoder)
            if value is not None:
                run.log({"val/loss": value})
            prompts = [p for _ in cfg.validation_seeds for p in cfg.validation_prompts]
            seeds = [s for s in cfg.validation_seeds for _ in cfg.validation_prompts]
            images = pipe(prompts, seed=seeds, num_inference_steps=cfg.validation_num_inference_steps,
                          guidance_scale=cfg.validation_guidance_scale, sampler=cfg.validation_sampler or None).images
            grid = make_grid(images, cols=len(cfg.validation_prompts))
            save_png_atomic(grid, run.out / "validation" / f"step-{step:07d}.png")
            log_image(run.accelerator, "val/samples", grid, step)
            logger.info("step %d: held-out loss %s, samples in %s", step, value, run.out / "validation")
        self.comps.text_encoder.train(cfg.train_text_encoder)
        run.accelerator.wait_for_everyone()

    def export(self, run: Run) -> dict:
        """output_dir/final: a pipeline folder with the EMA weights (diffusers layout)."""
        pipe = self.pipeline(run)
        final_val = self.heldout_value(pipe.unet, pipe.text_encoder)
        pipe.save_pretrained(run.out / "final", dtype=torch.float16 if self.cfg.export_dtype == "float16" else None)
        return {"heldout_loss_initial": run.state.get("heldout_loss_initial"), "heldout_loss_final_ema": final_val,
                "prediction_type": self.prediction_type,
                "zero_terminal_snr": bool(self.comps.scheduler_config.rescale_betas_zero_snr), "cache_key": self.enc.key,
                **(self.enc.summary() if self.streamed else {})}


def train(cfg: UNetTrainConfig, resume: str | None = None, config_path: str | None = None, overwrite: bool = False) -> dict:
    """Train the U-Net as configured; returns the training summary (also in final/training_summary.json)."""
    return loop.train(UNetTask(cfg), resume=resume, config_path=config_path, overwrite=overwrite)


def log_image(accelerator, tag: str, image, step: int) -> None:
    """A PIL image into TensorBoard, when that tracker is on (the PNG on disk is the record)."""
    import numpy as np

    try:
        accelerator.get_tracker("tensorboard", unwrap=True).add_image(tag, np.asarray(image), step, dataformats="HWC")
    except Exception as e:  # no tensorboard tracker
        logger.debug("image not logged to TensorBoard: %s", e)

EPILOG = """examples:
  # the shipped emoji model (after `latentdiff train vae --config configs/emoji_vae.yaml`)
  latentdiff train unet --config configs/emoji_unet.yaml
  # with a contrastively trained text encoder from `latentdiff train clip`
  latentdiff train unet --config configs/emoji_unet.yaml --set text_encoder_from=runs/clip/text_encoder
  # a quick test-size run on CPU
  latentdiff train unet --config configs/tiny_unet.yaml --output-dir runs/tiny_unet --device cpu
  # continue an interrupted run exactly; change hyper-parameters with --set
  latentdiff train unet --config configs/emoji_unet.yaml --resume latest --set optim.max_train_steps=40000
  # multi-GPU (global batch = batch_size x processes x gradient_accumulation_steps)
  accelerate launch --multi_gpu --num_processes 4 -m latentdiff.train.unet --config configs/emoji_unet.yaml
"""


def main(argv: list[str] | None = None) -> int:
    return run_main(train, UNetTrainConfig, argv, "latentdiff train unet",
                    "Train the text-conditioned U-Net of a latent diffusion model on cached VAE latents and "
                    "text embeddings; exports output_dir/final, a pipeline folder with the EMA weights.", EPILOG)


if __name__ == "__main__":  # `python -m` / `accelerate launch -m latentdiff.train.unet`
    from .common import module_entry

    module_entry(main)
