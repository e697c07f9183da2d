"""Stand-ins the evaluation tests share."""

from __future__ import annotations

from types import SimpleNamespace

import torch


class ImagePipe:
    """A stand-in pipeline whose latents are images: ``draw(prompt, seed)`` -> (3, H, W) in [0, 1]."""

    def __init__(self, draw):
        self.draw = draw

    def __call__(self, prompts, *, seed, output_type, **_):
        return SimpleNamespace(latents=torch.stack([self.draw(p, s) for p, s in zip(prompts, seed)]))

    def decode_latents(self, z):
        return z
