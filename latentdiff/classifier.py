"""Noise-aware latent classifiers for classifier guidance (Dhariwal & Nichol 2021, §4).

A classifier p_φ(y | x_t, t) is trained on *noisy VAE latents* x_t = √ᾱ_t z + √(1-ᾱ_t) ε
(t uniform, as in guided-diffusion's ``classifier_train.py``); at sampling time its gradient
∇_{x_t} log p_φ(y | x_t, t) steers every ε-based sampler through
:class:`latentdiff.denoisers.ClassifierGuidance`:

    ε̂ = ε_θ(x_t) - s · √(1-ᾱ_t) · ∇_{x_t} log p_φ(y | x_t, t)         (Dhariwal & Nichol, eq. 14)

The gradient goes through the classifier only: it sees latents, so no VAE decode is needed.

The network is the encoder half of a U-Net, like guided-diffusion's ``EncoderUNetModel`` with
``pool="attention"``, assembled from diffusers blocks:

    x_t (B, C, s, s) ─ conv_in ─ down blocks (ResnetBlock2D [+ self-attention], downsample) ─ mid ResnetBlock2D
        t ─ Timesteps (sinusoidal) ─ TimestepEmbedding (MLP) ─┘ (added inside every ResnetBlock2D)
    ─ GroupNorm, SiLU ─ + learned 2-D position embedding ─ AttentionPooling (mean token as query) ─ Linear ─ logits

Files: ``config.json`` (:class:`ClassifierConfig`) + ``model.safetensors``, written atomically.

    >>> clf = NoisyLatentClassifier.from_pretrained("runs/emoji-group/final")
    >>> pipe("", classifier=clf, class_label="Food & Drink", classifier_scale=4)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .config import ConfigError, from_dict, to_dict

logger = logging.getLogger("latentdiff")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
# where load_classifier looks inside a folder, in order: the folder itself, a training run's
# final weights, a pipeline folder's shipped classifier
SEARCH_SUBFOLDERS = ("", "final", "classifier")


@dataclass
class ClassifierConfig:
    """Architecture and labels of a :class:`NoisyLatentClassifier` (every default visible here).

    ``latent_channels``/``sample_size`` must match the U-Net it guides; ``num_classes`` and
    ``class_names`` are filled in from the data by ``latentdiff train classifier``.
    """

    latent_channels: int = 4            # channels of the VAE latent (= the U-Net's in_channels)
    sample_size: int = 16               # latent height = width (= the U-Net's sample_size)
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # one down block per entry; all but the last halve the size
    down_block_types: tuple[str, ...] = ()  # DownBlock2D | AttnDownBlock2D per level; () = all DownBlock2D
    layers_per_block: int = 1           # ResnetBlock2D per down block
    norm_num_groups: int = 8            # GroupNorm groups (must divide every block width)
    attention_head_dim: int = 32        # width of one head in the attention pooling (and AttnDownBlock2D)
    dropout: float = 0.0                # dropout inside the ResNet blocks
    num_classes: int = 0                # 0 = not set yet (the trainer sets it from the data)
    class_names: tuple[str, ...] = ()   # class i is class_names[i]
    label_column: str = "group"         # dataset column the labels came from (provenance)
    # the noise schedule the classifier was trained under (t indexes the same ᾱ_t at sampling time)
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    vae_scaling_factor: float = 1.0     # scaling_factor of the VAE whose latents it saw (provenance)
    trained_on: str = ""                # the --vae-from model and dataset (provenance)

    def validate(self):
        n = len(self.block_out_channels)
        if n < 1:
            raise ConfigError("classifier block_out_channels needs at least one entry")
        if self.down_block_types and len(self.down_block_types) != n:
            raise ConfigError(f"classifier: {n} block_out_channels need {n} down_block_types (or none), "
                              f"got {len(self.down_block_types)}")
        bad = [b for b in self.down_block_types if b not in DOWN_BLOCK_TYPES]
        if bad:
            raise ConfigError(f"classifier down_block_types {bad} unknown; choose from {', '.join(DOWN_BLOCK_TYPES)}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"classifier block_out_channels {list(self.block_out_channels)} must be multiples of "
                              f"norm_num_groups={self.norm_num_groups}")
        if any(c % self.attention_head_dim for c in self.block_out_channels):
            raise ConfigError(f"classifier block_out_channels {list(self.block_out_channels)} must be multiples of "
                              f"attention_head_dim={self.attention_head_dim}")
        f = 2 ** (n - 1)
        if self.sample_size < f or self.sample_size % f:
            raise ConfigError(f"classifier sample_size {self.sample_size} must be a positive multiple of {f} "
                              f"({n} levels halve it {n - 1} times)")
        if self.class_names and self.num_classes and len(self.class_names) != self.num_classes:
            raise ConfigError(f"classifier has num_classes={self.num_classes} but {len(self.class_names)} class_names")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"classifier class_names must be unique, got {list(self.class_names)}")

    @property
    def names(self) -> tuple[str, ...]:
        """Class names, or "0".."K-1" when the classifier was built without names."""
        return self.class_names or tuple(str(i) for i in range(self.num_classes))


class NoisyLatentClassifier(nn.Module):
    """p_φ(y | x_t, t) on noisy latents: ``forward(x_t, t) -> logits (B, num_classes)``."""

    def __init__(self, config: ClassifierConfig):
        from diffusers.models.embeddings import AttentionPooling, TimestepEmbedding, Timesteps
        from diffusers.models.resnet import ResnetBlock2D
        from diffusers.models.unets.unet_2d_blocks import get_down_block

        super().__init__()
        config.validate()
        if config.num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {config.num_classes} "
                             "(set it, or let `latentdiff train classifier` take it from the label column)")
        self.config = config
        c = config
        ch0, width = c.block_out_channels[0], c.block_out_channels[-1]
        temb_dim = 4 * ch0  # as in diffusers' UNet2DModel / guided-diffusion: time_embed_dim = 4 · model_channels
        self.time_proj = Timesteps(ch0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch0, temb_dim)
        self.conv_in = nn.Conv2d(c.latent_channels, ch0, kernel_size=3, padding=1)
        types = c.down_block_types or ("DownBlock2D",) * len(c.block_out_channels)
        blocks, prev = [], ch0
        for i, (block_type, out) in enumerate(zip(types, c.block_out_channels)):
            blocks.append(get_down_block(
                block_type, num_layers=c.layers_per_block, in_channels=prev, out_channels=out,
                temb_channels=temb_dim, add_downsample=i < len(types) - 1, resnet_eps=1e-5, resnet_act_fn="silu",
                resnet_groups=c.norm_num_groups, attention_head_dim=c.attention_head_dim, downsample_padding=1,
                dropout=c.dropout,
            ))
            prev = out
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = ResnetBlock2D(in_channels=width, out_channels=width, temb_channels=temb_dim,
                                       groups=c.norm_num_groups, eps=1e-5, dropout=c.dropout)
        self.norm_out = nn.GroupNorm(c.norm_num_groups, width, eps=1e-5)
        self.act = nn.SiLU()
        final = c.sample_size // 2 ** (len(types) - 1)
        # guided-diffusion's AttentionPool2d adds a learned position embedding to the (h·w) tokens;
        # diffusers' AttentionPooling (DeepFloyd IF) then lets the mean token attend over them.
        self.position_embedding = nn.Parameter(torch.randn(final * final, width) / width**0.5)
        self.pool = AttentionPooling(num_heads=width // c.attention_head_dim, embed_dim=width)
        self.head = nn.Linear(width, c.num_classes)

    # ------------------------------------------------------------------ forward

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Logits (B, num_classes) for noisy latents x (B, C, s, s) at integer timesteps t ((B,) or scalar)."""
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.latent_channels or x.shape[2:] != (c.sample_size, c.sample_size):
            raise ValueError(f"classifier expects latents of shape (B, {c.latent_channels}, {c.sample_size}, "
                             f"{c.sample_size}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(-1)
        temb = self.time_embedding(self.time_proj(t).to(x.dtype))          # (B, 4·ch0)
        h = self.conv_in(x)                                                # (B, ch0, s, s)
        for block in self.down_blocks:
            h, _ = block(h, temb)                                          # halves s except in the last block
        h = self.act(self.norm_out(self.mid_block(h, temb)))               # (B, width, s', s')
        tokens = h.flatten(2).transpose(1, 2) + self.position_embedding.to(h.dtype)  # (B, s'·s', width)
        return self.head(self.pool(tokens))                                # (B, num_classes)

    # ------------------------------------------------------------------ classes and guidance

    def class_index(self, label: int | str) -> int:
        """Index of a class given by name (exact, else a unique case-insensitive match) or index
        (an int, or a string of digits as the CLI passes it)."""
        names = self.config.names
        valid = f"valid names: {', '.join(repr(n) for n in names)}; or an index 0..{len(names) - 1}"
        if label is None:
            raise ValueError(f"classifier guidance needs a class (class_label / --class); {valid}")
        if isinstance(label, bool):
            raise ValueError(f"class {label!r} is neither a name nor an index; {valid}")
        if isinstance(label, str):
            if label in names:
                return names.index(label)
            folded = [i for i, n in enumerate(names) if n.casefold() == label.strip().casefold()]
            if len(folded) == 1:
                return folded[0]
            if label.strip().lstrip("-").isdigit():
                label = int(label)
            else:
                raise ValueError(f"unknown class {label!r} for this classifier (label column "
                                 f"{self.config.label_column!r}); {valid}")
        if isinstance(label, int) or (torch.is_tensor(label) and label.ndim == 0):
            i = int(label)
            if not 0 <= i < len(names):
                raise ValueError(f"class index {i} is out of range for a {len(names)}-class classifier; {valid}")
            return i
        raise ValueError(f"class {label!r} ({type(label).__name__}) is neither a name nor an index; {valid}")

    def log_prob_fn(self, class_label: int | str | Sequence[int | str],
                    batch_size: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``log_prob(x_t, t) -> (B,)``: log p_φ(y | x_t, t), the log-softmax at the target class,
        for :class:`latentdiff.denoisers.ClassifierGuidance`. ``class_label`` is one class for the
        whole batch or a list with one class per image. Puts the classifier in eval mode."""
        if isinstance(class_label, (list, tuple)):
            if len(class_label) != batch_size:
                raise ValueError(f"{len(class_label)} class labels for a batch of {batch_size} images; "
                                 "pass one label, or one per image")
            y = torch.tensor([self.class_index(lbl) for lbl in class_label])
        else:
            y = torch.full((batch_size,), self.class_index(class_label))
        self.eval()

        def log_prob(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            logits = self(x.to(device=self.device, dtype=self.dtype), t.to(self.device))
            lp = logits.float().log_softmax(dim=-1)                        # (B, K)
            return lp.gather(1, y.to(lp.device)[:, None]).squeeze(1).to(device=x.device, dtype=x.dtype)

        return log_prob

    def check_compatible(self, unet=None, latent_shape: Sequence[int] | None = None,
                         alphas_cumprod: torch.Tensor | None = None) -> None:
        """ValueError unless this classifier can guide ``unet`` at latents of ``latent_shape``
        ((B, C, h, w) or (C, h, w)); a warning if it was trained under another noise schedule."""
        c = self.config
        fix = "train a classifier on this model's VAE latents: latentdiff train classifier --vae-from MODEL"
        if unet is not None and int(unet.config.in_channels) != c.latent_channels:
            raise ValueError(f"the classifier takes {c.latent_channels}-channel latents but the pipeline's U-Net "
                             f"uses {unet.config.in_channels} channels; {fix}")
        if latent_shape is not None:
            ch, h, w = tuple(latent_shape)[-3:]
            if ch != c.latent_channels:
                raise ValueError(f"the classifier takes {c.latent_channels}-channel latents, the sampler's have "
                                 f"{ch}; {fix}")
            if (h, w) != (c.sample_size, c.sample_size):
                raise ValueError(f"the classifier was trained on {c.sample_size}×{c.sample_size} latents but this "
                                 f"generation uses {h}×{w}; generate at the model's default size (leave "
                                 "height/width unset) or train a classifier for that size")
        elif unet is not None and int(unet.config.sample_size) != c.sample_size:
            raise ValueError(f"the classifier was trained on {c.sample_size}×{c.sample_size} latents but the "
                             f"U-Net's sample_size is {unet.config.sample_size}; {fix}")
        if alphas_cumprod is not None:
            if len(alphas_cumprod) != c.num_train_timesteps:
                raise ValueError(f"the classifier was trained with {c.num_train_timesteps} timesteps, the pipeline "
                                 f"uses {len(alphas_cumprod)}; {fix}")
            if not torch.allclose(self.alphas_cumprod().to(alphas_cumprod), alphas_cumprod, atol=1e-6):
                logger.warning("The classifier was trained under another noise schedule (%s, β %g..%g) than the "
                               "pipeline's; its noise levels t will not match exactly", c.beta_schedule,
                               c.beta_start, c.beta_end)

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t (float64) of the schedule the classifier was trained under."""
        from .diffusion import make_alphas_cumprod

        c = self.config
        return make_alphas_cumprod(c.beta_schedule, c.num_train_timesteps, c.beta_start, c.beta_end)

    # ------------------------------------------------------------------ files

    def save_pretrained(self, save_directory: str | os.PathLike, *, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` atomically (the folder appears whole or not at all)."""
        from safetensors.torch import save_file

        from .errors import NonFiniteError
        from .io import atomic_dir

        state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in self.state_dict().items()}
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteError(f"not saving {save_directory}: the classifier weights hold NaN/Inf ({', '.join(bad[:3])})")
        with atomic_dir(save_directory, also_ours=("training_config.yaml", "training_summary.json",
                                                  "accuracy_vs_t.md", "accuracy_vs_t.json", "accuracy_vs_t.png"),
                        keep=("README.md",)) as tmp:
            meta = {"_class_name": type(self).__name__, **to_dict(self.config)}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype = torch.float32) -> "NoisyLatentClassifier":
        """Load from a local folder (a saved classifier, a training run's folder, or a pipeline folder
        with a ``classifier/`` subfolder) or a Hub repo id (``user/name``, optional ``revision``)."""
        from safetensors.torch import load_file

        from .io import check_weights, read_json, resolve_model_dir

        root = resolve_model_dir(path_or_repo_id, revision=revision, kind="classifier")
        folder = next((root / s for s in SEARCH_SUBFOLDERS if (root / s / CONFIG_NAME).is_file()
                       and (root / s / WEIGHTS_NAME).is_file()), None)
        if folder is None:
            raise FileNotFoundError(f"no classifier in {root}: expected {CONFIG_NAME} and {WEIGHTS_NAME} in it or in "
                                    f"its {', '.join(s + '/' for s in SEARCH_SUBFOLDERS if s)} subfolder "
                                    "(train one with `latentdiff train classifier`)")
        data = read_json(folder / CONFIG_NAME, "the classifier config")
        if data.get("_class_name", cls.__name__) != cls.__name__:
            raise ValueError(f"{folder / CONFIG_NAME} describes a {data['_class_name']}, not a {cls.__name__}")
        try:
            config = from_dict(ClassifierConfig, {k: v for k, v in data.items() if not k.startswith("_")})
        except ConfigError as e:
            raise ValueError(f"{folder / CONFIG_NAME}: {e}") from None
        check_weights(folder)
        model = cls(config)
        state = load_file(str(folder / WEIGHTS_NAME))
        missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
        if missing or unexpected:
            raise ValueError(f"{folder / WEIGHTS_NAME} does not match {CONFIG_NAME}: missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:  # shape mismatch
            raise ValueError(f"{folder / WEIGHTS_NAME} does not match {CONFIG_NAME}: {e}") from None
        return model.to(device=device, dtype=torch_dtype).eval()


def load_classifier(path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                    device: str | torch.device = "cpu") -> NoisyLatentClassifier:
    """What ``latentdiff generate --classifier PATH`` loads: frozen, in eval mode (only x_t gets a gradient)."""
    model = NoisyLatentClassifier.from_pretrained(path_or_repo_id, revision=revision, device=device)
    return model.requires_grad_(False)


def scale_schedule(scale: float, kind: str = "constant",
                   num_train_timesteps: int = 1000) -> float | Callable[[int], float]:
    """A classifier-guidance scale over the sampling steps, for ``classifier_scale=``:

    - ``constant``: s at every step (Dhariwal & Nichol 2021);
    - ``linear``: s · (t+1)/T, strongest at high noise (where the layout is decided), 0 near the end;
    - ``reverse``: s · (1 - t/T), strongest near the end (details).
    """
    T = num_train_timesteps
    if kind == "constant":
        return float(scale)
    if kind == "linear":
        return lambda t: float(scale) * (t + 1) / T
    if kind == "reverse":
        return lambda t: float(scale) * (1 - t / T)
    raise ValueError(f"Unknown classifier scale schedule {kind!r}; choose one of constant, linear, reverse")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ClassifierConfig", "NoisyLatentClassifier", "load_classifier", "scale_schedule"]
