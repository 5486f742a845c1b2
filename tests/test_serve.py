"""The HTTP API on a tiny random-weight model: endpoints, the OpenAI client, input limits, model failures,
batching, the bounded queue and graceful shutdown; and generation state kept per call."""
import asyncio
import struct
import threading
import time
import zlib

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from nanovlm.model.layers import Attention, SwiGLU
from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.sampling import GenerationConfig
from nanovlm.serve.app import create_app
from nanovlm.serve.batching import Batcher, Job

from serve_util import data_url, live_server, model, model_dir, png_bytes, serve_config  # noqa: F401

PNG = png_bytes()


# ------------------------------------------------------------------------------------------ generation state

def _prompt(model, text="I see"):
    ids, _ = model.tokenizer.encode_conversation([{"user": "Describe the picture.", "assistant": text}],
                                                 model.cfg.image_tokens_per_image, fusion=model.cfg.fusion,
                                                 for_generation=True)
    return torch.tensor([ids])


def test_concurrent_generate_calls_on_one_model_match_sequential(model):
    """The KV cache lives in each call: two threads generating at once get what each gets alone."""
    images = [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    prompts = [_prompt(model, "I see"), _prompt(model, "Look, there is a")]
    expected = [model.generate(p, im, max_new_tokens=12, eos_token_id=-1) for p, im in zip(prompts, images)]
    results, errors = {}, []

    def run(i):
        try:
            for _ in range(5):
                results.setdefault(i, []).append(model.generate(prompts[i], images[i], max_new_tokens=12,
                                                                eos_token_id=-1))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for i in range(2):
        for out in results[i]:
            assert torch.equal(out, expected[i])
    assert not any(hasattr(block.attn, "cache") for block in model.decoder.blocks)


def test_generate_steps_yields_what_generate_returns(model):
    prompt, image = _prompt(model), torch.randn(1, 3, 32, 32)
    tokens = model.generate(prompt, image, max_new_tokens=6, eos_token_id=-1)
    steps = list(model.generate_steps(prompt, image, max_new_tokens=6, eos_token_id=-1))
    assert torch.equal(torch.stack([s.tokens for s in steps], 1), tokens)
    assert all(s.logprobs.shape == (1,) and float(s.logprobs) <= 0 for s in steps)


def test_prepacked_weights_give_the_same_tokens(model):
    """Every Linear is packed (encoder, projector, decoder: the prompt and the image use them too)."""
    model = model.to(torch.bfloat16)
    packed = model.pack_inference_weights()
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        n_attention = sum(isinstance(m, Attention) for m in model.modules())
        assert n_attention == model.cfg.decoder.n_layer + model.cfg.vision.n_layer
        assert sum(isinstance(k, Attention) for k in packed) == n_attention                 # q, k, v fused ...
        assert sum(isinstance(k, torch.nn.Linear) for k in packed) == n_linear - 3 * n_attention   # ... not twice
    prompt, image = torch.cat([_prompt(model)] * 2), torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)
    plain = model.generate(prompt, image, max_new_tokens=8, eos_token_id=-1)
    assert torch.equal(model.generate(prompt, image, max_new_tokens=8, eos_token_id=-1, packed_weights=packed), plain)
    assert torch.backends.mkldnn.enabled


def test_fused_prepacked_weights_of_a_llama_decoder_give_the_same_logits():
    """q/k/v and SwiGLU's gate/up fused into one packed product each (GQA: k and v narrower than q)."""
    from conftest import tiny_config
    torch.manual_seed(0)
    cfg = tiny_config(**{"decoder.flavour": "llama", "decoder.n_head": 4, "decoder.n_kv_head": 2})
    model = VisionLanguageModel(cfg).eval().to(torch.bfloat16)
    packed = model.pack_inference_weights()
    if not packed:
        pytest.skip("oneDNN has no bf16 kernels on this CPU")
    assert sum(isinstance(k, SwiGLU) for k in packed) == cfg.decoder.n_layer
    prompt = torch.tensor([[cfg.image_token_id] * cfg.image_tokens_per_image + [5, 6, 7]] * 2)
    image = torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)
    tokens, logits = model.generate(prompt, image, max_new_tokens=6, eos_token_id=-1, return_logits=True)
    fused_tokens, fused_logits = model.generate(prompt, image, max_new_tokens=6, eos_token_id=-1, return_logits=True,
                                                packed_weights=packed)
    assert torch.equal(fused_tokens, tokens)
    torch.testing.assert_close(fused_logits, logits, atol=2e-2, rtol=2e-2)


