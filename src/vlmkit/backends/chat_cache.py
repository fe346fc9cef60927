"""Chat turns that reuse the model's KV cache of the turns before, instead of re-running the history.

After each turn, `Chat` keeps the keys and values of the whole conversation so far (the prompt and the
reply). The next turn is still encoded in full by the family template (one encoding path for training,
batch inference and chat); then

1. its token ids are compared with the cached ones and the longest common prefix is kept: a reply that
   re-tokenises differently from how it was generated, or a history edited by hand, only shortens it;
2. an image keeps its cached keys only if all of its tokens are in that prefix and its pixel inputs are
   the ones the cache saw (another picture of the same size has the same placeholder tokens); otherwise
   the prefix is cut back to where that image starts. Videos are kept or re-run all together;
3. the cache is cropped to the prefix and the rest of the prompt is run through the model, with the pixel
   inputs of the images in that rest only. Positions come from the whole conversation: a family whose
   positions are not plain 1-D gives them (`Family.chat_positions`, e.g. M-RoPE from the model's own
   rule over the full prompt, set up for the reply too); 1-D positions come from the cache length;
4. `generate` continues from that cache.

A family whose template cannot split its pixel inputs per image (`Family.chat_cache` False: its template
has no `split_media`) re-encodes the whole conversation every turn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import transformers
from packaging.version import Version

if TYPE_CHECKING:
    from vlmkit.families.interface import SplitsMedia, Template

# transformers 5.24 renamed the cache argument and output field `past_key_values` to `cache`; the old name
# still works there but warns on every use
CACHE = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"


@dataclass(frozen=True)
class Media:
    """A prompt's media as the cache compares them: per image its token count and a digest of its pixel
    inputs, in conversation order, and one digest of all videos' inputs (None: no video)."""

    image_tokens: list[int]
    images: list[bytes]
    videos: bytes | None


@dataclass
class TurnCache:
    """What a chat keeps between turns."""

    ids: list[int]  # the tokens whose keys and values `past` holds, from the start of the conversation
    past: Any  # transformers Cache
    media: Media  # of the prompt whose keys and values `past` holds


@dataclass(frozen=True)
class Resume:
    """Where a turn picks up: keep `keep` cached tokens; run the rest with images `first_image`.. and,
    when `videos`, the videos."""

    keep: int
    first_image: int
    videos: bool


class ChatPositions(Protocol):
    """What `Family.chat_positions(model, template, encoded)` returns: the positions of a whole prompt."""

    def place(self, batch: dict[str, Any], start: int, end: int) -> None:
        """Set the position inputs of `batch`, the prompt's tokens start..end-1 run on their own."""

    def before_generate(self, device: Any) -> None:
        """Leave on the model what `generate` needs to continue the positions."""


def supported(family: Any) -> bool:
    """Whether chat turns of `family` can reuse the cache of the turns before (`Family.chat_cache`)."""
    return family.chat_cache


def _digest(entries: dict[str, Any]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(entries):
        value = entries[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            digest.update(str((value.dtype, tuple(value.shape))).encode())
            digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.digest()


def media_of(template: SplitsMedia, encoded: dict[str, Any]) -> Media:
    images, videos = template.split_media(encoded)
    return Media(
        image_tokens=[count for count, _ in images],
        images=[_digest(entries) for _, entries in images],
        videos=_digest(videos) if videos else None,
    )


def resume_point(template: Template, encoded: dict[str, Any], media: Media, cache: TurnCache) -> Resume:
    """How much of `cache` the prompt `encoded` (with `media`) can keep (the module docstring, steps 1-2)."""
    ids = encoded["input_ids"]
    cached = torch.tensor(cache.ids[: len(ids) - 1], dtype=ids.dtype)  # the last prompt token always runs
    differs = (ids[: len(cached)] != cached).nonzero()
    keep = int(differs[0]) if len(differs) else len(cached)

    image_positions = (ids == template.image_token_id).nonzero().flatten().tolist()
    spans, start = [], 0  # (first token, last token) of each image
    for count in media.image_tokens:
        spans.append((image_positions[start], image_positions[start + count - 1]))
        start += count
    for k, (first, last) in enumerate(spans):
        if last >= keep or k >= len(cache.media.images) or cache.media.images[k] != media.images[k]:
            keep = min(keep, first)
            break
    video_token = template.video_token_id
    video_positions = [] if video_token is None else (ids == video_token).nonzero().flatten().tolist()
    if video_positions and (video_positions[-1] >= keep or media.videos != cache.media.videos):
        keep = min(keep, video_positions[0])
    return Resume(
        keep=keep,
        first_image=sum(1 for _, last in spans if last < keep),
        videos=bool(video_positions) and video_positions[0] >= keep,
    )


def _join(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-image pixel entries -> the entries of those images together, in `encode` form."""
    joined: dict[str, Any] = {}
    for key in parts[0] if parts else ():
        values = [part[key] for part in parts]
        joined[key] = torch.cat(values) if isinstance(values[0], torch.Tensor) else sum(values, [])
    return joined


def prefill(vlm: Any, encoded: dict[str, Any], cache: TurnCache, resume: Resume) -> dict[str, Any]:
    """Crop `cache` to `resume.keep`, run the prompt's tokens after it (all but the last) through the model
    with the pixel inputs of the media among them, and return the `generate` inputs that continue."""
    template, ids = vlm.template, encoded["input_ids"]
    length, keep = len(ids), resume.keep
    past = cache.past
    past.crop(keep - past.get_seq_length())  # a negative count: tokens to drop from the end
    family = vlm.family
    positions = family.chat_positions(vlm.model, template, encoded) if family.chat_positions else None
    if keep < length - 1:
        suffix = {
            key: value[keep : length - 1]
            for key, value in encoded.items()
            if isinstance(value, torch.Tensor) and value.shape[:1] == ids.shape
        }
        images, videos = template.split_media(encoded)
        suffix.update(_join([entries for _, entries in images[resume.first_image :]]))
        if resume.videos:
            suffix.update(videos)
        batch = template.collate([suffix], padding_side="left")
        batch.pop("labels")
        batch["attention_mask"] = torch.ones(1, length - 1, dtype=torch.long)
        if positions is not None:
            positions.place(batch, keep, length - 1)
        with torch.inference_mode():
            vlm.model(**vlm.on_device(batch), **{CACHE: past}, use_cache=True, logits_to_keep=1)
    if positions is not None:
        positions.before_generate(vlm.device)
    return {
        "input_ids": ids[None].to(vlm.device),
        "attention_mask": torch.ones(1, length, dtype=torch.long, device=vlm.device),
        CACHE: past,
    }


def after_turn(media: Media, output: Any) -> TurnCache:
    """The cache to keep from `generate`'s output (return_dict_in_generate) for a prompt with `media`."""
    past = getattr(output, CACHE)
    return TurnCache(ids=output.sequences[0, : past.get_seq_length()].tolist(), past=past, media=media)
