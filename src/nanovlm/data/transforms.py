"""Image preprocessing and training augmentations (Pillow + torch; no torchvision).

Augmentations must never make the text wrong: rotations are small, colour jitter only touches brightness and
contrast (never hue, so a red ball stays red), and a horizontal flip also swaps "left" and "right" in the text."""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageEnhance

from ..config import VisionConfig


def to_tensor(image: Image.Image, cfg: VisionConfig) -> torch.Tensor:
    """Resize to the encoder's square input and normalise: PIL RGB -> (3, S, S) float tensor."""
    if image.size != (cfg.image_size, cfg.image_size):
        image = image.resize((cfg.image_size, cfg.image_size), Image.BICUBIC)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0           # (S, S, 3)
    mean = np.asarray(cfg.image_mean, dtype=np.float32)
    std = np.asarray(cfg.image_std, dtype=np.float32)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())


def augment(image: Image.Image, rng: random.Random, max_rotation: float = 5.0, jitter: float = 0.1) -> Image.Image:
    """Random small rotation and brightness/contrast jitter. The horizontal flip is decided per sample by the
    loader, because the text must be flipped with it."""
    if max_rotation:
        angle = rng.uniform(-max_rotation, max_rotation)
        # Fill the corners with the edge colour rather than black, which could read as a new object.
        image = image.rotate(angle, resample=Image.BILINEAR, fillcolor=image.getpixel((0, 0)))
    if jitter:
        image = ImageEnhance.Brightness(image).enhance(1 + rng.uniform(-jitter, jitter))
        image = ImageEnhance.Contrast(image).enhance(1 + rng.uniform(-jitter, jitter))
    return image


def hflip(image: Image.Image) -> Image.Image:
    return image.transpose(Image.FLIP_LEFT_RIGHT)
