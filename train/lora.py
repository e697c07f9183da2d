"""Fine-tune a pipeline with LoRA: ``latentdiff train lora``.

LoRA (Hu et al. 2021) freezes the base weights W and trains a low-rank update per adapted layer,
W' = W + (α/r)·B A, here on the U-Net's attention projections (``to_q``, ``to_k``, ``to_v``,
``to_out.0``; optionally the feed-forward and the convolutions) and optionally on the text
encoder's (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) with its own learning rate.

The objective is the U-Net's (see :mod:`latentdiff.train.unet`, whose cache, batch and loss
functions this trainer reuses): x_t = √ᾱ_t z + √(1-ᾱ_t) eps, loss = w(t)·‖ε̂ − target‖² with the
min-SNR-γ weight w(t) (Hang et al. 2023). DreamBooth use (Ruiz et al. 2023): a folder of images
and an instance prompt ("a photo of sks emoji"); with ``prior.weight`` λ > 0, class images
(given, or generated once by the base model from ``prior.class_prompt``) add λ·L_class to the loss
(eq. 2 of the paper, "prior preservation").

Output (``output_dir/final``): ``pytorch_lora_weights.safetensors`` in the diffusers format (loads
in ``TextToImagePipeline.load_lora`` and diffusers' ``load_lora_weights``), ``<name>_kohya.safetensors``
for AUTOMATIC1111/ComfyUI, ``before_after.png`` (base vs. LoRA on the validation prompts),
``training_summary.json`` and ``training_config.yaml``. Checkpoints hold only the LoRA weights, the
optimizer, the LR schedule, EMA and RNG states, and resume exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from latentdiff import lora as L
from latentdiff.config import load_config
from latentdiff.diffusion import sample_noise
from latentdiff.images import make_grid, save_png_atomic

from . import loop
from .common import (
    EMBEDDED_DATASETS,
    DataConfig,
    Device,
    EMAConfig,
    ImageData,
    MixedPrecision,
    OptimConfig,
    StepSampler,
    check_loop_settings,
    load_image_data,
    load_tensors,
    parse_overrides,
    save_tensors_atomic,
)
from .common import build_parser as common_parser
from .loop import Run
from .unet import (
    Components,
    DenoiserStep,
    EncodedData,
    HeldOutBatch,
    UNetTask,
    batch_latents,
    caption_rows,
    caption_table,
    diffusion_loss,
    heldout_loss,
    log_image,
    make_heldout_batch,
    prepare_data,
    tokenize,
    with_captions_encoded_by,
)

logger = logging.getLogger("latentdiff.train")

UNET_TARGET_GROUPS = {"attention": L.UNET_ATTENTION_TARGETS, "ff": L.UNET_FF_TARGETS, "conv": L.UNET_CONV_TARGETS}
TEXT_ENCODER_TARGET_GROUPS = {"attention": L.TEXT_ENCODER_ATTENTION_TARGETS, "mlp": L.TEXT_ENCODER_MLP_TARGETS}


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass
class LoraDataConfig(DataConfig):
    """The shared data section, plus DreamBooth's instance prompt and a caption template."""

    validation_split: str = ""        # held-out split for the validation loss ("" = none; "test" for emoji sources)
    instance_prompt: str = ""         # caption of every image that has none (DreamBooth: "a photo of sks emoji")
    caption_template: str = "{caption}"  # applied to every caption, e.g. "{caption}, symbola line art"

    def validate(self):
        super().validate()
        if "{caption}" not in self.caption_template:
            raise ValueError(f"data.caption_template {self.caption_template!r} must contain {{caption}}")


