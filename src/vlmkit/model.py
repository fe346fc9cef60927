"""Load a checkpoint once; generate for batches, stream, and chat with history.

    import vlmkit
    vlm = vlmkit.load("Qwen/Qwen2-VL-2B-Instruct")          # or a local folder
    chat = vlm.chat(system="Answer briefly.")
    print(chat.send("What is in this picture?", images=["cat.jpg"]))
    for piece in chat.stream("And its colour?"):
        print(piece, end="", flush=True)
    replies = vlm.generate([sample_a, sample_b], max_new_tokens=64)

Every path goes through the family template (`template.encode`), the same code that
training uses, with the resolution settings saved alongside the checkpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.families import Family
from vlmkit.sample import Sample, to_sample
from vlmkit.settings import EncodingSettings, check_encoding, encoding_settings


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings; temperature 0 means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def kwargs(self) -> dict[str, Any]:
        if self.max_new_tokens < 1:
            raise VlmkitError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise VlmkitError(
                "generation options out of range: need temperature >= 0, 0 < top-p <= 1, top-k >= 0, "
                "repetition-penalty > 0"
            )
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class VLM:
    """A loaded model with its tokenizer and family template."""

    model: Any
    tokenizer: Any
    template: Any
    family: Family
    path: Path
    device: str

    def encode(self, sample: Sample, add_generation_prompt: bool = True) -> dict[str, Any]:
        return self.template.encode(sample, add_generation_prompt=add_generation_prompt)

    def _inputs(self, encoded: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.template.collate(encoded, padding_side="left")
        batch.pop("labels")
        return self.on_device(batch)

    def on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Tensors moved to the model's device, floating-point ones in its dtype."""
        dtype = self.model.dtype
        return {
            k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in batch.items()
        }

    def _generate_kwargs(self, options: GenerationOptions) -> dict[str, Any]:
        import torch

        if options.seed is not None:
            torch.manual_seed(options.seed)
        return {
            **options.kwargs(),
            "eos_token_id": self.template.stop_token_ids,
            "pad_token_id": self.template.pad_token_id,
        }

    def generate_encoded(
        self, encoded: list[dict[str, Any]], options: GenerationOptions, **generate_kwargs: Any
    ) -> list[str]:
        """Replies for already-encoded prompts (left-padded into one batch). `generate_kwargs` go to
        transformers' `generate` as they are (e.g. `stopping_criteria`, as `vlmkit serve` uses)."""
        import torch

        batch = self._inputs(encoded)
        with torch.inference_mode():
            output = self.model.generate(**batch, **self._generate_kwargs(options), **generate_kwargs)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return [self.decode(row.tolist()) for row in new_tokens]

    def decode(self, token_ids: list[int]) -> str:
        """A reply's text from its generated ids (special tokens dropped, the family's grounding tokens kept).
        Ids from the first stop token on are dropped too: a tokenizer need not mark its stop tokens special."""
        stops = set(self.template.stop_token_ids)
        token_ids = next((token_ids[:i] for i, t in enumerate(token_ids) if t in stops), token_ids)
        box_format = self.family.box_format
        if box_format is not None and box_format.keep_tokens:  # grounding tokens stay in the reply
            from vlmkit.grounding import decode_reply

            return decode_reply(self.tokenizer, token_ids, box_format.keep_tokens)
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def generate(
        self, samples: list[Sample | dict], options: GenerationOptions | None = None, **kw
    ) -> list[str]:
        """One reply per sample (dicts are read as `messages` rows), generated as one batch."""
        options = options or GenerationOptions(**kw)
        samples = [
            s if isinstance(s, Sample) else to_sample(s, where=f"sample {i}") for i, s in enumerate(samples)
        ]
        return self.generate_encoded([self.encode(s) for s in samples], options)

    def stream(self, sample: Sample | dict, options: GenerationOptions | None = None, **kw) -> Iterator[str]:
        """Yield the reply to one sample piece by piece as it is generated."""
        options = options or GenerationOptions(**kw)
        sample = sample if isinstance(sample, Sample) else to_sample(sample)
        yield from self._stream(self._inputs([self.encode(sample)]), options)

    def _stream(
        self, batch: dict[str, Any], options: GenerationOptions, result: dict | None = None, **generate_kwargs
    ) -> Iterator[str]:
        """Yield the reply to the `generate` inputs `batch` piece by piece; `generate`'s return value is put
        in `result["output"]` once the reply is complete. Closing the iterator, or an exception such as
        KeyboardInterrupt (Ctrl-C) while it waits for a piece, stops generation at the next token and waits
        for the generating thread to end (a thread left inside torch aborts the process at exit)."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(_ReplyDecoder(self), skip_prompt=True)  # decodes as `decode` does
        errors: list[BaseException] = []
        cancel = threading.Event()
        stopping = StoppingCriteriaList([*generate_kwargs.pop("stopping_criteria", []), _Cancelled(cancel)])
        kwargs = {**self._generate_kwargs(options), **generate_kwargs, "stopping_criteria": stopping}

        def run() -> None:
            try:
                with torch.inference_mode():
                    output = self.model.generate(**batch, **kwargs, streamer=streamer)
                if result is not None and not cancel.is_set():
                    result["output"] = output
            except BaseException as e:  # re-raised in the caller's thread below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield from (piece for piece in streamer if piece)
        except BaseException:  # KeyboardInterrupt, GeneratorExit (the caller stopped reading), ...
            cancel.set()
            _join(thread)
            raise
        _join(thread)
        if errors:
            raise errors[0]

    def chat(self, system: str | None = None, reuse_cache: bool = True) -> Chat:
        """A conversation; with `reuse_cache` each turn runs only what it adds through the model (see
        `vlmkit.chat_cache`), otherwise the whole history every turn."""
        return Chat(self, system=system, reuse_cache=reuse_cache)


class _Cancelled:
    """A stopping criterion that ends generation (every sequence) once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _join(thread: threading.Thread) -> None:
    """Wait for `thread`; a Ctrl-C meanwhile does not cut the wait short (the thread is about to stop)."""
    while thread.is_alive():
        try:
            thread.join()
        except KeyboardInterrupt:
            pass


