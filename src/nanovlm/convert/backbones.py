"""A VisionLanguageModel from pretrained parts: a language model (HF Llama folder, GGUF file or Hub id) and
optionally a vision encoder (HF SigLIP folder or Hub id); without one, the preset's encoder starts fresh.

    model = build_vlm(language="SmolLM2-135M-Instruct.Q4_1.gguf", vision="google/siglip-base-patch16-224")

The model takes the LM's tokenizer (plus an <|image|> token when it has none: one more embedding row, started at
the mean embedding) and, for a chat LM, the chat prompt format. The projector always starts fresh: it is what
nanoVLM's recipe trains first (`nanovlm train --language ... --vision ...`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..config import VLMConfig, from_name
from ..model.decoder import Decoder
from ..model.vision import VisionEncoder
from . import Backbone, CheckpointError, add_embedding_rows


def load_backbone(name_or_path: str | Path, role: str, show_progress: bool = False) -> Backbone:
    """role "language": a .gguf file or a Llama folder; role "vision": a SigLIP folder. Folders may be Hub ids."""
    from ..hub import resolve_model_dir
    from . import gguf, hf

    path = Path(name_or_path)
    if path.suffix.lower() == ".gguf" or path.is_file():
        if role != "language":
            raise CheckpointError(f"{path}: a GGUF file holds a language model; --vision needs a SigLIP folder")
        return gguf.read_gguf(path, show_progress=show_progress)
    folder = resolve_model_dir(name_or_path)
    config = hf.read_config(folder)
    if role == "vision" and hf.is_siglip(config):
        backbone = hf.siglip_vision(folder)
    elif role == "language" and hf.is_llama(config):
        backbone = hf.llama_language(folder)
    else:
        wanted = "a SigLIP vision model (model_type siglip or siglip_vision_model)" if role == "vision" \
            else "a Llama-architecture language model (model_type llama) or a .gguf file"
        raise CheckpointError(f"{folder}: model_type {config.get('model_type')!r} is not supported as the "
                              f"{role} backbone; expected {wanted}")
    if backbone.base_model is None and not path.exists():
        backbone.base_model = str(name_or_path)              # it came from the Hub under this id
    return backbone


def build_vlm(language: str | Path, vision: str | Path | None = None, preset: str = "nanovlm-222m",
              overrides: dict | None = None, dtype: torch.dtype = torch.float32, show_progress: bool = False,
              language_weights: bool = True):
    """The preset's model with the pretrained decoder (and vision encoder); `overrides` are model keys for the
    parts that start fresh (projector.*, vision.* without --vision, fusion). language_weights=False keeps the
    language model's architecture and tokenizer but starts its weights fresh (a control run)."""
    lm = load_backbone(language, "language", show_progress)
    if lm.tokenizer is None:
        raise CheckpointError(f"{lm.source} has no tokenizer (tokenizer.json); nanovlm needs the LM's own tokenizer")
    vis = load_backbone(vision, "vision") if vision is not None else None
    cfg = vlm_config(preset, lm, vis, overrides or {})

    tokenizer = lm.tokenizer
    decoder_tensors = add_embedding_rows(lm.tensors, cfg, len(tokenizer) - cfg.decoder.vocab_size, prefix="")
    lm.tensors = None                                     # let the pre-growth embedding go
    pretrained = {"decoder": (Decoder, decoder_tensors)} if language_weights else {}
    if vis is not None:
        pretrained["vision"] = (VisionEncoder, vis.tensors)
    model = assemble(cfg, pretrained)
    # special ids; no rounding of the vocabulary: extra rows would be tokens the tokenizer never makes, yet
    # sampling could pick them
    model.cfg = tokenizer.configure(cfg, multiple_of=1)
    model.tokenizer = tokenizer
    parts = [b for b in (vis, lm if language_weights else None) if b is not None]
    model.card["base_model"] = [b.base_model for b in parts if b.base_model]   # Hub ids, for the card's metadata
    model.card["sources"] = [Path(b.source).name for b in parts]             # names only: no local paths in a card
    return model.to(dtype)


def assemble(cfg: VLMConfig, pretrained: dict[str, tuple[type, dict[str, torch.Tensor]]]):
    """A VisionLanguageModel whose `pretrained` parts ({"decoder": (Decoder, tensors), ...}, tensors already
    checked) adopt their tensors as they are, while the other parts get the model's own fresh initialisation.

    The pretrained parts are built on the meta device: no fresh copy of them is ever allocated or initialised
    (for SmolLM2-135M that is 540 MB and seconds of random numbers saved). The fresh parts are made by the model
    itself around one-layer stand-ins of the pretrained parts (the same widths, so the projector fits)."""
    from ..model.vlm import VisionLanguageModel

    standins = {"decoder": dict(n_layer=1, vocab_size=1), "vision": dict(n_layer=1)}
    small = {name: dataclasses.replace(getattr(cfg, name), **standins[name]) for name in pretrained}
    model = VisionLanguageModel(dataclasses.replace(cfg, **small))
    for name, (module_class, tensors) in pretrained.items():
        with torch.device("meta"):
            module = module_class(getattr(cfg, name))
        module.load_state_dict(tensors, strict=False, assign=True)   # complete: checked by the converter
        setattr(model, name, module)
    if cfg.decoder.tie_embeddings:                                  # assign replaced the shared tensor: tie again
        model.decoder.lm_head.weight = model.decoder.tok_emb.weight
    model.cfg = cfg
    assert not any(t.is_meta for t in model.state_dict().values()), "a pretrained part lacks tensors"
    return model


def vlm_config(preset: str, lm: Backbone, vis: Backbone | None, overrides: dict) -> VLMConfig:
    """The preset (with the overrides for its fresh parts) with the backbones' architectures in place; a chat LM
    switches to the chat prompt format unless `fusion` is overridden."""
    locked = [k for k in overrides if k.startswith("decoder.") or (vis is not None and k.startswith("vision."))]
    if locked:
        raise CheckpointError(f"cannot override {', '.join(locked)}: that part comes from pretrained weights "
                              f"(its shape is the checkpoint's)")
    cfg = from_name(preset, overrides)
    fusion = "placeholder" if lm.tokenizer.has_chat_template and "fusion" not in overrides else cfg.fusion
    cfg = dataclasses.replace(cfg, decoder=lm.config, vision=vis.config if vis else cfg.vision, fusion=fusion)
    return cfg
