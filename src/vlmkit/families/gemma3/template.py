"""The Gemma 3 prompt format and the template that encodes samples for it.

Rendering follows the checkpoints' chat template (`chat_template.jinja`, Google's as transformers'
`convert_gemma3_weights.py` writes it): `<bos>`, turns `<start_of_turn>user\\n ... <end_of_turn>\\n` and
`<start_of_turn>model\\n ... <end_of_turn>\\n`, texts trimmed, the system prompt folded into the first user
turn (`system + "\\n\\n"`), an image written `<start_of_image>`. Like `Gemma3Processor`, each
`<start_of_image>` is then replaced in the text by `\\n\\n<start_of_image>` + 256 `<image_soft_token>` +
`<end_of_image>\\n\\n` (with pan-and-scan crops, a sentence and one such run per crop), and the whole text
is tokenized at once: the newlines around an image merge with the text beside them, so the expansion
is textual, not a run of ids spliced in.

`token_type_ids` (1 on soft image tokens) go with every batch: Gemma 3 attends bidirectionally within
an image's tokens when they are given, in training and in the prompt of generation, as the processor's
inputs make it do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlmkit.errors import DataError, VlmkitError
from vlmkit.families.encoding import Segment, collate_tokens, mark_text, tokenize_segments
from vlmkit.families.gemma3.vision import SiglipSquare
from vlmkit.media.grounding import BOX_PLACEHOLDER, REF_PLACEHOLDER
from vlmkit.media.images import load_image, read_image_size
from vlmkit.sample import Sample, as_sample, refuse_requested_sizes

START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
BOI, EOI, SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
ROLE_NAMES = {"user": "user", "assistant": "model"}


def trimmed(messages: list[dict]) -> list[dict]:
    """`messages` with the texts of the turns trimmed, as the chat template writes them (`| trim`); a
    leading system prompt is kept as it is (the template does not trim it). Done before `mark_text`."""
    return [
        m if m["role"] == "system" and k == 0
        else {**m, "content": [{**p, "text": p["text"].strip()} if p["type"] == "text" else p for p in m["content"]]}
        for k, m in enumerate(messages)
    ]


def render_gemma3(
    messages: list[dict], add_generation_prompt: bool, bos: str, image_texts: list[str], where: str = "sample"
) -> list[Segment]:
    """Segments of the Gemma 3 chat template's text (of `trimmed` messages) with the k-th image written `image_texts[k]`; the
    reply texts and their `<end_of_turn>` supervised. Raises DataError where the template would raise
    (roles not alternating user/assistant) or would drop content silently (a system prompt of several
    parts or not text, an image in a reply)."""
    prefix = ""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
        if len(system) != 1 or system[0]["type"] != "text":
            raise DataError(f"{where}: a Gemma 3 system prompt must be one text (its chat template keeps only the first part)")
        prefix = system[0]["text"] + "\n\n"
    segments = [Segment(bos)]
    images = iter(image_texts)
    for k, message in enumerate(messages):
        role = message["role"]
        if role not in ROLE_NAMES or (role == "user") != (k % 2 == 0):
            raise DataError(
                f"{where}: Gemma 3 conversations alternate user/assistant turns, starting with the user "
                f"(after an optional system prompt); message {k + 1} is {role!r}"
            )
        segments.append(Segment(f"{START_OF_TURN}{ROLE_NAMES[role]}\n" + (prefix if k == 0 else "")))
        parts = message["content"]
        if role == "assistant":
            if any(p["type"] != "text" for p in parts):
                raise DataError(f"{where}: a Gemma 3 assistant message must be text only")
            segments.append(Segment("".join(p["text"] for p in parts) + END_OF_TURN, supervised=True))
            segments.append(Segment("\n"))
            continue
        for part in parts:
            if part["type"] == "image":
                segments.append(Segment(next(images)))
            elif part["type"] == "text":
                segments.append(Segment(part["text"]))
        segments.append(Segment(END_OF_TURN + "\n"))
    if add_generation_prompt:
        segments.append(Segment(f"{START_OF_TURN}model\n"))
    return segments


class Gemma3Template:
    """Encodes `Sample`s for a Gemma 3 checkpoint (see the module docstring).

    `encode` returns input_ids, labels and token_type_ids (T,), and with images pixel_values
    (n_views, 3, H, W) (each image, then its pan-and-scan crops), image_sizes [((orig_h, orig_w),
    (model_h, model_w))] and image_notes (one line per view, for `vlmkit data preview`).
    """

    min_limit = None  # the image size is fixed by the checkpoint: nothing to shrink
    max_limit = None
    limit_option = None
    video_token_id = None  # images only
    video_sampling = None
    box_format = None  # Gemma 3 has no box format (PaliGemma's <locNNNN> is another model's)
    compact_images = False

    def __init__(self, tokenizer, vision: SiglipSquare, system: str | None = None):
        self.tokenizer = tokenizer
        self.vision = vision
        self.system = system
        vocab = tokenizer.get_vocab()
        missing = [t for t in (START_OF_TURN, END_OF_TURN, BOI, EOI, SOFT) if t not in vocab]
        if missing:
            raise VlmkitError(f"the tokenizer has no {', '.join(missing)} token; is this a Gemma 3 checkpoint?")
        self.image_token_id = vocab[SOFT]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # the instruction-tuned checkpoints stop on <end_of_turn> and <eos> (their generation_config)
        self.stop_token_ids = list(dict.fromkeys([vocab[END_OF_TURN], tokenizer.eos_token_id]))
        full = f"\n\n{BOI}{SOFT * vision.tokens_per_image}{EOI}\n\n"
        self._full_image = full

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, tokenizer, system: str | None = None, **pan_and_scan) -> Gemma3Template:
        """Numbers from the checkpoint's preprocessor_config.json and processor_config.json
        (`image_seq_length`); pan-and-scan settings given (merged with vlmkit.json) over them."""
        model_dir = Path(model_dir)
        preprocessor = json.loads((model_dir / "preprocessor_config.json").read_text())
        processor_file = model_dir / "processor_config.json"
        processor = json.loads(processor_file.read_text()) if processor_file.is_file() else {}
        seq_length = processor.get("image_seq_length") or preprocessor.get("image_seq_length") or 256
        return cls(tokenizer, SiglipSquare.from_configs(preprocessor, seq_length, pan_and_scan), system=system)

    @property
    def settings(self) -> dict[str, Any]:
        return {"system": self.system, **self.vision.settings}

    # -- text --------------------------------------------------------------------------------------

    def _messages(self, sample: Sample) -> list[dict]:
        messages = sample.messages
        if self.system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": [{"type": "text", "text": self.system}]}, *messages]
        return messages

    def image_text(self, crops: int) -> str:
        """What `Gemma3Processor` writes for an image with `crops` pan-and-scan crops."""
        if not crops:
            return self._full_image
        return (
            f"Here is the original image {self._full_image} and here are some crops to help you see better "
            + " ".join([self._full_image] * crops)
        )

    def render_text(self, sample: Sample, add_generation_prompt: bool = False) -> str:
        """The prompt text with one `<start_of_image>` per image, exactly as the chat template writes it."""
        sample = as_sample(sample)
        images = [BOI] * len(sample.media("image"))
        segments = render_gemma3(trimmed(self._messages(sample)), add_generation_prompt, self.tokenizer.bos_token, images, sample.where)
        return "".join(s.text for s in segments)

    def _tokens(self, sample: Sample, add_generation_prompt: bool, crops: list[int]) -> tuple[list[int], list[int]]:
        if sample.media("video"):
            raise DataError(f"{sample.where}: Gemma 3 takes images only; video input is not supported")
        refuse_requested_sizes(sample, "Gemma 3")
        if any(mark in sample.text() for mark in (REF_PLACEHOLDER, BOX_PLACEHOLDER)):
            raise DataError(
                f"{sample.where}: Gemma 3 has no box format (PaliGemma's <locNNNN> tokens are another model's), so "
                f"{REF_PLACEHOLDER}/{BOX_PLACEHOLDER} grounding rows cannot be written for it; use a family with "
                "grounding (vlmkit families)"
            )
        images = [self.image_text(n) for n in crops]
        segments = render_gemma3(
            mark_text(trimmed(self._messages(sample))), add_generation_prompt, self.tokenizer.bos_token, images, sample.where
        )
        ids, labels = tokenize_segments(self.tokenizer, segments)
        expected = self.vision.tokens_per_image * sum(1 + n for n in crops)
        if ids.count(self.image_token_id) != expected:
            raise DataError(f"{sample.where}: {ids.count(self.image_token_id)} image tokens for {len(crops)} images")
        return ids, labels

    # -- whole samples -----------------------------------------------------------------------------

    def _no_limit(self, limit: int | None) -> None:
        if limit is not None:
            raise DataError("a resolution limit does not apply to Gemma 3 (its image size is fixed)")

    def encode(self, sample: Sample, add_generation_prompt: bool = False, limit: int | None = None) -> dict[str, Any]:
        """Sample -> model inputs for one sequence (see the class docstring)."""
        sample = as_sample(sample)
        self._no_limit(limit)
        images = [
            load_image(source, where=f"{sample.where}: image {k + 1}") for k, source in enumerate(sample.media("image"))
        ]
        views = [torch.from_numpy(self.vision.process(image)) for image in images]  # (1 + crops, 3, H, W) each
        ids, labels = self._tokens(sample, add_generation_prompt, [len(v) - 1 for v in views])
        input_ids = torch.tensor(ids, dtype=torch.long)
        out: dict[str, Any] = {
            "input_ids": input_ids,
            "labels": torch.tensor(labels, dtype=torch.long),
            "token_type_ids": (input_ids == self.image_token_id).long(),
        }
        if images:
            out["pixel_values"] = torch.cat(views)
            out["image_sizes"] = [((i.height, i.width), self.vision.size) for i in images]  # for people
            out["image_notes"] = [note for k, (i, v) in enumerate(zip(images, views, strict=True)) for note in self._notes(k, i, len(v) - 1)]
        return out

    def count_tokens(self, sample: Sample, limit: int | None = None, add_generation_prompt: bool = False) -> int:
        """`len(encode(sample, add_generation_prompt)["input_ids"])`, reading only image headers."""
        sample = as_sample(sample)
        self._no_limit(limit)
        sizes = [
            read_image_size(source, where=f"{sample.where}: image {k + 1}")
            for k, source in enumerate(sample.media("image"))
        ]
        return len(self._tokens(sample, add_generation_prompt, [len(self.vision.crops(h, w)) for h, w in sizes])[0])

    def fit_limit(self, sample: Sample, max_length: int, add_generation_prompt: bool = False) -> int | None:
        """None: a sample over `max_length` cannot be shrunk to fit, the image size being fixed."""
        return None

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad `encode` outputs into one batch (left for generation); pixel_values of all rows in order."""
        batch = collate_tokens(encoded, self.pad_token_id, padding_side, token_inputs={"token_type_ids": 0})
        pixels = [e["pixel_values"] for e in encoded if "pixel_values" in e]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        return batch

    def _notes(self, k: int, image, crops: int) -> list[str]:
        """One line per run of image tokens of image `k` (the whole image, then each crop), for people."""
        h, w = self.vision.size
        whole = f"image {k + 1}: {image.height}×{image.width} (h×w) resized to {h}×{w}"
        if not crops:
            return [whole]
        return [f"{whole}, then {crops} pan-and-scan crops"] + [f"image {k + 1}: crop {c + 1} of {crops}" for c in range(crops)]

    def describe_image(self, encoded: dict[str, Any], k: int) -> str:
        """Run `k` of image tokens (each image's whole view and each of its pan-and-scan crops is one run)."""
        return encoded["image_notes"][k]

