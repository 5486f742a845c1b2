"""Pretrained weights in other formats -> nanovlm, one module per format:

- hf.py       Hugging Face folders: SigLIP vision encoders and Llama-architecture language models
              (config.json + model.safetensors, or a sharded model.safetensors.index.json)
- gguf.py     llama.cpp GGUF language models (dequantised; tokenizer and chat template from the metadata)
- nanovlm.py  Hugging Face nanoVLM's own checkpoint folders (config keys vit_*, lm_*, mp_*)

Each converter is a rename table plus the few real transforms (a fused qkv split, llama.cpp's query/key row order
undone, a position table reshaped). Every tensor of the source is accounted for: renamed, or dropped on purpose
with a reason. Anything else, and any tensor our model needs but the source lacks or holds in another shape, is
listed in ONE CheckpointError.

backbones.py assembles a VisionLanguageModel from a vision and a language backbone (`nanovlm build`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..model.vlm import CheckpointError

__all__ = ["Backbone", "CheckpointError", "RenameRule", "add_embedding_rows", "convert_tensors"]


@dataclass
class Backbone:
    """One pretrained part, in nanovlm's names and layout, ready for VisionEncoder / Decoder.load_state_dict."""
    config: object                                  # VisionConfig or DecoderConfig
    tensors: dict[str, torch.Tensor]                # names relative to the module, e.g. "blocks.0.attn.q.weight"
    source: str                                     # the file, folder or Hub id it came from (errors, model card)
    tokenizer: object | None = None                 # language models: a nanovlm Tokenizer (or None if absent)
    base_model: str | None = None                   # Hub id for the model card's base_model, when known
    extra: dict = field(default_factory=dict)       # format-specific facts (e.g. GGUF metadata name)


# (pattern, replacement): the first rule whose pattern matches a source name renames it (re.sub);
# a replacement of None drops the tensor on purpose (the pattern's comment says why).
RenameRule = tuple[str, str | None]
SHOWN = 6   # tensor names listed per kind of problem; the count says how many there are


def convert_tensors(tensors: dict[str, torch.Tensor], rules: list[RenameRule],
                    expected: dict[str, tuple[int, ...]], source: str) -> dict[str, torch.Tensor]:
    """Rename source tensors with `rules` and check the result against `expected` {name: shape}.
    Raises one CheckpointError listing every tensor no rule knows, every expected tensor missing, and every
    shape mismatch."""
    out, unknown = {}, []
    for name, tensor in tensors.items():
        for pattern, replacement in rules:
            if re.search(pattern, name):
                if replacement is not None:
                    out[re.sub(pattern, replacement, name)] = tensor
                break
        else:
            unknown.append(name)
    check_tensors(out, expected, source, unknown=unknown)
    return out


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str,
                  unknown: list[str] = ()):
    """One error line naming every missing, unexpected and mis-shaped tensor (or nothing when all is well)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(unknown) | (set(tensors) - set(expected)))
    mismatched = [f"{k}: file {tuple(tensors[k].shape)} vs expected {tuple(expected[k])}"
                  for k in sorted(expected) if k in tensors and tuple(tensors[k].shape) != tuple(expected[k])]
    parts = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
        if items:
            shown = ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")
            parts.append(f"{len(items)} tensor{'s' if len(items) > 1 else ''} {what} ({shown})")
    if parts:
        cause = ("none of its tensors is one the format has: it holds another kind of model" if not set(expected) &
                 set(tensors) else "the file is incomplete or damaged: re-download it")
        raise CheckpointError(f"{source} does not match the model its own config/metadata describes: "
                              f"{'; '.join(parts)}; {cause}")


def expected_shapes(module_class, cfg, drop: tuple[str, ...] = ()) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a module built from cfg on the meta device (no memory, no init)."""
    with torch.device("meta"):
        module = module_class(cfg)
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if k not in drop}


def add_embedding_rows(tensors: dict[str, torch.Tensor], cfg, n_new: int, prefix: str = "decoder.") -> dict:
    """Grow the token embedding (and an untied lm_head) by n_new rows for tokens the LM never had (<|image|>).
    New rows start at the mean embedding: a neutral vector of the right scale, so the new token neither
    dominates the logits nor points anywhere special (Hewitt 2021; transformers' resize_token_embeddings).
    Updates cfg.decoder.vocab_size (cfg is the VLMConfig or DecoderConfig the tensors belong to)."""
    if n_new <= 0:
        return tensors
    out = dict(tensors)
    for name in (f"{prefix}tok_emb.weight", f"{prefix}lm_head.weight"):
        if name in out:
            weight = out[name]
            mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
            out[name] = torch.cat([weight, mean.expand(n_new, -1)])
    decoder_cfg = getattr(cfg, "decoder", cfg)
    decoder_cfg.vocab_size += n_new
    return out
