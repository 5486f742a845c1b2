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