# ------------------------------------------------------------------------------------------ endpoints

@pytest.fixture
def client(model, model_dir):
    with TestClient(create_app(model, serve_config(model_dir))) as c:
        yield c


def test_complete_vqa_and_extract_fields_json_and_multipart(client):
    r = client.post("/v1/complete", json={"image": data_url(PNG), "prompt": "I see", "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["full_text"].startswith("I see") and body["completion_tokens"] <= 5
    assert 0 < body["confidence"] <= 1 and body["latency_ms"] > 0 and r.headers["x-request-id"] == body["id"]

    r = client.post("/v1/vqa", files={"image": ("x.png", PNG, "image/png")},
                    data={"question": "What is there?", "max_tokens": "4", "stop": ["."]})
    assert r.status_code == 200, r.text
    assert set(r.json()) >= {"answer", "confidence", "latency_ms"}

    schema = {"properties": {"name": {"type": "string"}, "total": {"type": "number", "description": "amount"}}}
    r = client.post("/v1/extract-fields", json={"image": data_url(PNG), "schema": schema, "threshold": 0.0})
    assert r.status_code == 200, r.text
    assert set(r.json()["fields"]) == {"name", "total"} and set(r.json()["confidence"]) == {"name", "total"}
    # a random model is never sure: with the default threshold every value is null
    r = client.post("/v1/extract-fields", files={"image": ("x.png", PNG, "image/png")}, data={"fields": "name,date"})
    assert r.status_code == 200 and r.json()["fields"] == {"name": None, "date": None}

    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny-vlm"
    metrics = client.get("/metrics").text
    assert 'nanovlm_requests_total{route="/v1/complete",status="200"} 1.0' in metrics
    paths = client.get("/openapi.json").json()["paths"]
    assert "multipart/form-data" in paths["/v1/vqa"]["post"]["requestBody"]["content"]


def _forged_png(width, height) -> bytes:
    """A real 1x1 PNG whose header claims width x height (a decompression bomb's header, without the bomb)."""
    data = bytearray(png_bytes((1, 1)))
    ihdr = 8 + 8                                                          # signature, chunk length + type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


@pytest.mark.parametrize("case,status,words", [
    ("bomb", 413, "pixels"), ("tiff", 415, "TIFF"), ("garbage", 415, "not an image"),
    ("truncated", 400, "damaged"), ("long_prompt", 400, "characters"), ("max_tokens", 400, "cap"),
    ("context", 400, "context"), ("bad_base64", 400, "base64"), ("url", 400, "does not fetch"),
    ("body", 413, "body"), ("content_type", 415, "multipart"), ("temperature", 422, "temperature"),
    ("tiny_temperature", 400, "at least"),      # found by the fuzz run: logits / 1e-229 made NaN probabilities
])
def test_each_bad_input_is_a_4xx_saying_what_is_wrong(model, model_dir, case, status, words):
    cfg = serve_config(model_dir, max_pixels=100_000_000, max_body_bytes=200_000, max_new_tokens=500)
    body = {"image": data_url(PNG), "prompt": "I see", "max_tokens": 4}
    headers, content = {}, None
    if case == "bomb":
        body["image"] = data_url(_forged_png(30_000, 30_000))
    elif case == "tiff":
        body["image"] = data_url(png_bytes(fmt="TIFF"))
    elif case == "garbage":
        body["image"] = data_url(b"hello, not an image" * 10)
    elif case == "truncated":
        body["image"] = data_url(png_bytes((200, 200), "blue")[:200])
    elif case == "long_prompt":
        body["prompt"] = "x" * 5000
    elif case == "max_tokens":
        body["max_tokens"] = 501
    elif case == "context":
        body["max_tokens"] = 400                 # within the cap, beyond the tiny model's 128-token context
    elif case == "bad_base64":
        body["image"] = "data:image/png;base64,@@@"
    elif case == "url":
        body["image"] = "https://example.com/cat.png"
    elif case == "body":
        body["prompt"] = "x" * 300_000
    elif case == "content_type":
        content, headers = b"image=1", {"content-type": "application/x-www-form-urlencoded"}
    elif case == "temperature":
        body["temperature"] = -1
    elif case == "tiny_temperature":
        body["temperature"] = 1.2e-229
    with TestClient(create_app(model, cfg)) as c:
        r = c.post("/v1/complete", json=None if content else body, content=content, headers=headers)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert words.lower() in error["message"].lower(), error
        assert r.json()["request_id"] == r.headers["x-request-id"]
        assert c.get("/health").status_code == 200


def test_model_failure_is_a_500_with_request_id_and_the_server_keeps_serving(model, model_dir, monkeypatch, caplog):
    real = model.generate_steps
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom inside the model")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate_steps", flaky)
    with TestClient(create_app(model, serve_config(model_dir)), raise_server_exceptions=False) as c:
        r = c.post("/v1/complete", json={"image": data_url(PNG), "max_tokens": 3})
        assert r.status_code == 500
        rid = r.json()["request_id"]
        assert rid in r.json()["error"]["message"] and "boom" not in r.text       # no internals leak out
        assert any(rid in rec.getMessage() for rec in caplog.records)              # but the log has it
        assert c.post("/v1/complete", json={"image": data_url(PNG), "max_tokens": 3}).status_code == 200


# ------------------------------------------------------------------------------------------ OpenAI client

def test_openai_client_chat_with_an_image_and_streaming(model, model_dir):
    from openai import OpenAI

    app = create_app(model, serve_config(model_dir, no_auth=False), auth=_one_key_auth(model_dir))
    with live_server(app) as (url, _):
        client = OpenAI(base_url=url + "/v1", api_key=_one_key_auth.key, max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny-vlm"]
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Describe the picture."},
                                                 {"type": "image_url", "image_url": {"url": data_url(PNG)}}]}]
        reply = client.chat.completions.create(model="tiny-vlm", messages=messages, max_tokens=6, temperature=0)
        text = reply.choices[0].message.content
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 6
        stream = client.chat.completions.create(model="tiny-vlm", messages=messages, max_tokens=6, stream=True)
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == text      # greedy: same answer
        assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
        with pytest.raises(Exception) as bad:
            OpenAI(base_url=url + "/v1", api_key="nvk_wrong_key", max_retries=0).models.list()
        assert getattr(bad.value, "status_code", None) == 401


