"""The option groups of `vlmkit serve`: what one request may ask for (`ServeLimits`) and which media a
client may name (`MediaAccess`). Both become the server's `vlmkit.media.images.MediaPolicy` (`media_policy`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmkit.errors import VlmkitError
from vlmkit.groups import option
from vlmkit.media.images import MediaPolicy


@dataclass(frozen=True)
class ServeLimits:
    """Limits on one request: its size, the media it fetches and decodes, the tokens it asks for."""

    max_request_bytes: int = option(16 * 2**20, "Largest request body; larger ones get 413.")
    max_media_bytes: int = option(32 * 2**20, "Largest image or video fetched from a URL.")
    media_timeout: float = option(10.0, "Seconds allowed to fetch one media URL.")
    max_image_pixels: int = option(
        64 * 2**20, "Largest image or video frame (width x height) decoded; larger ones get 413."
    )
    max_tokens: int = option(512, "max_tokens of a request that gives none.")
    max_total_tokens: int = option(
        8192, "Most tokens one request may ask to generate, n x max_tokens (400 beyond)."
    )
    max_prompt_tokens: int | None = option(
        None, "Most prompt tokens (text and media) of one request (400 beyond). Default: the model's context length."
    )
    max_prompt_chars: int | None = option(
        None, "Most characters of text in one request's messages, checked before tokenizing (400 beyond). "
        "Default: 8 per token of --max-prompt-tokens."
    )
    max_video_frames: int = option(128, "Most frames sampled from one video of a request (413 beyond).")
    max_batch_size: int = option(16, "Most sequences generated together.")
    body_timeout: float = option(60.0, "Seconds allowed to receive a request body once its headers are in (408 beyond).")
    max_connections_per_client: int = option(
        128, "Connections one client address may hold open at once; more are closed at once."
    )

    def check(self) -> None:
        for name in ("max_request_bytes", "max_media_bytes", "max_tokens", "max_total_tokens", "max_prompt_tokens",
                     "max_prompt_chars", "max_video_frames", "max_image_pixels", "max_batch_size", "max_connections_per_client"):  # fmt: skip
            value = getattr(self, name)
            value = 1 if value is None else value  # None: derived from the model's context length
            if value < 1:
                raise VlmkitError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.max_tokens > self.max_total_tokens:
            raise VlmkitError(
                f"--max-tokens {self.max_tokens} is over --max-total-tokens {self.max_total_tokens}; every request "
                "would be refused"
            )
        for name in ("media_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise VlmkitError(f"--{name.replace('_', '-')} must be above 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class MediaAccess:
    """Which media a client may name besides public URLs and data: URLs: local files inside these folders,
    URLs on private addresses."""

    allow_media_dir: list[Path] = option(
        help="Let clients name local files, only inside this folder (repeatable). Default: none.",
        default_factory=list,
    )
    allow_private_urls: bool = option(False, "Fetch media URLs on private, loopback and link-local addresses too.")

    def check(self) -> None:
        for folder in self.allow_media_dir:
            if not Path(folder).is_dir():
                raise VlmkitError(f"--allow-media-dir {folder}: no such folder")


def media_policy(limits: ServeLimits, media: MediaAccess) -> MediaPolicy:
    """What the server's requests may read (`vlmkit.media.images.MediaPolicy`)."""
    return MediaPolicy(
        timeout=limits.media_timeout,
        max_bytes=limits.max_media_bytes,
        allow_private_urls=media.allow_private_urls,
        allow_local_files=bool(media.allow_media_dir),
        media_dirs=tuple(Path(d) for d in media.allow_media_dir),
        max_image_pixels=limits.max_image_pixels,
    )
