"""The HTTP API: FastAPI app over one model and one Batcher.

    POST /v1/complete            image + the first words of a description -> the rest, with a confidence
    POST /v1/vqa                 image + question -> answer
    POST /v1/extract-fields      image + field names (or a small JSON schema) -> one value per field (null where
                                 unsure) and a per-field confidence
    POST /v1/chat/completions    OpenAI-compatible (image_url content parts as data URLs, SSE streaming,
                                 response_format json_object / json_schema held by constrained decoding)
    GET  /v1/models, /health, /metrics (Prometheus), /docs (OpenAPI), / (the web page)

Images come as multipart file uploads or as base64 / data URLs in JSON. Everything a client can get wrong is a
4xx with {"error": {"message": ...}, "request_id": ...}; a failure inside the model is a 500 with the request id
(the server keeps serving). Every request is logged as one JSON line with its latency and the caller's key name.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import ConfigError
from ..data.format import DESCRIBE_PROMPT
from ..data.transforms import to_pixels
from ..predict import check_context
from ..structured import JsonConstraint, ResponseFormatError, schema_from_response_format
from .auth import Authenticator, AuthError, RateLimited, RateLimiter
from .batching import Batcher, Job, QueueFull, ShuttingDown
from .inputs import (APIError, bad_request, check_text, decode_base64_image, generation_config,
                     open_image_bytes)
from .metrics import Metrics

STATIC = Path(__file__).parent / "static"
access_log = logging.getLogger("nanovlm.access")
error_log = logging.getLogger("nanovlm.serve")


@dataclass
class ServeConfig:
    """Server settings. Every field can also come from the environment as NANOVLM_<FIELD> (the container way)."""
    model: str = ""                          # model folder or Hub id
    host: str = "127.0.0.1"                  # loopback by default: expose it on purpose (--host 0.0.0.0)
    port: int = 8000
    model_name: str = ""                     # the id /v1/models reports; default: the model folder's name
    device: str = "cpu"
    bf16: bool = False                       # bf16 weights (faster on CPUs with bf16 instructions)
    threads: int = 0                         # torch CPU threads; 0 = torch's default
    keys_file: str = ""                      # API key file (`nanovlm keys add`)
    jwt_issuer: str = ""                     # accept bearer JWTs from this issuer ...
    jwt_public_key: str = ""                 # ... signed by this PEM public key
    jwt_jwks: str = ""                       # ... or by a key in this JWKS file
    jwt_audience: str = ""                   # required `aud`, if set
    no_auth: bool = False                    # run without any authentication (local experiments only)
    rate_limit: float = 50.0                 # requests per second per caller (0 = unlimited)
    rate_burst: int = 100                    # requests a caller may send at once
    batching: bool = True
    batch_window_ms: float = 5.0             # a batch takes more requests while they arrive this close together
    batch_max_wait_ms: float = 50.0          # the longest the first request of a batch waits for company
    max_batch_size: int = 32
    queue_size: int = 256                    # requests waiting beyond this get 503
    max_body_bytes: int = 10_000_000
    max_pixels: int = 25_000_000
    max_prompt_chars: int = 4000
    max_new_tokens: int = 256                # the cap on a request's max_tokens
    default_max_new_tokens: int = 64
    max_images: int = 4
    max_fields: int = 32
    tls_cert: str = ""
    tls_key: str = ""
    graceful_shutdown_s: float = 30.0        # how long shutdown waits for requests in flight

    def __post_init__(self):
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        for name in ("max_batch_size", "queue_size", "max_body_bytes", "max_pixels", "max_prompt_chars",
                     "max_new_tokens", "default_max_new_tokens", "max_images", "max_fields", "rate_burst"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("rate_limit", "batch_window_ms", "batch_max_wait_ms", "graceful_shutdown_s", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")

    @classmethod
    def from_env(cls, environ, **overrides) -> "ServeConfig":
        """Fields from NANOVLM_<FIELD> variables, then `overrides` (the command line) on top."""
        import dataclasses

        from ..config import field_types, parse_value

        values = {}
        for f in dataclasses.fields(cls):
            text = environ.get(f"NANOVLM_{f.name.upper()}")
            if text is not None:
                values[f.name] = parse_value(field_types(cls)[f.name], text, f"NANOVLM_{f.name.upper()}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# ---------------------------------------------------------------------------------------------- request bodies

class GenerationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int | None = Field(None, ge=1, description="most new tokens (within the server's cap)")
    temperature: float = Field(0.0, ge=0, le=10, description="0 = greedy")
    top_k: int | None = Field(None, ge=1, le=100_000)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = Field(None, description="cut the answer before the first of these")


class CompleteRequest(GenerationParams):
    image: str = Field(..., description="the image as base64 or a data: URL (or a multipart file field `image`)")
    prompt: str = Field("", description="the first words of the description, e.g. 'I see'")
    question: str | None = Field(None, description=f"the user turn; default {DESCRIBE_PROMPT!r}")


class VQARequest(GenerationParams):
    image: str = Field(..., description="the image as base64 or a data: URL (or a multipart file field `image`)")
    question: str = Field(..., min_length=1)
    answer_start: str = Field("", description="optional first words of the answer")


class ExtractRequest(GenerationParams):
    image: str = Field(..., description="the image as base64 or a data: URL (or a multipart file field `image`)")
    fields: list[str] | None = Field(None, description="names of the fields to read")
    json_schema: dict | None = Field(None, alias="schema", description="or a small JSON schema: "
                                     "{\"properties\": {name: {\"type\": string|number|integer|boolean, "
                                     "\"description\": ...}}}")
    threshold: float = Field(0.5, ge=0, le=1, description="below this confidence a field's value is null")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[Union[TextPart, ImagePart]]


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description="default 0 (greedy)")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=100_000)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    response_format: dict | None = Field(None, description='{"type": "json_object"} or {"type": "json_schema", '
                                          '"json_schema": {"name": ..., "schema": {...}}}: the answer is held to '
                                          'valid JSON (matching the schema) token by token')


def _multipart_schema(model: type[BaseModel]) -> dict:
    """The same fields as a multipart form, with `image` a file upload (for the OpenAPI document)."""
    schema = model.model_json_schema(by_alias=True)
    properties = dict(schema["properties"])
    properties["image"] = {"type": "string", "format": "binary", "description": "the image file"}
    for name in ("fields", "stop"):
        if name in properties:
            properties[name] = {"type": "array", "items": {"type": "string"}}
    if "schema" in properties:
        properties["schema"] = {"type": "string", "description": "a JSON schema as text"}
    return {"type": "object", "properties": properties, "required": schema.get("required", [])}


def _body_doc(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema(by_alias=True)},
        "multipart/form-data": {"schema": _multipart_schema(model)}}}}


# ---------------------------------------------------------------------------------------------- the app

def create_app(model, cfg: ServeConfig, auth: Authenticator | None = None) -> FastAPI:
    auth = auth or Authenticator()
    limiter = RateLimiter(cfg.rate_limit, cfg.rate_burst)
    metrics = Metrics()
    model_name = cfg.model_name or Path(cfg.model).name or "nanovlm"
    tokenizer = model.tokenizer
    vision = model.cfg.vision
    if tokenizer is None:
        raise ConfigError(f"{cfg.model} has no tokenizer.json; the server needs one to read prompts")
    state = {"batcher": None, "started": time.time()}

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(model, max_batch_size=cfg.max_batch_size if cfg.batching else 1,
                                   window_ms=cfg.batch_window_ms if cfg.batching else 0.0,
                                   max_wait_ms=cfg.batch_max_wait_ms if cfg.batching else 0.0,
                                   queue_size=cfg.queue_size, on_batch=metrics.observe_batch,
                                   threads=cfg.threads or None)
        metrics.queue_depth.set_function(lambda: state["batcher"].queue_depth() if state["batcher"] else 0)
        try:
            yield
        finally:
            # uvicorn has stopped accepting connections and waited for the requests in flight; finish the
            # jobs still queued (their clients may be gone) and stop the worker.
            await asyncio.to_thread(state["batcher"].shutdown, cfg.graceful_shutdown_s)

    app = FastAPI(title="nanovlm", version="1", lifespan=lifespan,
                  description="Small vision-language models behind an authenticated, batching API. "
                              "Send `Authorization: Bearer <API key or JWT>`.")
    app.add_middleware(RequestMiddleware, max_body_bytes=cfg.max_body_bytes, metrics=metrics)

    # ------------------------------------------------------------------ errors

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(request, e.status, e.message, e.kind, e.param, e.headers)

    @app.exception_handler(ResponseFormatError)     # a schema the grammar engine fails on mid-answer
    async def _response_format_error(request: Request, e: ResponseFormatError):
        return error_response(request, 400, str(e), param="response_format")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return error_response(request, 422, _validation_message(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return error_response(request, e.status_code, str(e.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        error_log.exception("request %s failed", request_id(request))
        return error_response(request, 500, f"internal error while answering; quote request id "
                                            f"{request_id(request)} when reporting it", "server_error")

    # ------------------------------------------------------------------ auth

    def caller(request: Request) -> str | None:
        try:
            name = auth.caller(request.headers.get("authorization"), request.headers.get("x-api-key"))
        except AuthError as e:
            raise APIError(401, str(e), kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})
        request.state.caller = name
        try:
            limiter.check(name or (request.client.host if request.client else "?"))
        except RateLimited as e:
            raise APIError(429, str(e), kind="rate_limit_error",
                           headers={"Retry-After": str(max(1, round(e.retry_after)))})
        return name

    # ------------------------------------------------------------------ running jobs

    def batcher() -> Batcher:
        b = state["batcher"]
        if b is None:
            raise APIError(503, "the server is starting", kind="server_error")
        return b

    def submit(job: Job) -> Job:
        try:
            return batcher().submit(job)
        except (QueueFull, ShuttingDown) as e:
            raise APIError(503, str(e), kind="server_error", headers={"Retry-After": "1"})

    def json_constraint(response_format) -> JsonConstraint | None:
        try:
            schema = schema_from_response_format(response_format)
            return None if schema is None else JsonConstraint(tokenizer, model.cfg.decoder.vocab_size, schema)
        except ResponseFormatError as e:
            raise bad_request(str(e), "response_format") from None

    def make_job(turns: list[dict], images, generation, stream=False, constraint=None) -> Job:
        n_image_tokens = len(images) * model.cfg.image_tokens_per_image
        ids, _ = tokenizer.encode_conversation(turns, n_image_tokens, fusion=model.cfg.fusion, for_generation=True)
        if not ids:
            raise bad_request("the prompt is empty: give an image, a question or the start of an answer")
        try:
            check_context(model.cfg, len(ids), generation.max_new_tokens)
        except ConfigError as e:
            raise bad_request(str(e), "max_tokens") from None
        return Job(prompt_ids=ids, images=images, generation=generation, stream=stream, constraint=constraint)

    async def read_body(request: Request, kind: type[BaseModel]) -> tuple[BaseModel, list]:
        """JSON or multipart -> (validated request, [PIL image])."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        upload = None
        if content_type == "application/json":
            try:
                data = json.loads(await request.body())
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise bad_request(f"the body is not valid JSON ({e})") from None
            if not isinstance(data, dict):
                raise bad_request("the body must be a JSON object")
        elif content_type == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=64)
            except Exception as e:  # noqa: BLE001 - python-multipart and Starlette raise several types
                raise bad_request(f"the multipart body cannot be parsed ({e})") from None
            data, upload = _form_to_dict(form, kind)
        else:
            raise APIError(415, "send the request as application/json (image as base64) or multipart/form-data "
                                "(image as a file field `image`)")
        if upload is not None:
            data["image"] = ""                         # filled from the file below
        try:
            body = kind.model_validate(data)
        except ValidationError as e:
            raise APIError(422, _validation_message(e.errors())) from None
        raw = await upload.read() if upload is not None else decode_base64_image(body.image)
        pixels = await asyncio.to_thread(lambda: to_pixels(open_image_bytes(raw, cfg.max_pixels, vision.image_size),
                                                           vision))
        return body, [pixels]

    async def run_one(turns, images, params) -> Job:
        generation = generation_config(params, cfg.max_new_tokens, cfg.default_max_new_tokens)
        return await submit(make_job(turns, images, generation)).result()

    def describe(job: Job, started: float) -> dict:
        return {"confidence": _round(job.confidence), "finish_reason": job.finish_reason,
                "completion_tokens": len(job.tokens), "batch_size": job.batch_size,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1), "model": model_name}

    # ------------------------------------------------------------------ endpoints

    @app.get("/", include_in_schema=False)
    async def page():
        if not (STATIC / "index.html").is_file():      # an install without the package data
            raise APIError(404, "the web page is not installed with this copy of nanovlm; the API works")
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", summary="liveness and readiness")
    async def health():
        b = state["batcher"]
        if b is None or not b.alive:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok", "model": model_name, "queue_depth": b.queue_depth()}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models", summary="the model this server runs")
    async def models(_=Depends(caller)):
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(state["started"]),
                                            "owned_by": "nanovlm"}]}

    @app.post("/v1/complete", summary="continue a description of an image from its first words",
              openapi_extra=_body_doc(CompleteRequest))
    async def complete(request: Request, _=Depends(caller)):
        started = time.perf_counter()
        body, images = await read_body(request, CompleteRequest)
        prompt = check_text(body.prompt, "prompt", cfg.max_prompt_chars)
        question = check_text(body.question, "question", cfg.max_prompt_chars) or DESCRIBE_PROMPT
        job = await run_one([{"user": question, "assistant": prompt}], images, body)
        return {"id": request_id(request), "prompt": prompt, "text": job.text, "full_text": prompt + job.text,
                **describe(job, started)}

    @app.post("/v1/vqa", summary="answer a question about an image", openapi_extra=_body_doc(VQARequest))
    async def vqa(request: Request, _=Depends(caller)):
        started = time.perf_counter()
        body, images = await read_body(request, VQARequest)
        question = check_text(body.question, "question", cfg.max_prompt_chars)
        start = check_text(body.answer_start, "answer_start", cfg.max_prompt_chars)
        job = await run_one([{"user": question, "assistant": start}], images, body)
        return {"id": request_id(request), "question": question, "answer": (start + job.text).strip(),
                **describe(job, started)}

    @app.post("/v1/extract-fields", summary="read named fields from a document image",
              openapi_extra=_body_doc(ExtractRequest))
    async def extract_fields(request: Request, _=Depends(caller)):
        started = time.perf_counter()
        body, images = await read_body(request, ExtractRequest)
        fields = _fields_from(body, cfg.max_fields, cfg.max_prompt_chars)
        params = body.model_copy(update={"max_tokens": body.max_tokens or 16})
        generation = generation_config(params, cfg.max_new_tokens, cfg.default_max_new_tokens)
        jobs = [submit(make_job([{"user": question, "assistant": ""}], images, generation))
                for _, _, question in fields]
        await asyncio.gather(*(job.result() for job in jobs))
        values, confidences = {}, {}
        for (name, kind, _), job in zip(fields, jobs):
            value = _coerce(job.text.strip(), kind)
            confidences[name] = _round(job.confidence)
            values[name] = value if value is not None and (job.confidence or 0) >= body.threshold else None
        return {"id": request_id(request), "fields": values, "confidence": confidences, "model": model_name,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1)}

    @app.post("/v1/chat/completions", summary="OpenAI-compatible chat completions (images as data: URLs)")
    async def chat(request: Request, body: ChatRequest, _=Depends(caller)):
        turns, images = await asyncio.to_thread(lambda: _chat_turns(body, cfg, vision))
        params = GenerationParams(max_tokens=body.max_completion_tokens or body.max_tokens,
                                  temperature=body.temperature or 0.0, top_k=body.top_k, top_p=body.top_p,
                                  seed=body.seed, stop=body.stop)
        generation = generation_config(params, cfg.max_new_tokens, cfg.default_max_new_tokens)
        constraint = await asyncio.to_thread(json_constraint, body.response_format)  # compiling takes milliseconds
        job = submit(make_job(turns, images, generation, stream=body.stream, constraint=constraint))
        completion_id, created = f"chatcmpl-{request_id(request)}", int(time.time())
        usage = lambda: {"prompt_tokens": len(job.prompt_ids), "completion_tokens": len(job.tokens),
                         "total_tokens": len(job.prompt_ids) + len(job.tokens)}
        if not body.stream:
            await job.result()
            return {"id": completion_id, "object": "chat.completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": job.text},
                                 "finish_reason": job.finish_reason, "logprobs": None}],
                    "usage": usage()}

        def chunk(delta: dict, finish_reason=None, **extra) -> str:
            return "data: " + json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                          "model": model_name, "choices": [{"index": 0, "delta": delta,
                                                                            "finish_reason": finish_reason}],
                                          **extra}) + "\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            while (delta := await job.deltas.get()) is not None:
                yield chunk({"content": delta})
            try:
                await job.result()
            except Exception:  # noqa: BLE001 - the 200 is sent already: the error goes into the stream
                error_log.exception("request %s failed in the model", request_id(request))
                yield "data: " + json.dumps({"error": {"message": "internal error while answering; quote request "
                                                       f"id {request_id(request)}", "type": "server_error"}}) + "\n\n"
                return
            yield chunk({}, job.finish_reason, usage=usage())
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.state.metrics = metrics
    app.state.serve_config = cfg
    return app


