"""What a vision encoder computes the same way at every visit of a picture, kept per picture (training with
cache_vision=true).

When a picture's pixels are the same at every visit (no rotation or colour jitter; a mirror flip is a second
picture), so is whatever part of the encoder does not train. Two cases:
- the whole encoder is frozen (freeze=vision): its outputs are kept; later steps decode no picture and run no
  encoder, and cost what the projector and the decoder cost;
- the scattering stem (vision.patch_stem=scattering) is not frozen but begins with fixed wavelets: their
  coefficients are kept ("stem features"), and the stem's norm and 3 x 3 conv, the ViT blocks and the rest run
  and train as usual.

The encoder runs in inference mode here (batch norms with their running statistics, no dropout), as a frozen
encoder does while training (nanovlm.train.train_mode), so a cached step gives the same numbers as an uncached
one (tests check it)."""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn as nn


class VisionCache:
    """features(keys) -> (N, ...) per picture, computing the outputs of the keys not seen yet in one batch.
    kind "vision_features": the (frozen) encoder's outputs; "stem_features": its stem's fixed front
    (vision.patch_stem.fixed). The kind is also the name of the model's argument that takes them."""

    def __init__(self, vision: nn.Module, load_picture: Callable[[str], torch.Tensor], device: torch.device,
                 kind: str = "vision_features"):
        if kind not in ("vision_features", "stem_features"):
            raise ValueError(f"unknown cache kind {kind!r}")
        self.vision, self.load_picture, self.device, self.kind = vision, load_picture, device, kind
        self.outputs: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def features(self, keys: list[str]) -> torch.Tensor:
        new = list(dict.fromkeys(k for k in keys if k not in self.outputs))
        if new:
            pictures = torch.stack([self.load_picture(k) for k in new]).to(self.device)
            was_training = self.vision.training
            self.vision.eval()
            try:
                outputs = (self.vision(pictures) if self.kind == "vision_features"
                           else self.vision.patch_stem.fixed(pictures))
            finally:
                self.vision.train(was_training)
            self.outputs.update(zip(new, outputs))
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        return torch.stack([self.outputs[k] for k in keys])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.outputs.values())


def check_cache_fits(n_entries: int, values_per_entry: int, bytes_per_value: int = 4,
                     memory_bytes: int | None = None) -> int:
    """The cache's size when every entry (a picture, or its mirror image) is kept; a ValueError when that would
    take more than half of this machine's memory, before any step runs."""
    size = n_entries * values_per_entry * bytes_per_value
    memory = memory_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if size > memory // 2:
        raise ValueError(f"cache_vision would keep up to {size / 2**30:.1f} GiB ({n_entries} pictures and mirror "
                         f"images x {values_per_entry} values), more than half of this machine's "
                         f"{memory / 2**30:.1f} GiB: train without cache_vision=true")
    return size
