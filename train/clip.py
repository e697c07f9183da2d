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

import argparse
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from latentdiff.config import atomic_write_text, load_config, save_config
from latentdiff.evaluation import COLOUR_WORDS, SKIN_TONE_RE, SKIN_TONES, load_image_set, random_affine
from latentdiff.models import ModelConfig, TextEncoderConfig

from .common import check_finite

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
class ClipTrainingConfig:
    steps: int = 2000
    batch_size: int = 512  # contrastive learning likes big batches (every other caption is a negative)
    learning_rate: float = 1e-3
    weight_decay: float = 0.1  # not on biases, norms and the temperature
    adam_beta2: float = 0.98  # CLIP's choice for stability with large batches
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # the cosine decays to learning_rate * min_lr_ratio
    grad_clip: float = 1.0
    seed: int = 0
    shift: int = 2  # random translation of each image, in pixels (white fill)
    scale_jitter: float = 0.1  # random zoom in [1 - j, 1 + j]
    mixed_precision: Literal["no", "bf16"] = "bf16"  # used on CUDA only; CPU runs in float32
    eval_every: int = 200  # steps between zero-shot evaluations (0: only at the end)
    checkpoint_every: int = 0  # steps between resumable checkpoints (0: only at the end)
    holdout_colour_shapes: bool = False  # leave coloured hearts/circles/squares/books out of training


@dataclass
class ClipConfig:
    """A tiny CLIP. The text tower is ``model_config``'s ``text_encoder`` (a path relative to this
    file, e.g. ``emoji.yaml``) or an explicit ``text_encoder`` section; exactly one of the two."""

    model_config: str | None = "emoji.yaml"
    text_encoder: TextEncoderConfig | None = None
    dataset: str = "emoji"  # anything latentdiff.data.build_dataset reads (needs a "train" split)
    eval_split: str | None = "test"  # zero-shot metrics on this split (null: none)
    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    logit_scale_init: float = 2.6592  # ln(1/0.07), CLIP's initial temperature
    training: ClipTrainingConfig = field(default_factory=ClipTrainingConfig)

    def validate(self):
        if (self.model_config is None) == (self.text_encoder is None):
            raise ValueError("give exactly one of model_config (a diffusion model config whose text_encoder "
                             "section is the text tower) and text_encoder (the tower written out)")


def load_clip_config(path: str | Path, overrides: dict | None = None) -> ClipConfig:
    """Read a CLIP config and resolve ``model_config`` into an explicit ``text_encoder``."""
    cfg = load_config(path, ClipConfig, overrides)
    if cfg.model_config is not None:
        model_path = Path(path).parent / cfg.model_config
        if not model_path.is_file():
            raise FileNotFoundError(f"{path}: model_config {cfg.model_config!r} not found (looked for {model_path}); "
                                    "give a path relative to the CLIP config's folder, e.g. emoji.yaml")
        cfg.text_encoder = load_config(model_path, ModelConfig).text_encoder
        cfg.model_config = None
    return cfg


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


def _lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name == "logit_scale" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _save_checkpoint(folder: Path, clip, optimizer, scheduler, step: int, generator: torch.Generator) -> None:
    from safetensors.torch import save_model

    from latentdiff.io import atomic_dir

    with atomic_dir(folder) as tmp:
        save_model(clip, str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "generator": generator.get_state()}, tmp / "training_state.pt")


def _load_checkpoint(folder: Path, clip, optimizer, scheduler, generator: torch.Generator) -> int:
    from safetensors.torch import load_model

    load_model(clip, str(folder / "model.safetensors"), device=str(next(clip.parameters()).device))
    state = torch.load(folder / "training_state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    return int(state["step"])


def save_outputs(output_dir: Path, clip, tokenizer, cfg: ClipConfig, summary: dict) -> None:
    """text_encoder/, tokenizer/, clip/ (each replaced atomically), config.yaml, summary.json."""
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
    save_config(cfg, output_dir / "config.yaml")
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2))


