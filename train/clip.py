"""``latentdiff train clip``: contrastive pre-training of a tiny CLIP on image–caption pairs.

Stable Diffusion conditions its U-Net on a *frozen, pre-trained* CLIP text encoder (Rombach et
al. 2022, §4.3.2; Radford et al. 2021). At our scale nobody ships such an encoder, so we train one:
a transformers ``CLIPModel`` whose text tower has exactly the architecture of the diffusion
model's ``text_encoder`` section (``model_config``), and a small ViT image tower, trained with
CLIP's symmetric InfoNCE loss (Radford et al. 2021, Fig. 3):

    logits = exp(τ) · norm(f_img(x)) · norm(f_txt(c))ᵀ          (B, B), learnable temperature τ
    loss   = ½ [CE(logits, arange(B)) + CE(logitsᵀ, arange(B))]

The loop is GPU-friendly: every caption is tokenised once and every image loaded once into one
tensor on the device; a step is a random batch, a random shift/scale (white fill, no colour
augmentation: colours are what the captions name), one forward/backward. AdamW with linear
warm-up and cosine decay; τ is clamped to ln 100 as in CLIP.

Outputs (``--output-dir``):

    text_encoder/   CLIPTextModel (safetensors): the text tower, ready to freeze in the U-Net
    tokenizer/      the CLIP tokenizer
    clip/           the whole CLIPModel (+ preprocessor_config.json): CLIP score, guidance, eval
    config.yaml     the resolved config (text tower written out, no file reference)
    summary.json    steps, time, loss, and the zero-shot metrics below
    metrics.jsonl   the metrics at every evaluation
    checkpoint/     weights + optimizer state for --resume

Zero-shot metrics (on the test split, never trained on): colour-word accuracy (for images whose
caption starts with red/orange/…/white, which of the nine "<colour> <rest>" captions scores
highest), skin-tone accuracy (which of the five "…: <tone> skin tone" captions), and
image→caption retrieval top-1/top-5 among all test captions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from latentdiff.config import load_config
from latentdiff.emoji_checks import COLOUR_WORDS, SKIN_TONE_RE, SKIN_TONES
from latentdiff.evaluation import load_image_set, random_affine
from latentdiff.models import ModelConfig, TextEncoderConfig

from . import loop
from .common import (
    DataConfig,
    Device,
    EMAConfig,
    MixedPrecision,
    OptimConfig,
    check_loop_settings,
    run_main,
    step_generator,
)
from .loop import Run, Task

logger = logging.getLogger("latentdiff.train.clip")

# Captions held out from training with `holdout_colour_shapes` (the measurement of
# design/cpu-training-budget.md): coloured hearts, circles, squares and books.
_COLOUR_SHAPE_RE = re.compile(rf"^({'|'.join(COLOUR_WORDS)}) (?:.* )?(heart|circle|square|book)$")


# --------------------------------------------------------------------------- config


@dataclass
class VisionTowerConfig:
    """A small ViT (Dosovitskiy et al. 2021) image tower; transformers ``CLIPVisionConfig``."""

    image_size: int = 32  # images are resized to this (LANCZOS) once, at load time
    patch_size: int = 4  # (32/4)² = 64 patch tokens + 1 class token
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 3
    num_attention_heads: int = 4

    def validate(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"vision.image_size {self.image_size} must be a multiple of "
                             f"vision.patch_size {self.patch_size}")


@dataclass
class ClipTrainConfig:
    """A tiny CLIP. The text tower is ``model_config``'s ``text_encoder`` (a diffusion model config,
    looked up beside this file first) or an explicit ``text_encoder`` section; exactly one of the two."""

    CONFIG_REFERENCES: ClassVar[tuple[str, ...]] = ("model_config",)  # resolved beside the config file
    model_config: str = ""
    text_encoder: TextEncoderConfig | None = None
    output_dir: str = "runs/clip"
    seed: int = 0
    device: Device = "auto"
    mixed_precision: MixedPrecision = "bf16"  # CUDA only; CPU runs in float32
    cpu_threads: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(source="emoji", validation_split="test",
                                                                max_validation_samples=0))
    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    logit_scale_init: float = 2.6592  # ln(1/0.07), CLIP's initial temperature
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        batch_size=512, learning_rate=1e-3, lr_scheduler="cosine", lr_warmup_steps=100, adam_beta2=0.98,
        adam_weight_decay=0.1, adam_epsilon=1e-6, max_grad_norm=1.0, max_train_steps=2000))
    # (contrastive learning likes big batches: every other caption is a negative; β2 0.98 is CLIP's choice;
    # the weight decay spares biases, norms and the temperature)
    ema: EMAConfig = field(default_factory=EMAConfig)
    shift: int = 2                   # random translation of each image, in pixels (white fill)
    scale_jitter: float = 0.1        # random zoom in [1 - j, 1 + j]; no colour augmentation: colours are named
    holdout_colour_shapes: bool = False  # leave coloured hearts/circles/squares/books out of training
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    validation_steps: int = 200      # zero-shot metrics on data.validation_split (0 = only at the end)
    log_every: int = 10

    def validate(self):
        check_loop_settings(self)
        if bool(self.model_config) == (self.text_encoder is not None):
            raise ValueError("give exactly one of model_config (a diffusion model config whose text_encoder "
                             "section is the text tower) and text_encoder (the tower written out)")
        if self.model_config and not Path(self.model_config).is_file():
            raise FileNotFoundError(f"model_config {self.model_config!r} not found (a relative path is looked up "
                                    "beside the CLIP config, then from the current folder), e.g. emoji.yaml")
        if self.shift < 0 or self.scale_jitter < 0:
            raise ValueError("shift and scale_jitter must be >= 0 (0 = off)")


ClipConfig = ClipTrainConfig  # the name configs and notebooks used before the shared loop


def load_clip_config(path: str | Path, overrides: dict | None = None) -> ClipTrainConfig:
    """Read a CLIP config and resolve ``model_config`` into an explicit ``text_encoder``."""
    return resolve_text_tower(load_config(path, ClipTrainConfig, overrides))


def resolve_text_tower(cfg: ClipTrainConfig) -> ClipTrainConfig:
    """``model_config`` replaced by its ``text_encoder`` section, as the saved config records it."""
    if cfg.text_encoder is not None:
        return cfg
    return dataclasses.replace(cfg, text_encoder=load_config(cfg.model_config, ModelConfig).text_encoder,
                               model_config="")


# --------------------------------------------------------------------------- model


def build_clip_model(cfg: ClipConfig):
    """A randomly initialised ``CLIPModel``. The text config is taken from
    ``TextEncoderConfig.build()`` itself, so the text tower is exactly the U-Net's encoder."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    text_config = cfg.text_encoder.build().config
    v = cfg.vision
    vision_config = CLIPVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
        num_channels=3, hidden_act=text_config.hidden_act, projection_dim=text_config.projection_dim,
    )
    config = CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
                        projection_dim=text_config.projection_dim, logit_scale_init_value=cfg.logit_scale_init)
    return CLIPModel(config)