def _one_key_auth(model_dir):
    from nanovlm.serve.auth import Authenticator, KeyStore

    store = KeyStore(model_dir.parent / "keys.json")
    if not getattr(_one_key_auth, "key", None):
        _one_key_auth.key = store.add("openai-test")
    return Authenticator(keys=store)


# ------------------------------------------------------------------------------------------ batching

def _jobs_in_one_batch(model, configs):
    """Run jobs through one Batcher whose window is long enough that they surely share a batch."""
    image = [__import__("PIL.Image", fromlist=["Image"]).new("RGB", (32, 32), "red")]

    async def go():
        batcher = Batcher(model, max_batch_size=len(configs), window_ms=500)
        try:
            jobs = [batcher.submit(Job(_prompt(model, start)[0].tolist(), image, g)) for start, g in configs]
            return await asyncio.gather(*(j.result() for j in jobs))
        finally:
            batcher.shutdown()

    return asyncio.run(go())


def test_a_lone_request_after_a_lone_request_does_not_wait_for_company(model, monkeypatch):
    """The batch window is waited while requests come together; after a batch of one, the next job starts at once."""
    waits = []
    real_take = Batcher._take

    def take(self, timeout):
        waits.append(timeout)
        return real_take(self, timeout)

    monkeypatch.setattr(Batcher, "_take", take)
    image = [__import__("PIL.Image", fromlist=["Image"]).new("RGB", (32, 32), "red")]

    async def go():
        batcher = Batcher(model, max_batch_size=4, window_ms=200)
        try:
            for _ in range(2):
                waits.clear()
                job = batcher.submit(Job(_prompt(model, "I see")[0].tolist(), image, GenerationConfig(max_new_tokens=2)))
                await job.result()
                yield [w for w in waits if w != 0.05]     # 0.05: the worker's idle poll
        finally:
            batcher.shutdown()

    async def collect():
        return [w async for w in go()]

    first, second = asyncio.run(collect())
    assert first and max(first) > 0.1          # a fresh server waits for company
    assert all(w <= 0 for w in second)         # after a lone request: no window


