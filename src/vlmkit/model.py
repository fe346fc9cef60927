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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.families import Family, family_for_model_dir, resolution_settings
from vlmkit.sample import Sample, to_sample

DTYPES = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
ATTN_IMPLS = ("sdpa", "eager", "flash_attention_2")


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


def _resolve_model_dir(model: str | Path) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    # a hub id is exactly `org/name`; anything else, or a path whose first folder exists here, is a path
    looks_like_path = (
        path.exists()
        or str(model).startswith(("./", "../", "/", "~", "."))
        or str(model).count("/") != 1
        or Path(str(model).split("/")[0]).expanduser().is_dir()
    )
    if looks_like_path:
        raise VlmkitError(
            f"no such folder: {model} (--model takes a model folder or a hub id like Qwen/Qwen2-VL-2B-Instruct)"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(
            # *.py and *.tiktoken: a remote-code checkpoint's own code and vocabulary (Qwen-VL); they only
            # run with --trust-remote-code
            snapshot_download(
                str(model), allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.py", "*.tiktoken"]
            )
        )
    except Exception as e:  # hub errors come in many types; the message is what matters
        message = " ".join(str(e).split())  # hub errors span lines
        raise VlmkitError(
            f"--model {model}: no such local folder, and no download from the hub ({type(e).__name__}: {message})"
        ) from None


def check_weights(model_dir: Path) -> None:
    """Refuse, with one line, a model folder without weights or with a safetensors file cut short (an
    interrupted download or copy): transformers would fail deep inside with a traceback."""
    import json
    import struct

    files = sorted(model_dir.glob("*.safetensors"))
    if not files and not any(model_dir.glob("*.bin")):
        raise VlmkitError(
            f"{model_dir}: no model weights (*.safetensors or *.bin); the folder is incomplete: "
            "download or copy the model again"
        )
    for file in files:
        size = file.stat().st_size
        try:
            with file.open("rb") as f:
                (header_size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_size)) if 8 + header_size <= size else None
        except (struct.error, ValueError):
            header = None
        ends = [t["data_offsets"][1] for k, t in (header or {}).items() if k != "__metadata__"]
        expected = 8 + header_size + max(ends, default=0) if header is not None else None
        if expected != size:
            raise VlmkitError(
                f"{file}: truncated or corrupt safetensors file ({size:,} bytes"
                + (f", its header says {expected:,})" if expected else ")")
                + "; download or copy it again"
            )


def _torch_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise VlmkitError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def _device(device: str) -> str:
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise VlmkitError(f"--device {device}: choose one of {', '.join(DEVICES)} (or cuda:N)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VlmkitError(
            f"--device {device}: no CUDA GPU is visible to torch on this machine; use --device cpu"
        )
    return device


def _check_attn(attn_impl: str) -> None:
    if attn_impl not in ATTN_IMPLS:
        raise VlmkitError(f"--attn-impl {attn_impl}: choose one of {', '.join(ATTN_IMPLS)}")
    if attn_impl == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise VlmkitError(
                "--attn-impl flash_attention_2 needs the flash-attn package (pip install vlmkit[flash]) "
                "and a CUDA GPU; use --attn-impl sdpa"
            )


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


def _load_weights(
    model_dir: Path, ckpt: Path | None, merge_lora: bool, auto_class: str = "AutoModelForImageTextToText", **kwargs
):
    """The transformers model of `model_dir` (loaded by the family's `auto_class`), with the LoRA adapter of
    `ckpt` applied (and merged)."""
    import transformers

    hf_model = getattr(transformers, auto_class).from_pretrained(model_dir, **kwargs)
    if ckpt is not None and (ckpt / "adapter_config.json").is_file():
        from peft import PeftModel

        with peft_quietly():
            hf_model = PeftModel.from_pretrained(hf_model, ckpt)
        if merge_lora:
            hf_model = hf_model.merge_and_unload()
    return hf_model


