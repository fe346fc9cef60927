"""Qwen-VL-Chat's prompt format, for chatting with a first-generation checkpoint (remote code).

The format follows Qwen-VL's published code (Qwen/Qwen-VL-Chat on the hub, QwenLM/Qwen-VL):

- `qwen_generation_utils.make_context` (chat_format "chatml") writes
  `<|im_start|>system\\n{system}<|im_end|>`, then per earlier turn
  `\\n<|im_start|>user\\n{query}<|im_end|>\\n<|im_start|>assistant\\n{response}<|im_end|>`, then
  `\\n<|im_start|>user\\n{query}<|im_end|>\\n<|im_start|>assistant\\n` for the turn to answer; the
  system prompt defaults to "You are a helpful assistant.".
- `tokenization_qwen.QWenTokenizer.from_list_format` writes each image as
  `Picture {n}: <img>{source}</img>\\n` and texts as they are. vlmkit numbers the images over the whole
  conversation (as ms-swift's qwen-vl template does), so `Picture 2` in a later turn names the second image.

The remote tokenizer turns `<img>SOURCE</img>` into 256 image tokens that carry the source's bytes, and
the remote model opens SOURCE itself, so SOURCE must be a local path or an http(s) URL. Other sources
(PIL images, bytes, `data:` URLs) are written to PNG files in a folder the template owns. Token ids come
from the checkpoint's own tokenizer (`tokenizer(text)`); it gives no character offsets, so the template
encodes prompts only: training Qwen-VL itself is out of scope (`Family.train_refusal`).
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlmkit.errors import DataError, MediaError
from vlmkit.families.encoding import IGNORE_INDEX, collate_tokens
from vlmkit.media.grounding import needs_boxes, write_for_family
from vlmkit.media.images import load_image, read_image_size
from vlmkit.sample import Sample, as_sample, refuse_requested_sizes

if TYPE_CHECKING:
    from vlmkit.families.qwen_vl.native_template import NativeQwenVLTemplate

DEFAULT_SYSTEM = "You are a helpful assistant."


def original_image_sizes(sample: Sample) -> list[tuple[tuple[int, int], ...]]:
    """`Grounds.image_sizes` of both Qwen-VL templates: ((orig_h, orig_w), (orig_h, orig_w)) per image, as
    Qwen-VL boxes are 0-1000 of the original image, whatever size the model sees."""
    sizes = []
    for k, source in enumerate(sample.media("image")):
        size = read_image_size(source, where=f"{sample.where}: image {k + 1}")
        sizes.append((size, size))
    return sizes


def qwen_vl_messages(template: NativeQwenVLTemplate | QwenVLChatTemplate, sample: Sample) -> list[dict]:
    """`sample`'s messages as both Qwen-VL templates render them: boxes written in Qwen-VL's markup at the
    template's image sizes, and a system message first when there is none (the template's, else
    `DEFAULT_SYSTEM`, as Qwen-VL-Chat's `make_context`)."""
    if needs_boxes(sample):
        sample = write_for_family(sample, template.box_format, template.image_sizes(sample))
    messages = sample.messages
    if not messages or messages[0]["role"] != "system":
        system = template.system if template.system is not None else DEFAULT_SYSTEM
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]}, *messages]
    return messages
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# The remote tokenizer refuses a source longer than its 256-token image span (one byte per token).
MAX_SOURCE_BYTES = 256


def render_qwen_vl_chat(
    messages: list[dict], sources: list[str], add_generation_prompt: bool, where: str = "sample"
) -> str:
    """Qwen-VL-Chat's prompt text (see the module docstring); `sources[k]` is what `<img>..</img>` holds
    for the conversation's k-th image. `messages` start with a system message."""
    text = ""
    n_images = 0
    for i, message in enumerate(messages):
        role = message["role"]
        if role not in ("system", "user", "assistant"):
            raise DataError(f"{where}: Qwen-VL-Chat has no {role!r} role (system, user, assistant)")
        if role == "system" and i > 0:
            raise DataError(f"{where}: a system message may only come first")
        body = ""
        for part in message["content"]:
            if part["type"] == "text":
                body += part["text"]
            elif part["type"] == "image":
                n_images += 1
                body += f"Picture {n_images}: <img>{sources[n_images - 1]}</img>\n"
            else:
                raise DataError(
                    f"{where}: Qwen-VL-Chat takes images only; {part['type']} input is not supported"
                )
        text += ("\n" if i > 0 else "") + f"{IM_START}{role}\n{body}{IM_END}"
    if add_generation_prompt:
        text += f"\n{IM_START}assistant\n"
    return text


