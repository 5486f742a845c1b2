"""Fuzzing the HTTP API with hypothesis: malformed and hostile requests to every route never give a 500, and
the server still answers afterwards.

The number of requests is NANOVLM_FUZZ_EXAMPLES per test (default 200, so 400 in all: ~10 s of CPU);
`NANOVLM_FUZZ_EXAMPLES=500 pytest tests/test_serve_fuzz.py` runs the 1,000 of the acceptance check."""
import base64
import json
import os
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanovlm.model.vlm import VisionLanguageModel
from nanovlm.serve.app import create_app

from serve_util import data_url, make_model_dir, png_bytes, serve_config

EXAMPLES = int(os.environ.get("NANOVLM_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
ROUTES = ["/v1/complete", "/v1/vqa", "/v1/extract-fields", "/v1/chat/completions"]
FIELDS = ["image", "prompt", "question", "answer_start", "max_tokens", "temperature", "top_k", "top_p", "seed",
          "stop", "fields", "schema", "threshold", "messages", "model", "stream", "n", "max_completion_tokens",
          "response_format"]


def _forged_png(width, height) -> bytes:
    data = bytearray(png_bytes((1, 1)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


IMAGES = [png_bytes(), png_bytes((3, 2), fmt="JPEG"), png_bytes((5, 5), fmt="GIF"), png_bytes((4, 4), fmt="BMP"),
          png_bytes((4, 4), fmt="TIFF"), png_bytes((64, 64))[:60], b"", b"GIF89a", _forged_png(100_000, 100_000),
          _forged_png(0, 5)]

images = st.sampled_from(IMAGES)
image_values = st.one_of(images.map(data_url), images.map(lambda b: base64.b64encode(b).decode()),
                         st.text(max_size=30), st.just("data:image/png;base64,"), st.just("http://x/y.png"))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-5, max_value=600),
                    st.floats(allow_nan=True), st.text(max_size=40), st.sampled_from(["0", "1e309", "\x00", "NaN"]))
values = st.recursive(st.one_of(scalars, image_values),
                      lambda inner: st.one_of(st.lists(inner, max_size=4),
                                              st.dictionaries(st.sampled_from(FIELDS + ["type", "text", "url",
                                                                                        "role", "content",
                                                                                        "properties"]), inner,
                                                              max_size=4)),
                      max_leaves=8)
content_parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=30), values)}),
    st.fixed_dictionaries({"type": st.just("image_url"),
                           "image_url": st.one_of(st.fixed_dictionaries({"url": image_values}), values)}),
    values)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", 1]),
                                           "content": st.one_of(st.text(max_size=30),
                                                                st.lists(content_parts, max_size=3), values)}),
                    max_size=4)
near_values = {
    "image": image_values, "prompt": st.text(max_size=60), "question": st.text(max_size=60),
    "max_tokens": st.integers(min_value=-3, max_value=600), "temperature": st.floats(-1, 12),
    "top_k": st.integers(-2, 200_000), "top_p": st.floats(-0.5, 1.5), "seed": st.integers(-5, 2**64),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=70), max_size=10)),
    "fields": st.lists(st.text(max_size=110), max_size=40), "threshold": st.floats(-1, 2),
    "schema": st.fixed_dictionaries({"properties": st.dictionaries(
        st.text(max_size=10), st.fixed_dictionaries({}, optional={"type": st.sampled_from(
            ["string", "number", "integer", "boolean", "array", 3]), "description": st.one_of(st.text(max_size=20),
                                                                                             values)}),
        max_size=5)}),
    "messages": messages, "stream": st.booleans(), "n": st.integers(-1, 3),
}
# JSON schemas, sound and hostile, for response_format: what the grammar engine cannot compile, or fails on
# mid-answer, is a 400 naming response_format, never a 500
SCHEMA_KEYS = ["type", "properties", "required", "enum", "items", "minimum", "maximum", "minLength", "maxLength",
               "pattern", "$ref", "anyOf", "additionalProperties", "const", "format"]
schemas = st.recursive(
    st.one_of(st.sampled_from(["string", "integer", "number", "boolean", "object", "array", "null", "#", "(a"]),
              st.integers(-3, 20), st.booleans(), st.none(), st.lists(st.sampled_from(["a", "b", 1]), max_size=3)),
    lambda inner: st.one_of(st.dictionaries(st.sampled_from(SCHEMA_KEYS) | st.text(max_size=4), inner, max_size=4),
                            st.lists(inner, max_size=3)),
    max_leaves=10)
near_values["response_format"] = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "xml", 3])}),
    st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": st.fixed_dictionaries(
        {"name": st.text(max_size=5)}, optional={"schema": schemas, "strict": st.booleans()})}),
    values)