@contextmanager
def peft_quietly() -> Iterator[None]:
    """Around a peft wrap or adapter load: peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`
    every time, and its FutureWarning is about peft's code, not the user's model or checkpoint."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def resolve_checkpoint(ckpt: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    """A vlmkit checkpoint -> (folder with the base weights, the checkpoint, its saved settings).

    An adapter checkpoint names its base model in vlmkit.json; a full checkpoint is its own base.
    """
    from vlmkit.settings import read_settings
    from vlmkit.train.run import check_checkpoint

    ckpt = check_checkpoint(ckpt)
    settings = read_settings(ckpt)
    if not (ckpt / "adapter_config.json").is_file():
        return ckpt, ckpt, settings
    base = settings.get("base_model")
    if not base:
        import json

        base = json.loads((ckpt / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise VlmkitError(f"--ckpt {ckpt}: the adapter does not name its base model; pass --model BASE")
    return _resolve_model_dir(base), ckpt, settings


def load(
    model: str | Path | None = None,
    *,
    ckpt: str | Path | None = None,
    merge_lora: bool = False,
    dtype: str = "auto",
    device: str = "auto",
    attn_impl: str = "sdpa",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    min_tiles: int | None = None,
    max_tiles: int | None = None,
    system: str | None = None,
    fps: float | None = None,
    nframes: int | None = None,
    max_frames: int | None = None,
    video_max_pixels: int | None = None,
    trust_remote_code: bool = False,
) -> VLM:
    """Load a model folder or hub id, or a vlmkit checkpoint (`ckpt`: base model + LoRA adapter, or full
    weights). Pixel limits and system prompt default to the ones saved with the model or checkpoint
    (vlmkit.json), then to the checkpoint's image-processor config. `trust_remote_code` lets transformers
    run Python code shipped in the model folder (untested here); the family still comes from config.json."""
    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    if (model is None) == (ckpt is None):
        raise VlmkitError("give either --model or --ckpt")
    if ckpt is not None:
        model_dir, ckpt_dir, _ = resolve_checkpoint(ckpt)
        files_dir = ckpt_dir  # tokenizer, image-processor config and settings saved with the checkpoint
    else:
        model_dir = files_dir = _resolve_model_dir(model)
        ckpt_dir = None
    family = family_for_model_dir(model_dir)
    if family.remote_code and not trust_remote_code:
        raise VlmkitError(
            f"{model_dir}: {family.name} checkpoints run Python code shipped with the model; "
            "pass --trust-remote-code (trust_remote_code=True) if you trust its source (untested in vlmkit)"
        )
    device = _device(device)
    torch_dtype = _torch_dtype(dtype, device)
    _check_attn(attn_impl)
    settings = dict(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        system=system,
        fps=fps,
        nframes=nframes,
        max_frames=max_frames,
        video_max_pixels=video_max_pixels,
        **resolution_settings(family, min_tiles=min_tiles, max_tiles=max_tiles),
    )
    check_weights(model_dir)
    if ckpt_dir is not None and ckpt_dir != model_dir:
        check_weights(ckpt_dir)  # the adapter's weights
    tokenizer = AutoTokenizer.from_pretrained(files_dir, trust_remote_code=trust_remote_code)
    try:
        template = family.load_template(files_dir, tokenizer, **settings)
    except FileNotFoundError as e:
        raise VlmkitError(
            f"{files_dir}: {Path(e.filename or '?').name} not found; the model folder is incomplete: copy that "
            "file from the original checkpoint"
        ) from None
    # Remote code may not declare sdpa support, and transformers refuses an explicit request it cannot
    # honour; left unset, transformers takes sdpa where the code supports it and eager otherwise.
    attn = {} if family.remote_code and attn_impl == "sdpa" else {"attn_implementation": attn_impl}
    hf_model = _load_weights(
        model_dir,
        ckpt_dir,
        merge_lora,
        auto_class=family.auto_class,
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
        **attn,
    )
    hf_model.to(device).eval()
    return VLM(
        model=hf_model, tokenizer=tokenizer, template=template, family=family, path=files_dir, device=device
    )
