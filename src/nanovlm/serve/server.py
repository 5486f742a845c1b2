"""Run the app: load the model, set up authentication, hand it to uvicorn (TLS when given)."""
from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

from ..config import ConfigError
from .app import ServeConfig, create_app
from .auth import Authenticator, JWTVerifier, KeyStore


def default_keys_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "nanovlm" / "keys.json"


def build_authenticator(cfg: ServeConfig) -> Authenticator:
    """API keys and/or JWTs, as configured. A server with no way to let anyone in is a mistake unless --no-auth."""
    if cfg.no_auth:
        return Authenticator()
    keys = KeyStore(cfg.keys_file or default_keys_file())
    jwt = None
    if cfg.jwt_issuer or cfg.jwt_public_key or cfg.jwt_jwks:
        jwt = JWTVerifier(cfg.jwt_issuer, cfg.jwt_public_key or None, cfg.jwt_jwks or None, cfg.jwt_audience or None)
    if not keys.has_active_keys() and jwt is None:
        raise ConfigError(f"no API keys in {keys.path} and no JWT issuer configured: add a key with "
                          f"`nanovlm keys add NAME` (or --keys-file), configure --jwt-issuer, or run open with "
                          f"--no-auth")
    return Authenticator(keys=keys, jwt=jwt)


def load_model(cfg: ServeConfig):
    import torch

    from ..devices import resolve_device, warn_if_bf16_is_slow
    from ..hub import resolve_model_dir
    from ..model.vlm import VisionLanguageModel

    if not cfg.model:
        raise ConfigError("no model: pass --model DIR_OR_ID (or set NANOVLM_MODEL)")
    # The model runs in the batcher's thread, with cfg.threads OpenMP threads; the main thread (the event loop)
    # keeps ONE. With a thread team in each, libgomp sees more busy threads than cores and makes its idle threads
    # sleep at once instead of spinning: every decode step then waits for them to wake up. Measured on 2 cores,
    # `mini` with 20 new tokens: 36 ms in the main thread, 72-100 ms in a second thread while the main thread also
    # had a team, 39 ms when it had none.
    cfg.threads = cfg.threads or torch.get_num_threads()
    torch.set_num_threads(1)
    if cfg.bf16:
        warn_if_bf16_is_slow(resolve_device(cfg.device), "--bf16", "leave it out to serve in fp32", memory_bound=True)
    return VisionLanguageModel.from_pretrained(resolve_model_dir(cfg.model), device=cfg.device,
                                               dtype=torch.bfloat16 if cfg.bf16 else None)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_server(cfg: ServeConfig):
    import uvicorn

    for path in (cfg.tls_cert, cfg.tls_key):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"TLS file {path} not found")
    auth = build_authenticator(cfg)          # before the model loads: a config mistake fails in a second
    model = load_model(cfg)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    log = logging.getLogger("nanovlm.serve")
    if not auth.enabled and not is_loopback(cfg.host):
        log.warning("warning: serving WITHOUT authentication on %s", cfg.host)
    if not cfg.tls_cert and not is_loopback(cfg.host):
        log.warning("warning: serving plain HTTP on %s; use --tls-cert/--tls-key or a TLS-terminating proxy",
                    cfg.host)
    app = create_app(model, cfg, auth)
    uvicorn.run(app, host=cfg.host, port=cfg.port, ssl_certfile=cfg.tls_cert or None,
                ssl_keyfile=cfg.tls_key or None, timeout_graceful_shutdown=cfg.graceful_shutdown_s,
                access_log=False, log_level="info")
