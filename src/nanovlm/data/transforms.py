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
    """Resize to the encoder's input size and normalise: PIL RGB -> (3, H, W) float tensor."""
    image = _resized(image, cfg)
    # numpy, not torch: torch would run these element-wise ops on an OpenMP team of the calling thread, which
    # slows a model's team working in another thread (see serve/server.py).
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)                  # (H, W, 3), 0..255
    mean, std = np.asarray(cfg.image_mean, np.float32), np.asarray(cfg.image_std, np.float32)
    pixels *= 1 / (255 * std)
    pixels -= mean / std                                                         # (x / 255 - mean) / std
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def to_pixels(image: Image.Image, cfg: VisionConfig) -> torch.Tensor:
    """Resize to the encoder's input size, not yet normalised: PIL RGB -> (H, W, 3) uint8 tensor. A server's
    request threads do this much; normalise_batch() does the rest for a whole batch in the model's thread."""
    return torch.from_numpy(np.array(_resized(image, cfg).convert("RGB")))


def _resized(image: Image.Image, cfg: VisionConfig) -> Image.Image:
    """The picture at the encoder's input size (square unless vision.image_height is set)."""
    size = (cfg.image_size, cfg.height)
    if image.size != size:
        image = image.resize(size, Image.BICUBIC)
    return image


def normalise_batch(pixels: torch.Tensor, cfg: VisionConfig) -> torch.Tensor:
    """(B, H, W, 3) uint8 from to_pixels() -> (B, 3, H, W) float32, the same numbers as to_tensor() gives."""
    mean = torch.tensor(cfg.image_mean, dtype=torch.float32, device=pixels.device)
    std = torch.tensor(cfg.image_std, dtype=torch.float32, device=pixels.device)
    x = pixels.permute(0, 3, 1, 2).float()
    return x.mul_((1 / (255 * std))[:, None, None]).sub_((mean / std)[:, None, None])


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
