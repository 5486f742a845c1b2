"""Building blocks shared by the vision encoder and the decoder: norms, MLPs, RoPE, attention, KV cache."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # F.rms_norm normalises bf16 inputs in fp32 (as Llama does, so the small-variance case keeps its
        # precision) and gives the same numbers as the spelled-out x * rsqrt(mean(x^2) + eps) * weight, in fewer
        # kernels: that matters when decoding one token at a time, where 60 norms run per token.
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    return RMSNorm(dim, eps) if kind == "rmsnorm" else nn.LayerNorm(dim, eps=eps)


class MLP(nn.Module):
    """fc -> GELU -> proj (ViT, GPT)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True, approximate: str = "none", dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.approximate = approximate
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, packed: dict | None = None):
        hidden = F.gelu(linear(self.fc, x, packed), approximate=self.approximate)
        return self.dropout(linear(self.proj, hidden, packed))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Llama)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, packed: dict | None = None):
        gate, up = fused_linear(self, (self.gate, self.up), x, packed)
        return self.dropout(linear(self.down, F.silu(gate) * up, packed))


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """RoPE tables for the given positions: (B, T) -> cos, signed_sin, each (B, 1, T, head_dim), in the
    "rotate half" layout of Llama / Hugging Face (dimension i pairs with i + head_dim/2).

    signed_sin carries the minus sign of the rotation in its first half, so that apply_rope needs no negation."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim))
    angles = position_ids.float()[..., None] * inv_freq          # (B, T, head_dim/2)
    sin = angles.sin()
    cos = torch.cat((angles.cos(),) * 2, dim=-1)
    signed_sin = torch.cat((-sin, sin), dim=-1)
    return cos.to(dtype)[:, None], signed_sin.to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x1, x2) = (x[..., :half], x[..., half:]) pair: (x1 cos - x2 sin, x2 cos + x1 sin).
    roll swaps the halves to (x2, x1) and signed_sin = (-sin, sin) supplies the signs: three kernels instead of
    the six of cat(-x2, x1), which counts when decoding (two calls per layer per token)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


def pack_linear_weights(module: nn.Module) -> dict:
    """The weights of every bf16 CPU nn.Linear in `module`, reordered ONCE into oneDNN's blocked layout, for
    linear(..., packed): {layer: packed weight}. Empty where oneDNN has no bf16 kernels (then nothing changes).

    Why: for the one-row products of decoding, plain F.linear makes oneDNN reorder the whole weight on every call,
    which costs more than the product. With packed weights the same kernel gives the same numbers 1.5-2.5x faster
    (AVX512-BF16 CPU, torch 2.13: 98 -> 40 us for a 1536 x 576 weight, one row). The packed copies are a second
    copy of those weights, owned by whoever asked for them and passed to each call: nothing is set on the modules
    and no process-wide switch is flipped (the earlier way turned oneDNN off for the whole process while decoding).

    Products that read the same input are also fused, each into ONE packed weight (their rows stacked): an
    attention's q, k and v, a SwiGLU's gate and up. Decoding is dispatch-bound for small models (~30 us per
    product whatever its size), so one product instead of three saves two dispatches per layer and token.
    Those entries are keyed by the module (Attention, SwiGLU) and read by fused_linear()."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return {}
    pack = lambda weight: torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
    packed = {m: pack(m.weight) for m in module.modules()
              if isinstance(m, nn.Linear) and m.weight.device.type == "cpu" and m.weight.dtype == torch.bfloat16}
    for m in module.modules():
        parts = FUSED_PARTS.get(type(m), lambda _: ())(m)
        if parts and all(p in packed for p in parts):
            biases = [p.bias for p in parts]
            bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
            packed[m] = FusedWeight(pack(torch.cat([p.weight for p in parts])), bias, [p.out_features for p in parts])
            for p in parts:                  # only the fused copy is read: do not keep the weights twice
                del packed[p]
    return packed


@dataclass
class FusedWeight:
    """Several Linear layers that read the same input, as one prepacked weight; `sizes` splits the output."""
    weight: torch.Tensor
    bias: torch.Tensor | None
    sizes: list[int]


def linear(layer: nn.Linear, x: torch.Tensor, packed: dict | None = None) -> torch.Tensor:
    """layer(x), through the layer's prepacked weight when `packed` (from pack_linear_weights) has one."""
    weight = packed.get(layer) if packed else None
    if weight is None or x.dtype != torch.bfloat16:
        return layer(x)
    return torch.ops.mkldnn._linear_pointwise(x, weight, layer.bias, "none", [], "")


def fused_linear(owner: nn.Module, layers, x: torch.Tensor, packed: dict | None = None):
    """(layer(x) for layer in layers), as one product through owner's FusedWeight when `packed` has one."""
    fused = packed.get(owner) if packed else None
    if fused is None or x.dtype != torch.bfloat16:
        return tuple(linear(layer, x, packed) for layer in layers)
    return torch.ops.mkldnn._linear_pointwise(x, fused.weight, fused.bias, "none", [], "").split(fused.sizes, -1)


