"""The Gemma 4 prompt format and the template that encodes samples for it.

Rendering follows the checkpoints' chat template (`chat_template.jinja`) as `apply_chat_template` renders it by
default (thinking off, no tools): `<bos>`, a system turn `<|turn>system\\nSYSTEM<turn|>\\n` when there is a system
prompt (trimmed), turns `<|turn>user\\n ... <turn|>\\n` and `<|turn>model\\n ... <turn|>\\n`, each text part
trimmed (a reply also loses any `<|channel>...<channel|>` thought), an image written `\\n\\n<|image|>\\n\\n`; the
generation prompt is `<|turn>model\\n<|channel>thought\\n<channel|>` (an empty thought: no reasoning). Like
`Gemma4Processor`, each `<|image|>` is then replaced in the text by `<|image>` + one `<|image|>` per soft token +
`<image|>`, and the whole text is tokenized at once.

Training: the template writes a past reply without the empty thought that the generation prompt ends with; the
last reply of a training row is written after the generation prompt, as the model produces it at inference,
so a row that ends with a reply is its prompt followed by the reply and `<turn|>` (supervised). Earlier replies
are written as the template writes them (also supervised).

Images are resized and patchified by transformers' `Gemma4ImageProcessorPil` of the checkpoint (its aspect-ratio
preserving resize to at most `max_soft_tokens` x 3 x 3 patches of 16 px), so the pixels are the processor's by
construction; a number of soft tokens per image follows from the image's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlmkit.errors import DataError, VlmkitError
from vlmkit.families.encoding import Segment, collate_tokens, mark_text, tokenize_segments
from vlmkit.media.grounding import BOX_PLACEHOLDER, REF_PLACEHOLDER
from vlmkit.media.images import load_image
from vlmkit.sample import Sample, as_sample, refuse_requested_sizes

TURN, END_OF_TURN = "<|turn>", "<turn|>"
BOI, EOI, SOFT = "<|image>", "<image|>", "<|image|>"
EMPTY_THOUGHT = "<|channel>thought\n<channel|>"
ROLE_NAMES = {"user": "user", "assistant": "model"}


def strip_thinking(text: str) -> str:
    """The template's `strip_thinking`: a reply without its `<|channel>...<channel|>` thoughts, trimmed."""
    return "".join(part.split("<|channel>")[0] for part in text.split("<channel|>")).strip()


def trimmed(messages: list[dict]) -> list[dict]:
    """`messages` with each text part as the template writes it: trimmed, a reply's thoughts removed. Done
    before `mark_text`."""

    def text(role: str, part: dict) -> dict:
        if part["type"] != "text":
            return part
        return {**part, "text": strip_thinking(part["text"]) if role == "assistant" else part["text"].strip()}

    return [{**m, "content": [text(m["role"], p) for p in m["content"]]} for m in messages]


def render_gemma4(
    messages: list[dict], add_generation_prompt: bool, bos: str, image_texts: list[str], where: str = "sample"
) -> list[Segment]:
    """Segments of the Gemma 4 chat template's text (of `trimmed` messages) with the k-th image written
    `image_texts[k]`; each reply and its `<turn|>` supervised, the last one after the generation prompt (see the
    module docstring). Raises DataError for what vlmkit does not write (tools, media in a reply or system)."""
    segments = [Segment(bos)]
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
        if any(p["type"] != "text" for p in system):
            raise DataError(f"{where}: a Gemma 4 system prompt must be text only")
        segments.append(Segment(f"{TURN}system\n" + "".join(p["text"] for p in system) + f"{END_OF_TURN}\n"))
    # a row that ends with a reply trains it as generated: after the generation prompt's empty thought
    last_reply = len(messages) - 1 if messages and messages[-1]["role"] == "assistant" else -1
    images = iter(image_texts)
    for k, message in enumerate(messages):
        role = message["role"]
        if role not in ROLE_NAMES:
            raise DataError(f"{where}: Gemma 4 in vlmkit takes user and assistant messages (after an optional system prompt); message {k + 1} is {role!r}")
        if role == "assistant":
            if any(p["type"] != "text" for p in message["content"]):
                raise DataError(f"{where}: a Gemma 4 assistant message must be text only")
            head = f"{TURN}model\n" + (EMPTY_THOUGHT if k == last_reply else "")
            reply = "".join(p["text"] for p in message["content"])
            segments += [Segment(head), Segment(reply + END_OF_TURN, supervised=True), Segment("\n")]
            continue
        segments.append(Segment(f"{TURN}user\n"))
        for part in message["content"]:
            segments.append(Segment(next(images) if part["type"] == "image" else part["text"]))
        segments.append(Segment(END_OF_TURN + "\n"))
    if add_generation_prompt:
        segments.append(Segment(f"{TURN}model\n{EMPTY_THOUGHT}"))
    return segments


