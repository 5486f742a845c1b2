"""Authentication: API keys (salted hashes, revocation), JWTs (expired, forged, wrong issuer, JWKS), rate limits,
access logs that name the key but never show it, and the `nanovlm keys` command."""
import json
import logging
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from nanovlm.cli import main
from nanovlm.serve.app import create_app
from nanovlm.serve.auth import Authenticator, JWTVerifier, KeyStore
from nanovlm.serve.server import build_authenticator

from serve_util import data_url, model, model_dir, png_bytes, serve_config  # noqa: F401

ISSUER = "https://issuer.example"
BODY = {"image": data_url(png_bytes()), "prompt": "I see", "max_tokens": 2}


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def issuer_key():
    return _rsa()


def _token(private_key, issuer=ISSUER, expires_in=60, kid=None, **claims):
    payload = {"iss": issuer, "sub": "alice", "exp": int(time.time()) + expires_in, **claims}
    return jwt.encode(payload, private_key, algorithm="RS256", headers={"kid": kid} if kid else None)


def _pem(private_key, tmp_path):
    path = tmp_path / "issuer.pem"
    path.write_bytes(private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(path)


def test_key_file_holds_salted_hashes_never_the_key(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    key_a, key_b = store.add("alice"), store.add("bob")
    text = (tmp_path / "keys.json").read_text()
    for key in (key_a, key_b):
        assert key not in text and key.split("_", 2)[2] not in text
    records = json.loads(text)["keys"]
    assert records["alice"]["salt"] != records["bob"]["salt"]
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0          # only the owner can read it
    assert store.verify(key_a) == "alice" and store.verify(key_b) == "bob"


def test_api_key_cases(model, model_dir, tmp_path, caplog):
    store = KeyStore(tmp_path / "keys.json")
    key = store.add("team-a")
    app = create_app(model, serve_config(model_dir, no_auth=False), Authenticator(keys=store))
    caplog.set_level(logging.INFO, logger="nanovlm.access")
    with TestClient(app) as c:
        def post(headers):
            return c.post("/v1/complete", json=BODY, headers=headers)

        assert post({"Authorization": f"Bearer {key}"}).status_code == 200
        assert post({"X-API-Key": key}).status_code == 200
        for headers, words in [({}, "missing"), ({"Authorization": "Bearer nvk_0000_wrong"}, "invalid"),
                               ({"Authorization": f"Bearer {key}x"}, "invalid"),
                               ({"Authorization": f"Basic {key}"}, "bearer")]:
            r = post(headers)
            assert r.status_code == 401 and words in r.json()["error"]["message"].lower(), r.text
            assert r.headers["www-authenticate"] == "Bearer"
        # the page and the probes stay open; the API does not
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        assert c.get("/v1/models").status_code == 401

        store.revoke("team-a")          # as `nanovlm keys revoke` in another process: the server re-reads the file
        r = post({"Authorization": f"Bearer {key}"})
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]

    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "nanovlm.access"]
    assert {"team-a", None} <= {line["key"] for line in lines}
    assert all(key not in rec.getMessage() for rec in caplog.records)
    assert all(line["latency_ms"] >= 0 and line["request_id"] for line in lines)


def test_jwt_cases(model, model_dir, tmp_path, issuer_key):
    verifier = JWTVerifier(ISSUER, public_key_file=_pem(issuer_key, tmp_path), audience="nanovlm")
    app = create_app(model, serve_config(model_dir, no_auth=False), Authenticator(jwt=verifier))
    with TestClient(app) as c:
        def post(token):
            return c.post("/v1/complete", json=BODY, headers={"Authorization": f"Bearer {token}"})

        assert post(_token(issuer_key, aud="nanovlm")).status_code == 200
        cases = {"expired": _token(issuer_key, expires_in=-10, aud="nanovlm"),
                 "forged": _token(_rsa(), aud="nanovlm"),                       # signed by someone else's key
                 "issuer": _token(issuer_key, issuer="https://evil.example", aud="nanovlm"),
                 "audience": _token(issuer_key, aud="other"),
                 "unsigned": jwt.encode({"iss": ISSUER, "exp": int(time.time()) + 60, "aud": "nanovlm"}, None,
                                        algorithm="none"),
                 "garbage": "not.a.jwt"}
        for name, token in cases.items():
            r = post(token)
            assert r.status_code == 401, (name, r.text)
        assert "expired" in post(cases["expired"]).json()["error"]["message"]


def test_jwks_file_selects_the_key_by_kid(model, model_dir, tmp_path, issuer_key):
    other = _rsa()
    jwks = {"keys": []}
    for kid, key in (("k1", other), ("k2", issuer_key)):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwks["keys"].append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    verifier = JWTVerifier(ISSUER, jwks_file=str(tmp_path / "jwks.json"))
    assert verifier.verify(_token(issuer_key, kid="k2")) == "jwt:alice"
    from nanovlm.serve.auth import AuthError

    with pytest.raises(AuthError):
        verifier.verify(_token(issuer_key, kid="k1"))      # right issuer, but signed with a different key than k1
    with pytest.raises(AuthError, match="kid"):
        verifier.verify(_token(issuer_key, kid="k9"))


def test_rate_limit_is_429_per_key(model, model_dir, tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    slow, other = store.add("slow"), store.add("other")
    app = create_app(model, serve_config(model_dir, no_auth=False, rate_limit=0.01, rate_burst=2),
                     Authenticator(keys=store))
    with TestClient(app) as c:
        codes = [c.get("/v1/models", headers={"Authorization": f"Bearer {slow}"}).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]
        r = c.get("/v1/models", headers={"Authorization": f"Bearer {slow}"})
        assert int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["error"]["message"]
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {other}"}).status_code == 200


def test_server_refuses_to_start_with_no_way_in(tmp_path):
    from nanovlm.config import ConfigError

    with pytest.raises(ConfigError, match="no API keys"):
        build_authenticator(serve_config("m", no_auth=False, keys_file=str(tmp_path / "none.json")))
    assert not build_authenticator(serve_config("m", no_auth=True)).enabled


def test_keys_command_add_list_revoke(tmp_path, capsys):
    keys_file = str(tmp_path / "k.json")
    assert main(["keys", "add", "ci-bot", "--keys-file", keys_file]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("nvk_") and key not in (tmp_path / "k.json").read_text()
    assert main(["keys", "list", "--keys-file", keys_file, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": "ci-bot", "created": json.loads((tmp_path / "k.json").read_text())["keys"]["ci-bot"]["created"],
         "revoked": False}]
    assert main(["keys", "revoke", "ci-bot", "--keys-file", keys_file]) == 0
    assert main(["keys", "list", "--keys-file", keys_file]) == 0
    assert "REVOKED" in capsys.readouterr().out
    with pytest.raises(Exception):
        KeyStore(keys_file).verify(key)