def test_a_batch_waits_for_as_many_jobs_as_the_last_one_had(model):
    """Clients answered together come back one by one: after a batch of 3, the next batch takes 3 jobs that
    arrive further apart than the window; when fewer come, it starts once max_wait is over."""
    image = [__import__("PIL.Image", fromlist=["Image"]).new("RGB", (32, 32), "red")]
    prompt = _prompt(model, "I see")[0].tolist()

    async def jobs_apart(batcher, n, seconds):
        jobs = []
        for _ in range(n):
            jobs.append(batcher.submit(Job(prompt, image, GenerationConfig(max_new_tokens=2))))
            await asyncio.sleep(seconds)
        return await asyncio.gather(*(j.result() for j in jobs))

    async def go():
        batcher = Batcher(model, max_batch_size=8, window_ms=20, max_wait_ms=800)
        try:
            return [await jobs_apart(batcher, 3, 0), await jobs_apart(batcher, 3, 0.1),
                    await jobs_apart(batcher, 2, 0.1)]
        finally:
            batcher.shutdown()

    together, apart, fewer = asyncio.run(go())
    assert [j.batch_size for j in together] == [3, 3, 3]
    assert [j.batch_size for j in apart] == [3, 3, 3]       # 0.1 s apart, 5x the window: still one batch
    assert [j.batch_size for j in fewer] == [2, 2]          # the third never came: max_wait ended the wait


def test_batched_jobs_keep_their_own_max_tokens_and_stop_strings(model):
    alone = {n: _jobs_in_one_batch(model, [("I see", GenerationConfig(max_new_tokens=n))])[0].text for n in (3, 9)}
    batched = _jobs_in_one_batch(model, [("I see", GenerationConfig(max_new_tokens=3)),
                                         ("I see", GenerationConfig(max_new_tokens=9)),
                                         ("Look, there is a", GenerationConfig(max_new_tokens=9))])
    assert [j.batch_size for j in batched] == [3, 3, 3]
    assert batched[0].text == alone[3] and batched[1].text == alone[9]
    stop = alone[9][len(alone[3]) - 1: len(alone[3]) + 1] if len(alone[9]) > len(alone[3]) else None
    if stop and stop.strip():
        cut = _jobs_in_one_batch(model, [("I see", GenerationConfig(max_new_tokens=9, stop=(stop,)))])[0]
        assert cut.text == alone[9][: alone[9].find(stop)] and cut.finish_reason == "stop"


def test_queue_full_is_503_and_graceful_shutdown_finishes_requests_in_flight(model, model_dir, monkeypatch):
    real = model.generate_steps

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate_steps", slow)
    app = create_app(model, serve_config(model_dir, queue_size=2, max_batch_size=1, batching=False))
    body = {"image": data_url(PNG), "max_tokens": 2}
    with live_server(app) as (url, server):
        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                return await asyncio.gather(*(c.post("/v1/complete", json=body) for _ in range(8)))

        statuses = sorted(r.status_code for r in asyncio.run(burst()))
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}, statuses

        results = {}

        def in_flight():
            results["r"] = httpx.post(url + "/v1/complete", json=body, timeout=30)

        t = threading.Thread(target=in_flight)
        t.start()
        time.sleep(0.1)                     # the request is being answered ...
        server.should_exit = True           # ... when the server is told to stop (what SIGTERM does)
        t.join(30)
        assert results["r"].status_code == 200


# ------------------------------------------------------------------------------------------ TLS, load test

def _self_signed(tmp_path):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")


def test_tls_and_the_load_test(model, model_dir, tmp_path):
    from nanovlm.serve.loadtest import LoadTestConfig, format_report, run_loadtest

    cert, key = _self_signed(tmp_path)
    app = create_app(model, serve_config(model_dir, tls_cert=cert, tls_key=key))
    with live_server(app, ssl_certfile=cert, ssl_keyfile=key) as (url, _):
        assert url.startswith("https://")
        import ssl

        trusted = ssl.create_default_context(cafile=cert)
        assert httpx.get(url + "/health", verify=trusted).json()["status"] == "ok"
        with pytest.raises(httpx.ConnectError):                  # an unknown certificate is refused by clients
            httpx.get(url + "/health")
    app = create_app(model, serve_config(model_dir, rate_limit=0))     # a fast machine would meet the 429s
    with live_server(app) as (url, _):
        report = run_loadtest(LoadTestConfig(url=url, clients=3, seconds=1.0, max_tokens=3))
    assert report["ok"] >= 1 and report["errors"] == 0 and report["clients"] == 3
    assert 0 < report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert report["requests_per_s"] > 0 and 1 <= report["tokens_per_request"] <= 3
    assert "p99" in format_report(report)