# ---------------------------------------------------------------------------------------------- helpers

def request_id(request: Request) -> str:
    return request.scope.get("nanovlm.request_id", "-")


def error_response(request: Request, status: int, message: str, kind: str = "invalid_request_error",
                   param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status},
                         "request_id": request_id(request)}, status_code=status, headers=headers)


def _validation_message(errors) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is invalid"


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _form_to_dict(form, kind: type[BaseModel]) -> tuple[dict, object]:
    from starlette.datastructures import UploadFile

    upload, data = None, {}
    list_fields = {"fields", "stop"}
    for key in set(form.keys()):
        values = form.getlist(key)
        if key == "image":
            if len(values) != 1 or not isinstance(values[0], UploadFile):
                raise bad_request("image: send exactly one file field named `image`", "image")
            upload = values[0]
            continue
        if any(not isinstance(v, str) for v in values):
            raise bad_request(f"{key}: only `image` may be a file", key)
        if key in list_fields:
            data[key] = [v for value in values for v in value.split(",") if v.strip()] if key == "fields" else values
        elif key == "schema":
            try:
                data[key] = json.loads(values[0])
            except json.JSONDecodeError as e:
                raise bad_request(f"schema is not valid JSON ({e})", "schema") from None
        else:
            data[key] = values[-1]
    if upload is None and "image" not in data:
        raise bad_request("image: missing; send the image as a file field named `image`", "image")
    return data, upload