class _ReplyDecoder:
    """The one thing transformers' streamers need of a tokenizer, `decode`, done as `VLM.decode` does it
    (so a streamed reply keeps the family's grounding tokens, like a generated one)."""

    def __init__(self, vlm: VLM):
        self.vlm = vlm

    def decode(self, token_ids, **kwargs) -> str:
        # after a newline the streamer decodes its last token alone, as a bare int
        return self.vlm.decode([token_ids] if isinstance(token_ids, int) else list(token_ids))


@dataclass
class Chat:
    """A multi-turn conversation; a turn that fails (bad image, ...) leaves the history unchanged.

    Each turn is encoded in full (`template.encode`, as everywhere); with `reuse_cache` the model's keys and
    values of the turns before are kept, so only the new tokens and new images run (`vlmkit.chat_cache`).
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
        from vlmkit import chat_cache

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
        from vlmkit import chat_cache

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


def load(
    model: str | Path | None = None,
    *,
    ckpt: str | Path | None = None,
    merge_lora: bool = False,
    dtype: str = "auto",
    device: str = "auto",
    attn_impl: str = "sdpa",
    encoding: EncodingSettings | None = None,
    trust_remote_code: bool = False,
    **encoding_options: Any,
) -> VLM:
    """Load a model folder or hub id, or a vlmkit checkpoint (`ckpt`: base model + LoRA adapter, or full
    weights; a run folder: its newest checkpoint). `encoding` (`vlmkit.settings.EncodingSettings`, or its
    fields as keyword arguments: `min_pixels=...`, `system=...`) defaults to the settings saved with the model
    or checkpoint (vlmkit.json), then to the checkpoint's image-processor config. `trust_remote_code` lets
    transformers run Python code shipped in the model folder (untested here); the family still comes from
    config.json."""
    from vlmkit import loader

    encoding = encoding_settings(encoding, **encoding_options)
    files = loader.resolve_model(model, ckpt)
    loader.check_trust(files, trust_remote_code)
    device = loader.pick_device(device)
    torch_dtype = loader.torch_dtype(dtype, device)
    loader.check_attn(attn_impl)
    check_encoding(files.family, encoding)  # before the slow part
    loader.check_weights(files.model_dir)
    if files.ckpt_dir is not None and files.ckpt_dir != files.model_dir:
        loader.check_weights(files.ckpt_dir)  # the adapter's weights
    tokenizer, template = loader.load_tokenizer_and_template(files, encoding, trust_remote_code)
    hf_model = loader.load_weights(
        files, dtype=torch_dtype, attn_impl=attn_impl, trust_remote_code=trust_remote_code, merge_lora=merge_lora
    )
    hf_model.to(device).eval()
    return VLM(
        model=hf_model, tokenizer=tokenizer, template=template, family=files.family, path=files.files_dir,
        device=device,
    )
