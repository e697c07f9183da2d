"""Textual inversion: ``latentdiff train embedding`` (Gal et al. 2022, "An Image is Worth One Word").

A new token (``<my-emoji>``, or several vectors ``<my-emoji>``, ``<my-emoji>_1``, …) is added to the
tokenizer, and only its rows of the text encoder's token-embedding table train; the U-Net, the VAE
and every other weight stay frozen. The objective is the U-Net's (see :mod:`latentdiff.train.unet`,
this task is :class:`~latentdiff.train.unet.UNetTask` with another set of trainable weights):

    v* = argmin_v  E_{z, c, ε, t} ‖ε − ε_θ(z_t, t, τ_θ(c(v)))‖²      (eq. 2 of the paper)

with c(v) a caption such as "{token}" or "a {token} emoji" in which the token's embedding is v.

The new rows are a separate :class:`torch.nn.Parameter` (:class:`AddedTokens` swaps it in for the new
token ids), so AdamW's weight decay and the optimizer state touch nothing else, and a checkpoint holds
only those vectors. Output (``output_dir/final``): ``learned_embeds.safetensors`` (diffusers'
``load_textual_inversion``), ``<name>.safetensors`` in the A1111/ComfyUI ``emb_params`` layout (an
``embeddings/`` folder entry), ``before_after.png``, ``training_summary.json``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latentdiff.images import make_grid, save_png_atomic

from . import loop
from .common import (
    Device,
    EMAConfig,
    MixedPrecision,
    OptimConfig,
    check_loop_settings,
    load_tensors,
    run_main,
    save_tensors_atomic,
)
from .loop import Run
from .lora import LoraDataConfig, _ema_weights, encode, load_lora_data
from .unet import Components, DenoiserStep, UNetTask, batch_latents, caption_rows, diffusion_loss, log_image

logger = logging.getLogger("latentdiff.train")
TOKEN_RE = re.compile(r"^\S+$")


@dataclass
class EmbeddingDataConfig(LoraDataConfig):
    """LoRA's data section; an image without a caption is captioned with the token."""

    instance_prompt: str = "{token}"


@dataclass
class EmbeddingTrainConfig:
    base: str = "emoji"                # pipeline to teach: built-in name, diffusers folder or Hub repo id
    revision: str = ""
    token: str = "<my-token>"          # the new word; "{token}" in captions and prompts stands for it
    init_word: str = ""                # start from this word's embedding (e.g. "face"); "" = the mean embedding
    num_vectors: int = 1               # vectors per token (token, token_1, …)
    output_dir: str = "runs/embedding"
    seed: int = 0
    device: Device = "auto"
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False
    cpu_threads: int = 0
    data: EmbeddingDataConfig = field(default_factory=lambda: EmbeddingDataConfig(source=""))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(batch_size=4, learning_rate=1e-3,
                                                                   max_train_steps=500, adam_weight_decay=0.0))
    ema: EMAConfig = field(default_factory=EMAConfig)
    min_snr_gamma: float = 5.0
    offset_noise: float = 0.0
    cache: bool = True                 # cache VAE posteriors (the captions are encoded every step)
    cache_dir: str = ""
    checkpointing_steps: int = 100
    checkpoints_total_limit: int = 2
    validation_steps: int = 0
    validation_prompts: list[str] = field(default_factory=lambda: ["{token}"])
    validation_seeds: list[int] = field(default_factory=lambda: [0, 1])
    validation_num_inference_steps: int = 20
    validation_guidance_scale: float = 0.0  # 0 = the model's default
    validation_sampler: str = ""
    log_every: int = 10

    def validate(self):
        check_loop_settings(self)
        if not self.base:
            raise ValueError("base is empty: set the pipeline to teach ('emoji', a diffusers folder or a repo id)")
        if not self.data.source:
            raise ValueError("data.source is empty: pass --data FOLDER (a few images of the new concept)")
        if not TOKEN_RE.match(self.token) or "{" in self.token:
            raise ValueError(f"token {self.token!r} must be one word without spaces or braces, e.g. <my-emoji>")
        if not isinstance(self.num_vectors, int) or self.num_vectors < 1:
            raise ValueError(f"num_vectors must be an integer >= 1, got {self.num_vectors!r}")
        if "{token}" not in self.data.instance_prompt + self.data.caption_template:
            raise ValueError("neither data.instance_prompt nor data.caption_template contains {token}: the captions "
                             "would never show the new word (e.g. --instance-prompt '{token}')")

    def tokens(self) -> list[str]:
        return [self.token] + [f"{self.token}_{i}" for i in range(1, self.num_vectors)]

    def fill(self, text: str, expand: bool = False) -> str:
        """``{token}`` → the token; ``expand``: all its vectors' words, as a caption is tokenised (the
        pipeline expands a multi-vector token in prompts itself, as diffusers does)."""
        return text.replace("{token}", " ".join(self.tokens()) if expand else self.token)


