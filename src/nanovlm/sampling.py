"""Next-token sampling as small pure functions: logits (B, V) in, token ids (B,) out; and GenerationConfig, the
checked parameters of one generation."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .config import ConfigError


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf."""
    k = min(k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability mass reaches p (always >= 1 token)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    # Drop a token when the mass BEFORE it already reaches p; the first token is never dropped.
    drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    assert temperature > 0, "temperature 0 means greedy: call greedy() instead"
    logits = logits.float()
    # subtract the row maximum first: with a tiny temperature the quotient would overflow to inf, and inf - inf = NaN
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature
    if top_k:
        logits = apply_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = apply_top_p(logits, top_p)
    return logits.softmax(-1)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy when temperature == 0, otherwise draw from the filtered, tempered distribution."""
    if temperature < torch.finfo(torch.float32).tiny:
        return greedy(logits)   # 0, or so small it rounds to 0 in float32: greedy is the limit of sampling
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------- generation parameters

@dataclass(frozen=True)
class GenerationConfig:
    """How to generate: every value range-checked here, once, with a message naming the option."""
    max_new_tokens: int = 80            # most tokens to generate (prompt + these must fit the model's context)
    temperature: float = 0.0            # 0 = greedy; > 0 samples from softmax(logits / temperature)
    top_k: int | None = None            # sample among the k most likely tokens
    top_p: float | None = None          # nucleus: the smallest set of tokens with this much probability, 0 < p <= 1
    seed: int | None = None             # seeds the sampler, so a sampled answer can be repeated
    stop: tuple[str, ...] = ()          # the answer is cut before the first of these strings

    def __post_init__(self):
        _check_int("max_new_tokens", self.max_new_tokens, low=1)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, numbers.Real):
            raise ConfigError(f"temperature must be a number, got {self.temperature!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None:
            _check_int("top_k", self.top_k, low=1)
        if self.top_p is not None:
            if isinstance(self.top_p, bool) or not isinstance(self.top_p, numbers.Real):
                raise ConfigError(f"top_p must be a number, got {self.top_p!r}")
            if not 0 < self.top_p <= 1:   # NaN fails this too
                raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=2**63 - 1)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (tuple, list)) or not all(isinstance(s, str) and s for s in stop):
            raise ConfigError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", None if self.top_p is None else float(self.top_p))
        object.__setattr__(self, "stop", tuple(stop))

    def cut_at_stop(self, text: str) -> str:
        """The text up to (not including) the first stop string."""
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return text[: min(cuts)] if cuts else text


def _check_int(name: str, value, low: int, high: int | None = None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigError(f"{name} must be {bound}, got {value}")
