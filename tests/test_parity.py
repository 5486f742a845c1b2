"""Our ViT and decoder against the `transformers` reference implementations, with random weights (fp32)."""
import pytest
import torch

from nanovlm.config import DecoderConfig, VisionConfig
from nanovlm.hub import llama_to_nanovlm, siglip_to_nanovlm
from nanovlm.model.decoder import Decoder
from nanovlm.model.vision import VisionEncoder

transformers = pytest.importorskip("transformers")


def test_siglip_vision_parity():
    hf_cfg = transformers.SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=32, patch_size=8,
                                             layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")
    reference = transformers.SiglipVisionModel(hf_cfg).eval()
    ours = VisionEncoder(VisionConfig(image_size=32, patch_size=8, width=64, n_layer=2, n_head=4, mlp_hidden=128,
                                      patch_stem="linear", use_cls=False, activation="gelu_tanh",
                                      norm_eps=1e-6)).eval()
    ours.load_state_dict(siglip_to_nanovlm(reference.state_dict()), strict=True)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=images).last_hidden_state
        got = ours(images)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_kv_head", [2, 4])
def test_llama_decoder_parity(n_kv_head):
    hf_cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=n_kv_head, rms_norm_eps=1e-5,
                                      rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=128)
    reference = transformers.LlamaForCausalLM(hf_cfg).eval()
    ours = Decoder(DecoderConfig(flavour="llama", vocab_size=300, n_embd=64, n_layer=2, n_head=4,
                                 n_kv_head=n_kv_head, mlp_hidden=96, rope_theta=100000.0, norm_eps=1e-5,
                                 tie_embeddings=True)).eval()
    ours.load_state_dict(llama_to_nanovlm(reference.state_dict()), strict=False)
    assert ours.lm_head.weight is ours.tok_emb.weight
    missing = set(ours.state_dict()) - set(llama_to_nanovlm(reference.state_dict())) - {"lm_head.weight"}
    assert not missing
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        got = ours(ours.tok_emb(ids), torch.arange(17).expand(2, 17))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_load_hf_backbones_from_local_folders(tmp_path):
    """The real import path: HF folders written by save_pretrained -> one VisionLanguageModel."""
    from nanovlm.config import from_name
    from nanovlm.hub import load_hf_backbones

    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, image_size=32,
        patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=256, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)).eval()
    siglip.save_pretrained(tmp_path / "siglip")
    llama.save_pretrained(tmp_path / "llama")
    cfg = from_name("nanovlm-222m").with_overrides({
        "vision.image_size": 32, "vision.patch_size": 8, "vision.width": 64, "vision.n_layer": 1,
        "vision.n_head": 4, "vision.mlp_hidden": 128, "decoder.vocab_size": 256, "decoder.n_embd": 48,
        "decoder.n_layer": 2, "decoder.n_head": 6, "decoder.n_kv_head": 2, "decoder.mlp_hidden": 96})
    cfg.image_token_id = 255
    model = load_hf_backbones(cfg, tmp_path / "siglip", tmp_path / "llama").eval()
    images, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 255, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model.vision(images), siglip(pixel_values=images).last_hidden_state,
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model(ids)[0], llama(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
