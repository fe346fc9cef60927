"""The OpenAI-compatible HTTP API of `vlmkit serve`: routes, request schema and errors.

    POST /v1/chat/completions   text, image_url and video_url parts; stream (SSE); n, max_tokens,
                                temperature, top_p, stop, seed; `model` picks the base or an adapter
    GET  /v1/models             the served names
    GET  /health                {"status": "ok"} (the only route open without the API key)

Every refusal is OpenAI's error shape `{"error": {"message", "type", "param", "code"}}` with one
line naming what is wrong: 400 bad JSON, schema or media; 401 bad key; 404 unknown model;
413 body or image over a limit; 500 (logged, no details to the client) for bugs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlmkit.errors import DataError, MediaTooLargeError, VlmkitError
from vlmkit.media import MediaPolicy, fetch_media, load_image
from vlmkit.model import GenerationOptions
from vlmkit.sample import ROLES, Sample, _content_part
from vlmkit.serve.engine import Engine, Job

log = logging.getLogger("vlmkit.serve")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[Any] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat-completion request that vlmkit reads; others are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None


@dataclass
class ServedModel:
    """One name in /v1/models: the template it encodes with (its own saved settings) and its path."""

    name: str
    template: Any
    root: str
    parent: str | None = None


@dataclass
class ServerConfig:
    api_key: str | None = None
    max_request_bytes: int = 16 * 2**20
    max_tokens: int = 512  # default when a request gives none
    max_tokens_limit: int = 4096
    max_n: int = 8
    policy: MediaPolicy = field(
        default_factory=lambda: MediaPolicy(allow_private_urls=False, allow_local_files=False)
    )


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def error_response(status: int, message: str, type_: str, param=None, code=None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def create_app(engine: Engine, models: dict[str, ServedModel], config: ServerConfig) -> FastAPI:
    """The FastAPI app; `models` maps served names to templates (the first is the default), and
    `engine` must know the same names. The engine is started and stopped with the app."""
    default_model = next(iter(models))
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="vlmkit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}", kind)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(500, "internal server error (see the server log)", "server_error")

    def check_key(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), config.api_key.encode()
        ):
            raise APIError(
                401, "missing or wrong API key; send 'Authorization: Bearer KEY'", code="invalid_api_key"
            )

    @app.get("/health")
    async def health():
        if not engine.alive:  # a supervisor polling /health restarts the server
            return error_response(503, _engine_down(engine), "server_error")
        return {"status": "ok", "queued": len(engine.queue), "batches": engine.batches}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_key(request)
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": created,
                "owned_by": "vlmkit",
                "root": m.root,
                "parent": m.parent,
            }
            for m in models.values()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        if not engine.alive:
            raise APIError(503, _engine_down(engine), "server_error")
        body = await _read_body(request, config.max_request_bytes)
        chat = _parse(body)
        name = chat.model or default_model
        if name not in models:
            raise APIError(
                404,
                f"model {name!r} is not served here; GET /v1/models lists: {', '.join(models)}",
                param="model",
                code="model_not_found",
            )
        encoded, options, stop = await run_in_threadpool(_prepare, chat, models[name], config)
        job = Job(
            adapter=name,
            encoded=encoded,
            options=options,
            n=chat.n,
            stop=stop,
            loop=asyncio.get_running_loop(),
            events=asyncio.Queue(),
            stream=chat.stream,
        )
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        engine.submit(job)
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return StreamingResponse(
                _sse(job, request_id, name, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await _complete(job, request_id, name)

    return app


def _engine_down(engine: Engine) -> str:
    return f"the generation thread has stopped ({engine.failure or 'not running'}); restart the server"


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = APIError(413, f"request body is over the limit of {limit} bytes (--max-request-bytes)")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> ChatRequest:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise APIError(400, f"{param}: {first['msg']}", param=param) from None


def _prepare(
    chat: ChatRequest, served: ServedModel, config: ServerConfig
) -> tuple[dict[str, Any], GenerationOptions, tuple[str, ...]]:
    """Check the sampling options, read the media under the server's policy and encode the prompt with
    the served model's template. Runs in a worker thread (media fetching blocks)."""
    if chat.n > config.max_n:
        raise APIError(400, f"n: {chat.n} is over this server's limit of {config.max_n}", param="n")
    max_tokens = chat.max_completion_tokens or chat.max_tokens or config.max_tokens
    if max_tokens > config.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens: {max_tokens} is over this server's limit of {config.max_tokens_limit}",
            param="max_tokens",
        )
    stop = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop or [])
    if len(stop) > 4 or not all(stop):
        raise APIError(400, "stop: give up to 4 non-empty strings", param="stop")
    if chat.messages[-1].role == "assistant":
        raise APIError(
            400, "messages: the last message is from the assistant; end with a user turn", param="messages"
        )
    try:
        sample = request_sample(chat.messages)
        sample = _fetch_media(sample, config.policy)
        encoded = served.template.encode(sample, add_generation_prompt=True)
    except MediaTooLargeError as e:
        raise APIError(413, str(e), param="messages") from None
    except VlmkitError as e:  # DataError, MediaError: the request's fault
        raise APIError(400, str(e), param="messages") from None
    options = GenerationOptions(
        max_new_tokens=max_tokens, temperature=chat.temperature, top_p=chat.top_p, seed=chat.seed
    )
    return encoded, options, tuple(stop)


