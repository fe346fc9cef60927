"""The generic path: any transformers VLM that has no family folder, through its own processor and chat template.

A checkpoint whose `model_type` has no folder in `vlmkit.families.FAMILIES` but which transformers loads with
`AutoModelForImageTextToText` and whose folder has a chat template gets a `Family` record built at load time
from that folder (`generic_family`). Why a record and not a new code path: every command (chat, infer, eval,
serve, sft, export, the vLLM translation) already runs on a `Family` and its template; a record whose template
is the checkpoint's own `AutoProcessor` runs through the same plumbing with no branch in shared code. What a
processor cannot give is switched off by the record's ordinary fields, so the commands refuse it as they do for
any family without it: no resolution options (`encoding_options` is the system prompt only), no packing, no
grounding (`box_format` None), no chat KV cache (each turn is encoded whole), images only (no video).

Encoding (`GenericTemplate.encode`) is the processor's `apply_chat_template` text and the processor called on it
with the images, as `processor.apply_chat_template(..., tokenize=True)` does: the prompt ids and pixel inputs are
the checkpoint's by construction. Labels supervise the assistant replies only. The reply spans (characters of
the rendered text) come from the template's `{% generation %}` marks where it has them, else from rendering the
conversation up to each reply with and without it (the reply is what the reply's turn adds after the generation
prompt, up to the end-of-turn token; the whitespace the template puts between turns is left out). A template
whose text for the earlier turns changes when a reply is added (so no such span exists) is refused for
training in one line naming the model type, never trained on its prompt. The spans become tokens on the text
before the processor expands the image placeholders, then move onto the processor's ids through the text tokens
the two share (`_move_labels`).

Decided where the issue was silent: the supervised span of a reply ends with the tokens that close its turn
(e.g. `<end_of_utterance>`), so the model learns to stop; generation stops at the base model's generation config's
end tokens, as plain `generate` does; `count_tokens` runs the processor (there is no size rule to read from image
headers). Text typed in a message reaches the chat template as it is, as with the processor itself: a control
token typed by a user is that token (the curated families keep user text text); an image placeholder typed
without its image is refused by the processor's own count check.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import torch

from vlmkit.errors import DataError, VlmkitError
from vlmkit.families.encoding import IGNORE_INDEX, collate_tokens
from vlmkit.families.family import Family
from vlmkit.media.images import load_image
from vlmkit.sample import Sample, as_sample, refuse_requested_sizes

GENERATION_MARK = re.compile(r"\{%-?\s*generation\s*-?%\}")
# Where a processor writes its chat template (transformers 5: chat_template.jinja; older: chat_template.json,
# or a "chat_template" key in processor_config.json or tokenizer_config.json).
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json", "tokenizer_config.json")
# Processor outputs whose names the template interface already uses for something else: kept under another
# name in `encode`'s output and given back their own in `collate` (training drops `image_sizes`, the boxes' sizes).
RENAMED = {"image_sizes": "processor_image_sizes"}
LIMITS = (
    "no resolution options (the processor's own sizes), no video, no grounding boxes, no packing, "
    "no chat KV cache (each chat turn is encoded whole)"
)


def image_text_model_types() -> list[str]:
    """The model types transformers loads with `AutoModelForImageTextToText`, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def has_chat_template(model_dir: Path) -> bool:
    """Whether the folder carries a chat template in any place transformers reads one from."""
    for name in CHAT_TEMPLATE_FILES:
        path = model_dir / name
        if not path.is_file():
            continue
        if name.endswith(".jinja"):
            return True
        try:
            if json.loads(path.read_text()).get("chat_template"):
                return True
        except (ValueError, AttributeError):
            continue
    return False


def generic_family(model_dir: Path, config: dict[str, Any], where: str, curated: str) -> Family:
    """The `Family` record of a checkpoint with no family folder; one line naming what is missing when
    transformers has no image-text-to-text class for its model type or the folder has no chat template."""
    model_type = config.get("model_type")
    if model_type not in image_text_model_types():
        raise VlmkitError(
            f"{where}: model_type {model_type!r} has no vlmkit family (curated: {curated}) and transformers has no "
            "image-text-to-text model class for it (AutoModelForImageTextToText), so vlmkit's generic path cannot "
            "load it either; `vlmkit families` lists what runs"
        )
    if not has_chat_template(model_dir):
        raise VlmkitError(
            f"{model_dir}: model_type {model_type!r} runs on vlmkit's generic path, which needs the checkpoint's chat "
            f"template, and the folder has none ({', '.join(CHAT_TEMPLATE_FILES)}); copy it from the original checkpoint"
        )
    return Family(
        name=model_type,
        model_type=model_type,
        description=f"generic: {model_type} through its own processor and chat template",
        folder=model_dir,
        special_tokens=(),
        first_special_id=0,
        eos_token="",
        pad_token="",
        preprocessor_config={},
        make_template=partial(load_generic_template, model_type=model_type, base_dir=model_dir),
        tiny_config=partial(_no_tiny_model, model_type),
        module_groups=module_groups(model_dir),
        supports=("image",),
        encoding_options=("system",),
        vision="the checkpoint's own processor",
        chat_template_for=partial(_chat_template_of, model_dir),
    )


