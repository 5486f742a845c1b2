"""Calls to any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, llama.cpp's server, `nanovlm serve`):
the client, retries with backoff, token and cost accounting, and an on-disk answer cache.

Used by `nanovlm data describe` (an LLM rewrites captions) and `nanovlm eval judge` (an LLM grades completions).

Retries are ours, not the `openai` client's (we build it with max_retries=0), so that what is retried is explicit
and tested: HTTP 408/409/429 and 5xx answers, timeouts, dropped connections and 200 answers whose body is not a
valid Chat Completions object. We wait base * 2**attempt seconds (with jitter, capped), or the server's
Retry-After when it sends one. Anything else (a wrong key, an unknown model, a bad request) fails at once.
"""
from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError

# USD per million (input, output) tokens: OpenAI's published list prices for the standard tier (as of 2025).
# Local servers cost nothing here; override with ChatSettings.price_per_million for anything else.
PRICES_PER_MILLION = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}

RETRYABLE_STATUS = (408, 409, 429)   # plus every 5xx


@dataclass
class ChatSettings:
    base_url: str | None = None          # None -> https://api.openai.com/v1
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable, never from a flag
    concurrency: int = 8                 # requests in flight at once
    max_retries: int = 5                 # retries of one request after 429/5xx/timeouts/malformed answers
    timeout_s: float = 60.0              # per request
    backoff_s: float = 1.0               # first wait; doubles each retry (with jitter)
    backoff_max_s: float = 30.0
    temperature: float = 0.7
    max_tokens: int = 400
    price_per_million: tuple[float, float] | None = None   # (input, output) USD; None -> PRICES_PER_MILLION
    response_format: dict | None = None  # sent as is when set, e.g. {"type": "json_schema", ...} (structured output)

    def __post_init__(self):
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ConfigError(f"max_retries and backoff times must be >= 0, got max_retries={self.max_retries}, "
                              f"backoff_s={self.backoff_s}, backoff_max_s={self.backoff_max_s}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout_s}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(f"temperature must be between 0 and 2, got {self.temperature}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.model:
            raise ConfigError("model must be a model name the endpoint serves, e.g. gpt-4o")

    def prices(self) -> tuple[float, float] | None:
        """(input, output) USD per million tokens, or None when unknown (a local model)."""
        if self.price_per_million is not None:
            return tuple(self.price_per_million)
        return PRICES_PER_MILLION.get(self.model)


class ChatError(RuntimeError):
    """A request the endpoint refused for good (a wrong key, an unknown model, a bad request): stop the run."""


class RetriesExhausted(ChatError):
    """A request that kept failing with retryable errors: give up on this item, carry on with the others."""


def _openai():
    # imported on first use: the `openai` package is an optional extra (nanovlm[paper])
    try:
        import openai
    except ImportError:
        raise ConfigError("this command talks to an LLM through the `openai` package: "
                          "pip install 'nanovlm[paper]'") from None
    return openai


def make_client(settings: ChatSettings):
    openai = _openai()
    key = os.environ.get(settings.api_key_env)
    if not key:
        if settings.base_url is None:
            raise ConfigError(f"no API key: set the environment variable {settings.api_key_env} "
                              "(or point --base-url at a local server, which needs none)")
        key = "none"   # llama.cpp, vLLM and our own server accept any key unless started with one
    # max_retries=0: the retry policy lives in chat() below, where it is visible and tested
    return openai.OpenAI(api_key=key, base_url=settings.base_url, max_retries=0, timeout=settings.timeout_s)


@dataclass
class Usage:
    """Running totals across threads: requests, retries and tokens, and the cost they imply."""
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prompt_tokens: int = 0, completion_tokens: int = 0, requests: int = 0, retries: int = 0):
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.requests += requests
            self.retries += retries

    def cost(self, prices: tuple[float, float] | None) -> float | None:
        if prices is None:
            return None
        return (self.prompt_tokens * prices[0] + self.completion_tokens * prices[1]) / 1e6

    def to_dict(self, prices=None) -> dict:
        return {"requests": self.requests, "retries": self.retries, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": self.cost(prices)}


def _retryable(error: Exception) -> bool:
    openai = _openai()
    if isinstance(error, (openai.APITimeoutError, openai.APIConnectionError, openai.APIResponseValidationError,
                          json.JSONDecodeError, MalformedAnswer)):
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return False


def _unreachable(error: Exception) -> bool:
    openai = _openai()
    return isinstance(error, openai.APIConnectionError) and not isinstance(error, openai.APITimeoutError)


class MalformedAnswer(ValueError):
    """A 200 answer that is not a usable Chat Completions object (no choices, no message text)."""


def backoff_seconds(attempt: int, settings: ChatSettings, error: Exception | None = None) -> float:
    """How long to wait before retry number `attempt` (0-based): the server's Retry-After if it gave one,
    else exponential backoff with full jitter (spreads out threads that failed together)."""
    response = getattr(error, "response", None)
    retry_after = response.headers.get("retry-after") if response is not None else None
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), settings.backoff_max_s)
        except ValueError:
            pass   # an HTTP date: fall back to our own schedule
    ceiling = min(settings.backoff_s * 2 ** attempt, settings.backoff_max_s)
    return ceiling / 2 + random.random() * ceiling / 2


