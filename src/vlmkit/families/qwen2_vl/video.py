"""Qwen-VL video encoding (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), used by `Qwen2VLTemplate`.

Frames come from `vlmkit.media.video` (sampled by qwen-vl-utils' `smart_nframes`). Every frame of
a video is resized to one size by `smart_resize`, under a per-frame pixel limit that shrinks
as frames are added (qwen-vl-utils' rule, = transformers' video processors with
`cap_pixels_per_frame=True`):

    frame_max = max(min(video_max_pixels, video_total_pixels // n_frames), int(video_min_pixels * 1.05))

capped at video_max_pixels (which only matters when a user's --video-max-pixels is near the minimum).

The frame count is padded to a multiple of temporal_patch_size by repeating the last frame,
and consecutive frames share a patch: `pixel_values_videos` is
(t * h * w, 3 * temporal_patch_size * patch_size**2) with `video_grid_thw` = (t, h, w), in the
layout of transformers' `Qwen2VLVideoProcessor.patchify`.

In the text, the chat template's one `<|video_pad|>` per video becomes
- Qwen2-VL / Qwen2.5-VL: t*h*w / merge**2 `<|video_pad|>` tokens (Qwen2.5-VL also passes
  `second_per_grid_ts` = temporal_patch_size / sample_fps to its M-RoPE);
- Qwen3-VL: for each temporal group, `<{seconds:.1f} seconds>` (the mean time of its frames)
  then `<|vision_start|>`, h*w / merge**2 pads, `<|vision_end|>`, as `Qwen3VLProcessor` writes it
  (the chat template's own `<|vision_start|>`/`<|vision_end|>` stay around the whole).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmkit.errors import DataError
from vlmkit.families.encoding import IGNORE_INDEX
from vlmkit.families.qwen2_vl.resize import smart_resize
from vlmkit.media.video import VideoProbe, load_video, probe_video

# The template settings that travel in vlmkit.json (see `Qwen2VLTemplate.settings`).
VIDEO_SETTINGS = ("fps", "nframes", "max_frames", "min_frames", "video_max_pixels")


def video_settings(
    model_dir: str | Path,
    defaults: dict[str, Any] | None,
    fps: float | None,
    nframes: int | None,
    max_frames: int | None,
    min_frames: int | None,
    video_max_pixels: int | None,
) -> dict[str, Any]:
    """Video keyword arguments for `Qwen2VLTemplate`, from (later wins) the family's defaults, the
    checkpoint's video_preprocessor_config.json (fps, min/max frames) and the arguments (given options over
    the saved vlmkit.json). `fps` and `nframes` replace each other: giving either drops the other's default."""
    settings = dict(defaults or {})
    config_path = Path(model_dir) / "video_preprocessor_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        settings.update(
            {k: config[k] for k in ("fps", "min_frames", "max_frames") if config.get(k) is not None}
        )
    if fps is not None or nframes is not None:
        settings.update(fps=fps, nframes=nframes)
    if max_frames is not None:
        settings["max_frames"] = max_frames
    if min_frames is not None:
        settings["min_frames"] = min_frames
    if video_max_pixels is not None:
        settings["video_max_pixels"] = video_max_pixels
    if "video_max_pixels" in settings and settings["video_max_pixels"] < settings.get("video_min_pixels", 0):
        settings["video_min_pixels"] = settings["video_max_pixels"]  # a lower maximum lowers the minimum
    return settings


