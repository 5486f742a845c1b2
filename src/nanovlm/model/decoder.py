"""The language decoder: token embeddings (B, T, C) -> next-token logits (B, T, vocab).

One implementation, two flavours chosen by DecoderConfig switches: gpt (nanoGPT) and llama (SmolLM2)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import DecoderConfig
from .layers import MLP, Attention, SwiGLU, linear, make_norm, rope_cos_sin


class DecoderBlock(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, bias=cfg.bias, dropout=cfg.dropout,
                              qk_norm=cfg.qk_norm)
        self.norm2 = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps)
        if cfg.mlp == "swiglu":
            self.mlp = SwiGLU(cfg.n_embd, cfg.mlp_hidden, bias=cfg.bias, dropout=cfg.dropout)
        else:
            self.mlp = MLP(cfg.n_embd, cfg.mlp_hidden, bias=cfg.bias, dropout=cfg.dropout)

    def forward(self, x, rope=None, mask=None, cache=None, cache_start: int = 0, packed=None):
        x = x + self.attn(self.norm1(x), causal=True, rope=rope, mask=mask, cache=cache, cache_start=cache_start,
                          packed=packed)
        return x + self.mlp(self.norm2(x), packed=packed)


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.n_embd) if cfg.position_embedding == "learned" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, mask=None, caches=None, cache_start: int = 0,
                last_only: bool = False, return_hidden: bool = False, packed=None) -> torch.Tensor:
        """x: (B, T, C) input embeddings; position_ids: (B, T); mask: None (plain causal) or a boolean
        (B, 1, T, S) mask of the keys each query may see. Returns logits (B, T, vocab), or (B, 1, vocab)
        for the last position only when last_only (generation does not need the others), or the final
        normalised hidden states (B, T, C) when return_hidden (the loss applies lm_head to some positions only).
        caches: one KVCache per block (generation), written at cache_start onwards; None = no cache.
        packed: prepacked Linear weights (layers.pack_linear_weights) for this call, or None."""
        rope = None
        if self.pos_emb is not None:
            assert int(position_ids.max()) < self.cfg.max_seq_len, \
                f"sequence longer than decoder.max_seq_len={self.cfg.max_seq_len}"
            x = x + self.pos_emb(position_ids)
        else:
            rope = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope=rope, mask=mask, cache=None if caches is None else caches[i], cache_start=cache_start,
                      packed=packed)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        return x if return_hidden else linear(self.lm_head, x, packed)
