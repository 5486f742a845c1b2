"""Hugging Face nanoVLM checkpoints: the tiny v0.1 test vector in ../shared/reference (logits nanoVLM computed),
and the main-branch layout (placeholder image tokens, extra special tokens) built from it."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nanovlm.convert import CheckpointError
from nanovlm.model.vlm import VisionLanguageModel

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "nanovlm_v0.1_tiny"
pytestmark = pytest.mark.skipif(not (REFERENCE / "expected.safetensors").is_file(),
                                reason=f"nanoVLM reference vector not found at {REFERENCE} (the CI has ../shared "
                                       f"beside the checkout)")


@pytest.fixture(scope="module")
def expected():
    return load_file(str(REFERENCE / "expected.safetensors"))


def test_v01_reference_logits(expected):
    """v0.1 puts the 49 image tokens in front of the text: our prefix fusion with an added <|image|> token."""
    model = VisionLanguageModel.from_pretrained(REFERENCE)
    cfg = model.cfg
    assert cfg.fusion == "prefix" and cfg.image_tokens_per_image == 49
    assert cfg.image_token_id == 1000 and cfg.decoder.vocab_size == 1001      # one row added for <|image|>
    ids = torch.cat([torch.full((1, 49), cfg.image_token_id), expected["input_ids"]], dim=1)
    with torch.no_grad():
        logits, _ = model(ids, expected["image"])
    assert logits.shape == (1, 61, 1001)
    torch.testing.assert_close(logits[..., :1000], expected["logits"], atol=1e-4, rtol=0)


def _as_main_branch(tmp_path) -> Path:
    """The same weights in the main branch's format: vocabulary grown by its 66 extra tokens (the image token
    first), <|image|> placeholders in the text."""
    folder = tmp_path / "main"
    folder.mkdir()
    config = json.loads((REFERENCE / "config.json").read_text())
    extra = {"image_token": "<|image|>", "global_image_token": "<|global_image|>",
             **{f"r{r}c{c}": f"<row_{r}_col_{c}>" for r in range(1, 9) for c in range(1, 9)}}
    config.update(lm_base_vocab_size=1000, extra_token_amount=66, lm_vocab_size=1066, vlm_extra_tokens=extra,
                  mp_image_token_length=49)
    (folder / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(REFERENCE / "model.safetensors"))
    head = tensors["decoder.head.weight"]
    tensors["decoder.head.weight"] = torch.cat([head, torch.randn(66, head.shape[1])])
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_main_branch_layout(tmp_path, expected):
    model = VisionLanguageModel.from_pretrained(_as_main_branch(tmp_path))
    assert model.cfg.fusion == "placeholder" and model.cfg.image_token_id == 1000
    assert model.cfg.decoder.vocab_size == 1066
    # placeholders first: the same computation as v0.1's prefix
    ids = torch.cat([torch.full((1, 49), 1000), expected["input_ids"]], dim=1)
    with torch.no_grad():
        logits, _ = model(ids, expected["image"])
    torch.testing.assert_close(logits[..., :1000], expected["logits"], atol=1e-4, rtol=0)


def test_missing_tensor_named(tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(REFERENCE, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["decoder.blocks.1.attn.k_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 tensor missing \(decoder\.blocks\.1\.attn\.k\.weight\)"):
        VisionLanguageModel.from_pretrained(folder)