def text_encoder_from_clip(clip):
    """The CLIP text tower as a standalone ``CLIPTextModel`` (same weights, same outputs). In
    transformers 5 ``CLIPModel.text_model`` is itself a ``CLIPTextModel``; in 4 it is the
    ``CLIPTextTransformer`` that ``CLIPTextModel.text_model`` holds. Either way the keys match."""
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip.config.text_config)
    getattr(text_encoder, "text_model", text_encoder).load_state_dict(clip.text_model.state_dict())
    return text_encoder.to(clip.dtype).eval()


def _pooled(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and an output object in 5."""
    return out if torch.is_tensor(out) else out.pooler_output


@torch.no_grad()
def embed_texts(clip, tokenizer, texts: list[str], batch_size: int = 1024) -> torch.Tensor:
    """L2-normalised projected text embeddings (N, P)."""
    device = next(clip.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(texts[i:i + batch_size], padding="longest", truncation=True, return_tensors="pt").input_ids
        out.append(F.normalize(_pooled(clip.get_text_features(input_ids=ids.to(device))).float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def embed_images(clip, pixel_values: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """L2-normalised projected image embeddings (N, P); ``pixel_values`` in [-1, 1] at the tower's size."""
    device = next(clip.parameters()).device
    size = clip.config.vision_config.image_size
    out = []
    for i in range(0, len(pixel_values), batch_size):
        x = pixel_values[i:i + batch_size].to(device, torch.float32)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bilinear")
        out.append(F.normalize(_pooled(clip.get_image_features(pixel_values=x.to(clip.dtype))).float(), dim=-1))
    return torch.cat(out)


# --------------------------------------------------------------------------- zero-shot metrics


def colour_candidates(caption: str) -> tuple[list[str], int] | None:
    """For "<colour> <rest>": the nine "<c> <rest>" captions and the index of the true one."""
    first, _, rest = caption.partition(" ")
    if first not in COLOUR_WORDS or not rest:
        return None
    return [f"{c} {rest}" for c in COLOUR_WORDS], COLOUR_WORDS.index(first)


def skin_tone_candidates(caption: str) -> tuple[list[str], int] | None:
    """For a caption naming one skin tone: the five tone variants and the index of the true one."""
    tones = set(SKIN_TONE_RE.findall(caption))
    if len(tones) != 1:
        return None
    (tone,) = tones
    return [SKIN_TONE_RE.sub(f"{t} skin tone", caption) for t in SKIN_TONES], SKIN_TONES.index(tone)


@torch.no_grad()
def zero_shot_choice_accuracy(clip, tokenizer, pixel_values: torch.Tensor, captions: list[str],
                              candidates_fn) -> dict:
    """Accuracy of picking the true caption among ``candidates_fn(caption)`` (images where it is not
    None), by CLIP similarity. Returns {"n", "accuracy", "chance", "errors": [(caption, chosen)]}."""
    rows = []  # (image index, candidate captions, index of the true one)
    for i, caption in enumerate(captions):
        got = candidates_fn(caption)
        if got is not None:
            rows.append((i, *got))
    if not rows:
        return {"n": 0, "accuracy": None, "chance": None, "errors": []}
    img = embed_images(clip, pixel_values[[i for i, _, _ in rows]])  # (R, P)
    texts = embed_texts(clip, tokenizer, [t for _, cands, _ in rows for t in cands])  # all candidates at once
    correct, errors, chance, start = 0, [], 0.0, 0
    for k, (i, cands, true) in enumerate(rows):
        chosen = int((texts[start:start + len(cands)] @ img[k]).argmax())
        start += len(cands)
        correct += chosen == true
        chance += 1 / len(cands)
        if chosen != true:
            errors.append((captions[i], cands[chosen]))
    return {"n": len(rows), "accuracy": correct / len(rows), "chance": chance / len(rows), "errors": errors}


@torch.no_grad()
def retrieval_metrics(clip, tokenizer, pixel_values: torch.Tensor, captions: list[str]) -> dict:
    """Image→caption retrieval among all ``captions``: top-1 / top-5 accuracy (chance 1/N, 5/N)."""
    sim = embed_images(clip, pixel_values) @ embed_texts(clip, tokenizer, captions).T  # (N, N)
    target = torch.arange(len(captions), device=sim.device)
    rank = (sim > sim[target, target][:, None]).sum(1)  # how many captions beat the true one
    return {"n": len(captions), "top1": float((rank < 1).float().mean()), "top5": float((rank < 5).float().mean())}


def zero_shot_report(clip, tokenizer, pixel_values: torch.Tensor, captions: list[str]) -> dict:
    was_training = clip.training
    clip.eval()
    out = {
        "colour": zero_shot_choice_accuracy(clip, tokenizer, pixel_values, captions, colour_candidates),
        "skin_tone": zero_shot_choice_accuracy(clip, tokenizer, pixel_values, captions, skin_tone_candidates),
        "retrieval": retrieval_metrics(clip, tokenizer, pixel_values, captions),
    }
    clip.train(was_training)
    return out


# --------------------------------------------------------------------------- training


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name == "logit_scale" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ClipTask(Task):
    """CLIP's symmetric InfoNCE on image–caption pairs; exports text_encoder/, tokenizer/ and clip/."""

    name = "clip"
    exports = ("text_encoder", "tokenizer", "clip")

    def build(self) -> None:
        from latentdiff.tokenizer import build_clip_tokenizer

        cfg = self.cfg = resolve_text_tower(self.cfg)
        d, size = cfg.data, cfg.vision.image_size
        train_set = load_image_set(d.source, d.split, size, image_column=d.image_column,
                                   caption_column=d.caption_column, progress=True)
        if d.max_samples and len(train_set) > d.max_samples:
            train_set = train_set.subset(sorted(np.random.default_rng(0).choice(len(train_set), d.max_samples,
                                                                               replace=False).tolist()))
        keep = [i for i, c in enumerate(train_set.captions)
                if not (cfg.holdout_colour_shapes and _COLOUR_SHAPE_RE.match(c))]
        kept = set(keep)
        self.held_out = [i for i in range(len(train_set)) if i not in kept]
        if len(keep) < 2:
            raise ValueError(f"data.source {d.source!r} has {len(keep)} training images; contrastive training needs >= 2")
        if cfg.optim.batch_size > len(keep):
            raise ValueError(f"optim.batch_size {cfg.optim.batch_size} exceeds the {len(keep)} training pairs of "
                             f"{d.source!r}; a contrastive batch must not repeat a pair: lower it "
                             f"(--set optim.batch_size={len(keep)})")
        self.images = train_set.images[keep] * 2 - 1                       # (N, 3, S, S) in [-1, 1]
        self.captions = [train_set.captions[i] for i in keep]
        self.num_samples = len(keep)
        self.tokenizer = build_clip_tokenizer()
        # Causal attention + EOS pooling: padding to the longest caption gives the same pooled output as
        # padding to 77, so the text tower sees exactly what the U-Net will feed it.
        self.ids = self.tokenizer(self.captions, padding="longest", truncation=True, return_tensors="pt").input_ids
        self.eval_images, self.eval_captions = None, []
        if d.validation_split:
            try:
                eval_set = load_image_set(d.source, d.validation_split, size, image_column=d.image_column,
                                          caption_column=d.caption_column)
                self.eval_images, self.eval_captions = eval_set.images * 2 - 1, list(eval_set.captions)
            except (ValueError, FileNotFoundError) as e:
                logger.warning("no zero-shot metrics: split %r of %s could not be loaded (%s)", d.validation_split,
                               d.source, e)
        if self.held_out:  # held-out training images count as unseen for the colour metric
            extra = train_set.images[self.held_out] * 2 - 1
            self.eval_images = extra if self.eval_images is None else torch.cat([self.eval_images, extra])
            self.eval_captions += [train_set.captions[i] for i in self.held_out]
        self.held_out_captions = [train_set.captions[i] for i in self.held_out]

    def setup(self, run: Run) -> torch.nn.Module:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        self.images, self.ids = self.images.to(run.device), self.ids.to(run.device)
        torch.manual_seed(self.cfg.seed)
        clip = build_clip_model(self.cfg).train()
        logger.info("CLIP: %.2f M parameters (text %.2f M), %d training pairs",
                    sum(p.numel() for p in clip.parameters()) / 1e6,
                    sum(p.numel() for p in clip.text_model.parameters()) / 1e6, self.num_samples)
        return clip

    def parameters(self, model: torch.nn.Module) -> list:
        return _param_groups(model, self.cfg.optim.adam_weight_decay)

    def start(self, run: Run) -> None:
        run.state["history"] = []

    def draw(self, run: Run, step: int, g: torch.Generator, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        cpu = step_generator(self.cfg.seed, step, torch.device("cpu"), stream=2)  # random_affine draws on the CPU
        x = random_affine(self.images[idx], self.cfg.shift, self.cfg.scale_jitter, cpu, fill=1.0)  # white border
        return {"pixel_values": x, "input_ids": self.ids[idx]}

    def loss(self, run: Run, model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=b["input_ids"], pixel_values=b["pixel_values"], return_loss=True).loss

    def after_micro(self, run: Run, b: dict[str, torch.Tensor], step: int) -> None:
        with torch.no_grad():  # CLIP clamps the temperature at 100
            run.unwrapped().logit_scale.clamp_(0, math.log(100))

    def report(self, run: Run):
        if self.eval_images is None:
            return None
        clip = run.ema_copy()
        return zero_shot_report(clip, self.tokenizer, self.eval_images, self.eval_captions)

    def validate(self, run: Run, step: int) -> None:
        if run.is_main:
            r = self.report(run)
            if r is not None:
                row = {"step": step, "colour": r["colour"]["accuracy"], "skin_tone": r["skin_tone"]["accuracy"],
                       "top1": r["retrieval"]["top1"], "top5": r["retrieval"]["top5"]}
                run.state.setdefault("history", []).append(row)
                run.log({f"zero_shot/{k}": v for k, v in row.items() if k != "step" and v is not None})
                logger.info("step %d: zero-shot %s", step, json.dumps(row))
        run.accelerator.wait_for_everyone()

    def export(self, run: Run) -> dict:
        """text_encoder/ (the tower, to freeze in the U-Net), tokenizer/, clip/ (the whole model)."""
        clip = run.ema_copy()
        final = self.report(run)
        save_outputs(run.out, clip, self.tokenizer, self.cfg)
        z = final
        if z is not None:
            logger.info("zero-shot on unseen images: colour %s, skin tone %s, image->caption top-1 %.1f%% of %d",
                        z["colour"]["accuracy"], z["skin_tone"]["accuracy"], 100 * z["retrieval"]["top1"],
                        z["retrieval"]["n"])
        return {"train_pairs": self.num_samples, "held_out_colour_shapes": self.held_out_captions,
                "parameters": sum(p.numel() for p in clip.parameters()),
                "logit_scale": float(clip.logit_scale.detach().exp()), "zero_shot": final,
                "history": run.state.get("history", [])}


def save_outputs(output_dir: Path, clip, tokenizer, cfg: ClipTrainConfig) -> None:
    """text_encoder/, tokenizer/, clip/, each replaced atomically."""
    from latentdiff.io import atomic_dir

    with atomic_dir(output_dir / "text_encoder") as tmp:
        text_encoder_from_clip(clip).save_pretrained(tmp, safe_serialization=True)
    with atomic_dir(output_dir / "tokenizer") as tmp:
        tokenizer.save_pretrained(tmp)
    with atomic_dir(output_dir / "clip") as tmp:
        clip.save_pretrained(tmp, safe_serialization=True)
        size = cfg.vision.image_size  # how to feed the image tower: RGB resized to size², scaled to [-1, 1]
        (tmp / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
            "resample": 1, "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "do_convert_rgb": True}, indent=2))


def train(cfg: ClipTrainConfig, resume: str | None = None, config_path: str | None = None, overwrite: bool = False) -> dict:
    """Train the tiny CLIP as configured; returns the summary (also in text_encoder/training_summary.json)."""
    return loop.train(ClipTask(cfg), resume=resume, config_path=config_path, overwrite=overwrite)


# --------------------------------------------------------------------------- CLI


def _print_summary(summary: dict) -> None:
    z = summary["zero_shot"]
    print(f"\ntrained {summary['steps']} steps in {summary['wall_time_s']:.0f} s on {summary['device']}; "
          f"final loss {summary['final_loss']:.3f}; outputs in {Path(summary['output']).parent}")
    if z is None:
        return
    print("\n| zero-shot metric (unseen images) | n | value | chance |\n|---|---|---|---|")
    for key, label in (("colour", "colour word (9-way)"), ("skin_tone", "skin tone (5-way)")):
        r = z[key]
        if r["n"]:
            print(f"| {label} | {r['n']} | {r['accuracy']:.1%} | {r['chance']:.1%} |")
    r = z["retrieval"]
    print(f"| image→caption top-1 | {r['n']} | {r['top1']:.1%} | {1 / r['n']:.1%} |")
    print(f"| image→caption top-5 | {r['n']} | {r['top5']:.1%} | {min(1, 5 / r['n']):.1%} |")


EPILOG = """examples:
  latentdiff train clip --config configs/emoji_clip.yaml                      # -> runs/clip/text_encoder
  latentdiff train clip --config configs/emoji_clip.yaml --device cuda --output-dir runs/emoji-clip
  latentdiff train clip --config configs/tiny_clip.yaml --max-train-steps 5 --output-dir /tmp/clip
  latentdiff train clip --config configs/emoji_clip.yaml --set holdout_colour_shapes=true
  # a CPU recipe that gets most of it in minutes
  latentdiff train clip --config configs/emoji_clip.yaml --max-train-steps 300 --set optim.batch_size=256 \\
      --set optim.lr_warmup_steps=30
  # continue an interrupted run exactly; multi-GPU
  latentdiff train clip --config configs/emoji_clip.yaml --resume latest
  accelerate launch --multi_gpu --num_processes 4 -m latentdiff.train.clip --config configs/emoji_clip.yaml
"""


def main(argv: list[str] | None = None) -> int:
    def train_and_print(cfg, **kw):
        summary = train(cfg, **kw)
        if summary:
            _print_summary(summary)
        return summary

    return run_main(train_and_print, ClipTrainConfig, argv, "latentdiff train clip",
                    "Contrastive pre-training of a tiny CLIP (Radford et al. 2021) on image-caption pairs. Its "
                    "text tower has the architecture of the diffusion config's text_encoder and is saved as "
                    "text_encoder/ (a CLIPTextModel) to be frozen in the U-Net; clip/ holds the whole model.", EPILOG)


if __name__ == "__main__":  # `python -m` / `accelerate launch -m latentdiff.train.clip`
    from .common import module_entry

    module_entry(main)


__all__ = ["ClipTrainConfig", "ClipConfig", "VisionTowerConfig", "load_clip_config", "build_clip_model",
           "text_encoder_from_clip", "embed_texts", "embed_images", "zero_shot_report", "ClipTask", "train", "main"]
