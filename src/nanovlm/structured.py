"""Structured output: generation held to a JSON schema, as OpenAI's `response_format` asks.

At every step the tokens that cannot continue a valid answer are masked out before sampling, so even a small model
writes JSON that parses and matches the schema (the NanoVLMs judge with SmolLM2-135M wrote no valid grades without
it). The grammar engine is llguidance, the one llama.cpp, vLLM and SGLang use: it compiles the schema to a grammar
and gives the allowed tokens as a bitmask over the vocabulary in microseconds per step.

    constraint = JsonConstraint(tokenizer, vocab_size, schema_from_response_format(body["response_format"]))
    logits = mask_logits(logits, [constraint])      # before sampling
    constraint.advance(token)                       # after it

The end-of-sequence token is allowed only where the answer is complete.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import torch


class ResponseFormatError(ValueError):
    """A response_format this server cannot honour (unknown type, a schema that does not compile)."""


def schema_from_response_format(response_format) -> dict | None:
    """OpenAI's response_format -> the JSON schema answers must match, or None for free text.
    {"type": "text"} -> None; {"type": "json_object"} -> any JSON object; {"type": "json_schema", "json_schema":
    {"name": ..., "schema": {...}, "strict": ...}} -> that schema."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ResponseFormatError("response_format must be an object such as {\"type\": \"json_object\"}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ResponseFormatError("response_format.json_schema must be an object with a \"schema\" object "
                                      "(OpenAI's form: {\"name\": ..., \"schema\": {...}, \"strict\": true})")
        return spec["schema"]
    raise ResponseFormatError(f"response_format.type must be text, json_object or json_schema, got {kind!r}")


@functools.lru_cache(maxsize=4)   # ~0.1-1 s to build for a large vocabulary: once per served tokenizer
def _grammar_tokenizer(tokenizer, vocab_size: int):
    from llguidance import LLTokenizer

    return LLTokenizer(tokenizer.hf.to_str(), n_vocab=vocab_size, eos_token=tokenizer.eos_token_id)


class JsonConstraint:
    """One answer's state in the grammar of a JSON schema. Answers are compact (no free whitespace between
    tokens): a small model does not waste its tokens on spaces and newlines."""

    def __init__(self, tokenizer, vocab_size: int, schema: dict):
        from llguidance import LLMatcher

        self.vocab_size = vocab_size
        try:
            grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                         overrides={"whitespace_flexible": False})
        except (TypeError, ValueError) as e:
            raise ResponseFormatError(f"the JSON schema cannot be used: {e}") from None
        self.eos_token_id = tokenizer.eos_token_id
        self.matcher = LLMatcher(_grammar_tokenizer(tokenizer, vocab_size), grammar, log_level=0)
        self.error: str | None = None       # set when the grammar fails mid-answer (the answer then ends)
        self.allowed()                       # some schemas fail only when the first mask is computed
        if self.error:
            raise ResponseFormatError(f"the JSON schema cannot be used: {self.error}")

    def allowed(self) -> torch.Tensor:
        """(vocab_size,) bool: the tokens that keep the answer valid (EOS only once it is complete). After a
        failure of the grammar engine only EOS, so the answer ends and the caller reports `error`."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        mask = torch.from_numpy(np.unpackbits(bits, bitorder="little")[: self.vocab_size].astype(bool))
        if self.error is None and (self.matcher.is_error() or not mask.any()):
            self.error = _first_line(self.matcher.get_error()) or "no token can continue the answer"
        if self.error is not None:
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[self.eos_token_id] = True
        return mask

    def advance(self, token: int):
        """Take the sampled token."""
        if self.error is None and not self.matcher.consume_token(token):
            self.error = f"token {token} does not continue the answer: {_first_line(self.matcher.get_error())}"


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else ""


def mask_logits(logits: torch.Tensor, constraints: list[JsonConstraint | None]) -> torch.Tensor:
    """(B, V) logits with each constrained row's forbidden tokens at -inf; rows with None are left free."""
    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return logits
    allowed = torch.ones_like(logits, dtype=torch.bool)
    for i in rows:
        allowed[i] = constraints[i].allowed().to(logits.device)
    return logits.masked_fill(~allowed, float("-inf"))
