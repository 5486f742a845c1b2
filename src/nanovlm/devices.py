"""Where to run: `--device` names -> torch.device, with a clear error when the machine lacks what was asked for.

    resolve_device("auto")    # cuda when torch sees a GPU, else cpu
    resolve_device("cuda:1")  # ConfigError on a machine without a second GPU, before any model is built
"""
from __future__ import annotations

import re

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
