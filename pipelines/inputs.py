"""Image and mask inputs of the pipeline: what a user may pass, turned into what diffusers' own
``VaeImageProcessor`` takes, with a one-line error naming the argument otherwise.

The size rule (diffusers' ``VaeImageProcessor``): without ``height``/``width`` an image keeps its
size rounded *down* to a multiple of the VAE factor; with them it is resized to exactly that size
(Lanczos, aspect ratio not kept, as diffusers does). Masks follow the image: white (1) = repaint,
black (0) = keep; grey levels are binarised at 0.5 for the latents, and kept (after ``mask_blur``)
as the alpha of the paste-back.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, UnidentifiedImageError

IMAGE_TYPES = "a PIL image, an (H, W, 3) uint8 or [0, 1] float array, a (3, H, W) [0, 1] tensor, or a file path"


def to_pil(value, name: str, mode: str) -> Image.Image:
    """``value`` as a PIL image of ``mode`` ("RGB" for images, "L" for masks)."""
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: {path} not found")
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert(mode)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{name}: {path} is not a readable image ({e}); pass a PNG/JPEG/WebP file") from None
    if isinstance(value, Image.Image):
        return value.convert(mode)
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().float()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"{name}: a tensor must be (3, H, W), (1, H, W) or (1, 3, H, W); got {tuple(value.shape)}")
        value = t.permute(1, 2, 0).numpy()
    if isinstance(value, np.ndarray):
        a = value
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
            raise ValueError(f"{name}: an array must be (H, W), (H, W, 3) or (H, W, 4); got {a.shape}")
        if a.dtype != np.uint8:
            a = a.astype(np.float64)
            if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
                raise ValueError(f"{name}: a float array or tensor must hold finite values in [0, 1]")
            a = (a * 255).round().astype(np.uint8)
        return Image.fromarray(a).convert(mode)
    raise TypeError(f"{name} must be {IMAGE_TYPES}; got {type(value).__name__}")


def working_size(image: Image.Image, factor: int, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width) the pipeline works at for ``image`` (see the module docstring)."""
    h = height if height is not None else image.height - image.height % factor
    w = width if width is not None else image.width - image.width % factor
    if h <= 0 or w <= 0:
        raise ValueError(f"image of {image.width}x{image.height} px is smaller than the VAE factor {factor}")
    return h, w


def outpaint_canvas(image: Image.Image, mask: Image.Image | None, pad: tuple[int, int, int, int]):
    """Extend ``image`` by (left, right, top, bottom) px, repeating its edge pixels, and a mask that
    is white on the new area (and on ``mask``'s white area, if given)."""
    left, right, top, bottom = pad
    if min(pad) < 0 or not any(pad):
        raise ValueError(f"outpaint must be 4 non-negative pixel counts (left, right, top, bottom), not all 0; got {pad}")
    a = np.pad(np.asarray(image), ((top, bottom), (left, right), (0, 0)), mode="edge")
    m = np.full(a.shape[:2], 255, np.uint8)
    m[top:top + image.height, left:left + image.width] = np.asarray(mask) if mask is not None else 0
    return Image.fromarray(a), Image.fromarray(m)


def blur_mask(mask: Image.Image, radius: float) -> Image.Image:
    """A1111's mask blur: a Gaussian blur of ``radius`` px (0 = none)."""
    if radius < 0 or not np.isfinite(radius):
        raise ValueError(f"mask_blur must be a finite number of pixels >= 0, got {radius}")
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius else mask


