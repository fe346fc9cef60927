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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmkit.backends.generation import GenerationOptions
from vlmkit.groups import from_keywords
from vlmkit.models.loader import LoadOptions
from vlmkit.sample import Sample, to_sample
from vlmkit.settings import EncodingSettings, check_encoding, encoding_settings

if TYPE_CHECKING:
    from vlmkit.backends.chat import Chat
    from vlmkit.families import Family
    from vlmkit.families.interface import Template


@dataclass
class VLM:
    """A loaded model with its tokenizer and family template."""

    model: Any
    tokenizer: Any
    template: Template
    family: Family
    path: Path
    device: str

    def encode(self, sample: Sample | dict, add_generation_prompt: bool = True) -> dict[str, Any]:
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
            from vlmkit.media.grounding import decode_reply

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
        for the generating thread to end (a thread left inside torch aborts the process at exit); a second
        Ctrl-C during that wait raises `LeaveRequested` (`_wait_for`)."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(_ReplyDecoder(self), skip_prompt=True)  # decodes as `decode` does
        errors: list[BaseException] = []
        cancel = threading.Event()
        stopping = StoppingCriteriaList([*generate_kwargs.pop("stopping_criteria", []), _Cancelled(cancel)])
        kwargs = {**self._generate_kwargs(options), **generate_kwargs, "stopping_criteria": stopping}

        done = threading.Event()  # set as the generating thread ends; waited on instead of Thread.join (`_wait_for`)

        def run() -> None:
            try:
                with torch.inference_mode():
                    output = self.model.generate(**batch, **kwargs, streamer=streamer)
                if result is not None and not cancel.is_set():
                    result["output"] = output
            except BaseException as e:  # re-raised in the caller's thread below
                errors.append(e)
                streamer.end()
            finally:
                done.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield from (piece for piece in streamer if piece)
        except BaseException:  # KeyboardInterrupt, GeneratorExit (the caller stopped reading), ...
            _wait_for(thread, done, cancel)
            raise
        _wait_for(thread, done)  # the reply is complete: the thread is ending
        if errors:
            raise errors[0]

    def chat(self, system: str | None = None, reuse_cache: bool = True) -> Chat:
        """A conversation (`vlmkit.backends.chat.Chat`); with `reuse_cache` each turn runs only what it adds through
        the model (see `vlmkit.backends.chat_cache`), otherwise the whole history every turn."""
        from vlmkit.backends.chat import Chat

        return Chat(self, system=system, reuse_cache=reuse_cache)


class _Cancelled:
    """A stopping criterion that ends generation (every sequence) once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class LeaveRequested(KeyboardInterrupt):
    """A second Ctrl-C while a reply stopped by the first was still stopping: the user asks to leave, not to
    stop the reply again (the chat leaves on it; anything else treats it as the Ctrl-C it is)."""


def _wait_for(thread: threading.Thread, done: threading.Event, cancel: threading.Event | None = None) -> None:
    """Wait until the generating `thread` has ended (`done`), first asking it to stop at its next token when
    `cancel` is given. On a busy machine the step under way can take seconds: a Ctrl-C meanwhile raises
    `LeaveRequested`, and the thread, a daemon, stops on its own or with the process. (The Event first, then
    the join of a thread past its work: Python 3.11's join, interrupted by Ctrl-C, marks a still running
    thread as stopped.)"""
    try:
        if cancel is not None:
            cancel.set()
        done.wait()
        thread.join()
    except KeyboardInterrupt:
        raise LeaveRequested from None


class _ReplyDecoder:
    """The one thing transformers' streamers need of a tokenizer, `decode`, done as `VLM.decode` does it
    (so a streamed reply keeps the family's grounding tokens, like a generated one)."""

    def __init__(self, vlm: VLM):
        self.vlm = vlm

    def decode(self, token_ids, **kwargs) -> str:
        # after a newline the streamer decodes its last token alone, as a bare int
        return self.vlm.decode([token_ids] if isinstance(token_ids, int) else list(token_ids))


def load(
    model: str | Path | None = None,
    *,
    ckpt: str | Path | None = None,
    merge_lora: bool = False,
    loading: LoadOptions | None = None,
    encoding: EncodingSettings | None = None,
    **keywords: Any,
) -> VLM:
    """Load a model folder or hub id, or a vlmkit checkpoint (`ckpt`: base model + LoRA adapter, or full
    weights; a run folder: its newest checkpoint). `loading` (`vlmkit.models.loader.LoadOptions`: dtype, device,
    attn_impl, trust_remote_code, and the placement over devices `device_map`, `max_memory`, `offload_folder`)
    and `encoding` (`vlmkit.settings.EncodingSettings`) may also be given as their fields, keyword arguments
    (`dtype="fp32"`, `min_pixels=...`, `system=...`). Encoding defaults to the settings saved with the model or
    checkpoint (vlmkit.json), then to the checkpoint's image-processor config. `trust_remote_code` lets
    transformers run Python code shipped in the model folder (untested here); the family still comes from
    config.json. `device_map` (auto, balanced, sequential, or {module: device}), with `max_memory` ("0=20GiB,
    cpu=60GiB" or {device: size}) and `offload_folder`, spreads the model over GPUs, CPU and disk
    (`vlmkit.models.placement`) instead of putting it on `device`."""
    from vlmkit.models import loader, placement

    loading, keywords = from_keywords(LoadOptions, keywords, loading)
    encoding = encoding_settings(encoding, **keywords)
    loading.check()
    files = loader.resolve_model(model, ckpt, remote_code=loading.trust_remote_code)
    loader.check_trust(files, loading.trust_remote_code)
    placed = loading.placement()
    device = loader.pick_device(loading.device)
    torch_dtype = loader.torch_dtype(loading.dtype, device)
    check_encoding(files.family, encoding)  # before the slow part
    loader.check_weights(files.model_dir)
    if files.ckpt_dir is not None and files.ckpt_dir != files.model_dir:
        loader.check_weights(files.ckpt_dir)  # the adapter's weights
    tokenizer, template = loader.load_tokenizer_and_template(files, encoding, loading.trust_remote_code)
    hf_model = loader.load_weights(
        files, dtype=torch_dtype, attn_impl=loading.attn_impl, trust_remote_code=loading.trust_remote_code,
        merge_lora=merge_lora, **placed,
    )  # fmt: skip
    if placed:  # accelerate placed the layers; its hooks move each layer's inputs
        device = placement.input_device(hf_model)
    else:
        hf_model.to(device)
    hf_model.eval()
    return VLM(
        model=hf_model, tokenizer=tokenizer, template=template, family=files.family, path=files.files_dir,
        device=device,
    )
