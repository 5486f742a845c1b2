"""llama.cpp GGUF language models -> nanovlm (the weights, the architecture and the tokenizer: one file).

    backbone = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

- Architecture: the `llama.*` metadata keys (layers, widths, heads, RoPE base, norm epsilon). Only the llama
  architecture (SmolLM2, Llama, TinyLlama, ...) is read; any other is refused by name.
- Weights: the `gguf` package dequantises every tensor (Q4_1, Q8_0, ... -> float32). llama.cpp's converter
  reorders the rows of attn_q / attn_k so that each head's RoPE pairs are adjacent (x0 x1, x2 x3, ...) for its
  interleaved RoPE kernel; our RoPE pairs dimension i with i + head_dim/2 ("rotate half", like Hugging Face), so
  that permutation is undone here.
- Tokenizer: `tokenizer.ggml.*` holds the byte-level BPE (tokens, merges, token types, special ids, the
  pre-tokenizer's name) and `tokenizer.chat_template` the Jinja template; they become a `tokenizers` BPE wrapped
  in our Tokenizer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import DecoderConfig
from ..model.decoder import Decoder
from . import Backbone, CheckpointError, RenameRule, convert_tensors, expected_shapes

GGUF_RULES: list[RenameRule] = [
    (r"^token_embd\.weight$", "tok_emb.weight"),
    (r"^blk\.(\d+)\.attn_norm\.", r"blocks.\1.norm1."),
    (r"^blk\.(\d+)\.ffn_norm\.", r"blocks.\1.norm2."),
    (r"^blk\.(\d+)\.attn_(q|k|v)\.", r"blocks.\1.attn.\2."),
    (r"^blk\.(\d+)\.attn_output\.", r"blocks.\1.attn.out."),
    (r"^blk\.(\d+)\.ffn_(gate|up|down)\.", r"blocks.\1.mlp.\2."),
    (r"^output_norm\.", "norm."),
    (r"^output\.weight$", "lm_head.weight"),
]

# llama.cpp's pre-tokenizer names -> the regex split(s) before byte-level BPE. The GPT-2 split is what
# `tokenizers`' ByteLevel(use_regex=True) does; "\p{N}" first splits digits one by one (SmolLM, StarCoder).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {"default": "gpt2", "gpt2": "gpt2", "smollm": "digits+gpt2", "starcoder": "digits+gpt2",
                  "refact": "digits+gpt2", "codeshell": "digits+gpt2", "llama-bpe": "llama3", "llama3": "llama3"}
CONTROL_TOKEN = 3   # llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte


def read_gguf(path: str | Path, with_tokenizer: bool = True, show_progress: bool = False) -> Backbone:
    from ..progress import progress

    path = Path(path)
    reader = open_reader(path)
    meta = Metadata(reader, path)
    cfg = decoder_config(meta)
    tensors = {t.name: dequantize(t, path)
               for t in progress(reader.tensors, desc=f"dequantising {path.name}", unit="tensor", enabled=show_progress)}
    for name, heads in (("attn_q", cfg.n_head), ("attn_k", cfg.n_kv_head)):
        for key in [k for k in tensors if k.endswith(f".{name}.weight")]:
            tensors[key] = unpermute_rope_rows(tensors[key], heads)
    drop = ("lm_head.weight",) if cfg.tie_embeddings else ()
    out = convert_tensors(tensors, GGUF_RULES, expected_shapes(Decoder, cfg, drop), str(path))
    tokenizer = read_tokenizer(meta) if with_tokenizer else None
    # where the GGUF says it came from, for the model card's base_model
    repo = str(meta.get("general.base_model.0.repo_url") or meta.get("general.source.repo_url") or "")
    base_model = repo.removeprefix("https://huggingface.co/") if repo.startswith("https://huggingface.co/") else None
    return Backbone(cfg, out, source=str(path), tokenizer=tokenizer, base_model=base_model,
                    extra={"name": meta.get("general.name"), "license": meta.get("general.license")})


def open_reader(path: Path):
    from gguf import GGUFReader

    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} not found")
    try:
        return GGUFReader(path)
    except Exception as e:   # the reader raises ValueError / IndexError / struct errors for broken files
        raise CheckpointError(f"{path} is not a readable GGUF file ({type(e).__name__}: {str(e)[:200]}); "
                              f"it may be truncated: download it again") from None


class Metadata:
    """The key/value header of a GGUF file, read lazily (decoding the 49k-entry token list takes a second)."""

    def __init__(self, reader, path: Path):
        self.fields, self.path = reader.fields, path
        self.tensor_names = {t.name for t in reader.tensors}

    def get(self, key: str, default=None):
        field = self.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str):
        value = self.get(key)
        if value is None:
            raise CheckpointError(f"{self.path}: GGUF metadata key {key!r} is missing")
        return value


def decoder_config(meta: Metadata) -> DecoderConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{meta.path}: GGUF architecture {arch!r} is not supported; nanovlm reads "
                              f"llama-architecture language models (SmolLM2, Llama, TinyLlama)")
    key = lambda name: meta.require(f"llama.{name}")
    n_embd, n_head = key("embedding_length"), key("attention.head_count")
    head_dim = meta.get("llama.attention.key_length") or n_embd // n_head
    if meta.get("llama.rope.scaling.type", "none") not in ("none", None):
        raise CheckpointError(f"{meta.path}: RoPE scaling {meta.get('llama.rope.scaling.type')!r} is not supported")
    vocab = meta.get("llama.vocab_size") or len(meta.require("tokenizer.ggml.tokens"))
    return DecoderConfig(flavour="llama", vocab_size=int(vocab), n_embd=n_embd, n_layer=key("block_count"),
                         n_head=n_head, n_kv_head=meta.get("llama.attention.head_count_kv") or n_head,
                         head_dim=head_dim, mlp_hidden=key("feed_forward_length"),
                         max_seq_len=meta.get("llama.context_length", 2048),
                         rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
                         norm_eps=float(key("attention.layer_norm_rms_epsilon")),
                         tie_embeddings="output.weight" not in meta.tensor_names)


def dequantize(tensor, path: Path) -> torch.Tensor:
    from gguf.quants import dequantize as gguf_dequantize

    try:
        array = gguf_dequantize(tensor.data, tensor.tensor_type)
    except (NotImplementedError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot dequantise {tensor.name} ({tensor.tensor_type.name}: {e})") from None
    # GGUF lists dimensions fastest-first ([cols, rows]); numpy wants them slowest-first
    shape = tuple(int(d) for d in reversed(tensor.shape))
    array = np.asarray(array, dtype=np.float32).reshape(shape)
    # float32 tensors come back as read-only views of the memory-mapped file: copy those into our own memory
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's convert_hf_to_gguf permute(): within each head it interleaved the two halves of the rows
    (h0 h_half h1 h_half+1 ...); put them back in two halves. (n_heads * head_dim, C) -> same shape."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def read_tokenizer(meta: Metadata):
    """The GGUF's byte-level BPE as a `tokenizers` Tokenizer inside ours, with its special tokens and template."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from ..tokenizer import Tokenizer

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(f"{meta.path}: tokenizer model {kind!r} is not supported (byte-level BPE, 'gpt2', only)")
    tokens = list(meta.require("tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in meta.require("tokenizer.ggml.merges")]
    hf = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    pre = meta.get("tokenizer.ggml.pre", "default")
    split = PRE_TOKENIZERS.get(pre)
    if split is None:
        raise CheckpointError(f"{meta.path}: pre-tokenizer {pre!r} is unknown to nanovlm "
                              f"(known: {', '.join(sorted(PRE_TOKENIZERS))})")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split != "llama3")
    steps = [byte_level]
    if split == "digits+gpt2":
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    elif split == "llama3":
        steps.insert(0, pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"))
    hf.pre_tokenizer = pre_tokenizers.Sequence(steps)
    hf.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or []
    specials = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == CONTROL_TOKEN]
    hf.add_special_tokens(specials)
    token_at = lambda key: tokens[int(meta.get(key))] if meta.get(key) is not None else None
    eos = token_at("tokenizer.ggml.eos_token_id")
    return Tokenizer(hf, eos_token=eos, pad_token=token_at("tokenizer.ggml.padding_token_id") or eos,
                     chat_template=meta.get("tokenizer.chat_template"))