@dataclass
class LoraNetworkConfig:
    rank: int = 4                     # r: rows of A / columns of B
    alpha: float | None = None        # α; the update is scaled by α/r (None = r, i.e. scale 1: diffusers' default)
    dropout: float = 0.0              # dropout on the LoRA branch input
    unet_targets: list[Literal["attention", "ff", "conv"]] = field(default_factory=lambda: ["attention"])
    text_encoder: bool = False        # also train a text-encoder LoRA
    text_encoder_targets: list[Literal["attention", "mlp"]] = field(default_factory=lambda: ["attention"])
    text_encoder_learning_rate: float = 0.0  # 0 = optim.learning_rate

    def validate(self):
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"lora.rank must be a positive integer (e.g. 4, 8, 16), got {self.rank}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0 (or null for alpha = rank), got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.unet_targets:
            raise ValueError("lora.unet_targets is empty; choose from attention, ff, conv")
        if self.text_encoder_learning_rate < 0:
            raise ValueError("lora.text_encoder_learning_rate must be >= 0 (0 = optim.learning_rate)")


@dataclass
class PriorConfig:
    """DreamBooth prior preservation (Ruiz et al. 2023, eq. 2): + λ·L on class images."""

    weight: float = 0.0               # λ; 0 = off
    class_prompt: str = ""            # caption of the class images, e.g. "emoji"; with class_data, a template
                                      # with "{caption}" keeps each class image's own caption (kohya-style
                                      # regularisation images: the base model's own data, its own captions)
    class_data: str = ""              # a folder/source of class images; "" = generate them with the base model
    num_class_images: int = 50        # how many to generate when class_data is ""
    class_sampler_steps: int = 20

    def validate(self):
        if self.weight < 0:
            raise ValueError(f"prior.weight must be >= 0 (0 = off), got {self.weight}")
        if self.weight > 0 and not self.class_prompt:
            raise ValueError("prior.weight > 0 needs prior.class_prompt (e.g. 'emoji'), the caption of the class images")
        if self.num_class_images < 1:
            raise ValueError("prior.num_class_images must be >= 1")
        if "{caption}" in self.class_prompt and not self.class_data:
            raise ValueError("prior.class_prompt with '{caption}' needs prior.class_data (images with captions); "
                             "generated class images have no caption of their own")