FIELD_TYPES = ("string", "number", "integer", "boolean")


def _fields_from(body: ExtractRequest, max_fields: int, max_chars: int) -> list[tuple[str, str, str]]:
    """(name, type, question) for each field asked for, from `fields` or the JSON schema's properties."""
    if (body.fields is None) == (body.json_schema is None):
        raise bad_request("give either `fields` (a list of names) or `schema` (a JSON schema), not both or neither")
    if body.fields is not None:
        spec = {name: {} for name in body.fields}
    else:
        properties = body.json_schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            raise bad_request("schema must be an object schema with a non-empty `properties` object", "schema")
        spec = properties
    if not spec or len(spec) > max_fields:
        raise bad_request(f"ask for 1 to {max_fields} fields, got {len(spec)}", "fields")
    out = []
    for name, prop in spec.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise bad_request(f"field name {name!r:.40} must be a non-empty string of at most 100 characters",
                              "fields")
        if not isinstance(prop, dict):
            raise bad_request(f"schema.properties.{name} must be an object", "schema")
        kind = prop.get("type", "string")
        if kind not in FIELD_TYPES:
            raise bad_request(f"schema.properties.{name}.type must be one of {', '.join(FIELD_TYPES)}", "schema")
        description = prop.get("description") or name.replace("_", " ")
        if not isinstance(description, str):
            raise bad_request(f"schema.properties.{name}.description must be a string", "schema")
        out.append((name, kind, check_text(f"What is the {description}?", "field", max_chars)))
    return out


