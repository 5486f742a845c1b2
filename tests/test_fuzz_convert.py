"""`nanovlm build` / `nanovlm train --language` under bad pretrained inputs: each exits 2 with exactly one `error:`
line naming the problem, never a traceback, and writes nothing."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from gguf_helpers import tiny_bpe, write_llama_gguf
from test_fuzz_cli import assert_clean, run_cli

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good tiny llama GGUF, a good tiny Llama folder (with tokenizer) and a SigLIP folder."""
    root = tmp_path_factory.mktemp("backbones")
    bpe = tiny_bpe(280)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=280, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=128))
    write_llama_gguf(root / "tiny.gguf", llama, bpe)
    llama.save_pretrained(root / "llama")
    bpe.save(str(root / "llama" / "tokenizer.json"))
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8)).save_pretrained(root / "siglip")
    return root


def build_fails(capsys, tmp_path, *args, match: str):
    out = tmp_path / "model"
    code, _, err = run_cli(capsys, "build", *args, "--out", out, "--quiet")
    assert_clean(code, err, allowed=(2,))
    assert match in err, err
    assert not out.exists(), "nothing is written when the input is bad"
    return err


def test_good_inputs_build(capsys, tmp_path, files):
    code, out, err = run_cli(capsys, "build", "--language", files / "tiny.gguf", "--vision", files / "siglip",
                             "--out", tmp_path / "m", "--quiet", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["image_token_id"] == 280 and summary["vocab_size"] == 281 and summary["fusion"] == "placeholder"
    # an existing model is not replaced without --overwrite
    code, _, err = run_cli(capsys, "build", "--language", files / "tiny.gguf", "--out", tmp_path / "m", "--quiet")
    assert_clean(code, err, allowed=(2,))
    assert "--overwrite" in err


def test_gguf_of_another_architecture(capsys, tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "gpt2.gguf"
    writer = GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    build_fails(capsys, tmp_path, "--language", path, match="GGUF architecture 'gpt2' is not supported")


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(fraction=st.floats(0.0, 0.999))
def test_truncated_gguf(capsys, tmp_path_factory, files, fraction):
    tmp_path = tmp_path_factory.mktemp("cut")
    data = (files / "tiny.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * fraction)])
    build_fails(capsys, tmp_path, "--language", path, match="cut.gguf")


def test_llama_folder_missing_tensors(capsys, tmp_path, files):
    import shutil

    folder = tmp_path / "llama"
    shutil.copytree(files / "llama", folder)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"], tensors["model.norm.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    err = build_fails(capsys, tmp_path, "--language", folder, match="2 tensors missing")
    assert "blocks.1.attn.k.weight" in err and "norm.weight" in err


@pytest.mark.parametrize("case", ["vision_is_gguf", "language_is_siglip", "no_such_path", "offline_hub_id",
                                  "decoder_key_override", "no_tokenizer"])
def test_wrong_inputs(capsys, tmp_path, files, monkeypatch, case):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))      # an empty Hub cache
    if case == "no_tokenizer":
        import shutil
        shutil.copytree(files / "llama", tmp_path / "bare")
        (tmp_path / "bare" / "tokenizer.json").unlink()
    args, match = {
        "vision_is_gguf": (["--language", files / "tiny.gguf", "--vision", files / "tiny.gguf"], "--vision needs"),
        "language_is_siglip": (["--language", files / "siglip"], "model_type 'siglip_vision_model' is not supported"),
        "no_such_path": (["--language", tmp_path / "nope"], "not found"),
        "offline_hub_id": (["--language", "HuggingFaceTB/SmolLM2-135M"], "offline"),
        "decoder_key_override": (["--language", files / "tiny.gguf", "--set", "decoder.n_layer=4"],
                                 "comes from pretrained weights"),
        "no_tokenizer": (["--language", tmp_path / "bare"], "has no tokenizer"),
    }[case]
    build_fails(capsys, tmp_path, *args, match=match)


def test_train_vision_without_language(capsys, tmp_path, files):
    code, _, err = run_cli(capsys, "train", "--data", tmp_path, "--vision", files / "siglip", "--out", tmp_path / "r")
    assert_clean(code, err, allowed=(2,))
    assert "needs a pretrained language model" in err
