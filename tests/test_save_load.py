"""save_pretrained / from_pretrained: bit-exact round trip, clear errors for broken folders."""
import json

import pytest
import torch

from nanovlm.model.vlm import CheckpointError, VisionLanguageModel
from nanovlm.tokenizer import Tokenizer

from conftest import tiny_config

TEXTS = ["There is a big red ball on the green grass.", "I see two small blue boxes next to a tree."] * 20


def _model_and_tokenizer(**overrides):
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    cfg = tok.configure(tiny_config(**overrides))
    return VisionLanguageModel(cfg).eval(), tok


@pytest.mark.parametrize("overrides", [{}, {"decoder.qk_norm": 10.0}], ids=["plain", "qk-norm"])
def test_round_trip_is_bit_exact(tmp_path, overrides):
    model, tok = _model_and_tokenizer(**overrides)
    model.save_pretrained(tmp_path, tokenizer=tok)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                          "tokenizer.json", "tokenizer_config.json"]
    loaded = VisionLanguageModel.from_pretrained(tmp_path)
    assert loaded.cfg == model.cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.decoder.lm_head.weight is loaded.decoder.tok_emb.weight, "tied embeddings must stay tied"
    assert loaded.tokenizer.encode(TEXTS[0]) == tok.encode(TEXTS[0])
    assert loaded.tokenizer.image_token_id == model.cfg.image_token_id
    ids, mask = torch.tensor([[model.cfg.image_token_id] * 16 + tok.encode("There is")]), None
    images = torch.randn(1, 3, 32, 32)
    assert torch.equal(model.generate(ids, images, max_new_tokens=5), loaded.generate(ids, images, max_new_tokens=5))


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope not found"):
        VisionLanguageModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json not found"):
        VisionLanguageModel.from_pretrained(tmp_path / "empty")


def test_corrupted_weights(tmp_path):
    model, tok = _model_and_tokenizer()
    model.save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted"):
        VisionLanguageModel.from_pretrained(tmp_path)


def test_config_mismatch_lists_the_tensors(tmp_path):
    model, tok = _model_and_tokenizer()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["decoder"]["n_layer"] = 3
    cfg["decoder"]["n_embd"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        VisionLanguageModel.from_pretrained(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "16 tensors missing (decoder.blocks.2." in message
    assert "mis-shaped" in message and "decoder.tok_emb.weight: file (512, 32) vs config (512, 64)" in message
    assert "config.json does not describe these weights" in message      # the config is to blame, not the weights


def test_bad_config_json(tmp_path):
    model, _ = _model_and_tokenizer()
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"decoder": {"n_layerz": 2}}')
    with pytest.raises(CheckpointError, match="n_layerz"):
        VisionLanguageModel.from_pretrained(tmp_path)


def test_missing_model_folder_in_the_cli_is_one_error_line(tmp_path, capsys):
    from nanovlm.cli import main
    image = tmp_path / "x.png"
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(image)
    assert main(["generate", "--model", str(tmp_path / "no-model"), "--image", str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model folder") and "Traceback" not in err
