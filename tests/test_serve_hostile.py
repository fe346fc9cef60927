"""`vlmkit serve` against hostile and careless clients (issue 12): one keyless server process on loopback,
driven with the official `openai` client and raw HTTP."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import openai
import pytest
from test_serve import NAME, start_server, stop_server, user

from vlmkit.errors import VlmkitError


@pytest.fixture(scope="module")
def hostile_media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile_media")


@pytest.fixture(scope="module")
def server(small_model, hostile_media, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "server.log"
    proc, url = start_server(
        "--model", str(small_model),
        "--served-model-name", NAME,
        "--allow-media-dir", str(hostile_media),
        "--max-tokens", "8",
        log=log,
    )  # fmt: skip
    yield url
    stop_server(proc)
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=60)


# -- 1. the engine survives mixed sampling settings, and a dead engine is visible ------------------------


def test_mixed_sampling_settings_from_16_clients_are_all_answered(server, client):
    """Three or more requests queued during a batch, with other settings between them, used to kill the
    engine thread (`deque.remove` compared jobs holding tensors) and hang the server for good."""
    prompts = [f"Question {i}" for i in range(4)]
    expected = {
        p: client.chat.completions.create(model=NAME, messages=user(p), max_tokens=4)
        .choices[0]
        .message.content
        for p in prompts
    }

    def ask(i: int):
        settings = [{}, {"temperature": 0.7}, {"seed": i, "temperature": 1.0}, {"n": 3}][i % 4]
        reply = client.chat.completions.create(
            model=NAME, messages=user(prompts[i % 4]), max_tokens=4, **settings
        )
        return i, settings, reply

    def slow_batch():  # keeps the engine busy so that the others queue up behind it
        return client.chat.completions.create(model=NAME, messages=user("long"), max_tokens=64)

    with concurrent.futures.ThreadPoolExecutor(17) as pool:
        busy = pool.submit(slow_batch)
        time.sleep(0.05)
        replies = list(pool.map(ask, range(16)))
        assert busy.result(timeout=60).choices[0].message.content is not None
    for i, settings, reply in replies:
        assert len(reply.choices) == settings.get("n", 1)
        if not settings or "n" in settings:  # greedy: the reply the prompt gets alone
            assert {c.message.content for c in reply.choices} == {expected[prompts[i % 4]]}, i
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_a_dead_engine_fails_health_and_the_server_exits_non_zero(small_model, monkeypatch):
    """Should the generation thread end anyway, /health says so (503) and `serve` exits with an error,
    so that a supervisor restarts it instead of leaving a server that accepts requests and never answers."""
    from fastapi.testclient import TestClient
    from test_serve import free_port

    import vlmkit
    from vlmkit.serve import serve
    from vlmkit.serve.app import ServedModel, ServerConfig, create_app
    from vlmkit.serve.engine import Engine

    def broken(self):
        raise RuntimeError("a bug in the batcher")

    monkeypatch.setattr(Engine, "_take_batch", broken)
    vlm = vlmkit.load(str(small_model))
    app = create_app(Engine(vlm, {NAME: None}), {NAME: ServedModel(NAME, vlm.template, "m")}, ServerConfig())
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 10
        while test_client.get("/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        health = test_client.get("/health")
        assert health.status_code == 503
        assert "RuntimeError: a bug in the batcher" in health.json()["error"]["message"]
        reply = test_client.post("/v1/chat/completions", json={"messages": user("hi")})
        assert reply.status_code == 503 and "restart the server" in reply.json()["error"]["message"]

    start = time.monotonic()
    with pytest.raises(VlmkitError, match="generation thread stopped .*a bug in the batcher.*restart it"):
        serve(str(small_model), port=free_port(), log_level="error")
    assert time.monotonic() - start < 60


# -- 2. API text is text ---------------------------------------------------------------------------------


def test_placeholder_words_in_api_text_are_plain_text(client, small_model):
    """`<image>` in a request's text used to be read as a dataset placeholder (400: an `images` list the
    API does not have); it is the user's text, tokenized as text."""
    import vlmkit
    from vlmkit.sample import Sample

    text = "What does <image> mean in HTML, and <video>?"
    for content in (text, [{"type": "text", "text": text}]):
        reply = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": content}], max_tokens=2
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
    sample = Sample(messages=[{"role": "user", "content": [{"type": "text", "text": text}]}])
    assert reply.usage.prompt_tokens == len(vlmkit.load(str(small_model)).encode(sample)["input_ids"])
