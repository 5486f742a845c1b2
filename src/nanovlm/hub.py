"""The Hugging Face Hub: downloads (model folders by repo id), uploads (push_to_hub) and the model card.

Weight conversion from other formats lives in nanovlm.convert. Offline, a repo id resolves from the local Hub
cache or fails at once with one clear error (huggingface_hub alone would retry for half a minute first).
"""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a model folder needs: configs, weights, tokenizer, chat template, card. Never pickles (*.bin, *.pt).
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "README.md"]


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the Hub's host cannot be reached within timeout_s."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
        return True
    except OSError:
        return False


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A local folder as is; otherwise a Hub repo id ("owner/name"), downloaded (or taken from the local cache)
    by huggingface_hub. Anything else, or a failed download, is a CheckpointError saying what was looked for."""
    from huggingface_hub import snapshot_download

    from .model.vlm import CheckpointError

    path = Path(name_or_path)
    if path.exists():
        return path
    if not HUB_REPO_ID.match(str(name_or_path)):
        raise CheckpointError(f"model folder {name_or_path} not found (and it is not a Hub repo id like owner/name)")
    online = hub_reachable()
    try:
        return Path(snapshot_download(repo_id=str(name_or_path), allow_patterns=DOWNLOAD_PATTERNS,
                                      local_files_only=not online))
    except Exception as e:  # unknown repo, no permission, not cached: all mean "no model here"
        if not online:
            raise CheckpointError(f"{name_or_path}: no such local folder, the Hugging Face Hub is not reachable "
                                  f"(offline) and the repo is not in the local Hub cache; download it where there "
                                  f"is network (`hf download {name_or_path}`) and pass its folder") from None
        raise CheckpointError(f"{name_or_path} is neither a local folder nor a reachable Hub model repo "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def download_file(repo_id: str, filename: str) -> Path | None:
    """One file of a Hub repo (from the cache when offline); None when it cannot be had."""
    from huggingface_hub import hf_hub_download

    if not HUB_REPO_ID.match(repo_id or ""):
        return None
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=not hub_reachable()))
    except Exception:  # offline and not cached, no such repo or file
        return None


def push_to_hub(model, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Save the model (weights, config, tokenizer, model card) to a temporary folder and upload it as a Hub model
    repo. Returns the repo URL."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        api.upload_folder(repo_id=repo_id, folder_path=tmp)
    return f"https://huggingface.co/{repo_id}"


# --------------------------------------------------------------------------------------------- model card

def model_card(model) -> str:
    """README.md for a model folder: YAML metadata the Hub indexes (library, task, base models, datasets,
    parameter count, evaluation results) and a short description with a usage snippet.

    model.card may hold: base_model (Hub ids), datasets, sources (local files it was built from), and
    eval_results: [{"task": "visual-question-answering", "dataset": "scenes-vqa", "metric": "accuracy",
    "value": 0.93}, ...]."""
    from huggingface_hub import EvalResult, ModelCardData

    info, cfg = model.card, model.cfg
    params = model.num_parameters()
    evals = [EvalResult(task_type=e["task"], dataset_type=e["dataset"], dataset_name=e.get("dataset_name", e["dataset"]),
                        metric_type=e["metric"], metric_value=e["value"]) for e in info.get("eval_results", [])]
    data = ModelCardData(library_name="nanovlm", pipeline_tag="image-text-to-text", license=info.get("license"),
                         base_model=info.get("base_model") or None, datasets=info.get("datasets") or None,
                         tags=["nanovlm", "vision-language-model"], model_name=cfg.name if evals else None,
                         eval_results=evals or None, parameters=params["total"])
    lines = [f"# {cfg.name}", "",
             f"A vision-language model made with nanovlm ({params['total'] / 1e6:.1f}M "
             f"parameters: vision {params['vision'] / 1e6:.1f}M, projector {params['projector'] / 1e6:.2f}M, "
             f"decoder {params['decoder'] / 1e6:.1f}M).", "",
             f"- vision encoder: {cfg.vision.n_layer} blocks, width {cfg.vision.width}, "
             f"{cfg.vision.describe_size()} images, {cfg.image_tokens_per_image} image tokens per image",
             f"- language decoder: {cfg.decoder.flavour}, {cfg.decoder.n_layer} layers, width {cfg.decoder.n_embd}, "
             f"vocabulary {cfg.decoder.vocab_size}",
             f"- prompt format: {'chat (ChatML)' if cfg.fusion == 'placeholder' else 'image tokens first'}; "
             f"tokenizer_config.json holds it as a Jinja chat template"]
    if info.get("base_model") or info.get("sources"):
        lines.append(f"- built from: {', '.join(info.get('base_model') or info.get('sources'))}")
    if info.get("datasets"):
        lines.append(f"- trained on: {', '.join(info['datasets'])}")
    for e in info.get("eval_results", []):
        lines.append(f"- {e['dataset']}: {e['metric']} {e['value']}")
    lines += ["", "```python", "from nanovlm import VisionLanguageModel", "from nanovlm.predict import complete, open_image",
              "", "model = VisionLanguageModel.from_pretrained(\"THIS_FOLDER_OR_REPO\")",
              "print(complete(model, [open_image(\"picture.png\")], questions=[\"What is in the picture?\"]))",
              "```", ""]
    # the YAML block the Hub reads, written by huggingface_hub itself (ModelCard.from_template would need jinja2)
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def read_model_card(folder: Path) -> dict:
    """The model.card dict back from a folder's README.md metadata ({} when there is none or it is not ours)."""
    from huggingface_hub import ModelCard

    path = Path(folder) / "README.md"
    if not path.is_file():
        return {}
    try:
        data = ModelCard.load(path).data
    except Exception:   # a hand-written README is not an error: the card is informative only
        return {}
    listed = lambda v: [v] if isinstance(v, str) else list(v or [])
    card = {"base_model": listed(data.base_model), "datasets": listed(data.datasets)}
    if data.eval_results:
        card["eval_results"] = [{"task": e.task_type, "dataset": e.dataset_type, "dataset_name": e.dataset_name,
                                 "metric": e.metric_type, "value": e.metric_value} for e in data.eval_results]
    return {k: v for k, v in card.items() if v}
