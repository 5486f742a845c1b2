"""Hugging Face nanoVLM checkpoint folders -> nanovlm (config.json with vit_* / lm_* / mp_* keys + model.safetensors).

Two layouts exist, told apart by the config:
- v0.1 (the published nanoVLM-222M): the projected image tokens are concatenated IN FRONT of the text embeddings,
  and the vocabulary has no image token. That is our "prefix" fusion: we add an <|image|> token (one embedding
  row, initialised to the mean embedding; it only marks where image tokens go and its own embedding is never
  used) and put its placeholders first.
- main branch (`vlm_extra_tokens` in the config): <|image|> placeholders in the text, ids after the base
  vocabulary in the order of vlm_extra_tokens. That is our "placeholder" fusion, ids kept.

The vision tower's fused qkv projection is split into our q, k, v; everything else is a rename.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import SIGLIP_MEAN, SIGLIP_STD, DecoderConfig, ProjectorConfig, VisionConfig, VLMConfig
from . import CheckpointError, RenameRule, add_embedding_rows, convert_tensors
from .hf import read_safetensors

NANOVLM_RULES: list[RenameRule] = [
    (r"^vision_encoder\.patch_embedding\.position_embedding$", "vision.position"),
    (r"^vision_encoder\.patch_embedding\.conv\.", "vision.patch_stem.conv."),
    (r"^vision_encoder\.blocks\.(\d+)\.ln(1|2)\.", r"vision.blocks.\1.norm\2."),
    (r"^vision_encoder\.blocks\.(\d+)\.attn\.(q|k|v)\.", r"vision.blocks.\1.attn.\2."),   # split from qkv_proj
    (r"^vision_encoder\.blocks\.(\d+)\.attn\.out_proj\.", r"vision.blocks.\1.attn.out."),
    (r"^vision_encoder\.blocks\.(\d+)\.mlp\.fc1\.", r"vision.blocks.\1.mlp.fc."),
    (r"^vision_encoder\.blocks\.(\d+)\.mlp\.fc2\.", r"vision.blocks.\1.mlp.proj."),
    (r"^vision_encoder\.layer_norm\.", "vision.norm."),
    (r"^decoder\.token_embedding\.", "decoder.tok_emb."),
    (r"^decoder\.rotary_embd\.inv_freq$", None),          # RoPE frequencies, recomputed from lm_re_base
    (r"^decoder\.blocks\.(\d+)\.mlp\.(gate|up|down)_proj\.", r"decoder.blocks.\1.mlp.\2."),
    (r"^decoder\.blocks\.(\d+)\.attn\.(q|k|v)_proj\.", r"decoder.blocks.\1.attn.\2."),
    (r"^decoder\.blocks\.(\d+)\.attn\.out_proj\.", r"decoder.blocks.\1.attn.out."),
    (r"^decoder\.blocks\.(\d+)\.norm(1|2)\.", r"decoder.blocks.\1.norm\2."),
    (r"^decoder\.norm\.", "decoder.norm."),
    (r"^decoder\.head\.", "decoder.lm_head."),
    (r"^MP\.proj\.", "projector.proj."),
]

# A nanoVLM config is recognised by these keys.
SIGNATURE = ("vit_hidden_dim", "lm_hidden_dim", "mp_pixel_shuffle_factor")


def is_nanovlm_config(config: dict) -> bool:
    return all(key in config for key in SIGNATURE)


def nanovlm_config(nv: dict, source: str) -> VLMConfig:
    """nanoVLM's flat config -> ours, with the vocabulary the checkpoint file holds (the image token comes later)."""
    if nv.get("vit_cls_flag"):
        raise CheckpointError(f"{source}: vit_cls_flag=true (a CLS-only image token) is not supported")
    if float(nv.get("lm_attn_scaling", 1.0)) != 1.0:
        raise CheckpointError(f"{source}: lm_attn_scaling={nv['lm_attn_scaling']} is not supported (1.0 only)")
    try:
        vision = VisionConfig(image_size=nv["vit_img_size"], patch_size=nv["vit_patch_size"],
                              width=nv["vit_hidden_dim"], n_layer=nv["vit_n_blocks"], n_head=nv["vit_n_heads"],
                              mlp_hidden=nv["vit_inter_dim"], patch_stem="linear", use_cls=False,
                              activation="gelu_tanh", norm_eps=nv.get("vit_ln_eps", 1e-6),
                              image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD)
        decoder = DecoderConfig(flavour="llama", vocab_size=nv["lm_vocab_size"], n_embd=nv["lm_hidden_dim"],
                                n_layer=nv["lm_n_blocks"], n_head=nv["lm_n_heads"], n_kv_head=nv["lm_n_kv_heads"],
                                mlp_hidden=nv["lm_inter_dim"], max_seq_len=nv.get("lm_max_position_embeddings", 8192),
                                rope_theta=float(nv.get("lm_re_base", 100000)), norm_eps=nv.get("lm_rms_eps", 1e-5),
                                tie_embeddings=bool(nv.get("lm_tie_weights", True)))
    except KeyError as e:
        raise CheckpointError(f"{source}: nanoVLM config key {e} is missing") from None
    projector = ProjectorConfig(kind="pixel_shuffle", source="patches", shuffle_factor=nv["mp_pixel_shuffle_factor"])
    fusion = "placeholder" if "vlm_extra_tokens" in nv else "prefix"
    return VLMConfig(vision=vision, projector=projector, decoder=decoder, fusion=fusion,
                     name=f"nanoVLM ({Path(nv.get('vlm_checkpoint_path', 'model')).name})")


