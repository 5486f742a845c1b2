"""Where to run: `--device` names -> torch.device, with a clear error when the machine lacks what was asked for.

    resolve_device("auto")    # cuda when torch sees a GPU, else cpu
    resolve_device("cuda:1")  # ConfigError on a machine without a second GPU, before any model is built
"""
from __future__ import annotations

import re
import warnings

import torch

from .config import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device) -> torch.device:
    """auto | cpu | cuda | cuda:N | mps -> torch.device. "auto" picks CUDA when available, else the CPU (Apple's
    MPS only when asked for: not every op the trainer uses runs there). Raises ConfigError naming the fix."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ConfigError(f"device must be one of {DEVICE_CHOICES}; got {name!r}")
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("MPS (the Apple GPU) is not available on this machine; use --device cpu")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise ConfigError(f"device must be one of {DEVICE_CHOICES}; got {name!r}")
    if not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine; use --device cpu")
    if match.group(1) is None:
        return torch.device("cuda")
    index, count = int(match.group(1)), torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device cuda:{index} does not exist: this machine has {count} CUDA device(s), "
                          f"cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run fast on this device: a CUDA GPU with bf16 support, or a CPU with
    AVX512-BF16 or AMX instructions. Other CPUs (AVX2 only: most laptops, AMD before Zen 4) have no bf16
    arithmetic, and torch's bf16 matmul there is a slow fallback: 64x slower than fp32 on our 2-core AVX2
    machine (2026-11-27, torch 2.13: 423 ms against 6.7 ms for a (4288 x 128) @ (128 x 512) product)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # torch.cpu's feature probes are private; a torch without them gets the safe answer, fp32
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto | fp32 | bf16 | fp16 -> the training precision to use on `device`. "auto" is bf16 autocast where bf16
    is fast (has_fast_bf16), else fp32. An explicit bf16 on a CPU without bf16 instructions is kept, with a
    warning: it is many times slower there."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs CUDA; use auto, fp32 or bf16")
    if precision == "auto":
        return "bf16" if has_fast_bf16(device) else "fp32"
    if precision == "bf16":
        warn_if_bf16_is_slow(device, "precision bf16", "precision auto would use fp32")
    return precision


def warn_if_bf16_is_slow(device: torch.device, what: str, instead: str):
    """One warning when bf16 was asked for on a CPU that has no bf16 instructions (it still runs, slowly)."""
    if device.type == "cpu" and not has_fast_bf16(device):
        warnings.warn(f"{what} on a CPU without bf16 instructions (AVX512-BF16 or AMX): its matrix products run "
                      f"many times slower than fp32 here; {instead}", stacklevel=3)
