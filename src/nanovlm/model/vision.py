"""Vision Transformer: image (B, 3, H, W) -> token embeddings (B, [1 +] num_patches, width)."""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import VisionConfig
from .efficientnet import EfficientNetLite0Stem
from .layers import MLP, Attention
from .scattering import ScatteringPatchStem


class LinearPatchStem(nn.Module):
    """SigLIP: one conv with kernel = stride = patch size, i.e. a linear map of each flattened patch."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.conv = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, images):
        return self.conv(images).flatten(2).transpose(1, 2)            # (B, num_patches, width)


class Conv2PatchStem(nn.Module):
    """The NanoVLMs paper: two strided convs -> LayerNorm -> ReLU -> linear to the model width.
    The first conv works on (patch/4)-pixel cells, the second merges 4 x 4 cells into one patch, so the stem
    sees local structure inside a patch before projecting it."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        cell = cfg.patch_size // 4
        self.conv1 = nn.Conv2d(3, cfg.stem_channels, kernel_size=cell, stride=cell)
        self.conv2 = nn.Conv2d(cfg.stem_channels, cfg.stem_channels, kernel_size=4, stride=4)
        self.norm = nn.LayerNorm(cfg.stem_channels, eps=cfg.norm_eps)
        self.proj = nn.Linear(cfg.stem_channels, cfg.width)

    def forward(self, images):
        # Both convs have stride == kernel (no overlap), so each is a matrix product over non-overlapping cells.
        # Written as such, channels last: 2026-11-26, bf16 on 2 CPU cores, batch 32 at 224 px, 88 ms against
        # oneDNN's 120 ms for the two convs; the same numbers, the same weights (nn.Conv2d's, for checkpoints).
        cell = self.conv1.kernel_size[0]
        x = cells_last(images.permute(0, 2, 3, 1), cell)                          # (B, h, w, cell*cell*3)
        x = F.linear(x, self.conv1.weight.permute(0, 2, 3, 1).flatten(1), self.conv1.bias)   # (B, h, w, stem)
        x = cells_last(x, 4)                                                      # (B, h/4, w/4, 16*stem)
        x = F.linear(x, self.conv2.weight.permute(0, 2, 3, 1).flatten(1), self.conv2.bias)
        x = x.flatten(1, 2)                                                       # (B, num_patches, stem)
        return self.proj(torch.relu(self.norm(x)))                                # (B, num_patches, width)


