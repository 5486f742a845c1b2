"""Bringing Hugging Face weights into nanovlm, and sharing nanovlm models on the Hub.

- siglip_to_nanovlm / llama_to_nanovlm rename the tensors of a `transformers` SiglipVisionModel /
  LlamaForCausalLM state dict into our module names (the same numbers, no re-layout needed).
- load_hf_backbones builds a VisionLanguageModel from a local SigLIP folder and a local Llama folder
  (safetensors), e.g. google/siglip-base-patch16-224 + HuggingFaceTB/SmolLM2-135M.
- push_to_hub / from_hub go through huggingface_hub; any local folder works the same way offline.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

SIGLIP_RENAMES = [
    (r"^(vision_model\.)?embeddings\.patch_embedding\.", "patch_stem.conv."),
    (r"^(vision_model\.)?encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\2.norm1."),
    (r"^(vision_model\.)?encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\2.norm2."),
    (r"^(vision_model\.)?encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.", r"blocks.\2.attn.\3."),
    (r"^(vision_model\.)?encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\2.attn.out."),
    (r"^(vision_model\.)?encoder\.layers\.(\d+)\.mlp\.fc1\.", r"blocks.\2.mlp.fc."),
    (r"^(vision_model\.)?encoder\.layers\.(\d+)\.mlp\.fc2\.", r"blocks.\2.mlp.proj."),
    (r"^(vision_model\.)?post_layernorm\.", "norm."),
]

LLAMA_RENAMES = [
    (r"^model\.embed_tokens\.", "tok_emb."),
    (r"^model\.layers\.(\d+)\.input_layernorm\.", r"blocks.\1.norm1."),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.", r"blocks.\1.norm2."),
    (r"^model\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.", r"blocks.\1.attn.\2."),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.", r"blocks.\1.attn.out."),
    (r"^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.", r"blocks.\1.mlp.\2."),
    (r"^model\.norm\.", "norm."),
    (r"^lm_head\.", "lm_head."),
]


def _rename(state: dict[str, torch.Tensor], rules, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if any(s in name for s in skip):
            continue
        for pattern, replacement in rules:
            new_name, n = re.subn(pattern, replacement, name)
            if n:
                out[new_name] = tensor
                break
        else:
            raise KeyError(f"no nanovlm name for Hugging Face tensor {name!r}")
    return out


def siglip_to_nanovlm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SiglipVisionModel tensors -> VisionEncoder tensors. The attention-pooling head is dropped: nanoVLM uses
    the patch tokens, not the pooled vector."""
    out = _rename(state, SIGLIP_RENAMES, skip=("head.", "position_ids", "position_embedding"))
    position_key = next(k for k in state if k.endswith("embeddings.position_embedding.weight"))
    out["position"] = state[position_key][None]                 # (P, C) -> (1, P, C)
    return out


def llama_to_nanovlm(state: dict[str, torch.Tensor], tie_embeddings: bool = True) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM tensors -> Decoder tensors (HF and we both store q/k rows in the rotate-half layout)."""
    out = _rename(state, LLAMA_RENAMES, skip=("rotary_emb.",))
    if tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def _read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {folder}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_hf_backbones(cfg, siglip_dir: str | Path, llama_dir: str | Path):
    """A VisionLanguageModel whose encoder and decoder come from local Hugging Face folders; the projector keeps
    its fresh initialisation (it is what nanoVLM trains first). Shapes are checked against cfg."""
    from .model.vlm import VisionLanguageModel

    model = VisionLanguageModel(cfg)
    vision = {f"vision.{k}": v for k, v in siglip_to_nanovlm(_read_safetensors_folder(Path(siglip_dir))).items()}
    decoder = {f"decoder.{k}": v for k, v in
               llama_to_nanovlm(_read_safetensors_folder(Path(llama_dir)), cfg.decoder.tie_embeddings).items()}
    projector = {k: v for k, v in model._state_to_save().items() if k.startswith("projector.")}
    model.load_weights({**vision, **decoder, **projector}, source=f"{siglip_dir} + {llama_dir}")
    return model


def push_to_hub(model, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Save the model to a temporary folder and upload it as a Hub model repo. Returns the repo URL."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        (Path(tmp) / "README.md").write_text(f"# {repo_id}\n\nA nanovlm model ({model.cfg.name}).\n\n"
                                             f"```python\nfrom nanovlm import VisionLanguageModel\n"
                                             f"model = VisionLanguageModel.from_pretrained('{repo_id}')\n```\n")
        api.upload_folder(repo_id=repo_id, folder_path=tmp)
    return f"https://huggingface.co/{repo_id}"


HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A local folder as is; otherwise a Hub repo id ("owner/name"), downloaded (or taken from the local cache)
    by huggingface_hub. Anything else, or a failed download, is a CheckpointError saying what was looked for."""
    from .model.vlm import CheckpointError

    path = Path(name_or_path)
    if path.exists():
        return path
    if not HUB_REPO_ID.match(str(name_or_path)):
        raise CheckpointError(f"model folder {name_or_path} not found (and it is not a Hub repo id like owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name_or_path), allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # offline, unknown repo, no permission: all mean "no model here"
        raise CheckpointError(f"{name_or_path} is neither a local folder nor a reachable Hub model repo "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
