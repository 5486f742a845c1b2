"""Training checkpoints: the model folder (save_pretrained) plus everything an exact resume needs.

A checkpoint folder holds config.json, model.safetensors, tokenizer.json (a usable model on its own), and
  optimizer.safetensors   every optimizer state tensor, flattened
  trainer_state.json      step, data position, best validation loss, optimizer hyper-parameters, RNG states
Nothing is pickled. A checkpoint is first written to a temporary folder and then swapped in with renames, so a
kill at any moment leaves either the old or the new checkpoint, never a half-written one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from .model.vlm import CheckpointError, VisionLanguageModel

OPTIMIZER_FILE, STATE_FILE = "optimizer.safetensors", "trainer_state.json"


def save_checkpoint(folder: str | Path, model: VisionLanguageModel, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, tokenizer=None):
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, tokenizer=tokenizer)
    tensors, groups = flatten_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(tmp / OPTIMIZER_FILE))
    state = dict(trainer_state, optimizer_param_groups=groups, rng=capture_rng())
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    _fsync_tree(tmp)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint at `folder`, or its `.old` twin when a kill came between the two renames of a save."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def load_checkpoint(folder: str | Path, model: VisionLanguageModel, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model weights and optimizer state in place; return the trainer state. Its "rng" entry is left
    for the caller to restore with restore_rng() once everything that draws random numbers at set-up
    (model init, DataLoader iterators) has run, so the resumed run draws exactly what the original did."""
    found = find_checkpoint(folder)
    if found is None:
        raise CheckpointError(f"no checkpoint to resume from in {folder} (expected {STATE_FILE}); "
                              f"start without --resume")
    try:
        state = json.loads((found / STATE_FILE).read_bytes().decode("utf-8"))
        groups = state.pop("optimizer_param_groups")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{found / STATE_FILE} is damaged ({type(e).__name__}: {e}); resume from another "
                              f"checkpoint or start without --resume") from None
    weights = _load_tensors(found / "model.safetensors")
    model.load_weights(weights, source=str(found / "model.safetensors"), config=str(found / "config.json"))
    tensors = _load_tensors(found / OPTIMIZER_FILE)
    try:
        optimizer.load_state_dict(unflatten_optimizer_state(tensors, groups))
    except (ValueError, KeyError, TypeError) as e:
        # e.g. other frozen modules or another optimizer: the saved state has other parameter groups
        raise CheckpointError(f"{found / OPTIMIZER_FILE} does not fit this run's optimizer ({e}); resume with the "
                              f"training options the checkpoint was made with") from None
    return state


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is missing or corrupted ({e}); resume from another checkpoint or start "
                              f"without --resume") from None


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], list]:
    """{"state": {param_id: {name: tensor}}, "param_groups": [...]} -> flat tensors + JSON-able groups."""
    tensors = {}
    for param_id, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{param_id}.{name}"] = value.detach().contiguous().cpu()
    return tensors, state_dict["param_groups"]


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], param_groups: list) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    return {"state": state, "param_groups": param_groups}


def capture_rng() -> dict:
    rng = {"python": _jsonable(random.getstate()), "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        rng["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return rng


def restore_rng(rng: dict):
    random.setstate(_tupled(rng["python"]))
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in rng["cuda"]])


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x


def _fsync_tree(folder: Path):
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