def train(cfg: ClipConfig, output_dir: str | Path, *, device: str = "cpu", max_train_steps: int | None = None,
          resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Train the tiny CLIP described by ``cfg`` (with its text tower resolved) and write the outputs.
    Returns the summary dict (also written to ``summary.json``)."""
    from tqdm.auto import tqdm

    from latentdiff.tokenizer import build_clip_tokenizer

    assert cfg.text_encoder is not None, "resolve model_config with load_clip_config first"
    tc = cfg.training
    if not str(output_dir).strip():
        raise ValueError("--output-dir is empty, which would write into the current folder; pass a folder")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output-dir {output_dir} is a file, not a folder")
    earlier = [p for p in ("checkpoint", "text_encoder", "clip") if (output_dir / p).exists()]
    if earlier and not resume and not overwrite:
        from latentdiff.errors import OutputExistsError

        raise OutputExistsError(
            f"--output-dir {output_dir} already holds a CLIP run ({', '.join(earlier)}); continue it with --resume, "
            "choose a new --output-dir, or pass --overwrite-output-dir to replace it")
    from latentdiff.io import resolve_device

    dev = resolve_device(device)
    steps = tc.steps if max_train_steps is None else max_train_steps
    if steps < 1:
        raise ValueError(f"the number of training steps must be >= 1, got {steps}")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    # 1. data: every image and caption once, on the device
    size = cfg.vision.image_size
    train_set = load_image_set(cfg.dataset, "train", size, progress=progress)
    keep = [i for i, c in enumerate(train_set.captions)
            if not (tc.holdout_colour_shapes and _COLOUR_SHAPE_RE.match(c))]
    kept = set(keep)
    held_out = [i for i in range(len(train_set)) if i not in kept]
    if len(keep) < 2:
        raise ValueError(f"dataset {cfg.dataset!r} has {len(keep)} training images; contrastive training needs >= 2")
    images = (train_set.images[keep] * 2 - 1).to(dev)  # (N, 3, S, S) in [-1, 1]
    captions = [train_set.captions[i] for i in keep]
    tokenizer = build_clip_tokenizer()
    # Causal attention + EOS pooling: padding to the longest caption gives the same pooled output as
    # padding to 77, so the text tower sees exactly what the U-Net will feed it.
    ids = tokenizer(captions, padding="longest", truncation=True, return_tensors="pt").input_ids.to(dev)
    eval_images, eval_captions = None, []
    if cfg.eval_split:
        try:
            eval_set = load_image_set(cfg.dataset, cfg.eval_split, size, progress=False)
            eval_images, eval_captions = eval_set.images * 2 - 1, list(eval_set.captions)
        except (ValueError, FileNotFoundError) as e:
            logger.warning("no zero-shot metrics: split %r of %s could not be loaded (%s)", cfg.eval_split,
                           cfg.dataset, e)
    if held_out:  # held-out training images count as unseen for the colour metric
        extra = train_set.images[held_out] * 2 - 1
        eval_images = extra if eval_images is None else torch.cat([eval_images, extra])
        eval_captions += [train_set.captions[i] for i in held_out]
    n = len(captions)
    batch_size = min(tc.batch_size, n)

    # 2. model and optimiser
    torch.manual_seed(tc.seed)
    clip = build_clip_model(cfg).to(dev).train()
    optimizer = torch.optim.AdamW(_param_groups(clip, tc.weight_decay), lr=tc.learning_rate,
                                  betas=(0.9, tc.adam_beta2), eps=1e-6, fused=dev.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc.warmup_steps, steps, tc.min_lr_ratio))
    generator = torch.Generator().manual_seed(tc.seed)
    start = 0
    checkpoint = output_dir / "checkpoint"
    if resume:
        if not (checkpoint / "training_state.pt").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {checkpoint}; run without --resume to start")
        start = _load_checkpoint(checkpoint, clip, optimizer, scheduler, generator)
        logger.info("resumed from %s at step %d", checkpoint, start)
    autocast = dev.type == "cuda" and tc.mixed_precision == "bf16"
    n_params = sum(p.numel() for p in clip.parameters())
    logger.info("CLIP: %.2f M parameters (text %.2f M), %d training pairs, batch %d, %d steps on %s",
                n_params / 1e6, sum(p.numel() for p in clip.text_model.parameters()) / 1e6, n, batch_size,
                steps, dev)

    # 3. the loop: epochs of random permutations, cut into batches
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = output_dir / "metrics.jsonl"
    if not resume:
        metrics_file.unlink(missing_ok=True)
    history, perm, pos = [], torch.empty(0, dtype=torch.long), n
    t0 = time.perf_counter()
    loss_ema = None
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="clip", disable=not progress)
    for step in bar:
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        idx = perm[pos:pos + batch_size].to(dev)
        pos += batch_size
        x = random_affine(images[idx], tc.shift, tc.scale_jitter, generator, fill=1.0)  # white border
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = clip(input_ids=ids[idx], pixel_values=x, return_loss=True).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(clip.parameters(), tc.grad_clip)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        # an exponential moving average kept on the device: reading it syncs, so only every 10 steps
        loss_ema = loss.detach().float() if loss_ema is None else loss_ema.lerp(loss.detach().float(), 0.05)
        done = step + 1
        if done % 10 == 0 or done == steps:
            check_finite(done, output_dir, float(loss_ema), hint="lower training.learning_rate",
                         last_good=checkpoint)
            bar.set_postfix(loss=f"{float(loss_ema):.3f}", T=f"{float(clip.logit_scale.detach().exp()):.1f}")
        if eval_images is not None and ((tc.eval_every and done % tc.eval_every == 0) or done == steps):
            report = zero_shot_report(clip, tokenizer, eval_images, eval_captions)
            row = {"step": done, "seconds": round(time.perf_counter() - t0, 1), "loss": round(float(loss_ema), 4),
                   "colour": report["colour"]["accuracy"], "skin_tone": report["skin_tone"]["accuracy"],
                   "top1": report["retrieval"]["top1"], "top5": report["retrieval"]["top5"]}
            history.append(row)
            with open(metrics_file, "a") as f:
                f.write(json.dumps(row) + "\n")
            bar.write(json.dumps(row))
        if tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < steps:
            check_finite(done, output_dir, modules={"clip": clip}, hint="lower training.learning_rate",
                         last_good=checkpoint)
            _save_checkpoint(checkpoint, clip, optimizer, scheduler, done, generator)
    bar.close()
    seconds = time.perf_counter() - t0

    # 4. outputs
    clip.eval()
    check_finite(steps, output_dir, modules={"clip": clip}, hint="lower training.learning_rate",  # no NaN export
                 last_good=checkpoint)
    _save_checkpoint(checkpoint, clip, optimizer, scheduler, steps, generator)
    final = zero_shot_report(clip, tokenizer, eval_images, eval_captions) if eval_images is not None else None
    summary = {
        "steps": steps, "resumed_from": start, "seconds": round(seconds, 1), "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "batch_size": batch_size, "train_pairs": n,
        "held_out_colour_shapes": [train_set.captions[i] for i in held_out],
        "parameters": n_params, "final_loss": None if loss_ema is None else float(loss_ema), "logit_scale": float(clip.logit_scale.detach().exp()),
        "zero_shot": final, "history": history,
    }
    save_outputs(output_dir, clip, tokenizer, cfg, summary)
    return summary


# --------------------------------------------------------------------------- CLI


def _print_summary(summary: dict, output_dir: Path) -> None:
    z = summary["zero_shot"]
    loss = "–" if summary["final_loss"] is None else f"{summary['final_loss']:.3f}"
    print(f"\ntrained {summary['steps']} steps in {summary['seconds']:.0f} s on {summary['device_name']}; "
          f"final loss {loss}; outputs in {output_dir}")
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="latentdiff train clip",
        description="Contrastive pre-training of a tiny CLIP (Radford et al. 2021) on image-caption pairs. "
        "Its text tower has the architecture of the diffusion config's text_encoder and is saved as "
        "text_encoder/ (a CLIPTextModel) to be frozen in the U-Net; clip/ holds the whole model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  latentdiff train clip --config configs/emoji_clip.yaml --output-dir runs/emoji-clip
  latentdiff train clip --config configs/emoji_clip.yaml --device cuda --output-dir runs/emoji-clip
  latentdiff train clip --config configs/tiny_clip.yaml --max-train-steps 5 --output-dir /tmp/clip
  latentdiff train clip --config configs/emoji_clip.yaml --set training.holdout_colour_shapes=true
""",
    )
    p.add_argument("--config", required=True, help="YAML config (configs/emoji_clip.yaml, configs/tiny_clip.yaml)")
    p.add_argument("--output-dir", default="runs/clip", help="output folder (default: runs/clip)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--max-train-steps", type=int, default=None, help="override training.steps")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint")
    p.add_argument("--overwrite-output-dir", action="store_true",
                   help="start afresh in an OUTPUT_DIR that holds another run (replacing its checkpoint and outputs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (YAML syntax), e.g. training.learning_rate=5e-4; repeatable")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    import yaml

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. training.steps=500")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(e).split())})") from None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_clip_config(args.config, overrides)
    summary = train(cfg, args.output_dir, device=args.device, max_train_steps=args.max_train_steps,
                    resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite_output_dir)
    _print_summary(summary, Path(args.output_dir))
    return 0


if __name__ == "__main__":  # `python -m` / `accelerate launch -m latentdiff.train.clip`
    from .common import module_entry

    module_entry(main)


__all__ = ["ClipConfig", "VisionTowerConfig", "ClipTrainingConfig", "load_clip_config", "build_clip_model",
           "text_encoder_from_clip", "embed_texts", "embed_images", "zero_shot_report", "train", "main"]
