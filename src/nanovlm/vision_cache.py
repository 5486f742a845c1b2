"""A frozen vision encoder's outputs kept per picture (training with cache_vision=true).

When the encoder does not train and a picture's pixels are the same at every visit (no rotation or colour
jitter; a mirror flip is a second picture), its output is too: computing it once and keeping it skips the
decoding of the picture and the encoder's forward pass at every later visit. Steps then cost what the
projector and the decoder cost.

The encoder runs in inference mode here (batch norms with their running statistics, no dropout), as a frozen
encoder should: with the efficientnet_lite0 stem (fixed batch norms) and no vision dropout, that gives the same
numbers as the uncached training step (a test checks it)."""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn as nn


class VisionCache:
    """features(keys) -> (N, patches, width), computing the outputs of the keys not seen yet in one batch."""

    def __init__(self, vision: nn.Module, load_picture: Callable[[str], torch.Tensor], device: torch.device):
        self.vision, self.load_picture, self.device = vision, load_picture, device
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
                outputs = self.vision(pictures)
            finally:
                self.vision.train(was_training)
            self.outputs.update(zip(new, outputs))
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        return torch.stack([self.outputs[k] for k in keys])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.outputs.values())


def check_cache_fits(n_entries: int, patches: int, width: int, bytes_per_value: int = 4,
                     memory_bytes: int | None = None) -> int:
    """The cache's size when every entry (a picture, or its mirror image) is kept; a ValueError when that would
    take more than half of this machine's memory, before any step runs."""
    size = n_entries * patches * width * bytes_per_value
    memory = memory_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if size > memory // 2:
        raise ValueError(f"cache_vision would keep up to {size / 2**30:.1f} GiB of encoder outputs "
                         f"({n_entries} pictures and mirror images x {patches} x {width} values), more than half "
                         f"of this machine's {memory / 2**30:.1f} GiB: train without cache_vision=true")
    return size
