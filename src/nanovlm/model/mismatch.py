"""Why a weights file does not fit the model its config.json describes, said in one line, blaming the right file.

    problem = describe_mismatch(model_state, file_tensors, "run/model.safetensors", "run/config.json")
    # "run/model.safetensors does not match run/config.json: 2 tensors mis-shaped (decoder.tok_emb.weight: file
    #  (100, 32) vs config (512, 32), ...); same tensor names, other sizes: config.json describes another model ..."
"""
from __future__ import annotations

import re

import torch

SHOWN = 3   # names listed per kind of problem; the count says how many there are


def describe_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str,
                      config: str = "config.json") -> str | None:
    """None when `found` has exactly the tensors `expected` names, with their shapes and a floating-point dtype;
    else one line listing what is mis-shaped, missing, unexpected or of the wrong dtype, and the likely cause."""
    missing = [k for k in expected if k not in found]          # in model order: first block first
    unexpected = [k for k in found if k not in expected]
    common = [k for k in expected if k in found]
    misshaped = [k for k in common if tuple(found[k].shape) != tuple(expected[k].shape)]
    not_float = [k for k in common if not found[k].is_floating_point()]
    if not (missing or unexpected or misshaped or not_float):
        return None
    parts = []
    if not_float:
        parts.append(_listed(not_float, "tensor", "not floating point",
                             lambda k: f"{k}: {str(found[k].dtype).removeprefix('torch.')}"))
    if misshaped:
        parts.append(_listed(misshaped, "tensor", "mis-shaped",
                             lambda k: f"{k}: file {tuple(found[k].shape)} vs config {tuple(expected[k].shape)}"))
    if missing:
        parts.append(_listed(missing, "tensor", "missing"))
    if unexpected:
        parts.append(_listed(unexpected, "tensor", "unexpected"))
    cause = _likely_cause(expected, found, missing, unexpected, misshaped, not_float, source, config)
    return f"{source} does not match {config}: {', '.join(parts)}; {cause}"


def _listed(keys: list[str], noun: str, what: str, show=str) -> str:
    shown = ", ".join(show(k) for k in keys[:SHOWN]) + (", ..." if len(keys) > SHOWN else "")
    return f"{len(keys)} {noun}{'s' if len(keys) != 1 else ''} {what} ({shown})"


def _likely_cause(expected, found, missing, unexpected, misshaped, not_float, source: str, config: str) -> str:
    if not set(expected) & set(found):
        return (f"none of its tensor names are nanovlm's: {source} holds another kind of model (a Hugging Face or "
                f"GGUF checkpoint? convert it first)")
    if not_float:
        return "weights must be floating point (float32, bfloat16 or float16): the file is damaged or not a model"
    layers = []
    for module in ("vision", "decoder"):
        in_file, in_config = _count_blocks(found, module), _count_blocks(expected, module)
        if in_file != in_config:
            layers.append(f"{in_file} {module} blocks in the file, {in_config} in the config ({module}.n_layer)")
    if layers:
        return f"{'; '.join(layers)}: {config} does not describe these weights"
    if misshaped and not missing and not unexpected:
        return (f"same tensor names, other sizes: {config} describes a differently sized model (vocab_size, widths, "
                f"image or patch size); use the config.json saved with these weights")
    if missing and not unexpected and not misshaped:
        return "the file lacks tensors the config needs: it is incomplete; re-save or re-download it"
    return f"the file and {config} come from different models; keep the config.json saved with these weights"


def _count_blocks(tensors: dict, module: str) -> int:
    pattern = re.compile(rf"{module}\.blocks\.(\d+)\.")
    return len({m.group(1) for k in tensors if (m := pattern.match(k))})