def video_frame_size(template, height: int, width: int, n_frames: int) -> tuple[int, int]:
    """(height, width) every one of `n_frames` frames of height x width is resized to."""
    frame_max = max(
        min(template.video_max_pixels, template.video_total_pixels // n_frames),
        int(template.video_min_pixels * 1.05),
    )
    frame_max = min(frame_max, template.video_max_pixels)  # only differs when min and max are close
    return smart_resize(
        height,
        width,
        template.patch_size * template.merge_size,
        template.video_min_pixels,
        frame_max,
        thin_side_floor=True,  # qwen-vl-utils' rule for frames
    )


def group_timestamps(timestamps: list[float], temporal_patch_size: int) -> list[float]:
    """Mean of the first and last timestamp of each temporal group (the last frame repeated to fill
    the last group), as transformers' `Qwen3VLProcessor._calculate_timestamps`."""
    padded = list(timestamps) + [timestamps[-1]] * (-len(timestamps) % temporal_patch_size)
    return [
        (padded[i] + padded[i + temporal_patch_size - 1]) / 2
        for i in range(0, len(padded), temporal_patch_size)
    ]


def video_replacement(template, grid: tuple[int, int, int], timestamps: list[float]) -> list[int]:
    """The token ids that replace one video's `<|video_pad|>` placeholder."""
    t, h, w = grid
    per_group = h * w // template.merge_size**2
    if not template.video_timestamps:
        return [template.video_token_id] * (t * per_group)
    vocab = template.tokenizer.get_vocab()
    start, end = vocab["<|vision_start|>"], vocab["<|vision_end|>"]
    ids: list[int] = []
    for seconds in group_timestamps(timestamps, template.temporal_patch_size):
        ids += template.tokenizer.encode(f"<{seconds:.1f} seconds>", add_special_tokens=False)
        ids += [start] + [template.video_token_id] * per_group + [end]
    return ids


def _grid(template, probe: VideoProbe) -> tuple[int, int, int]:
    n = len(probe.timestamps)
    height, width = video_frame_size(template, probe.height, probe.width, n)
    return (
        math.ceil(n / template.temporal_patch_size),
        height // template.patch_size,
        width // template.patch_size,
    )


def _splice(ids: list[int], labels: list[int], token_id: int, replacements: list[list[int]], where: str):
    """Replace the k-th `token_id` by replacements[k]; replaced tokens are never supervised."""
    positions = [i for i, t in enumerate(ids) if t == token_id]
    if len(positions) != len(replacements):
        raise DataError(
            f"{where}: {len(positions)} <|video_pad|> tokens in the text for {len(replacements)} videos"
        )
    out_ids: list[int] = []
    out_labels: list[int] = []
    previous = 0
    for position, replacement in zip(positions, replacements, strict=True):
        out_ids += ids[previous:position] + replacement
        out_labels += labels[previous:position] + [IGNORE_INDEX] * len(replacement)
        previous = position + 1
    return out_ids + ids[previous:], out_labels + labels[previous:]


def patchify_video(template, frames: list[Image.Image], height: int, width: int) -> np.ndarray:
    """RGB frames -> patches (t*gh*gw, 3*tps*ps*ps) float32, frames resized to height x width."""
    ps, ms, tps = template.patch_size, template.merge_size, template.temporal_patch_size
    n = len(frames)
    t = math.ceil(n / tps)
    pixels = np.empty((t * tps, 3, height, width), dtype=np.float32)  # (T, 3, H, W)
    for k, frame in enumerate(frames):
        if frame.size != (width, height):
            frame = frame.resize((width, height), Image.Resampling.BICUBIC)
        pixels[k] = np.asarray(frame.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    pixels[:n] = (pixels[:n] - template.mean) / template.std
    pixels[n:] = pixels[n - 1]  # the processor pads by repeating the last frame
    gh, gw = height // ps, width // ps
    patches = pixels.reshape(t, tps, 3, gh // ms, ms, ps, gw // ms, ms, ps)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, gh/ms, gw/ms, ms, ms, 3, tps, ps, ps)
    return patches.reshape(t * gh * gw, 3 * tps * ps * ps)


def encode_videos(
    template, videos: list[Any], where: str, ids: list[int], labels: list[int], out: dict[str, Any]
) -> tuple[list[int], list[int]]:
    """Decode and patchify `videos`, splice their tokens into ids/labels; adds pixel_values_videos,
    video_grid_thw (and second_per_grid_ts where the family uses it) to `out`."""
    all_patches, grids, replacements, seconds = [], [], [], []
    for k, source in enumerate(videos):
        item = f"{where}: video {k + 1}"
        video = load_video(source, item, template.video_sampling)
        probe = VideoProbe(video.frames[0].height, video.frames[0].width, video.timestamps, video.sample_fps)
        try:
            grid = _grid(template, probe)
        except ValueError as e:
            raise DataError(f"{item}: {e}") from None
        height, width = grid[1] * template.patch_size, grid[2] * template.patch_size
        all_patches.append(patchify_video(template, video.frames, height, width))
        del video
        grids.append(grid)
        replacements.append(video_replacement(template, grid, probe.timestamps))
        seconds.append(template.temporal_patch_size / probe.sample_fps)
    ids, labels = _splice(ids, labels, template.video_token_id, replacements, where)
    out["pixel_values_videos"] = torch.from_numpy(np.concatenate(all_patches))
    out["video_grid_thw"] = torch.tensor(grids, dtype=torch.long)
    if template.second_per_grid_ts:
        out["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)
    return ids, labels


def video_token_delta(template, videos: list[Any], where: str, ids: list[int]) -> int:
    """Tokens the videos add to `ids` once their placeholders are replaced, from headers only."""
    placeholders = ids.count(template.video_token_id)
    if placeholders != len(videos):
        raise DataError(f"{where}: {placeholders} <|video_pad|> tokens in the text for {len(videos)} videos")
    total = 0
    for k, source in enumerate(videos):
        item = f"{where}: video {k + 1}"
        probe = probe_video(source, item, template.video_sampling)
        try:
            grid = _grid(template, probe)
        except ValueError as e:
            raise DataError(f"{item}: {e}") from None
        total += len(video_replacement(template, grid, probe.timestamps)) - 1
    return total
