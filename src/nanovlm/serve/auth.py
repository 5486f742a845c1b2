"""Who may call the server: API keys kept as salted hashes, OAuth2 bearer JWTs, and per-caller rate limits.

API keys look like `nvk_<id>_<secret>`. The key file (JSON, mode 0600) stores for each named key its id, a
random salt and SHA-256(salt + secret) - never the key itself, so a leaked file gives no working key. The secret
is 256 random bits, so a fast salted hash is enough (slow password hashes exist for guessable passwords).
`nanovlm keys add NAME` prints the key once; `revoke` marks it revoked; the server re-reads the file when it
changes, so a revocation takes effect on the next request.

JWTs (Authorization: Bearer <jwt>) are verified with PyJWT against the issuer's public key (a PEM file) or a
JWKS file: signature, expiry (required), issuer and, when configured, audience. The caller's name in logs and
rate limits is `jwt:<sub>`.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError

KEY_PREFIX = "nvk_"
JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]


class AuthError(Exception):
    """The request carries no credentials or bad ones (HTTP 401)."""


class RateLimited(Exception):
    """Too many requests from one caller (HTTP 429)."""

    def __init__(self, retry_after: float):
        super().__init__(f"rate limit exceeded; retry after {retry_after:.1f} s")
        self.retry_after = retry_after


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class KeyStore:
    """The API-key file. Every change is written to a temporary file and renamed (never half-written)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime = None
        self._keys: dict[str, dict] = {}

    # ------------------------------------------------------------------ file

    def load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            keys = data["keys"]
            assert isinstance(keys, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
            raise ConfigError(f"{self.path} is not a nanovlm key file ({e}); make a new one with "
                              f"`nanovlm keys add NAME --keys-file {self.path}`") from None
        return keys

    def _save(self, keys: dict[str, dict]):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:        # mkstemp makes it 0600: only its owner can read the hashes
            json.dump({"keys": keys}, f, indent=2)
        os.replace(tmp, self.path)

    # ------------------------------------------------------------------ management (the `nanovlm keys` command)

    def add(self, name: str) -> str:
        """Make a key named `name`; return it. It is shown this once and never stored."""
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError(f"key name {name!r} must be non-empty letters, digits, '-', '_' or '.'")
        keys = self.load()
        if name in keys and not keys[name].get("revoked"):
            raise ConfigError(f"a key named {name!r} exists in {self.path}; revoke it first or pick another name")
        key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
        keys[name] = {"id": key_id, "salt": salt, "sha256": _hash(salt, secret), "created": int(time.time()),
                      "revoked": False}
        self._save(keys)
        return f"{KEY_PREFIX}{key_id}_{secret}"

    def revoke(self, name: str):
        keys = self.load()
        if name not in keys:
            raise ConfigError(f"no key named {name!r} in {self.path}; `nanovlm keys list` shows the names")
        keys[name]["revoked"] = True
        keys[name]["revoked_at"] = int(time.time())
        self._save(keys)

    def list(self) -> list[dict]:
        return [{"name": name, "created": k.get("created"), "revoked": bool(k.get("revoked"))}
                for name, k in sorted(self.load().items())]

    # ------------------------------------------------------------------ checking (the server)

    def _current(self) -> dict[str, dict]:
        """The keys, re-read when the file changed (a `revoke` in another process counts at once)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        with self._lock:
            if mtime != self._mtime:
                self._keys, self._mtime = self.load(), mtime
            return self._keys

    def has_active_keys(self) -> bool:
        return any(not k.get("revoked") for k in self._current().values())

    def verify(self, key: str) -> str:
        """The name of the key, or AuthError."""
        if not key.startswith(KEY_PREFIX) or key.count("_") < 2:
            raise AuthError("malformed API key")
        key_id, _, secret = key[len(KEY_PREFIX):].partition("_")
        for name, record in self._current().items():
            if hmac.compare_digest(record.get("id", ""), key_id):
                if not hmac.compare_digest(record["sha256"], _hash(record["salt"], secret)):
                    break
                if record.get("revoked"):
                    raise AuthError("this API key has been revoked")
                return name
        raise AuthError("invalid API key")


class JWTVerifier:
    """Checks bearer JWTs against one issuer's public key(s)."""

    def __init__(self, issuer: str, public_key_file: str | None = None, jwks_file: str | None = None,
                 audience: str | None = None):
        import jwt

        if not issuer:
            raise ConfigError("JWT checking needs the issuer (--jwt-issuer), the `iss` the tokens must carry")
        if bool(public_key_file) == bool(jwks_file):
            raise ConfigError("give exactly one of --jwt-public-key (a PEM file) or --jwt-jwks (a JWKS JSON file)")
        self.issuer, self.audience = issuer, audience
        self._keys = {}
        path = Path(public_key_file or jwks_file)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
        try:
            if public_key_file:
                from cryptography.hazmat.primitives.serialization import load_pem_public_key

                self._default = load_pem_public_key(text.encode())
            else:
                self._default = None
                for jwk in jwt.PyJWKSet.from_json(text).keys:
                    self._keys[jwk.key_id] = jwk.key
                if not self._keys:
                    raise ValueError("no usable key")
        except (ValueError, TypeError, jwt.PyJWTError) as e:
            raise ConfigError(f"{path} holds no usable public key ({e})") from None

    def verify(self, token: str) -> str:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
            key = self._default
            if key is None:
                kid = header.get("kid")
                key = self._keys.get(kid) if kid is not None else next(iter(self._keys.values()))
                if key is None:
                    raise AuthError("the token's key id (kid) is not in the configured JWKS")
            claims = jwt.decode(token, key, algorithms=JWT_ALGORITHMS, issuer=self.issuer, audience=self.audience,
                                options={"require": ["exp", "iss"], "verify_aud": self.audience is not None})
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.PyJWTError as e:
            raise AuthError(f"invalid token: {e}") from None
        return f"jwt:{claims.get('sub', '?')}"


class RateLimiter:
    """A token bucket per caller: `rate` requests per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, caller: str):
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(caller, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[caller] = (tokens, now)
                raise RateLimited((1 - tokens) / self.rate)
            self._buckets[caller] = (tokens - 1, now)


@dataclass
class Authenticator:
    """API keys and/or JWTs; with neither configured the server runs open (only with --no-auth)."""
    keys: KeyStore | None = None
    jwt: JWTVerifier | None = None

    @property
    def enabled(self) -> bool:
        return self.keys is not None or self.jwt is not None

    def caller(self, authorization: str | None, x_api_key: str | None = None) -> str | None:
        """The caller's name for a request's headers, or AuthError. None when auth is off."""
        if not self.enabled:
            return None
        credential = x_api_key
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthError("the Authorization header must be `Bearer <API key or token>`")
            credential = value.strip()
        if not credential:
            raise AuthError("missing credentials: send `Authorization: Bearer <API key or token>`")
        if credential.startswith(KEY_PREFIX):
            if self.keys is None:
                raise AuthError("this server does not take API keys")
            return self.keys.verify(credential)
        if self.jwt is None:
            raise AuthError("invalid API key" if self.keys is not None else "this server does not take JWTs")
        return self.jwt.verify(credential)