def _coerce(text: str, kind: str):
    """The answer as the field's type; None when it does not read as one."""
    if not text:
        return None
    if kind == "string":
        return text
    if kind == "boolean":
        return {"yes": True, "true": True, "no": False, "false": False}.get(text.lower().rstrip("."))
    cleaned = text.replace(",", "").rstrip(".").strip()
    try:
        return int(cleaned) if kind == "integer" else float(cleaned)
    except ValueError:
        return None


def _chat_turns(body: ChatRequest, cfg: ServeConfig, vision) -> tuple[list[dict], list]:
    """OpenAI messages -> our conversation turns + images (resized: to_pixels). System text goes
    before the first user message; a last assistant message is the start of the answer."""
    system, turns, images, pending_user = [], [], [], None
    for i, message in enumerate(body.messages):
        parts = [message.content] if isinstance(message.content, str) else message.content
        texts = []
        for part in parts:
            if isinstance(part, str):
                texts.append(part)
            elif part.type == "text":
                texts.append(part.text)
            else:
                if message.role != "user":
                    raise bad_request(f"messages[{i}]: only user messages may hold images", "messages")
                if len(images) >= cfg.max_images:
                    raise bad_request(f"at most {cfg.max_images} images per request", "messages")
                raw = decode_base64_image(part.image_url.url, f"messages[{i}].image_url")
                images.append(to_pixels(open_image_bytes(raw, cfg.max_pixels, param=f"messages[{i}].image_url"),
                                        vision))
        text = check_text("\n".join(texts), f"messages[{i}].content", cfg.max_prompt_chars)
        if message.role == "system":
            if turns or pending_user is not None:
                raise bad_request("a system message must come before the conversation", "messages")
            system.append(text)
        elif message.role == "user":
            if pending_user is not None:
                raise bad_request(f"messages[{i}]: two user messages in a row; alternate user and assistant",
                                  "messages")
            pending_user = text
        else:
            if pending_user is None:
                raise bad_request(f"messages[{i}]: an assistant message must follow a user message", "messages")
            turns.append({"user": pending_user, "assistant": text})
            pending_user = None
    if pending_user is not None:
        turns.append({"user": pending_user, "assistant": ""})
    if not turns:
        raise bad_request("messages must hold at least one user message", "messages")
    if system:
        turns[0]["user"] = "\n".join(system + [turns[0]["user"]])
    if sum(len(t["user"]) + len(t["assistant"]) for t in turns) > cfg.max_prompt_chars:
        raise bad_request(f"the conversation is longer than this server's {cfg.max_prompt_chars:,} characters",
                          "messages")
    return turns, images