def chat(client, settings: ChatSettings, messages: list[dict], usage: Usage | None = None,
         sleep=time.sleep) -> str:
    """One Chat Completions call with retries; returns the assistant's text. Raises RetriesExhausted when the
    retryable errors outlast max_retries, ChatError at once on any other error."""
    usage = usage if usage is not None else Usage()
    for attempt in range(settings.max_retries + 1):
        try:
            extra = {"response_format": settings.response_format} if settings.response_format else {}
            response = client.chat.completions.create(
                model=settings.model, messages=messages, temperature=settings.temperature,
                max_tokens=settings.max_tokens, timeout=settings.timeout_s, **extra)
            text = _answer_text(response)
            tokens = response.usage
            usage.add(prompt_tokens=getattr(tokens, "prompt_tokens", 0) or 0,
                      completion_tokens=getattr(tokens, "completion_tokens", 0) or 0, requests=1)
            return text
        except Exception as error:   # noqa: BLE001 - sorted into retryable or not right here
            usage.add(requests=1)
            if not _retryable(error):
                raise ChatError(f"{settings.base_url or 'api.openai.com'} model {settings.model}: "
                                f"{type(error).__name__}: {error}") from error
            if attempt == settings.max_retries:
                if _unreachable(error):   # no answer at all, every time: the endpoint is wrong or down, stop
                    raise ChatError(f"cannot reach {settings.base_url or 'api.openai.com'} ({error}); check "
                                    "--base-url and that the server is running") from error
                raise RetriesExhausted(f"{settings.base_url or 'api.openai.com'} model {settings.model}: gave up "
                                       f"after {attempt + 1} attempts; last error {type(error).__name__}: {error}"
                                       ) from error
            usage.add(retries=1)
            sleep(backoff_seconds(attempt, settings, error))
    raise AssertionError("unreachable")


def _answer_text(response) -> str:
    # A server can answer 200 with a body the client parses leniently into an object missing its parts.
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedAnswer(f"answer has no choices: {str(response)[:200]}")
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str):
        raise MalformedAnswer(f"answer has no message text: {str(response)[:200]}")
    return text


class AnswerCache:
    """A small on-disk key -> JSON store (SQLite: each put is one committed transaction, so a run killed at any
    moment keeps every answer it had stored and never a half-written one). Keys are strings the caller builds from
    everything that determines the answer (input, model, prompt version)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one connection shared by threads: sqlite3 allows it when access is serialised, which the lock does
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str):
        with self._lock:
            row = self._db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self):
        with self._lock:
            self._db.close()
