"""Structured output: response_format held by constrained decoding (nanovlm.structured), through the server and the
real `openai` client. The model has random weights: without the constraint its answers are not JSON at all."""
import asyncio
import json

import pytest
from PIL import Image

from nanovlm.sampling import GenerationConfig
from nanovlm.serve.app import create_app
from nanovlm.serve.batching import Batcher, Job
from nanovlm.structured import JsonConstraint, ResponseFormatError, schema_from_response_format

from serve_util import data_url, live_server, model, model_dir, png_bytes, serve_config  # noqa: F401

SCHEMA = {"type": "object", "properties": {"a": {"enum": ["yes", "no"]}, "n": {"type": "integer", "minimum": 0,
                                                                                "maximum": 9}},
          "required": ["a", "n"], "additionalProperties": False}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA}}
MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "Is there a ball? Answer in JSON."},
                                         {"type": "image_url", "image_url": {"url": data_url(png_bytes())}}]}]


def _matches(text: str) -> bool:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (isinstance(obj, dict) and set(obj) == {"a", "n"} and obj["a"] in ("yes", "no")
            and type(obj["n"]) is int and 0 <= obj["n"] <= 9)


@pytest.mark.parametrize("response_format,expected", [
    (None, None), ({"type": "text"}, None), ({"type": "json_object"}, {"type": "object"}),
    (RESPONSE_FORMAT, SCHEMA)])
def test_response_format_names_the_schema(response_format, expected):
    assert schema_from_response_format(response_format) == expected


@pytest.mark.parametrize("response_format,words", [
    ("json", "must be an object"), ({"type": "xml"}, "json_schema"), ({"type": "json_schema"}, "\"schema\""),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}, "\"schema\"")])
def test_a_response_format_we_cannot_honour_is_one_clear_error(response_format, words):
    with pytest.raises(ResponseFormatError, match=words):
        schema_from_response_format(response_format)


def test_a_schema_that_does_not_compile_is_refused_before_any_token(model):
    with pytest.raises(ResponseFormatError, match="cannot be used"):
        JsonConstraint(model.tokenizer, model.cfg.decoder.vocab_size,
                       {"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}})


def test_the_openai_client_gets_json_that_matches_the_schema_from_a_random_model(model, model_dir):
    from openai import OpenAI

    with live_server(create_app(model, serve_config(model_dir))) as (url, _):
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        free = client.chat.completions.create(model="tiny-vlm", messages=MESSAGES, max_tokens=20, temperature=0)
        assert not _matches(free.choices[0].message.content)      # the control: random weights write no JSON
        for seed in range(6):       # sampled at temperature 1: every path through the grammar must end valid
            reply = client.chat.completions.create(model="tiny-vlm", messages=MESSAGES, max_tokens=30,
                                                   temperature=1.0, seed=seed, response_format=RESPONSE_FORMAT)
            text = reply.choices[0].message.content
            assert _matches(text), text
            assert reply.choices[0].finish_reason == "stop"
        any_object = client.chat.completions.create(model="tiny-vlm", messages=MESSAGES, max_tokens=30,
                                                    temperature=0, response_format={"type": "json_object"})
        text = any_object.choices[0].message.content
        assert any_object.choices[0].finish_reason == "stop", text
        assert isinstance(json.loads(text), dict)
        stream = client.chat.completions.create(model="tiny-vlm", messages=MESSAGES, max_tokens=30, temperature=0,
                                                response_format=RESPONSE_FORMAT, stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert _matches(streamed), streamed


def test_a_constrained_job_leaves_its_batch_neighbours_as_they_were(model):
    """Rows are masked one by one: a free greedy job answers the same beside a constrained one as alone."""
    image = [Image.new("RGB", (32, 32), "red")]
    ids, _ = model.tokenizer.encode_conversation([{"user": "Is there a ball?", "assistant": ""}],
                                                 model.cfg.image_tokens_per_image, fusion=model.cfg.fusion,
                                                 for_generation=True)
    greedy = GenerationConfig(max_new_tokens=30)

    async def run(constrained: list[bool]):
        batcher = Batcher(model, max_batch_size=len(constrained), window_ms=500)
        try:
            jobs = [batcher.submit(Job(ids, image, greedy, constraint=JsonConstraint(
                model.tokenizer, model.cfg.decoder.vocab_size, SCHEMA) if c else None)) for c in constrained]
            return await asyncio.gather(*(job.result() for job in jobs))
        finally:
            batcher.shutdown()

    alone = asyncio.run(run([False]))[0]
    free, held = asyncio.run(run([False, True]))
    assert held.batch_size == 2
    assert free.text == alone.text and free.tokens == alone.tokens
    assert _matches(held.text), held.text


@pytest.mark.parametrize("response_format,words", [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "\"schema\""),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        "a": {"$ref": "#/definitions/missing"}}}}}, "cannot be used")])
def test_the_server_answers_a_bad_response_format_with_a_400_naming_it(model, model_dir, response_format, words):
    from fastapi.testclient import TestClient

    with TestClient(create_app(model, serve_config(model_dir))) as c:
        r = c.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 5,
                                                 "response_format": response_format})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "response_format" and words in error["message"], error
        assert c.get("/health").status_code == 200


def test_a_grammar_failure_mid_answer_fails_that_job_alone(model):
    """The engine can fail after the first token (resource limits, a token it refuses): that request gets a
    ResponseFormatError (a 400 from the server); its batch neighbour still gets its answer."""
    image = [Image.new("RGB", (32, 32), "red")]
    ids, _ = model.tokenizer.encode_conversation([{"user": "Is there a ball?", "assistant": ""}],
                                                 model.cfg.image_tokens_per_image, fusion=model.cfg.fusion,
                                                 for_generation=True)
    failing = JsonConstraint(model.tokenizer, model.cfg.decoder.vocab_size, SCHEMA)
    failing.advance(model.tokenizer.eos_token_id + 10_000)        # a token id no tokenizer has: the engine errs

    async def run():
        batcher = Batcher(model, max_batch_size=2, window_ms=500)
        try:
            jobs = [batcher.submit(Job(ids, image, GenerationConfig(max_new_tokens=30), constraint=c))
                    for c in (failing, None)]
            return await asyncio.gather(*(job.result() for job in jobs), return_exceptions=True)
        finally:
            batcher.shutdown()

    bad, good = asyncio.run(run())
    assert isinstance(bad, ResponseFormatError) and "could not be held" in str(bad)
    assert isinstance(good, Job) and good.error is None and good.tokens