class RequestMiddleware:
    """Pure ASGI: a request id, the body-size cap (checked before the app reads anything), one JSON access-log
    line per request (latency, status, caller's key NAME - never the key), and request metrics."""

    def __init__(self, app, max_body_bytes: int, metrics: Metrics):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex[:16]
        scope["nanovlm.request_id"] = rid
        scope.setdefault("state", {})
        started = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        try:
            body_receive = await self._read_body(scope, receive)
            if body_receive is None:
                await self._too_large(scope, send_with_id, rid)
            else:
                await self.app(scope, body_receive, send_with_id)
        finally:
            latency = time.perf_counter() - started
            route = _route_name(scope)
            self.metrics.observe_request(route, status["code"], latency)
            state = scope.get("state") or {}
            access_log.info(json.dumps({
                "request_id": rid, "method": scope.get("method"), "path": scope.get("path"),
                "status": status["code"], "latency_ms": round(latency * 1000, 1), "key": state.get("caller"),
                "client": (scope.get("client") or ["?"])[0]}))

    async def _read_body(self, scope, receive):
        """The whole body (up to the cap) replayed to the app; None when it is over the cap."""
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > self.max_body_bytes:
                    return None
            except ValueError:
                pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                chunks = None
                final = message
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body"):
                final = None
                break
        body = b"".join(chunks) if chunks is not None else b""
        replayed = {"done": False}

        async def replay():
            if not replayed["done"]:
                replayed["done"] = True
                return final if final is not None else {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _too_large(self, scope, send, rid):
        payload = json.dumps({"error": {"message": f"the request body is larger than this server's cap of "
                                                   f"{self.max_body_bytes:,} bytes", "type": "invalid_request_error",
                                        "param": None, "code": 413}, "request_id": rid}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def _route_name(scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