@dataclass
class LoraTrainConfig:
    base: str = "emoji"               # pipeline to adapt: built-in name, diffusers folder or Hub repo id
    revision: str = ""                # Hub revision of base
    name: str = "lora"                # adapter name: file stem of the kohya export
    output_dir: str = "runs/lora"
    seed: int = 0
    device: Device = "auto"
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False
    cpu_threads: int = 0              # torch CPU threads (0 = torch's default); 1 is fastest on a loaded machine
    lora: LoraNetworkConfig = field(default_factory=LoraNetworkConfig)
    data: LoraDataConfig = field(default_factory=lambda: LoraDataConfig(source=""))
    prior: PriorConfig = field(default_factory=PriorConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(batch_size=4, learning_rate=1e-4,
                                                                   max_train_steps=500, adam_weight_decay=0.0))
    ema: EMAConfig = field(default_factory=EMAConfig)  # over the LoRA weights; decay 0 = off
    min_snr_gamma: float = 5.0
    offset_noise: float = 0.0
    cache: bool = True                # cache VAE posteriors and (frozen) text embeddings
    cache_dir: str = ""               # "" = output_dir/cache
    checkpointing_steps: int = 250
    checkpoints_total_limit: int = 2
    validation_steps: int = 0         # 0 = only the final before/after grid
    validation_prompts: list[str] = field(default_factory=lambda: [""])  # "" = the instance prompt (or 1st caption)
    validation_seeds: list[int] = field(default_factory=lambda: [0, 1])
    validation_num_inference_steps: int = 20
    validation_guidance_scale: float = 0.0  # 0 = the model's default
    validation_sampler: str = ""      # "" = the model's default
    log_every: int = 10

    @property
    def train_text_encoder(self) -> bool:
        return self.lora.text_encoder

    def validate(self):
        check_loop_settings(self)
        if not self.base:
            raise ValueError("base is empty: set the pipeline to fine-tune ('emoji', a diffusers folder or a repo id)")
        if not self.data.source:
            raise ValueError("data.source is empty: pass --data FOLDER (images, with captions or an --instance-prompt), "
                             "emoji_symbola, a .parquet file or a datasets name")
        if self.min_snr_gamma < 0 or self.offset_noise < 0:
            raise ValueError("min_snr_gamma and offset_noise must be >= 0 (0 = off)")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def load_lora_data(d: LoraDataConfig, split: str, resolution: int) -> ImageData:
    """A split in memory with the caption template applied. Embedded emoji sources read their
    parquet directly; anything else goes through ``latentdiff.data.build_dataset`` (its bad-data
    handling and report), with ``instance_prompt`` for images without captions."""
    if d.source in EMBEDDED_DATASETS and not d.instance_prompt:
        data = load_image_data(d, split, resolution)
    else:
        from latentdiff.data import build_dataset

        source = "emoji:symbola" if d.source == "emoji_symbola" else d.source
        ds = build_dataset(source, split=split or None, image_column=d.image_column, caption_column=d.caption_column,
                           resolution=resolution, center_crop=d.center_crop, random_flip=False, caption_dropout=0.0,
                           instance_prompt=d.instance_prompt or None)
        report = getattr(ds, "report", None)
        if report is not None and hasattr(report, "summary"):
            logger.info("data %s (%s):\n%s", d.source, split, report.summary())
        items = [ds[i] for i in range(len(ds))]
        images = torch.stack([((it["pixel_values"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for it in items])
        captions = [it["caption"] for it in items]
        if d.max_samples and split == d.split and len(captions) > d.max_samples:
            keep = np.sort(np.random.default_rng(0).choice(len(captions), size=d.max_samples, replace=False))
            images, captions = images[torch.from_numpy(keep)], [captions[i] for i in keep]
        data = ImageData(images, captions, d.source, split)
    data.captions = [d.caption_template.replace("{caption}", c) if c else c for c in data.captions]
    return data


@torch.no_grad()
def class_images(cfg: LoraTrainConfig, pipe, out: Path, resolution: int) -> ImageData:
    """Prior-preservation images: ``prior.class_data``, or ``num_class_images`` generated once by the
    base model from ``prior.class_prompt`` (kept in output_dir/class_images/, reused on resume)."""
    from PIL import Image

    p = cfg.prior
    if p.class_data:
        own_captions = "{caption}" in p.class_prompt
        d = LoraDataConfig(source=p.class_data, split="train", instance_prompt="" if own_captions else p.class_prompt,
                           center_crop=cfg.data.center_crop, caption_template=p.class_prompt if own_captions
                           else "{caption}")
        try:
            data = load_lora_data(d, "train", resolution)
        except ValueError as e:
            if not own_captions or "no captions" not in str(e):
                raise
            data = ImageData(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), [], p.class_data, "class")
        if own_captions:
            if not any(data.captions):
                raise ValueError(f"prior.class_data {p.class_data!r} has no captions for prior.class_prompt "
                                 f"{p.class_prompt!r}; add captions to those images or give a fixed class prompt "
                                 "instead (e.g. prior.class_prompt=emoji)")
            return ImageData(data.images, data.captions, p.class_data, "class")
        return ImageData(data.images, [p.class_prompt] * len(data), p.class_data, "class")
    folder = out / "class_images"
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    for i in tqdm(range(len(files), p.num_class_images), desc="class images", leave=False):
        image = pipe(p.class_prompt, seed=cfg.seed * 100_003 + i, num_inference_steps=p.class_sampler_steps).images[0]
        save_png_atomic(image, folder / f"{i:05d}.png")
    files = sorted(folder.glob("*.png"))[: p.num_class_images]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((resolution, resolution)), dtype=np.uint8) for f in files]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageData(images, [p.class_prompt] * len(files), "generated", "class")


