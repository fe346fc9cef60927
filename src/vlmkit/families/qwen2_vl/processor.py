"""The Qwen families' processor configs and vLLM processor arguments, from a run's encoding settings
(`Family.processor_limits`, `Family.vllm_processor_kwargs`)."""

from __future__ import annotations

from typing import Any


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
    name: str, config: dict[str, Any], settings: dict[str, Any], video_pixels_per_frame: bool = True
) -> dict[str, Any]:
    """`Family.processor_limits` of the Qwen families: the image limits into preprocessor_config.json;
    fps, max frames and (where the video processor's size is per frame, not Qwen3-VL) the frame pixel
    limit into video_preprocessor_config.json."""
    if name == "preprocessor_config.json":
        return _with_pixel_limits(config, settings.get("min_pixels"), settings.get("max_pixels"))
    if name != "video_preprocessor_config.json":
        return config
    config = dict(config) | {k: settings[k] for k in ("fps", "min_frames", "max_frames") if settings.get(k) is not None}
    if video_pixels_per_frame and settings.get("video_max_pixels") is not None:
        config = _with_pixel_limits(config, None, settings["video_max_pixels"])
    return config


# `Family.vllm_encoding_options` of the Qwen families: what `vllm_processor_kwargs` passes on
VLLM_ENCODING_OPTIONS = ("min_pixels", "max_pixels")


def vllm_processor_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """`Family.vllm_processor_kwargs` of the Qwen families: the image pixel limits, for vLLM's processor."""
    return {k: settings[k] for k in VLLM_ENCODING_OPTIONS if settings.get(k) is not None}