class AddedTokens(torch.nn.Module):
    """The token-embedding table with its last ``n`` rows taken from a trainable parameter: the
    frozen table answers every id below ``first``, ``vectors`` answers the new ones."""

    def __init__(self, table: torch.nn.Embedding, first: int, vectors: torch.Tensor):
        super().__init__()
        self.table = table.requires_grad_(False)
        self.first = first
        self.vectors = torch.nn.Parameter(vectors.clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        new = ids >= self.first
        out = self.table(ids)
        if new.any():
            out = torch.where(new[..., None], self.vectors[(ids - self.first).clamp(min=0)].to(out.dtype), out)
        return out

    def write(self) -> torch.nn.Embedding:
        """The plain table with the current vectors written into its rows (for export and sampling)."""
        with torch.no_grad():
            self.table.weight[self.first:] = self.vectors.to(self.table.weight.dtype)
        return self.table


def add_tokens(tokenizer, text_encoder, cfg: EmbeddingTrainConfig) -> tuple[int, torch.Tensor]:
    """Register the new tokens (resizing the table) and return (first new id, initial vectors (n, D))."""
    tokens = cfg.tokens()
    clash = [t for t in tokens if t in tokenizer.get_vocab()]
    if clash:
        raise ValueError(f"token {clash[0]!r} is already a word of this tokenizer; choose a new one (e.g. <{clash[0]}>)")
    table = text_encoder.get_input_embeddings().weight.detach()
    if cfg.init_word:
        ids = tokenizer(cfg.init_word, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"init_word {cfg.init_word!r} has no tokens")
        init = table[[ids[i % len(ids)] for i in range(len(tokens))]].clone()
    else:
        init = table.mean(0, keepdim=True).repeat(len(tokens), 1)
    first = len(tokenizer)
    tokenizer.add_tokens(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[first:] = init
    return first, init


class EmbeddingTask(UNetTask):
    """The U-Net task whose only trainable weights are the new token's vectors."""

    name = "embedding"
    exports = ("final",)

    def build(self) -> None:
        from latentdiff.pipelines import TextToImagePipeline

        cfg = self.cfg
        self.pipe = pipe = TextToImagePipeline.from_pretrained(cfg.base, revision=cfg.revision or None)
        self.first, self.init_vectors = add_tokens(pipe.tokenizer, pipe.text_encoder, cfg)
        self.comps = Components(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler_config,
                                pipe.defaults, pipe.default_size)
        d = cfg.data
        d.instance_prompt, d.caption_template = cfg.fill(d.instance_prompt, True), cfg.fill(d.caption_template, True)
        self.train_data = load_lora_data(d, d.split, pipe.default_size)
        if not any(cfg.token in c for c in self.train_data.captions):
            raise ValueError(f"no caption of {d.source} contains {cfg.token}: images with their own captions need "
                             "data.caption_template with {token}, e.g. '{token}, {caption}'")
        self.val_data = None
        self.num_samples = len(self.train_data)

    def setup(self, run: Run) -> torch.nn.Module:
        cfg, pipe, device = self.cfg, self.pipe, run.device
        sched = pipe.scheduler_config
        self.prediction_type, self.T = sched.prediction_type, sched.num_train_timesteps
        self.alphas_cumprod = pipe.alphas_cumprod.to(device)
        self.scaling_factor = float(pipe.vae.config.scaling_factor)
        pipe.to(device)
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run.out / "cache"
        self.enc = encode(self.train_data, pipe, cfg, run.accelerator, cache_dir)   # latents + token ids
        self.heldout = None
        self.latent_shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        self.before_images = self.sample(cfg.seed) if run.is_main and cfg.validation_prompts else None
        for m in (pipe.unet, pipe.vae, pipe.text_encoder):
            m.requires_grad_(False)
        if cfg.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        te = pipe.text_encoder
        self.added = AddedTokens(te.get_input_embeddings(), self.first, self.init_vectors.to(device))
        te.set_input_embeddings(self.added)
        te.train()  # (CLIP has no dropout: train mode changes nothing but is honest)
        register_vector_checkpoints(run.accelerator, self.added)
        logger.info("textual inversion of %s (%d vector(s), init %r) on %d images", cfg.token, cfg.num_vectors,
                    cfg.init_word or "mean embedding", len(self.train_data))
        return DenoiserStep(pipe.unet, te)

    def parameters(self, model: torch.nn.Module) -> list:
        return [self.added.vectors]

    def ema_parameters(self, model) -> list[torch.nn.Parameter]:
        return [self.added.vectors]

    def start(self, run: Run) -> None:
        pass

    def loss(self, run: Run, model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        z0 = batch_latents(self.enc, self.pipe.vae, b["idx"], b["flip"], b["post"], self.scaling_factor)
        tokens = self.enc.token_ids[caption_rows(self.enc, b["idx"], b["drop"])]
        return diffusion_loss(model, z0, None, b["t"], b["eps"], self.alphas_cumprod, self.prediction_type,
                              self.cfg.min_snr_gamma, token_ids=tokens)

    def sample(self, seed_offset: int = 0) -> list:
        """Validation images: prompts (columns) × seeds (rows), with the table as it is now."""
        cfg = self.cfg
        prompts = [cfg.fill(p) for _ in cfg.validation_seeds for p in cfg.validation_prompts]
        seeds = [s for s in cfg.validation_seeds for _ in cfg.validation_prompts]
        te = self.pipe.text_encoder
        swapped = isinstance(te.get_input_embeddings(), AddedTokens)
        if swapped:
            te.set_input_embeddings(self.added.write())
        try:
            return self.pipe(prompts, seed=seeds, num_inference_steps=cfg.validation_num_inference_steps,
                             guidance_scale=cfg.validation_guidance_scale or None,
                             sampler=cfg.validation_sampler or None).images
        finally:
            if swapped:
                te.set_input_embeddings(self.added)
                self.added.vectors.requires_grad_(True)

    def validate(self, run: Run, step: int) -> None:
        if run.is_main and self.cfg.validation_prompts:
            with _ema_weights(run.ema, [self.added.vectors]):
                grid = make_grid(self.sample(), cols=len(self.cfg.validation_prompts))
            save_png_atomic(grid, run.out / "validation" / f"step-{step:07d}.png")
            log_image(run.accelerator, "val/samples", grid, step)
        run.accelerator.wait_for_everyone()

    def export(self, run: Run) -> dict:
        """final/learned_embeds.safetensors (diffusers) and final/<token>.safetensors (A1111 emb_params)."""
        cfg, pipe = self.cfg, self.pipe
        final = run.out / "final"
        with _ema_weights(run.ema, [self.added.vectors]):
            vectors = self.added.vectors.detach().float().cpu().clone()
            after = self.sample() if self.before_images is not None else None
            te = pipe.text_encoder
            te.set_input_embeddings(self.added.write())
            try:
                diffusers_file = pipe.save_textual_inversion(cfg.token, final / "learned_embeds.safetensors")
                name = re.sub(r"[^A-Za-z0-9_.-]+", "", cfg.token) or "embedding"
                a1111_file = pipe.save_textual_inversion(cfg.token, final / f"{name}.safetensors", layout="a1111")
            finally:
                te.set_input_embeddings(self.added)
        if after is not None:
            cols = len(cfg.validation_prompts) * len(cfg.validation_seeds)
            save_png_atomic(make_grid(self.before_images + after, cols=cols), final / "before_after.png")
        moved = float((vectors - self.init_vectors.float().cpu()).norm(dim=-1).mean())
        logger.info("embedding %s saved to %s and %s (vectors moved %.3f from their start)", cfg.token,
                    diffusers_file, a1111_file, moved)
        return {"token": cfg.token, "tokens": cfg.tokens(), "num_vectors": cfg.num_vectors, "init_word": cfg.init_word,
                "vector_shift_l2": moved, "num_images": len(self.train_data), "embedding": str(diffusers_file),
                "a1111": str(a1111_file), "base": cfg.base}


def register_vector_checkpoints(accelerator, added: AddedTokens) -> None:
    """Checkpoints hold the new vectors only (``vectors.safetensors``), not the frozen model."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            save_tensors_atomic({"vectors": added.vectors.detach()}, Path(output_dir) / "vectors.safetensors")
        weights.clear()

    def load_hook(models, input_dir):
        with torch.no_grad():
            added.vectors.copy_(load_tensors(Path(input_dir) / "vectors.safetensors", added.vectors.device)["vectors"])
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def train(cfg: EmbeddingTrainConfig, resume: str | None = None, config_path: str | None = None,
          overwrite: bool = False) -> dict:
    """Teach ``cfg.token`` as configured; returns the summary (also in final/training_summary.json)."""
    return loop.train(EmbeddingTask(cfg), resume=resume, config_path=config_path, overwrite=overwrite)


EPILOG = """examples:
  # a few images of one concept -> a new word
  latentdiff train embedding --base emoji --data my_images/ --token "<my-emoji>" --init-word face
  # several vectors, more steps, a caption template for images that have their own captions
  latentdiff train embedding --base emoji --data captioned/ --token "<sks>" --set num_vectors=4 \\
      --set data.caption_template="{token}, {caption}" --max-train-steps 1000
  # use it (our pipeline, or diffusers' load_textual_inversion on the same file)
  latentdiff generate "<my-emoji>" --embedding runs/embedding/final/learned_embeds.safetensors:<my-emoji>
  # continue an interrupted run exactly
  latentdiff train embedding --base emoji --data my_images/ --token "<my-emoji>" --resume latest
"""


def main(argv: list[str] | None = None) -> int:
    return run_main(train, EmbeddingTrainConfig, argv, "latentdiff train embedding",
                    "Textual inversion: teach a pipeline a new word from a few images; only the new token's "
                    "embedding vectors train. Writes diffusers' learned_embeds.safetensors and an A1111/ComfyUI "
                    "embedding.", EPILOG, config_required=False, flags={
                        "--base": ("base", "pipeline to teach: built-in name (emoji), diffusers folder or Hub repo id"),
                        "--data": ("data.source", "the images: a folder (bare images, or with metadata.jsonl / .txt "
                                                  "captions)"),
                        "--token": ("token", "the new word, e.g. '<my-emoji>'"),
                        "--init-word": ("init_word", "start the vectors from this word's embedding (e.g. face)")})


if __name__ == "__main__":  # `python -m` / `accelerate launch -m latentdiff.train.embedding`
    from .common import module_entry

    module_entry(main)


__all__ = ["EmbeddingTrainConfig", "EmbeddingTask", "AddedTokens", "add_tokens", "train", "main"]
