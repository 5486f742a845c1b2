"""A wavelet scattering transform as a patch stem (vision.patch_stem = "scattering"): form without pretraining.

A randomly initialised conv stem hands the decoder colour and little else, and learns form slowly through the
language-model loss (README, "Does the vision encoder see form?"). The scattering transform (Mallat 2012; Bruna &
Mallat 2013) is a conv net whose filters are fixed Morlet wavelets: J scales x L orientations, a modulus after each
layer, and a Gaussian average over 2^J x 2^J pixels at the end. Its coefficients describe edges and their
orientations (order 1) and how those edges are arranged (order 2), stable to small shifts and deformations, with
nothing learned. On one-thing 64 px pictures (benchmarks/form_probe.py tokens) a linear probe reads the shape
from the pooled coefficients at 90.5% (random conv stems: 24-28%; ImageNet's EfficientNet-Lite0 blocks at 64 px:
76.0%), and from the one token under the thing at 77.5% (EfficientNet-Lite0: 79.0%), 85.8% with its neighbours.

Per colour channel and 2^J x 2^J patch: 1 order-0 coefficient, J L order-1 and L^2 J (J - 1) / 2 order-2 ones
(61 for J = 3, L = 4). A batch norm and a 3 x 3 conv (each token sees its neighbours' coefficients) map them to
vision.width ("hybrid" scattering networks, Oyallon et al. 2017). They may train; on the shapes the VLM answered
better with them frozen at their random start (freeze=vision: README, docs/form.md, "Tenth round"), where the
language-model loss cannot trade form for colour. The filters follow kymatio's Scattering2D (its Morlet wavelets
and Gaussian, computed in the Fourier domain, each step subsampled as far as its band allows; a test checks its
numbers), written here in torch because kymatio 0.3 no longer imports with current SciPy; the picture is treated
as periodic (no padding). vision.scattering_context=N goes N octaves beyond the patch (J = log2(patch) + N) on the
same token grid, so each token describes its neighbourhood (one-token probe 77.5% -> 88.5% for N=1, 93.0% for
N=2; the VLM's answers did not improve with it: docs/form.md, "Eleventh round").
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import VisionConfig

ORIENTATIONS = 4   # 8 reads shape 3 points better (probe 93 against 90%) at 4x the cost


def gabor_2d(rows: int, cols: int, sigma: float, theta: float, xi: float, slant: float = 1.0) -> torch.Tensor:
    """A Gabor filter in space, (rows, cols) complex, periodised over the 5 x 5 neighbouring tiles (as kymatio)."""
    rotation = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
                            dtype=torch.float64)
    curvature = rotation @ torch.diag(torch.tensor([1.0, slant * slant], dtype=torch.float64)) @ rotation.T
    curvature = curvature / (2 * sigma * sigma)
    shifts = torch.arange(-2, 3, dtype=torch.float64)
    x = (torch.arange(rows, dtype=torch.float64)[None, :] + shifts[:, None] * rows).flatten()[:, None]   # (5 rows, 1)
    y = (torch.arange(cols, dtype=torch.float64)[None, :] + shifts[:, None] * cols).flatten()[None, :]   # (1, 5 cols)
    envelope = -(curvature[0, 0] * x * x + (curvature[0, 1] + curvature[1, 0]) * x * y + curvature[1, 1] * y * y)
    phase = xi * (x * math.cos(theta) + y * math.sin(theta))
    tiles = torch.exp(torch.complex(envelope, phase))                                       # (5 rows, 5 cols)
    gabor = tiles.reshape(5, rows, 5, cols).sum(dim=(0, 2))
    return gabor / (2 * math.pi * sigma * sigma / slant)


def morlet_2d(rows: int, cols: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    """A Gabor filter minus its envelope scaled to give exactly zero mean: a wavelet."""
    wave = gabor_2d(rows, cols, sigma, theta, xi, slant)
    envelope = gabor_2d(rows, cols, sigma, theta, 0.0, slant)
    return wave - wave.sum() / envelope.sum() * envelope


def low_frequencies(filter_hat: torch.Tensor, factor: int) -> torch.Tensor:
    """A filter's Fourier transform (..., R, C) for a signal subsampled by `factor`: (..., R/factor, C/factor),
    keeping the frequencies that the smaller grid can represent (kymatio's periodize_filter_fft)."""
    rows, cols = filter_hat.shape[-2:]
    r, c = rows // factor, cols // factor
    keep_rows = torch.cat([torch.arange(r - r // 2), torch.arange(rows - r // 2, rows)])
    keep_cols = torch.cat([torch.arange(c - c // 2), torch.arange(cols - c // 2, cols)])
    return filter_hat[..., keep_rows[:, None], keep_cols[None, :]]


def subsample(signal_hat: torch.Tensor, factor: int) -> torch.Tensor:
    """The Fourier transform of a signal subsampled by `factor` in space: its frequencies folded and averaged.
    The fold adds strided slices of the real view: a mean over the folded complex dimensions is 2x slower on CPU."""
    if factor == 1:
        return signal_hat
    *lead, rows, cols = signal_hat.shape
    folded = torch.view_as_real(signal_hat).reshape(*lead, factor, rows // factor, factor, cols // factor, 2)
    total = sum(folded[..., i, :, j, :, :] for i in range(factor) for j in range(factor))
    return torch.view_as_complex((total / factor ** 2).contiguous())


class Scattering2d(nn.Module):
    """(B, C, H, W) -> (B, C, K, H / 2^(J - oversample), W / 2^(J - oversample)), K = 1 + J L + L^2 J (J - 1) / 2.
    No parameters. oversample > 0 keeps the output grid 2^oversample times finer than the Gaussian's scale 2^J:
    each coefficient then describes a larger neighbourhood than its grid cell."""

    def __init__(self, height: int, width: int, J: int, L: int = ORIENTATIONS, oversample: int = 0):
        super().__init__()
        assert 0 <= oversample <= J, f"oversample must be in 0..J={J}, got {oversample}"
        self.height, self.width, self.J, self.L = height, width, J, L
        self.levels = J - oversample   # the output grid: subsampled by 2^levels; no signal goes finer than needed
        self._filters: dict[torch.device, dict[str, list[torch.Tensor]]] = {}

    def filters(self, device: torch.device) -> dict[str, list[torch.Tensor]]:
        """The wavelets (J, L, ...) and the Gaussian in the Fourier domain, at each resolution level r (signals
        subsampled by 2^r). Made on first use on each device rather than kept as buffers: they are fixed, never
        saved, and a model built on the meta device (from_pretrained) would otherwise hold empty ones."""
        if device not in self._filters:
            H, W, J, L = self.height, self.width, self.J, self.L
            wavelets = torch.stack([torch.stack([
                torch.fft.fft2(morlet_2d(H, W, 0.8 * 2 ** j, (L // 2 - 1 - t) * math.pi / L,
                                         0.75 * math.pi / 2 ** j, 4.0 / L)).real
                for t in range(L)]) for j in range(J)]).float()                 # (J, L, H, W)
            gaussian = torch.fft.fft2(gabor_2d(H, W, 0.8 * 2 ** (J - 1), 0.0, 0.0)).real.float()
            self._filters[device] = {
                "wavelets": [low_frequencies(wavelets, 2 ** level).to(device) for level in range(J)],
                "gaussian": [low_frequencies(gaussian, 2 ** level).to(device) for level in range(J)]}
        return self._filters[device]

    @property
    def n_coefficients(self) -> int:
        return 1 + self.J * self.L + self.L ** 2 * self.J * (self.J - 1) // 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        filters = self.filters(images.device)
        wavelets, gaussian = filters["wavelets"], filters["gaussian"]

        def level(j):   # the resolution a signal of band j is kept at: subsampled by 2^j, down to the output grid
            return min(j, self.levels)

        def average(signal_hat, r):   # Gaussian average of a signal at resolution r, down to the output grid
            return torch.fft.ifft2(subsample(signal_hat * gaussian[r], 2 ** (self.levels - r))).real

        x_hat = torch.fft.fft2(images.float())                                  # (B, C, H, W)
        order0 = average(x_hat, 0)[:, :, None]                                  # (B, C, 1, h, w)
        order1, order2 = [], []
        for j1 in range(self.J):
            # |x * psi_j1|, kept at the resolution its band allows (subsampled by 2^j1)
            r1 = level(j1)
            u1 = torch.fft.ifft2(subsample(x_hat[:, :, None] * wavelets[0][j1], 2 ** r1)).abs()
            u1_hat = torch.fft.fft2(u1)                                          # (B, C, L, H/2^r1, W/2^r1)
            order1.append(average(u1_hat, r1))                                  # (B, C, L, h, w)
            paths = []
            for j2 in range(j1 + 1, self.J):
                band = wavelets[r1][j2]                                          # (L, H/2^r1, W/2^r1)
                u2 = torch.fft.ifft2(subsample(u1_hat[:, :, :, None] * band, 2 ** (level(j2) - r1))).abs()
                paths.append(average(torch.fft.fft2(u2), level(j2)))            # (B, C, L, L, h, w)
            if paths:   # kymatio's order: (j1, theta1, j2, theta2)
                order2.append(torch.stack(paths, dim=3).flatten(2, 4))
        return torch.cat([order0, *order1, *order2], dim=2)


class ScatteringPatchStem(nn.Module):
    """Fixed scattering of each colour channel over patch_size x patch_size patches, then a batch norm and a
    3 x 3 conv to the model width: (B, 3, H, W) -> (B, num_patches, width)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        J = cfg.patch_size.bit_length() - 1                                   # a power of two (VisionConfig checks)
        context = cfg.scattering_context
        self.scattering = Scattering2d(cfg.height, cfg.image_size, J + context, oversample=context)
        channels = 2 * 3 * self.scattering.n_coefficients                      # each coefficient and its local max
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.proj = nn.Conv2d(channels, cfg.width, kernel_size=3, padding=1)

    @torch.no_grad()
    def fixed(self, images: torch.Tensor) -> torch.Tensor:
        """The part that never trains: (B, 3, H, W) -> scattering coefficients (B, 3 K, h, w). Training with
        cache_vision=true keeps it per picture (nanovlm.vision_cache)."""
        return self.scattering(images).flatten(1, 2)

    def from_fixed(self, coefficients: torch.Tensor) -> torch.Tensor:
        """The part that may train: coefficients (B, 3 K, h, w) -> (B, num_patches, width)."""
        x = coefficients.float()
        # with the max of each coefficient over the 3 x 3 tokens around, a token tells more of the thing it is on
        # (linear probe of one token, one-thing pictures: shape 77.5% -> 86.8%; with the 3 x 3 conv: 90.2%)
        x = torch.cat([x, F.max_pool2d(x, kernel_size=3, stride=1, padding=1)], dim=1)
        return self.proj(self.norm(x)).flatten(2).transpose(1, 2)

    def forward(self, images):
        return self.from_fixed(self.fixed(images))
