"""Where to run: `--device` names -> torch.device, with a clear error when the machine lacks what was asked for.

    resolve_device("auto")    # cuda when torch sees a GPU, else cpu
    resolve_device("cuda:1")  # ConfigError on a machine without a second GPU, before any model is built
"""
from __future__ import annotations

import functools
import re
import time
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


def has_bf16_instructions() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX). Without it (AVX2 only: most laptops, AMD before
    Zen 4) torch's bf16 matmul is a slow fallback: 64x slower than fp32 on our 2-core AVX2 machine (2026-11-27,
    torch 2.13: 423 ms against 6.7 ms for a (4288 x 128) @ (128 x 512) product)."""
    # torch.cpu's feature probes are private; a torch without them gets the safe answer, fp32
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


# bf16 must beat fp32 by this much to be chosen by "auto": a near tie is not worth bf16's rounding
BF16_MIN_SPEEDUP = 1.15


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How many times faster a bf16 matrix product runs than an fp32 one on this CPU, measured once per process
    (~20 ms) with torch's current thread count. Having bf16 instructions is not enough: on one of our 2-core
    AVX512-BF16 machines (an Intel Xeon without AMX, torch 2.13, 2026-11-28) a bf16 product ran at 170 GFLOP/s
    against fp32's 300, and bf16 autocast made small models' training steps 30-50% slower."""
    def best_time(dtype: torch.dtype) -> float:
        a, b = torch.randn(512, 512, dtype=dtype), torch.randn(512, 512, dtype=dtype)
        a @ b                                                       # first call: oneDNN picks and builds a kernel
        times = []
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)
    return best_time(torch.float32) / best_time(torch.bfloat16)


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run faster than fp32's on this device: a CUDA GPU with bf16 support, or a CPU
    with bf16 instructions (has_bf16_instructions) where a bf16 product measures at least BF16_MIN_SPEEDUP times
    faster (cpu_bf16_speedup)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return has_bf16_instructions() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto | fp32 | bf16 | fp16 -> the training precision to use on `device`. "auto" is bf16 autocast where bf16
    is fast (has_fast_bf16), else fp32. An explicit bf16 on a CPU where it is slow is kept, with a warning."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs CUDA; use auto, fp32 or bf16")
    if precision == "auto":
        return "bf16" if has_fast_bf16(device) else "fp32"
    if precision == "bf16":
        warn_if_bf16_is_slow(device, "precision bf16", "precision auto would use fp32")
    return precision


def resolve_weight_dtype(value: str, device: torch.device) -> str:
    """auto | fp32 | bf16 -> the dtype of the weights for decoding. One sequence at a time, decoding reads every
    weight once per token: bf16 halves the bytes read, so "auto" takes it wherever bf16 has instructions, even where
    bf16 products are slower than fp32's (2-core Xeon, 2026-11-28: the 222M model decodes 39.3 tokens/s with bf16
    weights, 33.5 with fp32, though a bf16 product runs at 0.57x fp32's speed)."""
    if value not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"weight dtype must be one of auto, fp32, bf16; got {value!r}")
    if value == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and has_bf16_instructions() else "fp32"
    if value == "bf16":
        warn_if_bf16_is_slow(device, "bf16 weights", "auto would use fp32", memory_bound=True)
    return value


def warn_if_bf16_is_slow(device: torch.device, what: str, instead: str, memory_bound: bool = False):
    """One warning when bf16 was asked for on a CPU where it is slow (it still runs): one without bf16
    instructions, or (for compute-bound work: training, long prompts; not memory_bound decoding) one whose bf16
    products measure no faster than fp32's."""
    if device.type != "cpu":
        return
    if not has_bf16_instructions():
        warnings.warn(f"{what} on a CPU without bf16 instructions (AVX512-BF16 or AMX): its matrix products run many "
                      f"times slower than fp32 here; {instead}", stacklevel=3)
    elif not memory_bound and cpu_bf16_speedup() < BF16_MIN_SPEEDUP:
        warnings.warn(f"{what} on this CPU: its bf16 matrix products measure {cpu_bf16_speedup():.2f}x the speed of "
                      f"fp32's (no gain); {instead}", stacklevel=3)
