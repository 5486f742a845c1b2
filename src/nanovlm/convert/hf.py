"""Hugging Face folders -> nanovlm: SigLIP vision encoders and Llama-architecture language models.

A folder holds config.json and model.safetensors (or model.safetensors.index.json + shards), as written by
`transformers`' save_pretrained, e.g. google/siglip-base-patch16-224 or HuggingFaceTB/SmolLM2-135M. Hugging Face
and nanovlm store the same numbers in the same layout (Llama's query/key rows included: both use the
"rotate half" RoPE order), so the conversion is a rename, plus SigLIP's position table gaining a batch axis.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import SIGLIP_MEAN, SIGLIP_STD, DecoderConfig, VisionConfig
from ..model.decoder import Decoder
from ..model.vision import VisionEncoder
from . import Backbone, CheckpointError, RenameRule, convert_tensors, expected_shapes

SIGLIP_RULES: list[RenameRule] = [
    (r"^(?:vision_model\.)?embeddings\.patch_embedding\.", "patch_stem.conv."),
    (r"^(?:vision_model\.)?embeddings\.position_embedding\.weight$", "position"),
    (r"^(?:vision_model\.)?encoder\.layers\.(\d+)\.layer_norm(1|2)\.", r"blocks.\1.norm\2."),
    (r"^(?:vision_model\.)?encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.", r"blocks.\1.attn.\2."),
    (r"^(?:vision_model\.)?encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.out."),
    (r"^(?:vision_model\.)?encoder\.layers\.(\d+)\.mlp\.fc1\.", r"blocks.\1.mlp.fc."),
    (r"^(?:vision_model\.)?encoder\.layers\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.proj."),
    (r"^(?:vision_model\.)?post_layernorm\.", "norm."),
    (r"^(?:vision_model\.)?head\.", None),                    # attention-pooling head: nanoVLM uses the patch tokens
    (r"^text_model\.", None),                            # a full SiglipModel's text tower
    (r"^logit_(scale|bias)$", None),                     # SiglipModel's contrastive-loss scalars
    (r"position_ids$", None),                            # a buffer of 0..P-1, recomputed
]

LLAMA_RULES: list[RenameRule] = [
    (r"^model\.embed_tokens\.", "tok_emb."),
    (r"^model\.layers\.(\d+)\.input_layernorm\.", r"blocks.\1.norm1."),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.", r"blocks.\1.norm2."),
    (r"^model\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.", r"blocks.\1.attn.\2."),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.", r"blocks.\1.attn.out."),
    (r"^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.", r"blocks.\1.mlp.\2."),
    (r"^model\.norm\.", "norm."),
    (r"^lm_head\.", "lm_head."),
    (r"rotary_emb\.inv_freq$", None),                    # old checkpoints saved the RoPE table; it is recomputed
]


# --------------------------------------------------------------------------------------------- reading files

def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a Hugging Face model folder holds config.json and model.safetensors")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or every shard named by model.safetensors.index.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"no model.safetensors (nor model.safetensors.index.json) in {folder}")
    tensors = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is named by {index.name} but missing: re-download the model")
        try:
            tensors.update(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is corrupted or not a safetensors file ({e})") from None
    return tensors


def read_tokenizer(folder: Path):
    """tokenizer.json with the special tokens and chat template of tokenizer_config.json (or chat_template.jinja,
    where transformers >= 4.50 puts it); None when the folder has no tokenizer."""
    from tokenizers import Tokenizer as HFTokenizer

    from ..tokenizer import Tokenizer

    if not (folder / "tokenizer.json").is_file():
        return None
    settings = {}
    if (folder / "tokenizer_config.json").is_file():
        settings = json.loads((folder / "tokenizer_config.json").read_text())
    token = lambda key: (settings.get(key) or {}).get("content") if isinstance(settings.get(key), dict) \
        else settings.get(key)
    template = settings.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    try:
        hf = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # the Rust library raises a bare Exception for malformed files
        raise CheckpointError(f"{folder / 'tokenizer.json'} is not a valid tokenizer.json: {e}") from None
    eos = token("eos_token") or Tokenizer.default_eos(hf.get_vocab())
    # no pad token: pad with EOS (padding never enters the loss) rather than grow the embedding for one
    return Tokenizer(hf, eos_token=eos, pad_token=token("pad_token") or eos,
                     chat_template=template if isinstance(template, str) else None)


# --------------------------------------------------------------------------------------------- configs

def siglip_config(hf: dict, folder: Path) -> VisionConfig:
    hf = hf.get("vision_config", hf)               # a full SiglipModel nests the vision tower's config
    act = hf.get("hidden_act", "gelu_pytorch_tanh")
    if act not in ("gelu_pytorch_tanh", "gelu"):
        raise CheckpointError(f"{folder}: SigLIP activation {act!r} is not supported (gelu_pytorch_tanh or gelu)")
    mean, std = SIGLIP_MEAN, SIGLIP_STD
    if (folder / "preprocessor_config.json").is_file():
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
    return VisionConfig(image_size=hf.get("image_size", 224), patch_size=hf.get("patch_size", 16),
                        width=hf.get("hidden_size", 768), n_layer=hf.get("num_hidden_layers", 12),
                        n_head=hf.get("num_attention_heads", 12), mlp_hidden=hf.get("intermediate_size", 3072),
                        patch_stem="linear", use_cls=False, norm_eps=hf.get("layer_norm_eps", 1e-6),
                        activation="gelu_tanh" if act == "gelu_pytorch_tanh" else "gelu",
                        image_mean=tuple(mean), image_std=tuple(std))


def llama_config(hf: dict, folder: Path) -> DecoderConfig:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise CheckpointError(f"{folder}: RoPE scaling {rope.get('rope_type') or rope.get('type')!r} is not "
                              f"supported (plain RoPE only)")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{folder}: a Llama MLP with {hf['hidden_act']!r} is not supported (silu only)")
    if bool(hf.get("attention_bias")) != bool(hf.get("mlp_bias")):
        raise CheckpointError(f"{folder}: attention_bias and mlp_bias differ; nanovlm has one bias switch")
    n_head = hf["num_attention_heads"]
    return DecoderConfig(flavour="llama", vocab_size=hf["vocab_size"], n_embd=hf["hidden_size"],
                         n_layer=hf["num_hidden_layers"], n_head=n_head,
                         n_kv_head=hf.get("num_key_value_heads") or n_head,
                         head_dim=hf.get("head_dim") or hf["hidden_size"] // n_head,
                         mlp_hidden=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
                         bias=bool(hf.get("attention_bias")), tie_embeddings=bool(hf.get("tie_word_embeddings")),
                         rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                         norm_eps=hf.get("rms_norm_eps", 1e-6))


# --------------------------------------------------------------------------------------------- converters

def is_siglip(hf: dict) -> bool:
    return hf.get("model_type") in ("siglip", "siglip_vision_model")


def is_llama(hf: dict) -> bool:
    return hf.get("model_type") == "llama"


def siglip_vision(folder: str | Path) -> Backbone:
    """A SigLIP vision tower (SiglipVisionModel, or the vision half of a SiglipModel)."""
    folder = Path(folder)
    cfg = siglip_config(read_config(folder), folder)
    tensors = read_safetensors(folder)
    for name in [k for k in tensors if k.endswith("embeddings.position_embedding.weight")]:
        tensors[name] = tensors[name][None]                      # (P, C) -> (1, P, C): our learned positions
    out = convert_tensors(tensors, SIGLIP_RULES, expected_shapes(VisionEncoder, cfg), str(folder))
    return Backbone(cfg, out, source=str(folder), base_model=_hub_id(read_config(folder)))


def llama_language(folder: str | Path) -> Backbone:
    """A LlamaForCausalLM (SmolLM2, Llama 2/3 without RoPE scaling, ...) with its tokenizer when present."""
    folder = Path(folder)
    hf = read_config(folder)
    cfg = llama_config(hf, folder)
    tensors = read_safetensors(folder)
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)                      # a copy of the embedding when saved at all
    drop = ("lm_head.weight",) if cfg.tie_embeddings else ()
    out = convert_tensors(tensors, LLAMA_RULES, expected_shapes(Decoder, cfg, drop), str(folder))
    return Backbone(cfg, out, source=str(folder), tokenizer=read_tokenizer(folder), base_model=_hub_id(hf))


def _hub_id(hf: dict) -> str | None:
    """`_name_or_path` is the Hub id the model was loaded from, when it looks like one."""
    name = hf.get("_name_or_path") or ""
    return name if name.count("/") == 1 and not name.startswith((".", "/")) else None