def encode(data: ImageData, pipe, cfg: LoraTrainConfig, accelerator, cache_dir: Path) -> EncodedData:
    """Cached VAE posteriors (and frozen text embeddings); with a text-encoder LoRA also the token
    ids, since the embeddings then change every step."""
    view = types.SimpleNamespace(cache=cfg.cache, train_text_encoder=False, data=cfg.data)
    enc = prepare_data(data, pipe, view, accelerator, cache_dir, flips=cfg.data.random_flip)
    if enc.token_ids is None:
        table, _ = caption_table(data.captions)
        enc.token_ids = tokenize(pipe.tokenizer, table).to(accelerator.device)
    return enc


def heldout_batch(enc: EncodedData, pipe, scaling_factor: float, seed: int, text_encoder) -> HeldOutBatch:
    """The U-Net task's fixed held-out batch, its captions encoded by the current (LoRA) text encoder:
    cached embeddings are the base encoder's."""
    batch = make_heldout_batch(enc, scaling_factor, len(pipe.alphas_cumprod), seed, pipe.vae, text_encoder)
    return with_captions_encoded_by(batch, enc, text_encoder)


def digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names and bytes: the base weights' fingerprint (must not change in training)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


class LoraTask(UNetTask):
    """The U-Net task with peft LoRA adapters as the only trainable weights (U-Net, optionally the
    text encoder), an optional prior-preservation term, and a LoRA file as the export."""

    name = "lora"
    exports = ("final",)

    def build(self) -> None:
        from latentdiff.pipelines import TextToImagePipeline

        cfg, lc = self.cfg, self.cfg.lora
        self.pipe = pipe = TextToImagePipeline.from_pretrained(cfg.base, revision=cfg.revision or None)
        resolution = pipe.default_size
        if cfg.data.resolution and cfg.data.resolution != resolution:
            raise ValueError(f"data.resolution {cfg.data.resolution} differs from the base model's {resolution}; "
                             "set it to 0 (the model's)")
        self.comps = Components(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler_config,
                                pipe.defaults, resolution)
        self.train_data = load_lora_data(cfg.data, cfg.data.split, resolution)
        self.val_data = (load_lora_data(cfg.data, cfg.data.validation_split, resolution)
                         if cfg.data.validation_split else None)
        unet_targets = [s for g in lc.unet_targets for s in UNET_TARGET_GROUPS[g]]
        te_targets = [s for g in lc.text_encoder_targets for s in TEXT_ENCODER_TARGET_GROUPS[g]]
        self.unet_modules = L.target_module_names(pipe.unet, unet_targets)
        self.te_modules = L.target_module_names(pipe.text_encoder, te_targets) if lc.text_encoder else []
        self.num_samples = len(self.train_data)

    def setup(self, run: Run) -> torch.nn.Module:
        cfg, lc, pipe, device = self.cfg, self.cfg.lora, self.pipe, run.device
        sched = pipe.scheduler_config
        self.prediction_type, self.T = sched.prediction_type, sched.num_train_timesteps
        self.alphas_cumprod = pipe.alphas_cumprod.to(device)                          # float64 ᾱ_t
        self.scaling_factor = float(pipe.vae.config.scaling_factor)
        pipe.to(device)
        # caches, before LoRA is injected: they depend on the base weights only
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run.out / "cache"
        self.enc = encode(self.train_data, pipe, cfg, run.accelerator, cache_dir)
        self.val_enc = encode(self.val_data, pipe, cfg, run.accelerator, cache_dir) if self.val_data is not None else None
        self.class_enc = None
        if cfg.prior.weight > 0:
            self.class_enc = encode(class_images(cfg, pipe, run.out, self.comps.resolution), pipe, cfg,
                                    run.accelerator, cache_dir)
        self.latent_shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        self.base_digest = {"unet": digest(L.base_state_dict(pipe.unet)),
                            "text_encoder": digest(L.base_state_dict(pipe.text_encoder))}
        self.before_images = _sample(cfg, pipe, self.train_data) if run.is_main and cfg.validation_prompts else None

        # LoRA layers: the only trainable parameters
        unet, te = pipe.unet, pipe.text_encoder
        self.unet_params = L.add_lora(unet, self.unet_modules, rank=lc.rank, alpha=lc.alpha, dropout=lc.dropout,
                                      seed=cfg.seed)
        self.te_params = (L.add_lora(te, self.te_modules, rank=lc.rank, alpha=lc.alpha, dropout=lc.dropout,
                                     seed=cfg.seed + 1) if lc.text_encoder else [])
        frozen = [n for m in (unet, te, pipe.vae) for n, p in m.named_parameters()
                  if p.requires_grad and ".lora_" not in n]
        assert not frozen, f"base parameters left trainable: {frozen[:5]}"
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        te.train(lc.text_encoder)
        logger.info("LoRA r=%d α=%s on %d U-Net and %d text-encoder modules: %d trainable parameters; %d images",
                    lc.rank, lc.alpha or lc.rank, len(self.unet_modules), len(self.te_modules),
                    sum(p.numel() for p in self.unet_params + self.te_params), len(self.train_data))
        self.encodes_text = lc.text_encoder or self.enc.text_embeddings is None
        _register_lora_checkpoint_hooks(run.accelerator)  # checkpoints hold the LoRA weights only
        return DenoiserStep(unet, te if self.encodes_text else None)

    def parameters(self, model: torch.nn.Module) -> list:
        groups = [{"params": self.unet_params, "lr": self.cfg.optim.learning_rate}]
        if self.te_params:
            groups.append({"params": self.te_params,
                           "lr": self.cfg.lora.text_encoder_learning_rate or self.cfg.optim.learning_rate})
        return groups

    def ema_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return self.unet_params + self.te_params  # the adapters only (an SD-size base would double the memory)

    def make_sampler(self, run: Run):
        self.class_sampler = (StepSampler(len(self.class_enc.caption_index), run.global_batch, self.cfg.seed + 1,
                                          run.device) if self.class_enc is not None else None)
        return super().make_sampler(run)

    def start(self, run: Run) -> None:
        if run.is_main:
            run.state["heldout_loss_initial"] = self.heldout_value(run)

    def draw(self, run: Run, step: int, g: torch.Generator, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        b = super().draw(run, step, g, idx)
        if self.class_enc is not None:  # prior preservation: class images with their own t, noise, posterior noise
            n = len(idx)
            b["c_idx"] = self.class_sampler.indices(step)
            b["c_t"] = torch.randint(0, self.T, (n,), generator=g, device=run.device)
            b["c_eps"] = sample_noise((n, *self.latent_shape), generator=g, offset_noise=self.cfg.offset_noise,
                                      device=run.device)
            b["c_post"] = torch.randn((n, *self.latent_shape), generator=g, device=run.device)
        return b

    def term(self, model, enc: EncodedData, idx, flip, drop, post, t, eps) -> torch.Tensor:
        z0 = batch_latents(enc, self.pipe.vae, idx, flip, post, self.scaling_factor)
        rows = caption_rows(enc, idx, drop)
        emb, tokens = (None, enc.token_ids[rows]) if self.encodes_text else (enc.text_embeddings[rows], None)
        return diffusion_loss(model, z0, emb, t, eps, self.alphas_cumprod, self.prediction_type,
                              self.cfg.min_snr_gamma, token_ids=tokens)

    def loss(self, run: Run, model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.term(model, self.enc, b["idx"], b["flip"], b["drop"], b["post"], b["t"], b["eps"])
        if self.class_enc is not None:  # + λ·L(class images, class prompt) (Ruiz et al. 2023, eq. 2)
            no = torch.zeros_like(b["drop"])
            loss = loss + self.cfg.prior.weight * self.term(model, self.class_enc, b["c_idx"], no, no, b["c_post"],
                                                            b["c_t"], b["c_eps"])
        return loss

    def heldout_value(self, run: Run) -> float | None:
        if self.val_enc is None:
            return None
        step_module = run.unwrapped()
        batch = heldout_batch(self.val_enc, self.pipe, self.scaling_factor, self.cfg.seed, self.pipe.text_encoder)
        return heldout_loss(step_module.unet, batch, self.alphas_cumprod, self.prediction_type, self.cfg.min_snr_gamma)

    def validate(self, run: Run, step: int) -> None:
        if run.is_main:
            with _ema_weights(run.ema, self.ema_parameters(None)):
                value = self.heldout_value(run)
                if value is not None:
                    run.log({"val/loss": value})
                if self.cfg.validation_prompts:
                    with _lora_pipe(self.pipe, self.ema_parameters(None)) as lp:
                        grid = make_grid(_sample(self.cfg, lp, self.train_data), cols=len(self.cfg.validation_prompts))
                    save_png_atomic(grid, run.out / "validation" / f"step-{step:07d}.png")
                    log_image(run.accelerator, "val/samples", grid, step)
            self.pipe.text_encoder.train(self.cfg.lora.text_encoder)
        run.accelerator.wait_for_everyone()

    def export(self, run: Run) -> dict:
        """final/: the LoRA (diffusers + kohya), a before/after grid."""
        cfg, lc, pipe = self.cfg, self.cfg.lora, self.pipe
        u, te = pipe.unet, pipe.text_encoder
        unchanged = {"unet": digest(L.base_state_dict(u)) == self.base_digest["unet"],
                     "text_encoder": digest(L.base_state_dict(te)) == self.base_digest["text_encoder"]}
        assert all(unchanged.values()), f"base weights changed during LoRA training: {unchanged}"
        with _ema_weights(run.ema, self.ema_parameters(None)):
            final_val = self.heldout_value(run)
            unet_state = L.get_lora_state(u)
            te_state = L.get_lora_state(te) if lc.text_encoder else None
            after_images = None
            if cfg.validation_prompts:
                with _lora_pipe(pipe, self.ema_parameters(None)) as lp:
                    after_images = _sample(cfg, lp, self.train_data)
        final = run.out / "final"
        metadata = {
            "base_model": cfg.base, "base_revision": cfg.revision or None, "rank": lc.rank,
            "alpha": lc.alpha if lc.alpha is not None else lc.rank, "dropout": lc.dropout,
            "unet_targets": lc.unet_targets, "text_encoder_targets": lc.text_encoder_targets if lc.text_encoder else [],
            "instance_prompt": cfg.data.instance_prompt, "caption_template": cfg.data.caption_template,
            "prompts": _example_prompts(self.train_data), "validation_prompts": cfg.validation_prompts,
            "steps": run.step, "learning_rate": cfg.optim.learning_rate, "batch_size": run.global_batch,
            "data": cfg.data.source, "num_images": len(self.train_data), "prior_weight": cfg.prior.weight,
            "class_prompt": cfg.prior.class_prompt, "trainer": "latentdiff train lora",
        }
        path = L.save_lora(final, unet_state, te_state, metadata=metadata, dropout=lc.dropout)
        kohya = L.save_kohya(final / f"{cfg.name}_kohya.safetensors", L.read_lora(path).state, metadata=metadata,
                             name=cfg.name)
        if self.before_images is not None:
            n = len(cfg.validation_prompts)
            save_png_atomic(make_grid(self.before_images + after_images, cols=n * len(cfg.validation_seeds)),
                            final / "before_after.png")
        logger.info("LoRA saved to %s (kohya: %s); held-out loss %s -> %s", path, kohya,
                    run.state.get("heldout_loss_initial"), final_val)
        return {"heldout_loss_initial": run.state.get("heldout_loss_initial"), "heldout_loss_final": final_val,
                "trainable_parameters": sum(p.numel() for p in self.ema_parameters(None)),
                "lora_modules": len(unet_state) // 3 + (len(te_state) // 3 if te_state else 0),
                "base_weights_unchanged": all(unchanged.values()), "num_images": len(self.train_data),
                "cache_key": self.enc.key, "lora": str(path), "kohya": str(kohya)}


def train(cfg: LoraTrainConfig, resume: str | None = None, config_path: str | None = None, overwrite: bool = False) -> dict:
    """Train a LoRA as configured; returns the summary (also in final/training_summary.json)."""
    return loop.train(LoraTask(cfg), resume=resume, config_path=config_path, overwrite=overwrite)


class _ema_weights:
    """Context: the LoRA parameters hold their EMA values inside, the trained ones again after."""

    def __init__(self, ema, params):
        self.ema, self.params = ema, params

    def __enter__(self):
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)

    def __exit__(self, *exc):
        if self.ema is not None:
            self.ema.restore(self.params)


@contextlib.contextmanager
def _lora_pipe(pipe, params):
    """A pipeline around the training modules themselves (no copies: an SD-size U-Net is GBs). The
    pipeline puts its modules in eval mode without gradients; the LoRA parameters get their
    ``requires_grad`` back afterwards (the caller restores train mode)."""
    from latentdiff.pipelines import TextToImagePipeline

    try:
        yield TextToImagePipeline(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler_config,
                                  pipe.defaults)
    finally:
        for p in params:
            p.requires_grad_(True)


@torch.no_grad()
def _sample(cfg: LoraTrainConfig, pipe, data: ImageData) -> list:
    """Validation images: prompts (columns) × seeds (rows); "" stands for the instance prompt."""
    prompts = [p or cfg.data.instance_prompt or data.captions[0] for p in cfg.validation_prompts]
    prompts = [p for _ in cfg.validation_seeds for p in prompts]
    seeds = [s for s in cfg.validation_seeds for _ in cfg.validation_prompts]
    return pipe(prompts, seed=seeds, num_inference_steps=cfg.validation_num_inference_steps,
                guidance_scale=cfg.validation_guidance_scale or None, sampler=cfg.validation_sampler or None).images


def _example_prompts(data: ImageData, n: int = 20) -> list[str]:
    unique = sorted(set(data.captions) - {""})
    return unique[:n]


def _register_lora_checkpoint_hooks(accelerator) -> None:
    """Checkpoints hold only the LoRA weights (not the frozen base): accelerate's model files are
    replaced by ``lora_<i>.safetensors`` with each prepared model's LoRA state."""

    def save_hook(models, weights, output_dir):
        for i, model in enumerate(models):
            state = L.get_lora_state(accelerator.unwrap_model(model))
            if accelerator.is_main_process:
                save_tensors_atomic(state, Path(output_dir) / f"lora_{i}.safetensors")
        weights.clear()  # nothing else of the models is saved

    def load_hook(models, input_dir):
        for i, model in enumerate(models):
            path = Path(input_dir) / f"lora_{i}.safetensors"
            L.set_lora_state(accelerator.unwrap_model(model), load_tensors(path, "cpu"))
        models.clear()  # accelerate loads nothing else into them

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


EPILOG = """examples:
  # DreamBooth-style: a folder of images of one subject and an instance prompt
  latentdiff train lora --base emoji --data my_images/ --instance-prompt "a sks emoji" --rank 4 --alpha 4
  # a style from a captioned dataset, with a caption template (configs/emoji_lora_symbola.yaml)
  latentdiff train lora --config configs/emoji_lora_symbola.yaml
  # text-encoder LoRA too, with its own learning rate; prior preservation with generated class images
  latentdiff train lora --base emoji --data my_images/ --instance-prompt "a sks emoji" \\
      --train-text-encoder --text-encoder-lr 5e-5 --set prior.weight=1.0 --set prior.class_prompt=emoji
  # a quick test-size run; continue an interrupted run exactly
  latentdiff train lora --config configs/tiny_lora.yaml --set base=runs/tiny_unet/final --device cpu
  latentdiff train lora --config configs/emoji_lora_symbola.yaml --resume latest
  # use it
  latentdiff generate "red apple, symbola line art" --lora runs/lora_symbola/final:1.0

Any config key can be set with --set KEY=VALUE (dotted for sections: --set lora.unet_targets=[attention,ff]).
Outputs in OUTPUT_DIR/final: pytorch_lora_weights.safetensors (diffusers), NAME_kohya.safetensors
(AUTOMATIC1111 / ComfyUI), before_after.png, training_summary.json.
"""


DESCRIPTION = ("Fine-tune a text-to-image pipeline with LoRA (peft) on your own images; the base weights stay "
               "frozen. Writes a diffusers-format LoRA and its kohya (A1111/ComfyUI) export.")


def build_parser(prog: str = "latentdiff train lora", description: str = DESCRIPTION, epilog: str = EPILOG):
    p = common_parser(prog, description, epilog, config_required=False)
    p.add_argument("--base", help="pipeline to adapt: built-in name (emoji), diffusers folder or Hub repo id")
    p.add_argument("--data", help="images: a folder (metadata.jsonl / .txt captions / bare images), emoji, "
                                  "emoji_symbola, a .parquet file or a datasets name")
    p.add_argument("--instance-prompt", help="caption of every image without one (DreamBooth), e.g. 'a sks emoji'")
    p.add_argument("--caption-template", help="applied to every caption, e.g. '{caption}, symbola line art'")
    p.add_argument("--rank", type=int, help="LoRA rank r (default 4)")
    p.add_argument("--alpha", type=float, help="LoRA alpha α; the update is scaled by α/r (default: r)")
    p.add_argument("--dropout", type=float, help="LoRA dropout (default 0)")
    p.add_argument("--train-text-encoder", action="store_true", help="also train a text-encoder LoRA")
    p.add_argument("--text-encoder-lr", type=float, help="learning rate of the text-encoder LoRA (default: --lr)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, help="batch size per process (default 4)")
    p.add_argument("--name", help="adapter name: stem of the kohya export (default lora)")
    p.add_argument("--seed", type=int)
    return p


FLAGS = {"base": "base", "data": "data.source", "instance_prompt": "data.instance_prompt",
         "caption_template": "data.caption_template", "rank": "lora.rank", "alpha": "lora.alpha",
         "dropout": "lora.dropout", "text_encoder_lr": "lora.text_encoder_learning_rate", "lr": "optim.learning_rate",
         "batch_size": "optim.batch_size", "max_train_steps": "optim.max_train_steps", "name": "name",
         "output_dir": "output_dir", "device": "device", "seed": "seed", "num_threads": "cpu_threads"}


def config_from_args(args, config_cls=LoraTrainConfig) -> LoraTrainConfig:
    """Config file (or the defaults), then ``--set``, then the named flags; strict and typed."""
    overrides = parse_overrides(args.overrides)
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.train_text_encoder:
        overrides["lora.text_encoder"] = True
    if not args.config and "data.source" not in overrides and not getattr(config_cls, "data_has_default", False):
        raise ValueError("no training data: pass --data FOLDER (or emoji_symbola, a .parquet file, a datasets name) "
                         "or --config FILE.yaml")
    return load_config(args.config, config_cls, overrides)  # no --config: the defaults, as strictly


def main(argv: list[str] | None = None, *, config_cls=LoraTrainConfig, train_fn=None, prog: str = "latentdiff train lora",
         description: str = DESCRIPTION, epilog: str = EPILOG) -> int:
    """``latentdiff train lora``; ``train lcm`` is the same command line with its own config and task."""
    from latentdiff.progress import disable_progress_bars

    args = build_parser(prog, description, epilog).parse_args(argv)
    if args.no_progress:
        disable_progress_bars()
    cfg = config_from_args(args, config_cls)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (train_fn or train)(cfg, resume=args.resume, config_path=args.config, overwrite=args.overwrite_output_dir)
    return 0


if __name__ == "__main__":  # `python -m` / `accelerate launch -m latentdiff.train.lora`
    from .common import module_entry

    module_entry(main)
