"""From a chat-completion request body to an encoded prompt, under the server's limits (`vlmkit serve`).

`parse` turns the body into a `ChatRequest` (strict UTF-8 JSON; every malformed body is a 400);
`prepare` checks the sampling options and the budgets, fetches the media under the server's
`MediaPolicy` and encodes the prompt with the served model's template. Every refusal is an
`APIError` whose one-line message names the field or the limit and its flag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlmkit.backends.transformers_backend import GenerationOptions
from vlmkit.data.readers import has_lone_surrogate
from vlmkit.errors import DataError, MediaTooLargeError, PrivateUrlError, VlmkitError
from vlmkit.media.images import MediaPolicy, fetch_media, read_image_size
from vlmkit.sample import ROLES, Sample, to_content_part

if TYPE_CHECKING:
    from vlmkit.families.interface import Template

_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts


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
    # not OpenAI's: vLLM's extra sampling fields (`extra_body` in the openai client); top_k -1 or 0 = no limit
    top_k: int = Field(0, ge=-1)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=_SEED_RANGE[0], le=_SEED_RANGE[1])


@dataclass
class ServerConfig:
    """The server's key and per-request limits (each has a `vlmkit serve` flag, named in its refusals)."""

    api_key: str | None = None
    max_request_bytes: int = 16 * 2**20
    max_tokens: int = 512  # default when a request gives none
    max_tokens_limit: int = 4096
    max_n: int = 8
    max_total_tokens: int = 8192  # n x max_tokens
    max_prompt_tokens: int = 32768
    max_prompt_chars: int = 8 * 32768  # text characters, checked before tokenizing
    max_video_frames: int = 128
    media_workers: int = 8  # requests fetching media at once; text-only requests never wait for them
    policy: MediaPolicy = field(
        default_factory=lambda: MediaPolicy(allow_private_urls=False, allow_local_files=False)
    )
    loopback_only: bool = (
        False  # keyless on a loopback address: refuse other Host names and browsers' requests
    )


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def parse(body: bytes) -> ChatRequest:
    """The request body as a ChatRequest; APIError 400 for anything but a JSON object in UTF-8."""
    if body.startswith(b"\xef\xbb\xbf"):
        raise APIError(400, "request body starts with a byte-order mark; send JSON in UTF-8 without one")
    try:
        text = body.decode("utf-8")  # strict: UTF-16/32 bodies are refused, never guessed into mojibake
    except UnicodeDecodeError as e:
        raise APIError(
            400, f"request body is not UTF-8 ({e.reason} at byte {e.start}); send JSON in UTF-8"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"request body is not valid JSON ({e})") from None
    except RecursionError:
        raise APIError(400, "request body is not valid JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise APIError(400, f"request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    if "\\u" in text and has_lone_surrogate(data):  # only a \u escape can make one
        raise APIError(400, "request body has an unpaired UTF-16 surrogate (\\ud800-\\udfff) in a string")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise APIError(400, f"{param}: {first['msg']}", param=param) from None


def fetches_urls(chat: ChatRequest) -> bool:
    """Whether a media part names an http(s) URL: such a request waits on another server, so it is prepared
    in its own workers, and neither text-only requests nor inline (data:) media queue behind it."""
    return any(isinstance(m.content, list) and any(_names_url(p) for p in m.content) for m in chat.messages)


def _names_url(value: Any) -> bool:
    if isinstance(value, str):
        return value[:8].lower().startswith(("http://", "https://"))
    if isinstance(value, dict):  # {"type": "image_url", "image_url": {"url": ...}}; a text part's text is text
        return any(_names_url(v) for k, v in value.items() if k != "text")
    if isinstance(value, list):  # a video given as a list of frames
        return any(_names_url(v) for v in value)
    return False


def prepare(
    chat: ChatRequest, template: Template, config: ServerConfig
) -> tuple[dict[str, Any], GenerationOptions, tuple[str, ...]]:
    """Check the sampling options and budgets, read the media under the server's policy and encode the
    prompt with `template`. Runs in a worker thread (media fetching blocks)."""
    if chat.n > config.max_n:
        raise APIError(400, f"n: {chat.n} is over this server's limit of {config.max_n}", param="n")
    max_tokens = chat.max_completion_tokens or chat.max_tokens or config.max_tokens
    if max_tokens > config.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens: {max_tokens} is over this server's limit of {config.max_tokens_limit}",
            param="max_tokens",
        )
    if chat.n * max_tokens > config.max_total_tokens:
        raise APIError(
            400,
            f"n x max_tokens: {chat.n} x {max_tokens} = {chat.n * max_tokens} is over this server's limit of "
            f"{config.max_total_tokens} tokens per request (--max-total-tokens); ask for fewer",
            param="max_tokens",
        )
    stop = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop or [])
    if len(stop) > 4 or not all(stop):
        raise APIError(400, "stop: give up to 4 non-empty strings", param="stop")
    _check_text_size(chat, config)
    if chat.messages[-1].role == "assistant":
        raise APIError(
            400, "messages: the last message is from the assistant; end with a user turn", param="messages"
        )
    try:
        sample = fetch_sample_media(request_sample(chat.messages), template, config)
        prompt = template.count_tokens(
            sample, add_generation_prompt=True
        )  # from headers: refuse before decoding
        _check_prompt(prompt, config)
        encoded = template.encode(sample, add_generation_prompt=True)
    except MediaTooLargeError as e:
        raise APIError(413, str(e), param="messages") from None
    except VlmkitError as e:  # DataError, MediaError: the request's fault
        raise APIError(400, str(e), param="messages") from None
    _check_prompt(len(encoded["input_ids"]), config)
    options = GenerationOptions(
        max_new_tokens=max_tokens, temperature=chat.temperature, top_p=chat.top_p, top_k=max(chat.top_k, 0),
        repetition_penalty=chat.repetition_penalty, seed=chat.seed,
    )  # fmt: skip
    return encoded, options, tuple(stop)