class QwenVLChatTemplate:
    """Encodes prompts for a Qwen-VL-Chat checkpoint; the interface of the other family templates, for
    inference only. `encode` returns input_ids and labels (T,) (labels all -100: nothing is trained)."""

    min_limit = None  # the remote model resizes every image to 448x448 itself
    max_limit = None
    limit_option = None
    video_token_id = None
    image_token_id = None  # the remote model finds its images by `<img>`; vlmkit expands nothing
    video_sampling = None  # images only
    compact_images = False

    def __init__(self, tokenizer, box_format, system: str | None = None):
        self.tokenizer = tokenizer
        self.box_format = box_format
        self.system = system
        self.stop_token_ids = [tokenizer.convert_tokens_to_ids(t) for t in (IM_END, END_OF_TEXT)]
        end_of_text = self.stop_token_ids[1]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_text
        self._files = tempfile.TemporaryDirectory(prefix="vlmkit-qwen-vl-")  # removed with the template

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, tokenizer, box_format, system: str | None = None):
        return cls(tokenizer, box_format, system=system)  # `system`: given over saved (`Family.load_template`)

    @property
    def settings(self) -> dict[str, Any]:
        return {"system": self.system}

    def image_source(self, source: Any, where: str) -> str:
        """What `<img>..</img>` holds for `source`: an http(s) URL or local path as it is (an existing
        path made absolute), anything else written to a PNG file of this template's folder."""
        if isinstance(source, str) and source.startswith(("http://", "https://")):
            if len(source.encode()) <= MAX_SOURCE_BYTES and "</img>" not in source:
                return source
        elif isinstance(source, (str, Path)) and not str(source).startswith("data:"):
            path = Path(source).expanduser()
            if not path.is_file():
                raise MediaError(f"{where}: no such image file {str(source)!r}")
            absolute = str(path.resolve())
            if len(absolute.encode()) <= MAX_SOURCE_BYTES and "</img>" not in absolute:
                return absolute
        image = load_image(source, where=where)  # PIL, bytes, data: URL, or a source too long to name
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        path = Path(self._files.name) / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        if not path.exists():
            try:
                path.write_bytes(data)
            except OSError as e:
                raise MediaError(f"{where}: could not write the image to {path} ({e})") from None
        return str(path)

    def _messages(self, sample: Sample) -> list[dict]:
        return qwen_vl_messages(self, sample)

    def render_text(self, sample: Sample, add_generation_prompt: bool = False) -> str:
        """The prompt text exactly as Qwen-VL-Chat's `make_context` writes it."""
        sample = as_sample(sample)
        refuse_requested_sizes(sample, "Qwen-VL")
        sources = [
            self.image_source(s, where=f"{sample.where}: image {k + 1}")
            for k, s in enumerate(sample.media("image"))
        ]
        return render_qwen_vl_chat(self._messages(sample), sources, add_generation_prompt, sample.where)

    def encode(
        self, sample: Sample, add_generation_prompt: bool = False, limit: int | None = None
    ) -> dict[str, Any]:
        """Sample -> {input_ids, labels} (T,) for a prompt; a sample to train on is refused."""
        sample = as_sample(sample)
        if limit is not None:
            raise DataError(f"{sample.where}: a resolution limit does not apply to Qwen-VL (images are 448x448)")
        if not add_generation_prompt:
            raise DataError(
                f"{sample.where}: Qwen-VL (first generation) is inference only in vlmkit; "
                "train Qwen2-VL or Qwen2.5-VL on the same data instead"
            )
        ids = list(self.tokenizer(self.render_text(sample, add_generation_prompt))["input_ids"])
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.full((len(ids),), IGNORE_INDEX, dtype=torch.long),
        }

    def count_tokens(
        self, sample: Sample, limit: int | None = None, add_generation_prompt: bool = True
    ) -> int:
        sample = as_sample(sample)
        return len(self.encode(sample, add_generation_prompt, limit)["input_ids"])

    def fit_limit(self, sample: Sample, max_length: int, add_generation_prompt: bool = False) -> None:
        return None  # the image size is fixed by the model

    def image_sizes(self, sample: Sample, limit: int | None = None) -> list[tuple[tuple[int, int], ...]]:
        return original_image_sizes(sample)

    def describe_image(self, encoded: dict[str, Any], k: int) -> str:
        """Nothing to say: the remote model resizes and expands its images itself."""
        return f"image {k + 1}"

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad a list of `encode` outputs into one batch (left padding for generation)."""
        return collate_tokens(encoded, self.pad_token_id, padding_side)
