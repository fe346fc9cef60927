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
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vlmkit import __version__
from vlmkit.serve.engine import ENGINE_STOPPED, SHUTTING_DOWN, Engine, Job
from vlmkit.serve.request import APIError, ChatRequest, ServerConfig, fetches_urls, parse, prepare

if TYPE_CHECKING:
    from vlmkit.families.interface import Template

__all__ = ["APIError", "ServedModel", "ServerConfig", "create_app"]

log = logging.getLogger("vlmkit.serve")


@dataclass
class ServedModel:
    """One name in /v1/models: the template it encodes with (its own saved settings) and its folder (`root`,
    never shown to clients: /v1/models gives names only, the server's file system is not theirs to see)."""

    name: str
    template: Template
    root: str
    parent: str | None = None


def error_response(status: int, message: str, type_: str, param=None, code=None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def create_app(
    engine: Engine, models: dict[str, ServedModel], config: ServerConfig, extend: Callable | None = None
) -> FastAPI:
    """The FastAPI app; `models` maps served names to templates (the first is the default), and
    `engine` must know the same names. The engine is started and stopped with the app. `extend(app, models,
    config, check_key, engine)` adds more routes (the page of `vlmkit app`, `vlmkit.ui`), behind the same key check."""
    default_model = next(iter(models))
    created = int(time.time())
    media_workers = anyio.CapacityLimiter(config.media_workers)
    text_workers = anyio.CapacityLimiter(8)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    # No slash redirects: Starlette builds their Location from the Host header (an open redirect).
    app = FastAPI(
        title="vlmkit",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        redirect_slashes=False,
    )

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
        check_browser(request, config)
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
    async def health(request: Request):
        check_browser(request, config)
        if not engine.alive:  # a supervisor polling /health restarts the server
            return error_response(503, _engine_down(engine), "server_error")
        return {"status": "ok", "queued": len(engine.queue), "batches": engine.batches}

    @app.get("/v1/models")
    @app.get("/v1/models/", include_in_schema=False)
    async def list_models(request: Request) -> dict[str, Any]:
        check_key(request)
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": created,
                "owned_by": "vlmkit",
                "root": m.name,
                "parent": m.parent,
            }
            for m in models.values()
        ]
        return {"object": "list", "data": data}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> dict[str, Any]:
        """The API's OpenAPI schema (behind the API key), for clients and schema fuzzers."""
        check_key(request)
        return openapi_schema(app)

    @app.post("/v1/chat/completions", openapi_extra=_CHAT_BODY)
    async def chat_completions(request: Request):
        check_key(request)
        if not engine.alive:
            raise APIError(503, _engine_down(engine), "server_error")
        body = await _read_body(request, config.max_request_bytes)
        chat = parse(body)
        name = chat.model or default_model
        if name not in models:
            raise APIError(
                404,
                f"model {name!r} is not served here; GET /v1/models lists: {', '.join(models)}",
                param="model",
                code="model_not_found",
            )
        # URL fetches wait on slow servers: they get their own workers, so that text-only requests and inline media
        # (decoded here, as text is tokenized here) never queue behind them.
        limiter = media_workers if fetches_urls(chat) else text_workers
        encoded, options, stop = await anyio.to_thread.run_sync(
            prepare, chat, models[name].template, config, limiter=limiter
        )
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
        return await _complete(job, request_id, name, request)

    if extend is not None:
        extend(app, models, config, check_key, engine)
    return app


# The handler reads the body itself (size limit first, then strict JSON), so its schema is given here.
_CHAT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
    }
}


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title="vlmkit", version=__version__, routes=app.routes)
        request = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request.pop("$defs", {}))
        components["ChatRequest"] = request
        app.openapi_schema = schema
    return app.openapi_schema


_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback_name(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_browser(request: Request, config: ServerConfig) -> None:
    """Refuse what a web page can make a browser send to a keyless server: a Host that is not loopback
    (DNS rebinding, when bound to loopback), and POSTs from another origin or that are not JSON (CSRF;
    a browser sends those without asking the server first)."""
    if config.loopback_only:
        host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
        if not is_loopback_name(host):
            raise APIError(
                421,
                f"Host {host!r} is not a loopback name; this keyless server answers only localhost "
                "(start it with --api-key to serve other names)",
                code="misdirected_request",
            )
    if config.api_key is not None or request.method != "POST":
        return
    origin = request.headers.get("origin")
    if origin is not None and not is_loopback_name(urlsplit(origin).hostname or ""):
        raise APIError(
            403,
            f"Origin {origin!r} is another site; this keyless server refuses requests from web pages "
            "(start it with --api-key to allow them)",
            code="forbidden_origin",
        )
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise APIError(
            415,
            f"Content-Type {media_type or 'none'!r}: send the body as JSON with 'Content-Type: application/json'",
            code="unsupported_media_type",
        )


def _engine_down(engine: Engine) -> str:
    return f"the generation thread has stopped ({engine.failure or 'not running'}); restart the server"


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = APIError(413, f"request body is over the limit of {limit} bytes (--max-request-bytes)")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or cut at --body-timeout (the protocol has answered 408)
        raise APIError(400, "the client disconnected before sending the whole request body") from None
    return b"".join(chunks)


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


async def _cancel_when_gone(request: Request, job: Job) -> None:
    """Mark `job` cancelled when its client disconnects (the body is read: the next message is the end)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancelled = True


async def _complete(job: Job, request_id: str, model: str, request: Request) -> JSONResponse:
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    watcher = asyncio.create_task(_cancel_when_gone(request, job))
    try:
        return await _reply(job, request_id, model, texts, finishes)
    finally:
        watcher.cancel()


async def _reply(job: Job, request_id: str, model: str, texts: dict, finishes: dict) -> JSONResponse:
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
            raise APIError(503 if event[1] in (ENGINE_STOPPED, SHUTTING_DOWN) else 500, event[1], "server_error")
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