def read_nanovlm(folder: str | Path) -> tuple[VLMConfig, dict[str, torch.Tensor]]:
    """A nanoVLM folder -> (our config with its special ids, our full state dict)."""
    from ..model.vlm import VisionLanguageModel

    folder = Path(folder)
    nv = json.loads((folder / "config.json").read_text())
    cfg = nanovlm_config(nv, str(folder))
    tensors = split_qkv(read_safetensors(folder))
    if cfg.decoder.tie_embeddings:
        # safetensors keeps one name of a shared tensor: nanoVLM's tied head often survives as decoder.head.weight
        head = tensors.pop("decoder.head.weight", None)
        if head is not None:
            tensors.setdefault("decoder.token_embedding.weight", head)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VisionLanguageModel(cfg)._state_to_save().items()}
    out = convert_tensors(tensors, NANOVLM_RULES, expected, str(folder))

    extra = nv.get("vlm_extra_tokens")
    if extra:                      # main branch: the ids follow the base vocabulary in the order of the config
        base = nv.get("lm_base_vocab_size", cfg.decoder.vocab_size - len(extra))
        cfg.image_token_id = base + list(extra).index("image_token") if "image_token" in extra else -1
        if cfg.image_token_id < 0:
            raise CheckpointError(f"{folder}: vlm_extra_tokens has no image_token")
        cfg.image_token = extra["image_token"]
    else:                          # v0.1: no image token in the vocabulary; add one
        out = add_embedding_rows(out, cfg, 1)
        cfg.image_token_id = cfg.decoder.vocab_size - 1
    cfg.eos_token_id = nv.get("lm_eos_token_id", 0)
    cfg.pad_token_id = cfg.eos_token_id
    return cfg, out


def split_qkv(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nanoVLM's ViT computes q, k, v with one Linear (rows q | k | v); ours has three."""
    out = {}
    for name, tensor in tensors.items():
        if ".attn.qkv_proj." in name:
            for part, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                out[name.replace(".qkv_proj.", f".{part}.")] = chunk.contiguous()
        else:
            out[name] = tensor
    return out


def is_nanovlm_folder(folder: Path) -> bool:
    try:
        return is_nanovlm_config(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError):
        return False   # not readable as JSON: let the normal loader say what is wrong with it


def load_nanovlm(cls, folder: Path, device: torch.device, dtype: torch.dtype | None = None):
    """A VisionLanguageModel (cls) from a nanoVLM folder, with nanoVLM's tokenizer when it can be found."""
    cfg, tensors = read_nanovlm(folder)
    with torch.device("meta"):
        model = cls(cfg)
    model.load_weights({k: v.to(device) for k, v in tensors.items()}, source=str(folder), assign=True)
    if dtype is not None:
        model.to(dtype)
    model.tokenizer = nanovlm_tokenizer(folder, json.loads((folder / "config.json").read_text()), cfg)
    model.card = {"sources": [str(folder)]}
    return model.eval()


def nanovlm_tokenizer(folder: Path, nv: dict, cfg: VLMConfig):
    """nanoVLM names its tokenizer by Hub id (lm_tokenizer) and adds its extra tokens at load time; do the same.
    A tokenizer.json in the folder wins. None (with a note) when it cannot be had, e.g. offline."""
    import warnings

    from tokenizers import Tokenizer as HFTokenizer

    from ..hub import download_file
    from ..tokenizer import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        path = download_file(nv.get("lm_tokenizer", ""), "tokenizer.json")
    if path is None:
        warnings.warn(f"{folder}: no tokenizer.json and {nv.get('lm_tokenizer')!r} could not be downloaded; "
                      f"the model runs on token ids only (put its tokenizer.json in the folder)")
        return None
    hf = HFTokenizer.from_file(str(path))
    hf.add_special_tokens(list((nv.get("vlm_extra_tokens") or {}).values()))
    eos = hf.id_to_token(cfg.eos_token_id)
    tokenizer = Tokenizer(hf, image_token=cfg.image_token, eos_token=eos, pad_token=eos)
    if tokenizer.image_token_id != cfg.image_token_id or len(tokenizer) > cfg.decoder.vocab_size:
        warnings.warn(f"{path} does not fit {folder} (image token id {tokenizer.image_token_id} vs "
                      f"{cfg.image_token_id}, {len(tokenizer)} tokens vs {cfg.decoder.vocab_size} rows); not used")
        return None
    return tokenizer
