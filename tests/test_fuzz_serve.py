"""Bad input to `nanovlm serve`, `nanovlm keys` and `nanovlm loadtest`: exit status 2 and exactly one line
starting `error:` on stderr, no traceback, before any server starts."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanovlm.cli import main

from serve_util import model_dir  # noqa: F401


def run(argv, capsys, monkeypatch=None, env=None):
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    try:
        code = main(argv)
    except SystemExit as e:          # argparse's own errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error(code, err, words=""):
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert words.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def no_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOVLM_KEYS_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("NANOVLM_MODEL", "NANOVLM_PORT", "NANOVLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_serve_bad_inputs(no_keys, model_dir, capsys, monkeypatch):
    tmp = no_keys
    (tmp / "bad.json").write_text("{not json")
    (tmp / "empty_jwks.json").write_text(json.dumps({"keys": []}))
    model = str(model_dir)
    cases = [
        (["serve", "--no-auth"], {}, "no model"),
        (["serve", "--model", model], {}, "no API keys"),
        (["serve", "--model", model, "--keys-file", str(tmp / "bad.json")], {}, "not a nanovlm key file"),
        (["serve", "--model", model, "--no-auth", "--port", "70000"], {}, "port"),
        (["serve", "--model", model, "--no-auth", "--port", "abc"], {}, "port"),
        (["serve", "--model", model, "--no-auth", "--max-batch-size", "0"], {}, "max_batch_size"),
        (["serve", "--model", model, "--no-auth", "--tls-cert", str(tmp / "c.pem")], {}, "tls"),
        (["serve", "--model", model, "--no-auth", "--tls-cert", str(tmp / "c.pem"), "--tls-key",
          str(tmp / "k.pem")], {}, "not found"),
        (["serve", "--model", model, "--jwt-issuer", "https://i"], {}, "exactly one"),
        (["serve", "--model", model, "--jwt-issuer", "https://i", "--jwt-jwks", str(tmp / "bad.json")], {},
         "no usable public key"),
        (["serve", "--model", model, "--jwt-issuer", "https://i", "--jwt-jwks", str(tmp / "empty_jwks.json")], {},
         "no usable public key"),
        (["serve", "--model", model, "--jwt-issuer", "https://i", "--jwt-public-key", str(tmp / "none.pem")], {},
         "cannot read"),
        (["serve", "--model", model, "--no-auth"], {"NANOVLM_PORT": "eighty"}, "NANOVLM_PORT"),
        (["serve", "--model", model, "--no-auth", "--batch-max-wait-ms", "-1"], {}, "batch_max_wait_ms"),
        (["serve", "--model", model, "--no-auth"], {"NANOVLM_BATCH_MAX_WAIT_MS": "soon"}, "NANOVLM_BATCH_MAX_WAIT_MS"),
        (["serve", "--model", str(tmp / "no-such-model"), "--no-auth"], {}, "no-such-model"),
        (["keys", "revoke", "ghost"], {}, "no key named"),
        (["keys", "add", "bad name!"], {}, "key name"),
        (["keys", "list", "--keys-file", str(tmp / "bad.json")], {}, "not a nanovlm key file"),
        (["keys"], {}, ""),
        (["loadtest", "--url", "ftp://x"], {}, "--url"),
        (["loadtest", "--clients", "0"], {}, "--clients"),
        (["loadtest", "--seconds", "-1"], {}, "--seconds"),
        (["loadtest", "--endpoint", "chat"], {}, "--endpoint"),
    ]
    for argv, env, words in cases:
        code, _, err = run(argv, capsys, monkeypatch, env)
        assert_one_error(code, err, words)
        for name in env:
            monkeypatch.delenv(name)


def test_adding_a_key_twice_is_refused(no_keys, capsys):
    assert main(["keys", "add", "dup"]) == 0
    capsys.readouterr()
    code, _, err = run(["keys", "add", "dup"], capsys)
    assert_one_error(code, err, "exists")


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=12))
def test_any_key_name_is_added_or_refused_in_one_line(no_keys, capsys, name):
    if name.startswith("-"):
        return                                   # argparse reads it as an option: covered by its own errors
    try:
        code = main(["keys", "add", name, "--keys-file", str(no_keys / f"fuzz-{abs(hash(name))}.json")])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    if code == 0:
        assert captured.out.strip().startswith("nvk_")
    else:
        assert_one_error(code, captured.err)
