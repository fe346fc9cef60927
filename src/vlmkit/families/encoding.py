"""Family-neutral pieces of encoding: rendered segments -> token ids and labels, and batching.

A family template renders a conversation to `Segment`s: pieces of prompt text, each
marked supervised (assistant reply text and its end token) or not. The whole text is
tokenized in one call, exactly as inference tokenizes the chat template's output, and
each token is supervised when its first character lies in a supervised segment. This
gives the same ids as tokenizing the real chat template's text, which tokenizing the
pieces one by one would not guarantee at their boundaries.

Text written by a user or a dataset is text: a `<|im_end|>` or `<|image_pad|>` typed in a message
must not become the control or media token, or users forge turns and break the image count. The
templates bracket such text with `mark_text` before rendering; `tokenize_segments` then tokenizes
every special token inside a bracket as plain characters (as `split_special_tokens=True` does),
except the family's own grounding tokens (`live_tokens`), which the grounding code writes there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Segment:
    text: str
    supervised: bool = False


# Unicode noncharacters (reserved for a program's internal use): where user text starts and ends.
TEXT_START, TEXT_END = "\ufdd0", "\ufdd1"
_MARKS = re.compile(f"[{TEXT_START}{TEXT_END}]")


def mark_text(messages: list[dict]) -> list[dict]:
    """`messages` with each text part bracketed as user text (see the module docstring); marks found in
    the text itself become U+FFFD."""
    return [
        {
            **m,
            "content": [
                {**p, "text": TEXT_START + _MARKS.sub("\ufffd", p["text"]) + TEXT_END}
                if p["type"] == "text"
                else p
                for p in m["content"]
            ],
        }
        for m in messages
    ]


def _unmark(segments: list[Segment]) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
    """(text without marks, supervised character spans, user-text character spans)."""
    text, supervised, user = [], [], []
    length, user_start = 0, None
    for segment in segments:
        start = length
        for piece in re.split(f"({_MARKS.pattern})", segment.text):
            if piece == TEXT_START:
                user_start = length
            elif piece == TEXT_END:
                user.append((user_start, length))
                user_start = None
            else:
                text.append(piece)
                length += len(piece)
        if segment.supervised and length > start:
            supervised.append((start, length))
    return "".join(text), supervised, user


def control_token_pattern(tokenizer, live_tokens: tuple[str, ...] = ()) -> re.Pattern | None:
    """A regex of the control and media tokens that text typed in a message would otherwise forge (the
    special tokens but `live_tokens`); None when there are none."""
    tokens = sorted(set(_special_tokens(tokenizer)) - set(live_tokens), key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in tokens)) if tokens else None


def _special_tokens(tokenizer) -> dict[str, int]:
    """Control and media tokens: the tokenizer's special added tokens, by text."""
    special = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return special | {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}


def _as_text(tokenizer, text: str, user: list[tuple[int, int]], live: set[str]) -> tuple[list[int], list]:
    """Token ids and offsets of `text` with the special tokens inside `user` spans split as text.
    The text is cut at the special tokens that stay live (the template's, and `live` ones anywhere);
    the tokenizer cuts there anyway, so the pieces tokenize as the whole text would."""
    special = _special_tokens(tokenizer)
    pattern = re.compile("|".join(re.escape(t) for t in sorted(special, key=len, reverse=True)))
    ids, offsets, last = [], [], 0

    def piece(end: int) -> None:
        if end > last:
            encoded = tokenizer(
                text[last:end], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
            )
            ids.extend(encoded["input_ids"])
            offsets.extend((b + last, e + last) for b, e in encoded["offset_mapping"])

    for match in pattern.finditer(text):
        inside = any(b <= match.start() < e for b, e in user)
        if inside and match[0] not in live:
            continue
        piece(match.start())
        ids.append(special[match[0]])
        offsets.append(match.span())
        last = match.end()
    piece(len(text))
    return ids, offsets


def tokenize_segments(
    tokenizer, segments: list[Segment], live_tokens: tuple[str, ...] = ()
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for the concatenated segments; labels are -100 outside supervised text.
    Special tokens inside `mark_text` brackets are tokenized as text, except `live_tokens`."""
    text, supervised_chars, user = _unmark(segments)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    if user:
        special_ids = set(_special_tokens(tokenizer).values())
        live_ids = {tokenizer.convert_tokens_to_ids(t) for t in live_tokens}
        forged = any(
            i in special_ids and i not in live_ids and any(b <= begin < e for b, e in user)
            for i, (begin, _end) in zip(ids, offsets, strict=True)
        )
        if forged:  # rare: only then the slower path, so ordinary text tokenizes in one call
            ids, offsets = _as_text(tokenizer, text, user, set(live_tokens))
    labels = [IGNORE_INDEX] * len(ids)
    span = 0
    for i, (begin, _end) in enumerate(offsets):
        while span < len(supervised_chars) and supervised_chars[span][1] <= begin:
            span += 1
        if span < len(supervised_chars) and supervised_chars[span][0] <= begin:
            labels[i] = ids[i]
    return ids, labels


def expand_tokens(
    ids: list[int], labels: list[int], token_id: int, counts: list[int]
) -> tuple[list[int], list[int]]:
    """Repeat the k-th occurrence of `token_id` counts[k] times (vision placeholder expansion)."""
    positions = [i for i, t in enumerate(ids) if t == token_id]
    if len(positions) != len(counts):
        raise ValueError(f"{len(positions)} placeholder tokens for {len(counts)} media items")
    out_ids: list[int] = []
    out_labels: list[int] = []
    previous = 0
    for position, count in zip(positions, counts, strict=True):
        out_ids += ids[previous:position] + [token_id] * count
        out_labels += labels[previous:position] + [IGNORE_INDEX] * count
        previous = position + 1
    return out_ids + ids[previous:], out_labels + labels[previous:]


def pad_sequences(sequences: list[torch.Tensor], value: int, side: str = "right") -> torch.Tensor:
    """Stack 1-D tensors of different lengths into (B, T_max), padding on `side`."""
    length = max(s.shape[0] for s in sequences)
    out = sequences[0].new_full((len(sequences), length), value)
    for i, s in enumerate(sequences):
        if side == "right":
            out[i, : s.shape[0]] = s
        else:
            out[i, length - s.shape[0] :] = s
    return out


def collate_tokens(
    encoded: list[dict[str, Any]],
    pad_token_id: int,
    padding_side: str = "right",
    token_inputs: dict[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """The padding core of every template's `collate`: `encode` outputs -> input_ids, attention_mask (1 on
    real tokens), labels (IGNORE_INDEX on padding), each (B, T_max), padded on `padding_side` (left for
    generation); `token_inputs` names the family's other per-token inputs with their padding value
    (e.g. token type ids padded with 0). The template adds its pixel inputs."""
    batch = {
        "input_ids": pad_sequences([e["input_ids"] for e in encoded], pad_token_id, padding_side),
        "attention_mask": pad_sequences([torch.ones_like(e["input_ids"]) for e in encoded], 0, padding_side),
        "labels": pad_sequences([e["labels"] for e in encoded], IGNORE_INDEX, padding_side),
    }
    for key, value in (token_inputs or {}).items():
        batch[key] = pad_sequences([e[key] for e in encoded], value, padding_side)
    return batch
