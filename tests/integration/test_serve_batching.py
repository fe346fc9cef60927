"""`vlmkit serve` under mixed traffic (issue 26): requests with any sampling settings share a decode batch, each
row sampled with its own settings and generator, and requests join and leave the running batch between tokens.
One server process on loopback, driven with the official `openai` client."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import openai
import pytest
from test_serve import NAME, start_server, stop_server, user


@pytest.fixture(scope="module")
def client(small_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "server.log"
    proc, url = start_server("--model", str(small_model), "--served-model-name", NAME, log=log)
    yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    stop_server(proc)
    assert "Traceback" not in log.read_text(), log.read_text()


def ask(client: openai.OpenAI, prompt: str, **settings) -> str:
    """The reply's text (of every choice, joined); vLLM's fields that OpenAI lacks go in `extra_body`."""
    extra = {key: settings.pop(key) for key in ("top_k", "repetition_penalty") if key in settings}
    reply = client.chat.completions.create(model=NAME, messages=user(prompt), extra_body=extra, **settings)
    return "|".join(choice.message.content for choice in reply.choices)


SEEDED = {"temperature": 0.9, "top_p": 0.9, "seed": 11, "max_tokens": 24}
GREEDY = {"max_tokens": 24}
# requests with other settings that run beside them; the first has the same settings and seed, another prompt
OTHERS = [
    ("a twin with another prompt", SEEDED),
    ("hot and narrow", {"temperature": 1.3, "top_k": 5, "max_tokens": 20}),
    ("cool, seeded, with a stop string", {"temperature": 0.5, "seed": 3, "stop": ["e"], "max_tokens": 30}),
    ("repetition penalty", {"repetition_penalty": 1.3, "max_tokens": 16}),
    ("short", {"max_tokens": 3}),
    ("two choices", {"temperature": 1.0, "n": 2, "max_tokens": 12}),
]


def test_a_seeded_reply_does_not_depend_on_what_it_is_batched_with(client):
    """A seeded request gives the same reply alone and among requests with other settings (one with the same
    seed); greedy replies are those of the prompt alone. The old engine batched equal settings on one shared
    RNG, so a seeded reply changed with its batch-mates."""
    alone_seeded = ask(client, "Tell me a story", **SEEDED)
    alone_greedy = ask(client, "Describe a cat", **GREEDY)
    alone_twin = ask(client, OTHERS[0][0], **OTHERS[0][1])
    with concurrent.futures.ThreadPoolExecutor(len(OTHERS) + 3) as pool:
        busy = pool.submit(ask, client, "keep the engine busy", max_tokens=160)  # the others queue behind it
        time.sleep(0.3)
        others = [pool.submit(ask, client, prompt, **settings) for prompt, settings in OTHERS]
        seeded = pool.submit(ask, client, "Tell me a story", **SEEDED)
        greedy = pool.submit(ask, client, "Describe a cat", **GREEDY)
        assert busy.result(timeout=120)
        assert all(other.result(timeout=120) is not None for other in others)
        assert others[0].result() == alone_twin
        assert seeded.result(timeout=120) == alone_seeded
        assert greedy.result(timeout=120) == alone_greedy


def test_one_clients_seed_does_not_make_another_clients_sampling_predictable(client):
    """An unseeded request after a seeded one used to continue the RNG state that the seed had set."""
    unseeded = []
    for _ in range(2):
        ask(client, "seeded", temperature=1.0, seed=7, max_tokens=4)
        unseeded.append(ask(client, "unseeded", temperature=1.0, max_tokens=16))
    assert unseeded[0] != unseeded[1]


def test_a_short_request_finishes_while_a_long_one_is_still_generating(client):
    """A short request sent while a long one generates joins the running batch and is answered at once; it used
    to wait for the whole long generation. Measured in the long reply's tokens, not in seconds."""
    chunks: list[str] = []
    first_chunk = threading.Event()

    def long_reply() -> int:
        stream = client.chat.completions.create(
            model=NAME, messages=user("a long story"), max_tokens=300, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks.append(chunk.choices[0].delta.content)
                first_chunk.set()
            if chunk.usage is not None:
                return chunk.usage.completion_tokens
        return -1

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long = pool.submit(long_reply)
        assert first_chunk.wait(60)
        reply = client.chat.completions.create(model=NAME, messages=user("a short one"), max_tokens=4)
        long_chunks_by_then = len(chunks)
        assert not long.done()
        assert long.result(timeout=120) == 300  # the tiny random model never stops early
    assert reply.usage.completion_tokens == 4
    assert long_chunks_by_then < 150, f"the short reply came after {long_chunks_by_then} of the long one's 300"


def test_the_checkpoints_own_generation_config_applies_in_serve_as_in_infer(scripted_model, tmp_path):
    """The scripted model answers through a `sequence_bias` in its generation_config.json, which `generate` (so
    `vlmkit infer`) applies: the token-by-token engine must too, for greedy and sampled rows batched together
    (it sampled from the bare logits: mojibake instead of the reply)."""
    from scripted import MULTILINE_CJK_REPLY

    proc, url = start_server("--model", str(scripted_model), "--served-model-name", NAME, log=tmp_path / "server.log")
    try:
        scripted = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        settings = [{"max_tokens": 200}, {"temperature": 0.7, "seed": 5, "max_tokens": 200}]
        with concurrent.futures.ThreadPoolExecutor(len(settings)) as pool:
            replies = list(pool.map(lambda kw: ask(scripted, "描述这张图。", **kw), settings))
    finally:
        stop_server(proc)
    assert replies == [MULTILINE_CJK_REPLY, MULTILINE_CJK_REPLY]


@pytest.mark.slow
def test_a_long_prompt_is_prefilled_in_chunks_while_a_stream_keeps_decoding(small_model):
    """A long prompt (an image and about 3,000 tokens of text) arriving while a reply streams is prefilled a chunk
    at a time, the stream getting a token between two chunks; it used to be prefilled in one piece, between two
    of the stream's tokens. Measured in the stream's tokens, not in seconds. The long prompt's greedy reply is
    the one `generate` gives it (prefilled whole)."""
    import types

    from conftest import random_image

    from vlmkit.backends.transformers_backend import GenerationOptions, load
    from vlmkit.serve.engine import Engine, Job

    vlm = load(small_model)
    events: list[tuple[str, tuple]] = []  # (job, event), in the order the engine sent them
    loop = types.SimpleNamespace(call_soon_threadsafe=lambda put, event: put(event))

    def job(name: str, text: str, image=None, stream: bool = False, **options) -> Job:
        content = [{"type": "image", "image": image}] * (image is not None) + [{"type": "text", "text": text}]
        encoded = vlm.encode({"messages": [{"role": "user", "content": content}]})
        queue = types.SimpleNamespace(put_nowait=lambda event: events.append((name, event)))
        return Job(None, encoded, GenerationOptions(**options), 1, (), loop, queue, stream=stream)

    def wait_for(condition) -> None:
        deadline = time.monotonic() + 120
        while not condition():
            assert time.monotonic() < deadline, events[-5:]
            time.sleep(0.01)

    running = job("running", "a long story", stream=True, max_new_tokens=1000)
    text = " ".join(f"line {i}: 東京 and more words" for i in range(300))
    long = job("long", text, image=random_image(56, 56), stream=True, max_new_tokens=8)
    assert long.prompt_tokens > 3000
    engine = Engine(vlm, {None: None})
    engine.start()
    try:
        engine.submit(running)
        wait_for(lambda: sum(name == "running" for name, _ in events) >= 3)
        sent = len(events)
        engine.submit(long)
        wait_for(lambda: ("long", ("done",)) in [(n, e[:1]) for n, e in events])
        first = next(i for i, (name, _) in enumerate(events) if name == "long")  # its first token, streamed
        between = sum(name == "running" and event[0] == "delta" for name, event in events[sent:first])
        running.cancelled = True
        wait_for(lambda: ("running", ("done",)) in [(n, e[:1]) for n, e in events])
    finally:
        engine.stop()
    reply = "".join(event[2] for name, event in events if name == "long" and event[0] == "delta")
    assert reply == vlm.generate_encoded([long.encoded], GenerationOptions(max_new_tokens=8))[0]
    # 6 chunks of 512 tokens or more: a token of the stream between each two (it got 2 when prefilled whole)
    assert between >= 5, f"the stream got {between} tokens while the long prompt was prefilled"