def _no_tiny_model(model_type: str, *args: Any) -> dict[str, Any]:
    raise VlmkitError(f"{model_type} runs on the generic path, which has no tiny model; build one with transformers")


def _chat_template_of(model_dir: Path, settings: dict[str, Any]) -> str:
    """The checkpoint's chat template (what vLLM renders requests with, and checkpoints and exports carry)."""
    return _folder_template(model_dir)


@functools.lru_cache(maxsize=8)
def _folder_template(model_dir: Path) -> str:
    from transformers import AutoProcessor

    return _template_text(AutoProcessor.from_pretrained(model_dir), model_dir)


def _template_text(processor: Any, where: Path | str) -> str:
    template = processor.chat_template
    if isinstance(template, dict):  # named templates: the default one renders chats
        template = template.get("default")
    if not template:
        raise VlmkitError(f"{where}: the processor has no chat template; copy it from the original checkpoint")
    return template


def module_groups(model_dir: Path) -> dict[str, tuple[str, ...]]:
    """The vision tower, aligner and language model of the checkpoint's model class, by parameter-name prefix:
    built on the meta device (no weights), a part whose config is the vision config is "vit", the text config's
    "llm" (with the output head), any other part with parameters "aligner"."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    vision = type(getattr(config, "vision_config", None))
    text = type(config.get_text_config())
    groups: dict[str, list[str]] = {"vit": [], "aligner": [], "llm": []}
    base = getattr(model, model.base_model_prefix, None)
    parts = [(f"{model.base_model_prefix}.{n}.", m) for n, m in base.named_children()] if base is not model else []
    parts += [(f"{n}.", m) for n, m in model.named_children() if m is not base]
    for prefix, part in parts:
        if not any(True for _ in part.parameters()):
            continue
        part_config = type(getattr(part, "config", None))
        group = "vit" if part_config is vision else "llm" if part_config is text or prefix.startswith("lm_head") else "aligner"
        groups[group].append(prefix)
    return {group: tuple(prefixes) for group, prefixes in groups.items()}


def load_generic_template(
    model_dir: str | Path, tokenizer: Any, *, model_type: str, base_dir: Path, system: str | None = None
) -> GenericTemplate:
    """The template of a folder (a model, or a checkpoint that carries its processor files); the stop tokens
    are the base model's generation config's, as plain transformers' `generate` stops."""
    from transformers import AutoProcessor, GenerationConfig

    try:
        processor = AutoProcessor.from_pretrained(model_dir)
    except (OSError, ValueError, ImportError) as e:
        raise VlmkitError(f"{model_dir}: transformers' AutoProcessor cannot load the {model_type} processor: {e}") from None
    try:
        eos = GenerationConfig.from_pretrained(base_dir).eos_token_id
    except OSError:  # no generation_config.json: transformers reads the model config's
        eos = None
    if eos is None:
        eos = tokenizer.eos_token_id
    stops = [eos] if isinstance(eos, int) else list(eos or [])
    return GenericTemplate(processor, tokenizer, model_type, stops, system=system)


