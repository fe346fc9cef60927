"""The Qwen families' processor configs and vLLM processor arguments, from a run's encoding settings
(`Family.processor_limits`, `Family.vllm_processor_kwargs`)."""

from __future__ import annotations

from typing import Any

from vlmkit.families.qwen2_vl.video import VIDEO_SETTINGS


def _with_pixel_limits(config: dict[str, Any], low: int | None, high: int | None) -> dict[str, Any]:
    """A Qwen image/video processor config with min/max pixels written both ways transformers 5.24 reads
    them: `min_pixels`/`max_pixels` (which win when present) and `size` {shortest_edge, longest_edge}."""
    config, size = dict(config), dict(config.get("size") or {})
    if high is not None:
        config["max_pixels"] = size["longest_edge"] = int(high)
        low = min(low if low is not None else size.get("shortest_edge", high), high)
    if low is not None:
        config["min_pixels"] = size["shortest_edge"] = int(low)
    config["size"] = size
    return config


def processor_limits(
    name: str,
    config: dict[str, Any],
    settings: dict[str, Any],
    video_defaults: dict[str, Any],
    video_pixels_per_frame: bool = True,
) -> dict[str, Any]:
    """`Family.processor_limits` of the Qwen families: the image limits into preprocessor_config.json, the
    video sampling into video_preprocessor_config.json (`video_processor_config`). `video_defaults`: the
    family's `VIDEO_DEFAULTS`, for what a run's settings do not say."""
    if name == "preprocessor_config.json":
        return _with_pixel_limits(config, settings.get("min_pixels"), settings.get("max_pixels"))
    if name != "video_preprocessor_config.json":
        return config
    video = {**video_defaults, **{k: settings[k] for k in VIDEO_SETTINGS if k in settings}}
    return video_processor_config(config, video, video_pixels_per_frame)


def video_processor_config(config: dict[str, Any], video: dict[str, Any], pixels_per_frame: bool) -> dict[str, Any]:
    """A Qwen video processor config (transformers' `Qwen2VLVideoProcessor` / `Qwen3VLVideoProcessor`) that
    samples and sizes frames as vlmkit encoded them with `video` (a template's video settings:
    `vlmkit.families.qwen2_vl.video.video_settings`).

    Both classes sample by `fps` or a fixed `num_frames` (one of them null: transformers refuses both)
    within `min_frames`..`max_frames` when `do_sample_frames` (Qwen2-VL's default is off: every frame given
    would be used), and with `cap_pixels_per_frame` apply qwen-vl-utils' per-frame share of a total budget,
    as `video_frame_size` does (off by default, with a warning). Where `size` is per frame (Qwen2/2.5-VL)
    it holds the frame pixel limits and the total is `max_video_tokens`' default (128000, =
    `video_total_pixels`); where it is over all frames (Qwen3-VL) it holds the total, and the per-frame
    cap is `max_video_tokens` tokens of (patch * merge)**2 pixels."""
    config = dict(config) | {
        "do_sample_frames": True,
        "fps": video.get("fps"),
        "num_frames": video.get("nframes"),
        "min_frames": video["min_frames"],
        "max_frames": video["max_frames"],
        "cap_pixels_per_frame": True,
    }
    low = min(video["video_min_pixels"], video["video_max_pixels"])  # a lower maximum lowers the minimum
    if pixels_per_frame:
        return _with_pixel_limits(config, low, video["video_max_pixels"])
    factor = config.get("patch_size", 16) * config.get("merge_size", 2)
    config["size"] = {"shortest_edge": low, "longest_edge": video["video_total_pixels"]}
    # whole tokens only: a --video-max-pixels between two multiples of factor**2 is written as the lower one
    config["max_video_tokens"] = video["video_max_pixels"] // factor**2
    return config


# `Family.vllm_encoding_options` of the Qwen families: what `vllm_processor_kwargs` passes on
VLLM_ENCODING_OPTIONS = ("min_pixels", "max_pixels")


def vllm_processor_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """`Family.vllm_processor_kwargs` of the Qwen families: the image pixel limits, for vLLM's processor."""
    return {k: settings[k] for k in VLLM_ENCODING_OPTIONS if settings.get(k) is not None}
