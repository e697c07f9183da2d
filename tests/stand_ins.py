"""Stand-ins the evaluation tests share."""

from __future__ import annotations

from types import SimpleNamespace

import torch


class ImageVAE(torch.nn.Module):
    """The VAE of :class:`ImagePipe`: latents are images in [-1, 1], so encode and decode are the
    identity, or ``decode`` applies ``degrade`` (images in [-1, 1] -> images in [-1, 1])."""

    def __init__(self, degrade=None):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device and dtype to read
        self.degrade = degrade or (lambda x: x)

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z):
        return SimpleNamespace(sample=self.degrade(z))


class ImagePipe:
    """A stand-in pipeline whose latents are images: ``draw(prompt, seed)`` -> (3, H, W) in [0, 1]."""

    def __init__(self, draw, vae=None):
        self.draw = draw
        self.vae = vae if vae is not None else ImageVAE()

    def __call__(self, prompts, *, seed, output_type, **_):
        return SimpleNamespace(latents=torch.stack([self.draw(p, s) for p, s in zip(prompts, seed)]))

    def decode_latents(self, z):
        return z