class Gemma4Template:
    """Encodes `Sample`s for a Gemma 4 checkpoint (see the module docstring).

    `encode` returns input_ids, labels and mm_token_type_ids (T,) (1 on soft image tokens), and with images
    pixel_values (n_images, patches, 3 x 16 x 16) and image_position_ids (n_images, patches, 2) as
    `Gemma4ImageProcessorPil` gives them (padded to its most patches), image_sizes and image_notes.
    """

    min_limit = None  # the image processor's max_soft_tokens sets the size: no per-run limit in vlmkit
    max_limit = None
    limit_option = None
    video_token_id = None  # images only
    video_sampling = None
    box_format = None  # no box format of its own
    compact_images = False

    def __init__(self, tokenizer, image_processor, system: str | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.system = system
        vocab = tokenizer.get_vocab()
        missing = [t for t in (TURN, END_OF_TURN, BOI, EOI, SOFT) if t not in vocab]
        if missing:
            raise VlmkitError(f"the tokenizer has no {', '.join(missing)} token; is this a Gemma 4 checkpoint?")
        self.image_token_id = vocab[SOFT]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # the instruction-tuned checkpoints stop on <turn|> and <eos>
        self.stop_token_ids = list(dict.fromkeys([vocab[END_OF_TURN], tokenizer.eos_token_id]))

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, tokenizer, system: str | None = None) -> Gemma4Template:
        """The checkpoint's own image processor (its PIL backend: no torchvision needed)."""
        from transformers import Gemma4ImageProcessorPil

        return cls(tokenizer, Gemma4ImageProcessorPil.from_pretrained(model_dir), system=system)

    @property
    def settings(self) -> dict[str, Any]:
        return {"system": self.system}

    def _messages(self, sample: Sample) -> list[dict]:
        messages = sample.messages
        if self.system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": [{"type": "text", "text": self.system}]}, *messages]
        return messages

    @staticmethod
    def image_text(soft_tokens: int) -> str:
        """What the template and `Gemma4Processor` write for an image of `soft_tokens` soft tokens."""
        return f"\n\n{BOI}{SOFT * soft_tokens}{EOI}\n\n"

    def render_text(self, sample: Sample, add_generation_prompt: bool = False) -> str:
        """The prompt text with one `<|image|>` per image, as the chat template writes it."""
        sample = as_sample(sample)
        images = [f"\n\n{SOFT}\n\n"] * len(sample.media("image"))
        segments = render_gemma4(trimmed(self._messages(sample)), add_generation_prompt, self.tokenizer.bos_token, images, sample.where)
        return "".join(s.text for s in segments)

    def _check(self, sample: Sample) -> None:
        if sample.media("video"):
            raise DataError(f"{sample.where}: Gemma 4 in vlmkit takes images only; video input is not supported")
        refuse_requested_sizes(sample, "Gemma 4")
        if any(mark in sample.text() for mark in (REF_PLACEHOLDER, BOX_PLACEHOLDER)):
            raise DataError(
                f"{sample.where}: Gemma 4 has no box format, so {REF_PLACEHOLDER}/{BOX_PLACEHOLDER} grounding rows "
                "cannot be written for it; use a family with grounding (vlmkit families)"
            )

    def _tokens(self, sample: Sample, add_generation_prompt: bool, soft_tokens: list[int]) -> tuple[list[int], list[int]]:
        self._check(sample)
        images = [self.image_text(n) for n in soft_tokens]
        segments = render_gemma4(
            mark_text(trimmed(self._messages(sample))), add_generation_prompt, self.tokenizer.bos_token, images, sample.where
        )
        ids, labels = tokenize_segments(self.tokenizer, segments)
        if ids.count(self.image_token_id) != sum(soft_tokens):
            raise DataError(f"{sample.where}: {ids.count(self.image_token_id)} image tokens for {len(soft_tokens)} images")
        return ids, labels

    def _pixels(self, sample: Sample) -> tuple[list, dict[str, Any]]:
        images = [load_image(source, where=f"{sample.where}: image {k + 1}") for k, source in enumerate(sample.media("image"))]
        if not images:
            return images, {}
        return images, self.image_processor(images=[images], return_tensors="pt")

    def encode(self, sample: Sample, add_generation_prompt: bool = False, limit: int | None = None) -> dict[str, Any]:
        """Sample -> model inputs for one sequence (see the class docstring)."""
        sample = as_sample(sample)
        if limit is not None:
            raise DataError("a resolution limit does not apply to Gemma 4 in vlmkit")
        self._check(sample)
        images, pixels = self._pixels(sample)
        soft_tokens = [int(n) for n in pixels.get("num_soft_tokens_per_image", [])]
        ids, labels = self._tokens(sample, add_generation_prompt, soft_tokens)
        input_ids = torch.tensor(ids, dtype=torch.long)
        out: dict[str, Any] = {
            "input_ids": input_ids,
            "labels": torch.tensor(labels, dtype=torch.long),
            "mm_token_type_ids": (input_ids == self.image_token_id).long(),
        }
        if images:
            out["pixel_values"] = pixels["pixel_values"]
            out["image_position_ids"] = pixels["image_position_ids"]
            out["image_sizes"] = [((i.height, i.width), None) for i in images]  # for people
            out["image_notes"] = [
                f"image {k + 1}: {i.height}×{i.width} (h×w), {n} soft tokens" for k, (i, n) in enumerate(zip(images, soft_tokens, strict=True))
            ]
        return out

    def count_tokens(self, sample: Sample, limit: int | None = None, add_generation_prompt: bool = False) -> int:
        """`len(encode(sample, add_generation_prompt)["input_ids"])`."""
        return len(self.encode(sample, add_generation_prompt, limit)["input_ids"])

    def fit_limit(self, sample: Sample, max_length: int, add_generation_prompt: bool = False) -> int | None:
        """None: vlmkit does not shrink Gemma 4 images to fit a length."""
        return None

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad `encode` outputs into one batch (left for generation); the images of all rows in order."""
        batch = collate_tokens(encoded, self.pad_token_id, padding_side, token_inputs={"mm_token_type_ids": 0})
        for key in ("pixel_values", "image_position_ids"):
            values = [e[key] for e in encoded if key in e]
            if values:
                batch[key] = torch.cat(values)
        return batch

    def describe_image(self, encoded: dict[str, Any], k: int) -> str:
        return encoded["image_notes"][k]
