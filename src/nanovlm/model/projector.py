"""Projectors: vision-encoder outputs -> image tokens in the decoder's embedding space."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import VLMConfig
from .layers import linear


def pixel_shuffle(x: torch.Tensor, factor: int, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Space-to-depth on a grid of tokens (row by row; square unless grid=(rows, cols) says otherwise):
    (B, rows*cols, C) -> (B, rows*cols / f^2, C * f^2).
    Each output token holds an f x f block of neighbouring patches, so the decoder sees f^2 fewer tokens."""
    B, P, C = x.shape
    rows, cols = grid or (int(P ** 0.5),) * 2
    assert rows * cols == P and rows % factor == 0 and cols % factor == 0, \
        f"{P} tokens do not form a {rows} x {cols} grid divisible by {factor}"
    x = x.reshape(B, rows // factor, factor, cols // factor, factor, C)   # (B, gy, fy, gx, fx, C)
    x = x.permute(0, 1, 3, 2, 4, 5)                                        # (B, gy, gx, fy, fx, C)
    return x.reshape(B, (rows // factor) * (cols // factor), factor * factor * C)


class Projector(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        p, width, n_embd = cfg.projector, cfg.vision.width, cfg.decoder.n_embd
        self.kind, self.source, self.factor = p.kind, p.source, p.shuffle_factor
        self.has_cls = cfg.vision.use_cls
        self.grid = cfg.vision.grid
        if p.kind == "mlp":
            hidden = p.hidden_dim or 4 * width
            self.fc = nn.Linear(width, hidden)
            self.proj = nn.Linear(hidden, n_embd)
        else:
            self.proj = nn.Linear(width * p.shuffle_factor ** 2, n_embd, bias=False)
        self.norm = nn.LayerNorm(n_embd) if p.output_norm else nn.Identity()

    def forward(self, vision_out: torch.Tensor, packed: dict | None = None) -> torch.Tensor:
        """(B, [1 +] P, width) -> (B, image_tokens_per_image, n_embd)."""
        if self.source == "cls":
            x = vision_out[:, :1]                     # the contextualised CLS vector: ONE image token
        else:
            x = vision_out[:, 1:] if self.has_cls else vision_out
        if self.kind == "mlp":
            return self.norm(linear(self.proj, F.gelu(linear(self.fc, x, packed)), packed))
        return self.norm(linear(self.proj, pixel_shuffle(x, self.factor, self.grid), packed))