def _check_text_size(chat: ChatRequest, config: ServerConfig) -> None:
    """Refuse a prompt that cannot fit before tokenizing it (a few MB of text cost seconds of CPU each): every
    message takes at least one token, and the text at most --max-prompt-chars characters."""
    if len(chat.messages) > config.max_prompt_tokens:
        raise APIError(
            400,
            f"messages: {len(chat.messages)} messages cannot fit this server's limit of {config.max_prompt_tokens} "
            "tokens per request (--max-prompt-tokens); send fewer",
            param="messages",
            code="context_length_exceeded",
        )
    chars = sum(_text_chars(m.content) for m in chat.messages)
    if chars > config.max_prompt_chars:
        raise APIError(
            400,
            f"messages: the text is {chars} characters, over this server's limit of {config.max_prompt_chars} "
            "characters per request (--max-prompt-chars); send less text",
            param="messages",
            code="context_length_exceeded",
        )


def _text_chars(content: Any) -> int:
    """Characters of text in a message's content (a string, or parts whose text is counted)."""
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return 0
    return sum(
        len(part) if isinstance(part, str)
        else len(part["text"]) if isinstance(part, dict) and isinstance(part.get("text"), str) else 0
        for part in content
    )  # fmt: skip


def _check_prompt(tokens: int, config: ServerConfig) -> None:
    if tokens > config.max_prompt_tokens:
        raise APIError(
            400,
            f"messages: the prompt is {tokens} tokens, over this server's limit of {config.max_prompt_tokens} "
            "tokens per request (--max-prompt-tokens); send less text or smaller media",
            param="messages",
            code="context_length_exceeded",
        )


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
        parts = [to_content_part(part, f"request: message {i}", j) for j, part in enumerate(raw)]
        out.append({"role": message.role, "content": [p for p in parts if p["type"] != "text" or p["text"]]})
    if not any(m["role"] != "system" for m in out):
        raise DataError("request: the conversation has no user or assistant message")
    return Sample(messages=out, where="request")


def fetch_sample_media(sample: Sample, template: Template, config: ServerConfig) -> Sample:
    """The sample with every image and video fetched under the server's policy (bytes, or a checked local
    path) and checked against the pixel and frame limits from its header, before anything is decoded:
    the template then never reads a client-given path or URL itself."""
    policy = config.policy
    messages, counts = [], {"image": 0, "video": 0}
    for message in sample.messages:
        parts = []
        for part in message["content"]:
            kind = part["type"]
            if kind in counts:
                counts[kind] += 1
                where = f"{sample.where}: {kind} {counts[kind]}"
                data = _fetch(part[kind], where, policy)
                if kind == "image":
                    _check_image(data, where, policy)
                else:
                    _check_video(data, where, template, config)
                part = {"type": kind, kind: data}
            parts.append(part)
        messages.append({**message, "content": parts})
    return Sample(messages=messages, objects=sample.objects, where=sample.where)


def _fetch(source: Any, where: str, policy: MediaPolicy) -> Any:
    try:
        return fetch_media(source, where, policy)
    except PrivateUrlError as e:  # the operator may mean it: name the flag that allows it
        raise PrivateUrlError(f"{e}; a server started with --allow-private-urls fetches such URLs") from None


def _check_image(data: Any, where: str, policy: MediaPolicy) -> None:
    """The image's size from its header, within --max-image-pixels."""
    try:
        height, width = read_image_size(data, where, replace(policy, max_image_pixels=2**62))  # checked below
    except MediaTooLargeError:  # Pillow's own decompression-bomb check (set above ours at start), before the size
        raise MediaTooLargeError(
            f"{where}: image is over this server's limit of {policy.max_image_pixels} pixels (--max-image-pixels)"
        ) from None
    _check_pixels(height, width, where, "image", policy)


def _check_pixels(height: int, width: int, where: str, what: str, policy: MediaPolicy) -> None:
    if height * width > policy.max_image_pixels:
        raise MediaTooLargeError(
            f"{where}: {what} is {width} x {height}, over this server's limit of {policy.max_image_pixels} "
            "pixels (--max-image-pixels)"
        )


def _check_video(data: Any, where: str, template: Template, config: ServerConfig) -> None:
    """Frame size and sampled frame count from the container header, as the template samples it (a
    template without video refuses the request when it encodes it)."""
    from vlmkit.media.video import probe_video

    if template.video_sampling is None:
        return
    probe = probe_video(data, where, template.video_sampling)
    _check_pixels(probe.height, probe.width, where, "each video frame", config.policy)
    if len(probe.timestamps) > config.max_video_frames:
        raise MediaTooLargeError(
            f"{where}: the video gives {len(probe.timestamps)} sampled frames, over this server's limit of "
            f"{config.max_video_frames} frames per video (--max-video-frames); send a shorter video"
        )