PNG_URL = data_url(png_bytes())
VALID = {
    "/v1/complete": {"image": PNG_URL, "prompt": "I see", "max_tokens": 2},
    "/v1/vqa": {"image": PNG_URL, "question": "What is there?", "max_tokens": 2},
    "/v1/extract-fields": {"image": PNG_URL, "fields": ["name"], "max_tokens": 2},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe the picture."}, {"type": "image_url", "image_url": {"url": PNG_URL}}]}],
        "max_tokens": 2},
}


@st.composite
def near_valid_bodies(draw, route):
    """A valid body for the route with a few fields replaced, dropped or added: requests that get deep."""
    body = dict(VALID[route])
    for name in draw(st.lists(st.sampled_from(sorted(near_values)), max_size=3, unique=True)):
        body[name] = draw(st.one_of(near_values[name], values) if draw(st.booleans()) else near_values[name])
    for name in draw(st.lists(st.sampled_from(sorted(body)), max_size=1)):
        body.pop(name, None)
    return body


json_bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), values, max_size=6),
    st.fixed_dictionaries({"image": image_values}, optional={k: values for k in FIELDS[1:13]}),
    st.fixed_dictionaries({"messages": messages}, optional={k: values for k in FIELDS[4:10] + ["stream", "n"]}),
    values)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = make_model_dir(tmp_path_factory.mktemp("fuzz") / "m")
    model = VisionLanguageModel.from_pretrained(folder)
    cfg = serve_config(folder, max_new_tokens=4, default_max_new_tokens=2, max_body_bytes=100_000, max_pixels=10_000,
                       rate_limit=0)
    with TestClient(create_app(model, cfg), raise_server_exceptions=False) as c:
        yield c
        assert c.get("/health").json()["status"] == "ok"
        ok = c.post("/v1/complete", json={"image": data_url(png_bytes()), "max_tokens": 2})
        assert ok.status_code == 200, ok.text


def _check(response):
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert body["error"]["message"] and body["request_id"]


@FUZZ
@given(data=st.data(), as_text=st.booleans())
def test_fuzzed_json_bodies_never_give_a_500(client, data, as_text):
    route = data.draw(st.sampled_from(ROUTES))
    body = data.draw(st.one_of(near_valid_bodies(route), near_valid_bodies(route), json_bodies))
    if as_text:     # NaN/Infinity and other not-quite-JSON go in as raw text
        response = client.post(route, content=json.dumps(body, allow_nan=True),
                               headers={"content-type": "application/json"})
    else:
        try:
            response = client.post(route, json=body)
        except ValueError:          # httpx refuses to encode NaN itself: that is the as_text case
            return
    _check(response)


@FUZZ
@given(route=st.sampled_from(ROUTES + ["/v1/models", "/health", "/metrics", "/", "/nope", "/v1"]),
       method=st.sampled_from(["POST"] * 4 + ["GET", "PUT", "DELETE"]),
       content_type=st.sampled_from(["application/json", "multipart/form-data", "multipart/form-data; boundary=x",
                                     "text/plain", "image/png", "", "application/json; charset=latin-1"]),
       raw=st.one_of(st.binary(max_size=300), st.sampled_from(IMAGES)),
       form=st.dictionaries(st.sampled_from(FIELDS), st.text(max_size=20), max_size=5),
       upload=st.one_of(st.none(), images), use_form=st.booleans())
def test_fuzzed_raw_and_multipart_requests_never_give_a_500(client, route, method, content_type, raw, form, upload,
                                                           use_form):
    if use_form and method == "POST":
        files = {"image": ("x", upload, "application/octet-stream")} if upload is not None else None
        response = client.post(route, data=form, files=files)
    else:
        response = client.request(method, route, content=raw, headers={"content-type": content_type})
    _check(response) if response.headers.get("content-type", "").startswith("application/json") \
        else (response.status_code < 500) or pytest.fail(response.text[:300])


@FUZZ
@given(response_format=near_values["response_format"], temperature=st.sampled_from([0, 1.0]))
def test_fuzzed_response_formats_are_held_or_refused_never_a_500(client, response_format, temperature):
    """Every response_format: refused with a 400 naming it, or answered (then a complete answer is valid JSON)."""
    body = {**VALID["/v1/chat/completions"], "max_tokens": 4, "temperature": temperature, "seed": 0,
            "response_format": response_format}
    response = client.post("/v1/chat/completions", json=body)
    _check(response)
    if response.status_code >= 400:
        assert response.status_code in (400, 422) and "response_format" in json.dumps(response.json())
    elif isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        choice = response.json()["choices"][0]
        if choice["finish_reason"] == "stop":
            json.loads(choice["message"]["content"])
