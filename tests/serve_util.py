"""Shared pieces of the server tests: a tiny random-weight model folder with a trained tokenizer, images, and a
real uvicorn server on a free loopback port."""
from __future__ import annotations

import base64
import io
import threading
import time
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from conftest import tiny_config

SENTENCES = ["I see a big red ball on the left.", "Look, I see two blue cars and a green tree.",
             "What is the total amount?", "The name is Anna and the date is today.",
             "Describe the picture.", "There is a small black cat."]


def make_model_dir(folder, seed: int = 0):
    from nanovlm.model.vlm import VisionLanguageModel
    from nanovlm.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(SENTENCES * 10, vocab_size=300)
    cfg = tokenizer.configure(tiny_config())
    torch.manual_seed(seed)
    VisionLanguageModel(cfg).save_pretrained(folder, tokenizer=tokenizer)
    return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("serve-model") / "tiny-vlm")


@pytest.fixture
def model(model_dir):
    from nanovlm.model.vlm import VisionLanguageModel

    return VisionLanguageModel.from_pretrained(model_dir)


def png_bytes(size=(40, 30), color="red", fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def data_url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def serve_config(model_dir, **overrides):
    from nanovlm.serve.app import ServeConfig

    options = dict(model=str(model_dir), no_auth=True, max_new_tokens=32, default_max_new_tokens=8)
    options.update(overrides)
    return ServeConfig(**options)


@contextmanager
def live_server(app, graceful_s: float = 10.0, **uvicorn_options):
    """The app on a real socket (127.0.0.1, a free port), in a thread; stopped like SIGTERM stops it."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=graceful_s, **uvicorn_options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the test server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    scheme = "https" if uvicorn_options.get("ssl_certfile") else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)
