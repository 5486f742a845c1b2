"""Our ViT and decoder against the `transformers` reference implementations, with random weights (fp32), loaded
the way users load real ones: Hugging Face folders written by save_pretrained -> nanovlm.convert.hf, and the
whole VLM through `nanovlm build`."""
import json

import pytest
import torch

from nanovlm.convert import CheckpointError
from nanovlm.convert.hf import llama_language, siglip_vision
from nanovlm.model.decoder import Decoder
from nanovlm.model.vision import VisionEncoder

transformers = pytest.importorskip("transformers")


def _siglip(tmp_path, **kw):
    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
               patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**{**cfg, **kw})).eval()
    model.save_pretrained(tmp_path / "siglip")
    return model, tmp_path / "siglip"


def _llama(tmp_path, n_kv_head=2, vocab_size=300, tie=True, tokenizer=None, **kw):
    cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=n_kv_head, rms_norm_eps=1e-5,
                                   rope_theta=100000.0, tie_word_embeddings=tie, max_position_embeddings=128, **kw)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "llama")
    if tokenizer is not None:
        tokenizer.save(str(tmp_path / "llama" / "tokenizer.json"))
    return model, tmp_path / "llama"


def test_siglip_vision_parity(tmp_path):
    reference, folder = _siglip(tmp_path)
    backbone = siglip_vision(folder)
    ours = VisionEncoder(backbone.config).eval()
    ours.load_state_dict(backbone.tensors, strict=True)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(pixel_values=images).last_hidden_state,
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_kv_head,tie", [(2, True), (4, False)])
def test_llama_decoder_parity(tmp_path, n_kv_head, tie):
    reference, folder = _llama(tmp_path, n_kv_head=n_kv_head, tie=tie)
    backbone = llama_language(folder)
    assert backbone.config.n_kv_head == n_kv_head and backbone.config.tie_embeddings == tie
    ours = Decoder(backbone.config).eval()
    ours.load_state_dict(backbone.tensors, strict=not tie)
    assert (ours.lm_head.weight is ours.tok_emb.weight) == tie
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        got = ours(ours.tok_emb(ids), torch.arange(17).expand(2, 17))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_sharded_llama_folder(tmp_path):
    """A model.safetensors.index.json + shards reads like one file."""
    reference, _ = _llama(tmp_path)
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    a, b = llama_language(tmp_path / "llama"), llama_language(tmp_path / "sharded")
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_missing_tensor_is_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = _llama(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    tensors["model.layers.0.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 tensor missing \(blocks\.1\.mlp\.up\.weight\).*"
                                              r"1 tensor unexpected \(model\.layers\.0\.extra\.weight\)"):
        llama_language(folder)


def _bpe_without_image_token(n_tokens: int):
    """A byte-level BPE of exactly n_tokens tokens that knows nothing of <|image|> (like any text-only LM)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=n_tokens, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the red ball is on the green grass next to a small blue box"] * 50, trainer=trainer)
    assert tok.get_vocab_size() == n_tokens
    return tok


def test_build_through_cli_matches_transformers(tmp_path):
    """`nanovlm build --vision SIGLIP --language LLAMA` (GQA) -> from_pretrained: the vision tower and the decoder
    give transformers' numbers; the LM had no <|image|>: it is added as one more row (the mean embedding), tied."""
    from nanovlm.cli import main
    from nanovlm.model.vlm import VisionLanguageModel

    siglip, siglip_dir = _siglip(tmp_path)
    n_tokens = 280
    llama, llama_dir = _llama(tmp_path, n_kv_head=2, vocab_size=n_tokens, tokenizer=_bpe_without_image_token(n_tokens))
    out = tmp_path / "vlm"
    assert main(["build", "--vision", str(siglip_dir), "--language", str(llama_dir), "--out", str(out),
                 "--quiet"]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= \
        {p.name for p in out.iterdir()}
    model = VisionLanguageModel.from_pretrained(out)
    assert model.cfg.decoder.vocab_size == n_tokens + 1 and model.cfg.image_token_id == n_tokens
    assert model.decoder.lm_head.weight is model.decoder.tok_emb.weight
    embedding = llama.model.embed_tokens.weight.detach()
    torch.testing.assert_close(model.decoder.tok_emb.weight[-1], embedding.mean(0))
    images, ids = torch.randn(2, 3, 32, 32), torch.randint(0, n_tokens, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model.vision(images), siglip(pixel_values=images).last_hidden_state,
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model(ids)[0][..., :n_tokens], llama(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    card = (out / "README.md").read_text()
    assert "library_name: nanovlm" in card and "pipeline_tag: image-text-to-text" in card
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"]


def test_build_keeps_bf16(tmp_path):
    from nanovlm.convert.backbones import build_vlm

    _, llama_dir = _llama(tmp_path, vocab_size=280, tokenizer=_bpe_without_image_token(280))
    model = build_vlm(llama_dir, preset="tiny", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.cfg.vision == __import__("nanovlm").from_name("tiny").vision   # no --vision: the preset's encoder
