"""`--set vision_init=PATH`: where a training run's vision encoder starts from.

- a converted EfficientNet-Lite0 file (`nanovlm convert efficientnet`): the ImageNet blocks of the
  efficientnet_lite0 stem (convert/efficientnet.py);
- another nanovlm model folder, or a safetensors file of `vision.*` tensors (what `save_pretrained` writes, or
  `benchmarks/form_probe.py supervised --save`): the whole encoder, which must have this model's shape. Only the
  encoder is taken; projector and decoder start fresh.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..model.mismatch import describe_mismatch
from ..model.vlm import WEIGHTS_FILE, CheckpointError
from . import efficientnet


def load_vision_init(model, path: str | os.PathLike) -> int:
    """Copy the weights at `path` into model.vision (see the module doc). Returns the number of tensors loaded."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"vision_init {path}: no such file or model folder (a converted EfficientNet file, "
                                f"a model folder with {WEIGHTS_FILE}, or a safetensors file of vision.* tensors)")
    try:
        with safe_open(str(file), framework="pt") as f:
            if (f.metadata() or {}).get("format") == efficientnet.FORMAT:
                return efficientnet.load_vision_init(model, file)
            found = {k.removeprefix("vision."): f.get_tensor(k) for k in f.keys() if k.startswith("vision.")}
    except SafetensorError as e:
        raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from None
    if not found:
        raise CheckpointError(f"{file} holds no vision.* tensors: vision_init takes a nanovlm model folder, a "
                              f"vision encoder saved from one, or a converted EfficientNet-Lite0 file")
    expected = {k: v for k, v in model.vision.state_dict().items() if not k.endswith("num_batches_tracked")}
    problem = describe_mismatch({f"vision.{k}": v for k, v in expected.items()},
                                {f"vision.{k}": v for k, v in found.items()}, str(file), "this run's vision config")
    if problem:
        raise CheckpointError(f"vision_init: {problem}")
    model.vision.load_state_dict(found, strict=False)
    return len(found)


def save_vision(model, path: str | os.PathLike) -> None:
    """Write model.vision's tensors as `vision.*` safetensors, which vision_init reads back."""
    from safetensors.torch import save_file

    tensors = {f"vision.{k}": v.detach().contiguous() for k, v in model.vision.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