def request_sample(messages: list[Message]) -> Sample:
    """The request's messages as a Sample. API text is text: unlike a dataset row's it is not scanned for
    `<image>` / `<video>` placeholders (the API has no `images` list; media come as content parts)."""
    out = []
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            raise DataError(
                f"request: message {i} has role {message.role!r}; expected one of {', '.join(ROLES)}"
            )
        content = "" if message.content is None else message.content
        raw = [content] if isinstance(content, str) else content
        parts = [_content_part(part, f"request: message {i}", j) for j, part in enumerate(raw)]
        out.append({"role": message.role, "content": [p for p in parts if p["type"] != "text" or p["text"]]})
    if not any(m["role"] != "system" for m in out):
        raise DataError("request: the conversation has no user or assistant message")
    return Sample(messages=out, where="request")


def _fetch_media(sample: Sample, policy: MediaPolicy) -> Sample:
    """The sample with every image opened and every video fetched under `policy` (the template then
    never reads a client-given path or URL itself)."""
    messages, counts = [], {"image": 0, "video": 0}
    for message in sample.messages:
        parts = []
        for part in message["content"]:
            kind = part["type"]
            if kind in counts:
                counts[kind] += 1
                where = f"{sample.where}: {kind} {counts[kind]}"
                if kind == "image":
                    part = {"type": "image", "image": load_image(part["image"], where, policy)}
                else:
                    part = {"type": "video", "video": fetch_media(part["video"], where, policy)}
            parts.append(part)
        messages.append({**message, "content": parts})
    return Sample(messages=messages, objects=sample.objects, where=sample.where)


def _chunk(request_id: str, created: int, model: str, choices: list[dict], usage: dict | None = None) -> str:
    body = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse(job: Job, request_id: str, model: str, include_usage: bool):
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    done, created = False, int(time.time())
    try:
        for choice in range(job.n):
            yield _chunk(request_id, created, model, [_delta(choice, {"role": "assistant", "content": ""})])
        while True:
            event = await job.events.get()
            if event[0] == "delta":
                yield _chunk(request_id, created, model, [_delta(event[1], {"content": event[2]})])
            elif event[0] == "finish":
                yield _chunk(request_id, created, model, [_delta(event[1], {}, event[2])])
            elif event[0] == "done":
                if include_usage:
                    yield _chunk(request_id, created, model, [], usage=event[1])
                break
            else:
                body = {"error": {"message": event[1], "type": "server_error", "param": None, "code": None}}
                yield f"data: {json.dumps(body)}\n\n"
                break
        done = True
        yield "data: [DONE]\n\n"
    finally:
        if not done:
            job.cancelled = True  # the client went away: the engine ends its rows at the next token


def _delta(index: int, delta: dict, finish: str | None = None) -> dict:
    return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}


async def _complete(job: Job, request_id: str, model: str) -> JSONResponse:
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    while True:
        event = await job.events.get()
        if event[0] == "delta":
            texts[event[1]] = texts.get(event[1], "") + event[2]
        elif event[0] == "finish":
            finishes[event[1]] = event[2]
        elif event[0] == "done":
            usage = event[1]
            break
        else:
            raise APIError(500, event[1], "server_error")
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": texts.get(i, "")},
            "finish_reason": finishes.get(i, "stop"),
            "logprobs": None,
        }
        for i in range(job.n)
    ]
    return JSONResponse(
        {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage,
        }
    )