class GenericTemplate:
    """Encodes `Sample`s with a checkpoint's own processor and chat template (see the module docstring).

    `encode` returns input_ids and labels (T,), the processor's per-token inputs (T,) (e.g. token_type_ids)
    and its image inputs as it returns them for this one conversation (e.g. pixel_values), and image_notes
    for people. `collate` pads the per-token inputs with 0 and joins the image inputs along their first
    dimension, padding the other dimensions with zeros as the processors pad a batch.
    """

    min_limit = None  # the processor's own sizes: no resolution option
    max_limit = None
    limit_option = None
    video_token_id = None  # images only
    video_sampling = None
    box_format = None  # no grounding format: boxes stay text
    compact_images = False  # the encode cache stores `encode`'s own output

    def __init__(self, processor: Any, tokenizer: Any, model_type: str, stop_token_ids: list[int], system: str | None = None):
        self.processor = processor
        self.tokenizer = tokenizer
        self.model_type = model_type
        self.system = system
        self.chat_template = _template_text(processor, model_type)
        self.marks_replies = GENERATION_MARK.search(self.chat_template) is not None
        image_token = getattr(processor, "image_token", None)
        self.image_token_id = getattr(processor, "image_token_id", None) or (
            tokenizer.convert_tokens_to_ids(image_token) if image_token else None
        )
        if not stop_token_ids:
            raise VlmkitError(f"{model_type}: neither the generation config nor the tokenizer names an end token")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_token_ids[0]
        self.stop_token_ids = stop_token_ids

    @property
    def settings(self) -> dict[str, Any]:
        return {"system": self.system}

    # -- text ----------------------------------------------------------------------------------------

    def _messages(self, sample: Sample) -> list[dict]:
        """The conversation as the processor's chat templates read it (image parts without their source)."""
        messages = [
            {"role": m["role"], "content": [p if p["type"] == "text" else {"type": p["type"]} for p in m["content"]]}
            for m in sample.messages
        ]
        if self.system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": [{"type": "text", "text": self.system}]}, *messages]
        return messages

    def _render(self, messages: list[dict], add_generation_prompt: bool, where: str) -> str:
        try:
            return self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
        except Exception as e:  # jinja's TemplateError and the template's own raise_exception
            raise DataError(f"{where}: the {self.model_type} chat template refuses this conversation: {e}") from None

    def render_text(self, sample: Sample, add_generation_prompt: bool = False) -> str:
        """The chat template's text, one image placeholder per image (as the processor reads it)."""
        sample = as_sample(sample)
        return self._render(self._messages(sample), add_generation_prompt, sample.where)

    def reply_spans(self, sample: Sample) -> tuple[str, list[tuple[int, int]]]:
        """(the rendered conversation, the character spans of its assistant replies, end-of-turn included)."""
        sample = as_sample(sample)
        messages = self._messages(sample)
        text = self._render(messages, False, sample.where)
        if self.marks_replies:
            from transformers.utils.chat_template_utils import render_jinja_template

            _, indices = render_jinja_template(
                conversations=[messages],
                chat_template=self.chat_template,
                return_assistant_tokens_mask=True,
                **self.tokenizer.special_tokens_map,
            )
            return text, [tuple(span) for span in indices[0]]
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:i], True, sample.where)
            after = self._render(messages[: i + 1], False, sample.where)
            if not after.startswith(before) or not text.startswith(after):
                raise VlmkitError(
                    f"{sample.where}: cannot find reply {len(spans) + 1} in the {self.model_type} chat template's "
                    "text (it writes the turns before a reply differently once the reply is added, and has no "
                    "{% generation %} marks), so vlmkit's generic path will not train on it; add {% generation %} "
                    "marks around the assistant replies in the chat template, or use a curated family"
                )
            end = len(before) + len(after[len(before) :].rstrip())
            spans.append((len(before), end))
        return text, spans

    # -- whole samples -------------------------------------------------------------------------------

    def _check(self, sample: Sample, limit: int | None) -> None:
        if limit is not None:
            raise DataError(f"a resolution limit does not apply to {self.model_type} (the generic path keeps the processor's sizes)")
        if sample.media("video"):
            raise DataError(f"{sample.where}: {self.model_type} runs on the generic path, which takes images only; video input is not supported")
        refuse_requested_sizes(sample, self.model_type)

    def _process(self, text: str, sample: Sample) -> tuple[dict[str, Any], list[Any]]:
        """The processor's output for one conversation, called as `apply_chat_template(tokenize=True)` calls it."""
        images = [load_image(s, where=f"{sample.where}: image {k + 1}") for k, s in enumerate(sample.media("image"))]
        bos = self.tokenizer.bos_token
        try:
            return dict(
                self.processor(
                    text=text,
                    images=[images] if images else None,
                    return_tensors="pt",
                    add_special_tokens=not (bos is not None and text.startswith(bos)),
                )
            ), images
        except (ValueError, TypeError, IndexError) as e:  # e.g. image placeholders that do not match the images
            raise DataError(f"{sample.where}: the {self.model_type} processor refuses this sample: {e}") from None

    def encode(self, sample: Sample, add_generation_prompt: bool = False, limit: int | None = None) -> dict[str, Any]:
        """Sample -> model inputs of one sequence (see the class docstring)."""
        sample = as_sample(sample)
        self._check(sample, limit)
        supervise = not add_generation_prompt and any(m["role"] == "assistant" for m in sample.messages)
        if supervise:
            text, spans = self.reply_spans(sample)
        else:  # a prompt: nothing to supervise, and a template that rewrites earlier turns is no obstacle
            text, spans = self._render(self._messages(sample), add_generation_prompt, sample.where), []
        inputs, images = self._process(text, sample)
        ids = inputs.pop("input_ids")[0]
        inputs.pop("attention_mask", None)
        out: dict[str, Any] = {"input_ids": ids, "labels": self._labels(text, spans, ids, sample.where)}
        for key, value in inputs.items():
            per_token = isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == (1, len(ids))
            out[RENAMED.get(key, key)] = value[0] if per_token else value
        out["token_inputs"] = [key for key, value in out.items() if _per_token(key, value, len(ids))]
        if images:
            out["image_notes"] = [f"image {k + 1}: {im.width}×{im.height} (w×h), as the processor reads it" for k, im in enumerate(images)]
        return out

    def _labels(self, text: str, spans: list[tuple[int, int]], ids: torch.Tensor, where: str) -> torch.Tensor:
        labels = torch.full_like(ids, IGNORE_INDEX)
        if not spans:
            return labels
        bos = self.tokenizer.bos_token
        plain = self.tokenizer(
            text,
            add_special_tokens=not (bos is not None and text.startswith(bos)),
            return_offsets_mapping=True,
        )
        supervised = [
            k for k, (begin, end) in enumerate(plain["offset_mapping"]) if end > begin and any(s <= begin < e for s, e in spans)
        ]
        moved = _move_labels(plain["input_ids"], ids.tolist(), supervised)
        if moved is None:
            raise VlmkitError(
                f"{where}: the {self.model_type} processor's token ids do not contain the assistant replies as the "
                "tokenizer writes them, so vlmkit cannot tell which tokens to supervise; use a curated family"
            )
        labels[moved] = ids[moved]
        return labels

    def count_tokens(self, sample: Sample, limit: int | None = None, add_generation_prompt: bool = False) -> int:
        """`len(encode(...)["input_ids"])`: the generic path has no size rule of its own, so it runs the processor."""
        return len(self.encode(sample, add_generation_prompt, limit)["input_ids"])

    def fit_limit(self, sample: Sample, max_length: int, add_generation_prompt: bool = False) -> int | None:
        """None: the processor's image sizes are fixed, a sample over `max_length` cannot be shrunk."""
        return None

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        token_keys = {key for e in encoded for key in e.get("token_inputs", [])}
        batch = collate_tokens(encoded, self.pad_token_id, padding_side, token_inputs=dict.fromkeys(token_keys, 0))
        skip = {"input_ids", "labels", "token_inputs", "image_notes", *token_keys}
        for key in dict.fromkeys(k for e in encoded for k in e if k not in skip):
            name = next((own for own, ours in RENAMED.items() if ours == key), key)
            batch[name] = _join([e[key] for e in encoded if key in e])
        return batch

    def describe_image(self, encoded: dict[str, Any], k: int) -> str:
        notes = encoded.get("image_notes") or []
        return notes[k] if k < len(notes) else "image tokens"


