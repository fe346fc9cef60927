"""A multi-turn conversation with a loaded model: `vlm.chat()` returns a `Chat`.

    chat = vlmkit.load("Qwen/Qwen2-VL-2B-Instruct").chat(system="Answer briefly.")
    print(chat.send("What is in this picture?", images=["cat.jpg"]))
    for piece in chat.stream("And its colour?"):
        print(piece, end="", flush=True)

Each turn is encoded in full by the family template (as training encodes); the keys and values of the
turns before are reused where they match (`vlmkit.backends.chat_cache`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlmkit.backends.generation import GenerationOptions
from vlmkit.sample import Sample, to_sample

if TYPE_CHECKING:
    from vlmkit.backends.transformers_backend import VLM


@dataclass
class Chat:
    """A multi-turn conversation; a turn that fails (bad image, ...) leaves the history unchanged.

    Each turn is encoded in full (`template.encode`, as everywhere); with `reuse_cache` the model's keys and
    values of the turns before are kept, so only the new tokens and new images run (`vlmkit.backends.chat_cache`).
    `tokens_run` and `images_run` count what the last turn put through the model; `prompt` is its encoding
    (`template.encode`: token ids, pixel inputs, per-image sizes)."""

    vlm: VLM
    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    reuse_cache: bool = True
    tokens_run: int = 0
    images_run: int = 0
    prompt: dict[str, Any] | None = field(default=None, repr=False)  # the last turn's encoded prompt
    _cache: Any = field(default=None, repr=False)

    def _sample(self, text: str, images: list[Any], videos: list[Any]) -> Sample:
        row: dict[str, Any] = {
            "messages": [*self.messages, {"role": "user", "content": text}],
            "images": list(images),
            "videos": list(videos),
        }
        # Earlier turns are already in parts form; only the new turn's placeholders need media.
        new = to_sample({**row, "messages": row["messages"][-1:]}, where="chat")
        history = [*self.messages, *new.messages]
        if self.system is not None:
            history = [{"role": "system", "content": [{"type": "text", "text": self.system}]}, *history]
        return Sample(messages=history, where="chat")

    def _add_media_placeholders(self, text: str, images: list[Any], videos: list[Any]) -> str:
        missing = len(images) - text.count("<image>")
        text = "<image>" * max(missing, 0) + text
        missing = len(videos) - text.count("<video>")
        return "<video>" * max(missing, 0) + text

    def stream(
        self,
        text: str,
        images: list[Any] = (),
        videos: list[Any] = (),
        options: GenerationOptions | None = None,
        **kw,
    ) -> Iterator[str]:
        """Send a user turn and return an iterator over the reply as it is generated. Images without a
        `<image>` in the text are put before it. The turn is encoded at once (a bad image raises here, and
        `prompt` then holds the encoded turn); it joins the history when its reply is complete, so a reply
        cut short (Ctrl-C, or the iterator closed) leaves the history as it was."""
        from vlmkit.backends import chat_cache

        options = options or GenerationOptions(**kw)
        text = self._add_media_placeholders(text, list(images), list(videos))
        sample = self._sample(text, list(images), list(videos))
        encoded = self.vlm.encode(sample)
        cache, self._cache = self._cache, None  # a turn that fails half-way leaves the cache unusable
        split = chat_cache.supported(self.vlm.family)
        reuse = self.reuse_cache and split
        media = chat_cache.media_of(self.vlm.template, encoded) if reuse else None  # pixel digests: only to reuse
        if reuse and cache is not None:
            resume = chat_cache.resume_point(self.vlm.template, encoded, media, cache)
            batch = chat_cache.prefill(self.vlm, encoded, cache, resume)
        else:
            resume = chat_cache.Resume(keep=0, first_image=0, videos=True)
            batch = self.vlm._inputs([encoded])
        self.prompt = encoded
        self.tokens_run = len(encoded["input_ids"]) - resume.keep
        # images put through the vision tower (video frames are images to some families)
        images = len(self.vlm.template.split_media(encoded)[0]) if split else len(sample.media("image"))
        self.images_run = images - resume.first_image
        return self._reply(sample, batch, options, media if reuse else None)

    def _reply(self, sample: Sample, batch: dict[str, Any], options: GenerationOptions, media: Any) -> Iterator[str]:
        from vlmkit.backends import chat_cache

        result: dict[str, Any] = {}
        extra = {"return_dict_in_generate": True} if media is not None else {}
        reply = []
        # closing this iterator half-way drops the one of `_stream` with it, which stops generating
        for piece in self.vlm._stream(batch, options, result, **extra):
            reply.append(piece)
            yield piece
        if media is not None and "output" in result:
            self._cache = chat_cache.after_turn(media, result["output"])
        first = 1 if self.system is not None else 0
        self.messages = sample.messages[first:] + [
            {"role": "assistant", "content": [{"type": "text", "text": "".join(reply)}]}
        ]

    def send(self, text: str, images: list[Any] = (), videos: list[Any] = (), **kw) -> str:
        return "".join(self.stream(text, images, videos, **kw))

    def clear(self) -> None:
        self.messages = []
        self._cache = None