class KVCache:
    """Keys and values of every past position of ONE layer, preallocated for (batch, max_len), written in place.

    A cache belongs to one generate() call, never to a module: generate() makes one per layer and passes them
    through forward, so any number of calls can run on the same model at the same time."""

    def __init__(self, batch_size: int, n_kv_head: int, max_len: int, head_dim: int, dtype, device):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, H, T, D) at positions start..start+T; return the cache up to there."""
        end = start + k.shape[2]
        assert end <= self.k.shape[2], f"KV cache of length {self.k.shape[2]} is full (need {end})"
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


@contextlib.contextmanager
def fp32_attention_for_backward(q: torch.Tensor):
    """Attention that will be back-propagated on CPU runs in fp32, out of autocast; elsewhere as it comes.
    Yields the function that casts q, k and v. On CPU the backward of bf16 attention is 2-2.5x slower than fp32's
    (2026-11-26, torch 2.13, 2 cores, forward + backward of one layer: 30 -> 13 ms for the demo decoder's batch
    of 32 x 129 tokens, 49 -> 35 ms for SmolLM2's heads), while its forward is faster in bf16: training upcasts
    (more precise too), inference keeps bf16."""
    if q.device.type == "cpu" and q.requires_grad and torch.is_grad_enabled():
        with torch.autocast("cpu", enabled=False):
            yield lambda t: t.float()
    else:
        yield lambda t: t


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention through F.scaled_dot_product_attention.

    Bidirectional in the vision encoder, causal in the decoder. In the decoder, rope (the tables of rope_cos_sin)
    rotates q and k, and a KVCache (passed by generate() for this call only) holds the keys and values of earlier
    positions.

    qk_norm > 0 makes it cosine attention: q and k are L2-normalised per head, so a score is the cosine of their
    angle times a learned per-head temperature (starting at qk_norm). A score then depends on where q and k point,
    not on how long they are, so a head can single out one key among many early in training."""

    def __init__(self, dim: int, n_head: int, n_kv_head: int, head_dim: int, bias: bool, dropout: float = 0.0,
                 qk_norm: float = 0.0):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.q = nn.Linear(dim, n_head * head_dim, bias=bias)
        self.k = nn.Linear(dim, n_kv_head * head_dim, bias=bias)
        self.v = nn.Linear(dim, n_kv_head * head_dim, bias=bias)
        self.out = nn.Linear(n_head * head_dim, dim, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.qk_temperature = nn.Parameter(torch.full((n_head,), float(qk_norm))) if qk_norm else None

    def forward(self, x, causal: bool, rope=None, mask=None, cache: KVCache | None = None, cache_start: int = 0,
                packed: dict | None = None, queries: torch.Tensor | None = None):
        """queries: None (every position asks), or the positions (B, Tq) that ask, each row ascending; then every
        position still gives its key and value, the output is (B, Tq, dim), and mask must be given as (B, 1, Tq, T)
        (the decoder's held image tokens: DecoderConfig.hold_image_tokens)."""
        B, T, _ = x.shape
        if queries is None:
            q, k, v = fused_linear(self, (self.q, self.k, self.v), x, packed)
        else:
            q = linear(self.q, gather_positions(x, queries), packed)
            k, v = linear(self.k, x, packed), linear(self.v, x, packed)
        Tq = q.shape[1]
        q = q.view(B, Tq, self.n_head, self.head_dim).transpose(1, 2)                              # (B, H, Tq, D)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)                            # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            rope_q = rope if queries is None else tuple(gather_positions(t, queries, dim=2) for t in rope)
            q, k = apply_rope(q, *rope_q), apply_rope(k, *rope)
        if self.qk_temperature is not None:
            # scaled_dot_product_attention divides by sqrt(head_dim): multiply it back, score = temperature x cosine
            scale = self.qk_temperature.view(1, -1, 1, 1) * self.head_dim ** 0.5
            q, k = F.normalize(q, dim=-1) * scale.to(q.dtype), F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.update(cache_start, k, v)                            # (B, Hkv, S, D), all keys so far
        # An explicit mask (padding and/or cache offset) already encodes causality; otherwise use the fast path.
        # is_causal aligns its mask to the top-left corner, which is right only when this call's queries start at
        # key 0; one new query after the cache (decoding) may see every key, so it needs no mask at all.
        assert queries is None or mask is not None, "a subset of queries needs its explicit mask"
        is_causal = causal and mask is None and T > 1
        assert not (is_causal and cache_start), "queries after cached keys need an explicit mask"
        dropout_p = self.dropout if self.training else 0.0
        group = self.n_head // self.n_kv_head       # grouped-query attention: query heads per key/value head
        if Tq == 1 and group > 1:
            # One query per head (decoding): the `group` query heads that share a key/value head become `group`
            # query rows of that head, exactly the same attention in n_kv_head heads (a (B, 1, 1, S) padding mask
            # broadcasts over the rows). Measured on CPU in bf16: ~3x faster per call than enable_gqa,
            # 52 -> 57 tokens/s for nanovlm-222m (neutral in fp32).
            q = q.view(B, self.n_kv_head, group, self.head_dim)                   # (B, Hkv, group, D)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
            y = y.view(B, self.n_head, 1, self.head_dim)                          # (B, H, 1, D)
        else:
            # enable_gqa lets each key/value head serve its `group` query heads without materialising copies.
            with fp32_attention_for_backward(q) as upcast:
                y = F.scaled_dot_product_attention(upcast(q), upcast(k), upcast(v), attn_mask=mask,
                                                   is_causal=is_causal, dropout_p=dropout_p,
                                                   enable_gqa=group > 1).to(v.dtype)
        y = y.transpose(1, 2).reshape(B, Tq, self.n_head * self.head_dim)          # (B, Tq, H*D)
        return self.resid_dropout(linear(self.out, y, packed))


def gather_positions(x: torch.Tensor, index: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x's entries at the positions index (B, K) along dim (x: (B, T, C) for dim 1, (B, H, T, D) for dim 2)."""
    shape = [index.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = index.shape[1]
    expanded = index.view(shape).expand(*[s if i == dim else x.shape[i] for i, s in enumerate(shape)])
    return x.gather(dim, expanded)


# Which Linear layers of a module read the same input and can be fused by pack_linear_weights.
FUSED_PARTS = {Attention: lambda m: (m.q, m.k, m.v), SwiGLU: lambda m: (m.gate, m.up)}