def _per_token(key: str, value: Any, length: int) -> bool:
    return key not in ("input_ids", "labels") and isinstance(value, torch.Tensor) and value.shape == (length,)


def _join(values: list[torch.Tensor]) -> torch.Tensor:
    """Tensors joined along dim 0, their other dimensions zero-padded to the largest (as processors pad a batch)."""
    if len(values) == 1:
        return values[0]
    shape = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
    out = values[0].new_zeros((sum(v.shape[0] for v in values), *shape))
    row = 0
    for v in values:
        out[(slice(row, row + v.shape[0]), *(slice(0, n) for n in v.shape[1:]))] = v
        row += v.shape[0]
    return out


def _move_labels(plain: list[int], expanded: list[int], supervised: list[int]) -> list[int] | None:
    """Positions in `expanded` (the processor's ids) of the `supervised` positions of `plain` (the same text before
    the image placeholders were expanded), through the runs of tokens the two share; None when one is not shared."""
    if plain == expanded:
        return supervised
    where: dict[int, int] = {}
    for a, b, size in difflib.SequenceMatcher(None, plain, expanded, autojunk=False).get_matching_blocks():
        where.update((a + k, b + k) for k in range(size))
    if any(k not in where for k in supervised):
        return None
    return [where[k] for k in supervised]
