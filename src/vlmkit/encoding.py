"""Family-neutral pieces of encoding: rendered segments -> token ids and labels, and batching.

A family template renders a conversation to `Segment`s: pieces of prompt text, each
marked supervised (assistant reply text and its end token) or not. The whole text is
tokenized in one call, exactly as inference tokenizes the chat template's output, and
each token is supervised when its first character lies in a supervised segment. This
gives the same ids as tokenizing the real chat template's text, which tokenizing the
pieces one by one would not guarantee at their boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Segment:
    text: str
    supervised: bool = False


def tokenize_segments(tokenizer, segments: list[Segment]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for the concatenated segments; labels are -100 outside supervised text."""
    text = "".join(s.text for s in segments)
    supervised_chars = []
    start = 0
    for s in segments:
        if s.supervised and s.text:
            supervised_chars.append((start, start + len(s.text)))
        start += len(s.text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    span = 0
    for i, (begin, _end) in enumerate(encoded["offset_mapping"]):
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