def cells_last(x: torch.Tensor, cell: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, H/cell, W/cell, cell*cell*C): each cell's pixels in (row, column, channel) order, the
    order of a Conv2d weight permuted to (out, kh, kw, in)."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // cell, cell, W // cell, cell, C).transpose(2, 3)
    return x.reshape(B, H // cell, W // cell, cell * cell * C)


class ConvNetPatchStem(nn.Module):
    """A small conv net: 3 x 3 convs with stride 2 (GroupNorm, GELU) halve the picture log2(patch) times, then a
    1 x 1 conv maps to the model width ("Early convolutions help transformers see better", Xiao et al. 2021).
    Unlike the linear stems it sees edges and corners across patch borders. Channels double up to stem_channels."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        n_down = cfg.patch_size.bit_length() - 1
        channels = [3] + [cfg.stem_channels >> (n_down - 1 - i) for i in range(n_down)]
        layers = []
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False),
                       nn.GroupNorm(1, c_out, eps=cfg.norm_eps), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels[-1], cfg.width, kernel_size=1)

    def forward(self, images):
        return self.proj(self.convs(images)).flatten(2).transpose(1, 2)   # (B, num_patches, width)


class ResNetPatchStem(nn.Module):
    """A small ResNet-style stem: per halving, a 3 x 3 stride-2 conv, then a residual 3 x 3 conv, each followed by a
    BatchNorm and GELU, and a 1 x 1 conv to the model width. Two things make it learn form where `convnet` does
    not (README, "Does the vision encoder see form?"): batch norm normalises each channel over the batch, where
    the convnet's one-group norm normalises over a whole picture that is mostly background; and the extra conv per
    stage doubles the receptive field (a 64 px picture's 8 px patch sees 35 px, a whole shape). Channels double up
    to stem_channels. The batch statistics (running_mean/var) are saved with the weights; eval() uses them."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        n_down = cfg.patch_size.bit_length() - 1
        channels = [3] + [cfg.stem_channels >> (n_down - 1 - i) for i in range(n_down)]
        self.down = nn.ModuleList(_conv_bn_gelu(c_in, c_out, stride=2) for c_in, c_out in zip(channels, channels[1:]))
        self.residual = nn.ModuleList(_conv_bn_gelu(c, c, stride=1) for c in channels[1:])
        self.proj = nn.Conv2d(channels[-1], cfg.width, kernel_size=1)

    def forward(self, images):
        x = images
        for down, residual in zip(self.down, self.residual):
            x = down(x)
            x = x + residual(x)
        return self.proj(x).flatten(2).transpose(1, 2)                  # (B, num_patches, width)


def _conv_bn_gelu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.GELU())


STEMS = {"linear": LinearPatchStem, "conv2": Conv2PatchStem, "convnet": ConvNetPatchStem, "resnet": ResNetPatchStem,
         "efficientnet_lite0": EfficientNetLite0Stem, "scattering": ScatteringPatchStem}


class VisionBlock(nn.Module):
    """Pre-LN transformer block with bidirectional attention."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        head_dim = cfg.width // cfg.n_head
        approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg.width, cfg.n_head, cfg.n_head, head_dim, bias=True, dropout=cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.width, cfg.mlp_hidden, bias=True, approximate=approximate, dropout=cfg.dropout)

    def forward(self, x, packed: dict | None = None):
        x = x + self.attn(self.norm1(x), causal=False, packed=packed)
        return x + self.mlp(self.norm2(x), packed=packed)


@functools.lru_cache(maxsize=16)     # made once per grid: the forward pass reuses it (never modified in place)
def sincos_2d(rows: int, cols: int, width: int, cls: bool = False) -> torch.Tensor:
    """MAE's fixed 2-D position table for a rows x cols grid of patches (row by row): half the channels encode
    the row, half the column, each as sines and cosines of geometrically spaced frequencies.
    Returns (1, [1 +] rows * cols, width); the CLS token's row is zero."""
    quarter = width // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    row_index, col_index = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")

    def encode(coordinate):
        angles = coordinate.flatten()[:, None].double() * frequencies          # (rows * cols, quarter)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(row_index), encode(col_index)], dim=1).float()   # (rows * cols, width)
    if cls:
        table = torch.cat([torch.zeros(1, width), table])
    return table[None]


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_stem = STEMS[cfg.patch_stem](cfg)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width)) if cfg.use_cls else None
        # a sincos table is fixed: made in forward from the config, so it is neither trained nor saved
        self.position = (nn.Parameter(torch.zeros(1, cfg.num_patches + int(cfg.use_cls), cfg.width))
                         if cfg.position == "learned" else None)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)

    def forward(self, images: torch.Tensor | None, packed: dict | None = None,
                fixed: torch.Tensor | None = None) -> torch.Tensor:
        """packed: prepacked Linear weights (layers.pack_linear_weights) for inference, or None.
        fixed: instead of images, the output of the stem's fixed front for them (patch_stem.fixed), kept from an
        earlier step (cache_vision=true with the scattering stem)."""
        if fixed is not None:
            x = self.patch_stem.from_fixed(fixed)
        else:
            B, C, H, W = images.shape
            expected = (3, self.cfg.height, self.cfg.image_size)
            assert (C, H, W) == expected, \
                f"expected images of shape (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}"
            x = self.patch_stem(images)                               # (B, P, width)
        B = x.shape[0]
        if self.cls is not None:
            x = torch.cat([self.cls.expand(B, -1, -1), x], dim=1)     # (B, 1 + P, width); CLS first
        position = self.position if self.position is not None else \
            sincos_2d(*self.cfg.grid, self.cfg.width, self.cls is not None).to(x.device, x.dtype)
        x = self.dropout(x + position)
        for block in self.blocks:
            x = block(x, packed=packed)
        return self.norm(x)
