"""nanovlm serve | nanovlm keys add/revoke/list | nanovlm loadtest"""
from __future__ import annotations

import dataclasses

from .common import add_command, add_json, field_option, given_fields, print_json

SERVE_HELP = {
    "model": "model folder or Hub repo id (env NANOVLM_MODEL)",
    "host": "address to bind; loopback by default, 0.0.0.0 to expose it",
    "port": "TCP port",
    "model_name": "model id reported by /v1/models (default: the folder's name)",
    "device": "cpu, cuda, cuda:N",
    "threads": "torch CPU threads (0 = torch's default)",
    "keys_file": "API key file made by `nanovlm keys add` (default: ~/.config/nanovlm/keys.json)",
    "jwt_issuer": "accept OAuth2 bearer JWTs from this issuer (`iss`)",
    "jwt_public_key": "the issuer's public key (PEM file)",
    "jwt_jwks": "or the issuer's keys as a JWKS JSON file",
    "jwt_audience": "the `aud` JWTs must carry",
    "rate_limit": "requests per second per caller (0 = unlimited)",
    "rate_burst": "requests a caller may send at once",
    "batch_window_ms": "a batch takes more requests while they arrive this close together",
    "batch_max_wait_ms": "the longest a request waits for others to batch with",
    "max_batch_size": "most requests per model batch",
    "queue_size": "requests waiting beyond this get HTTP 503",
    "max_body_bytes": "largest request body",
    "max_pixels": "largest image, width x height (checked before decoding)",
    "max_prompt_chars": "longest prompt or question",
    "max_new_tokens": "cap on a request's max_tokens",
    "default_max_new_tokens": "max_tokens when a request gives none",
    "max_images": "most images per chat request",
    "max_fields": "most fields per extract-fields request",
    "tls_cert": "TLS certificate (PEM); with --tls-key serves HTTPS",
    "tls_key": "TLS private key (PEM)",
    "graceful_shutdown_s": "on SIGTERM, how long to finish requests in flight",
}


def register(sub, groups):
    from ..serve.app import ServeConfig

    p = add_command(sub, "serve", "serve a model over HTTP: /v1/complete, /v1/vqa, /v1/extract-fields, "
                    "OpenAI-compatible /v1/chat/completions, a web page at /",
                    description="Serve a model over an authenticated, batching HTTP API. Every option can also "
                                "be set as an environment variable NANOVLM_<OPTION> (e.g. NANOVLM_PORT=8000); "
                                "flags win. API docs at /docs once running.")
    for name, help in SERVE_HELP.items():
        field_option(p, ServeConfig, name, help)
    p.add_argument("--bf16", action="store_true", default=None, help="bf16 weights (faster on CPUs with bf16)")
    p.add_argument("--no-auth", action="store_true", default=None,
                   help="serve without authentication (local experiments only)")
    p.add_argument("--no-batching", dest="batching", action="store_false", default=None,
                   help="run requests one at a time (to measure what batching gives)")
    p.set_defaults(func=run_serve)

    keys = add_command(sub, "keys", "manage the server's API keys (stored as salted hashes)")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    for action, help in (("add", "make a key; it is printed once and never stored"),
                         ("revoke", "revoke a key; a running server refuses it from the next request"),
                         ("list", "list key names, creation times and whether they are revoked")):
        a = add_command(actions, action, help)
        if action != "list":
            a.add_argument("name", help="the key's name (shows up in access logs instead of the key)")
        a.add_argument("--keys-file", help="key file (default: $NANOVLM_KEYS_FILE or ~/.config/nanovlm/keys.json)")
        if action == "list":
            add_json(a)
        a.set_defaults(func=run_keys)

    from ..serve.loadtest import LoadTestConfig

    lt = add_command(sub, "loadtest", "N concurrent clients for T seconds against a server: latency "
                     "p50/p95/p99, requests/s, errors")
    for name, help in (("url", "server URL"), ("clients", "concurrent clients"), ("seconds", "how long to run"),
                       ("endpoint", "complete or vqa"), ("max_tokens", "max_tokens per request"),
                       ("prompt", "answer start (complete) or question (vqa)"),
                       ("image", "image file to send (default: a generated 64 px picture)"),
                       ("timeout_s", "per-request timeout")):
        field_option(lt, LoadTestConfig, name, help)
    lt.add_argument("--api-key", help="API key (default: $NANOVLM_API_KEY)")
    add_json(lt)
    lt.set_defaults(func=run_loadtest)


def run_serve(args):
    import os

    from ..serve.app import ServeConfig
    from ..serve.server import run_server

    names = [f.name for f in dataclasses.fields(ServeConfig)]
    run_server(ServeConfig.from_env(os.environ, **given_fields(args, names)))


def _store(args):
    import os

    from ..serve.auth import KeyStore
    from ..serve.server import default_keys_file

    return KeyStore(args.keys_file or os.environ.get("NANOVLM_KEYS_FILE") or default_keys_file())


def run_keys(args):
    import datetime

    store = _store(args)
    if args.keys_command == "add":
        key = store.add(args.name)
        print(key)
        import sys
        print(f"key {args.name!r} added to {store.path}; this is the only time it is shown", file=sys.stderr)
    elif args.keys_command == "revoke":
        store.revoke(args.name)
        print(f"revoked {args.name!r} in {store.path}")
    else:
        rows = store.list()
        if args.json:
            print_json(rows)
            return
        if not rows:
            print(f"no keys in {store.path}")
        for row in rows:
            created = datetime.datetime.fromtimestamp(row["created"] or 0, datetime.timezone.utc)
            print(f"{row['name']:24} created {created:%Y-%m-%d %H:%M} UTC  "
                  f"{'REVOKED' if row['revoked'] else 'active'}")


def run_loadtest(args):
    import os

    from ..serve.loadtest import LoadTestConfig, format_report, run_loadtest

    names = [f.name for f in dataclasses.fields(LoadTestConfig)]
    cfg = LoadTestConfig(**given_fields(args, names), api_key=args.api_key or os.environ.get("NANOVLM_API_KEY", ""))
    report = run_loadtest(cfg)
    print_json(report) if args.json else print(format_report(report))
