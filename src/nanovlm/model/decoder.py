"""The language decoder: token embeddings (B, T, C) -> next-token logits (B, T, vocab).

One implementation, two flavours chosen by DecoderConfig switches: gpt (nanoGPT) and llama (SmolLM2)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import DecoderConfig
from .layers import MLP, Attention, SwiGLU, gather_positions, linear, make_norm, rope_cos_sin


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

    def forward(self, x, rope=None, mask=None, cache=None, cache_start: int = 0, packed=None, updated=None):
        """updated: None (every position is rewritten), or the positions (B, U) that are; the others (held image
        tokens) only lend their keys and values, and mask is then the updated positions' rows (B, 1, U, T)."""
        if updated is None:
            x = x + self.attn(self.norm1(x), causal=True, rope=rope, mask=mask, cache=cache, cache_start=cache_start,
                              packed=packed)
            return x + self.mlp(self.norm2(x), packed=packed)
        rewritten = gather_positions(x, updated)
        rewritten = rewritten + self.attn(self.norm1(x), causal=True, rope=rope, mask=mask, cache=cache,
                                          cache_start=cache_start, packed=packed, queries=updated)
        rewritten = rewritten + self.mlp(self.norm2(rewritten), packed=packed)
        return x.scatter(1, updated[..., None].expand_as(rewritten), rewritten)


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
                last_only: bool = False, return_hidden: bool = False, packed=None, held=None) -> torch.Tensor:
        """x: (B, T, C) input embeddings; position_ids: (B, T); mask: None (plain causal) or a boolean
        (B, 1, T, S) mask of the keys each query may see. Returns logits (B, T, vocab), or (B, 1, vocab)
        for the last position only when last_only (generation does not need the others), or the final
        normalised hidden states (B, T, C) when return_hidden (the loss applies lm_head to some positions only).
        caches: one KVCache per block (generation), written at cache_start onwards; None = no cache.
        packed: prepacked Linear weights (layers.pack_linear_weights) for this call, or None.
        held: None, or a boolean (B, T) of the positions whose hidden states no block rewrites (the image tokens,
        with DecoderConfig.hold_image_tokens), after the first cfg.rewritten_image_layers blocks: they keep what
        they hold then and only lend their keys and values."""
        rope = None
        if self.pos_emb is not None:
            assert int(position_ids.max()) < self.cfg.max_seq_len, \
                f"sequence longer than decoder.max_seq_len={self.cfg.max_seq_len}"
            x = x + self.pos_emb(position_ids)
        else:
            rope = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        x = self.dropout(x)
        holding = held is not None and bool(held.any())
        updated, rows_mask = rewritten_positions(held, mask) if holding else (None, None)
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            if not holding or i < self.cfg.rewritten_image_layers:
                x = block(x, rope=rope, mask=mask, cache=cache, cache_start=cache_start, packed=packed)
            elif updated is None:
                # no dense set of rewritten positions: rewrite every position, then put the held ones back
                x = torch.where(held[..., None], x, block(x, rope=rope, mask=mask, cache=cache,
                                                          cache_start=cache_start, packed=packed))
            else:
                x = block(x, rope=rope, mask=rows_mask, cache=cache, cache_start=cache_start, packed=packed,
                          updated=updated)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        return x if return_hidden else linear(self.lm_head, x, packed)


def rewritten_positions(held: torch.Tensor, mask: torch.Tensor | None):
    """For a boolean (B, T) of held positions: the positions the blocks rewrite, (B, U) ascending per row, and the
    rows of the attention mask (causal, or `mask` (B, 1, T, T)) for them, (B, 1, U, T). (None, None) when rows hold
    different numbers of positions, or every position is held: no dense (B, U >= 1) exists, and the decoder takes
    the slower path."""
    counts = held.sum(dim=1)
    if not bool((counts == counts[0]).all()) or int(counts[0]) == held.shape[1]:
        return None, None
    B, T = held.shape
    # a stable sort of 0 (rewritten) before 1 (held) keeps each group in its order
    updated = torch.sort(held.to(torch.uint8), dim=1, stable=True).indices[:, : T - int(counts[0])]
    if mask is None:
        mask = torch.ones(T, T, dtype=torch.bool, device=held.device).tril()[None, None]
    rows = mask.expand(B, 1, T, T).gather(2, updated[:, None, :, None].expand(B, 1, updated.shape[1], T))
    return updated, rows
