"""Sample frames from a video file, URL or list of frame images (family-neutral).

`load_video` decodes with PyAV and never holds the whole video: it picks the frame
indices first (`smart_nframes`, qwen-vl-utils' rule, then evenly spaced indices as
`torch.linspace(0, total - 1, n).round()`), then seeks to the keyframe before each
far-away index and decodes forward only to it. Memory is the sampled RGB frames plus
the decoder's own buffers, whatever the length of the video (benchmarks/video_memory.py).

Resizing the frames to a pixel budget is family-specific and is left to the template, and so are the
sampling numbers: every function takes them from its caller (a template's `video_sampling`), none has
a default of its own.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vlmkit.errors import MediaError, MediaTooLargeError
from vlmkit.media.images import MediaPolicy, fetch_media, load_image, read_image_size

# A list of frame images carries no frame rate: with fps None its frames are taken as this many per
# second apart (the convention of the frame-list video format, as qwen-vl-utils writes it).
FRAME_LIST_FPS = 2.0
# Decode forward instead of seeking when the next sampled frame is at most this many seconds on.
_SEEK_GAP_SECONDS = 2.0
# Frames decoded per frame sampled, at most: a keyframe interval of 10 s at 30 fps, say. Decoding costs per frame
# read, not per frame kept: 300,000 tiny frames (a 4 MB file) took 26 s to give the same 60 frames.
DECODED_PER_SAMPLED = 300


@dataclass(frozen=True)
class FrameSampling:
    """How many frames of a video are sampled, and which: a template's `video_sampling` (no defaults here:
    the numbers are the family's).

    fps: frames per second of video (None: every frame); nframes: exactly this many instead (wins over fps);
    min_frames / max_frames: bounds on the count sampled by fps; frame_factor: the count is a multiple of it
    (the frames the model merges in time, e.g. 2; 1 for none).
    """

    fps: float | None
    nframes: int | None
    min_frames: int
    max_frames: int
    frame_factor: int


@dataclass
class VideoFrames:
    frames: list[Image.Image]  # RGB, in time order, at the video's own size
    timestamps: list[float]  # seconds of each sampled frame from the start of the video
    sample_fps: float  # sampled frames per second of video


def _video_errors(function):
    """A MediaError raised while reading a video (a frame of it included) says so: `MediaError.media`."""

    @functools.wraps(function)
    def reading_video(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except MediaError as e:
            e.media = "video"
            raise

    return reading_video


def smart_nframes(total_frames: int, video_fps: float, sampling: FrameSampling) -> int:
    """How many frames to sample from a video of `total_frames` at `video_fps` (qwen-vl-utils' rule).

    `nframes` (which wins over `fps`) is rounded to a multiple of `frame_factor`; otherwise
    duration * `fps` is clamped to [min_frames, max_frames] (rounded up and down to the factor).
    Either way the result is at most the total, floored to the factor. Unlike qwen-vl-utils this
    never raises for a short video: one with fewer than `frame_factor` frames gives all its frames
    (the template pads them). `fps=None` and `nframes=None` take every frame, up to max_frames.
    """
    fps, nframes, frame_factor = sampling.fps, sampling.nframes, sampling.frame_factor
    if total_frames < 1:
        raise ValueError("the video has no frames")
    if total_frames < frame_factor:
        return total_frames
    if nframes is not None:
        n = max(frame_factor, round(nframes / frame_factor) * frame_factor)
    else:
        rate = fps if fps is not None else video_fps
        low = math.ceil(sampling.min_frames / frame_factor) * frame_factor
        high = math.floor(min(sampling.max_frames, total_frames) / frame_factor) * frame_factor
        n = min(max(total_frames / video_fps * rate, low), high, total_frames)
        n = max(frame_factor, math.floor(n / frame_factor) * frame_factor)
    return min(n, math.floor(total_frames / frame_factor) * frame_factor)


def sample_indices(total_frames: int, n: int) -> list[int]:
    """`n` evenly spaced frame indices from 0 to total_frames - 1, both ends included."""
    if n == 1:
        return [0]
    return [round(i * (total_frames - 1) / (n - 1)) for i in range(n)]


@_video_errors
def load_video(source: Any, where: str, sampling: FrameSampling) -> VideoFrames:
    """Sampled frames of `source`: a path, `file://` or http(s) URL, bytes, or a list of frames.

    A video is sampled by `smart_nframes` (see there for fps / nframes / bounds). A list of frame
    images (paths, URLs or PIL images) is taken as already sampled at `fps` frames per second
    (`FRAME_LIST_FPS` when fps is None); with `nframes`, or more than `max_frames` frames, it is thinned to
    that many evenly spaced frames. Every failure is a one-line MediaError naming `where`.
    """
    if isinstance(source, (list, tuple)):
        return _from_frames(list(source), where, sampling)
    if isinstance(source, Image.Image):
        raise MediaError(f"{where}: a single image is not a video; give a list of frames or a video file")
    with _local_copy(source, where) as (path, named):
        return _decode(path, named, sampling)


@dataclass
class VideoProbe:
    """What `load_video` would return, known from headers alone: frame size and sampled times."""

    height: int
    width: int
    timestamps: list[float]
    sample_fps: float


@_video_errors
def probe_video(source: Any, where: str, sampling: FrameSampling) -> VideoProbe:
    """The size and sampled timestamps `load_video` gives for the same arguments, read from the
    container header (or the first frame's image header) without decoding any pixels."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise MediaError(f"{where}: the list of frames is empty")
        indices, rate = _frame_list_plan(len(source), sampling)
        # every kept frame's header: frames of different sizes stop `load_video`, so they stop here too
        sizes = {read_image_size(source[i], where=f"{where}: frame {i + 1}") for i in indices}
        if len(sizes) > 1:
            raise MediaError(_mixed_sizes(where, {(w, h) for h, w in sizes}))
        height, width = sizes.pop()
        return VideoProbe(height, width, [i / rate for i in indices], rate * len(indices) / len(source))
    if isinstance(source, Image.Image):
        raise MediaError(f"{where}: a single image is not a video; give a list of frames or a video file")
    with _local_copy(source, where) as (path, named), _open(path, named) as container:
        stream = container.streams.video[0]
        indices, total, video_fps = _frame_plan(container, stream, named, sampling)
        return VideoProbe(
            stream.height, stream.width, [i / video_fps for i in indices], len(indices) / total * video_fps
        )


def _frame_plan(container, stream, where: str, sampling: FrameSampling) -> tuple[list[int], int, float]:
    """(the sampled frame indices, the video's frame count, its fps): `smart_nframes` then `sample_indices`."""
    total, video_fps = _frame_count(container, stream, where)
    n = smart_nframes(total, video_fps, sampling)
    return sample_indices(total, n), total, video_fps


@contextmanager
def _local_copy(source: Any, where: str) -> Iterator[tuple[Path, str]]:
    """(a local path for `source`, `where` naming it); fetched bytes go to a temp file, deleted after."""
    data = fetch_media(source, where, MediaPolicy())
    if isinstance(data, Path):
        yield data, f"{where}: {data}"
        return
    named = f"{where}: {source}" if isinstance(source, str) else where
    # PyAV seeks in a file far better than in a stream; fetched bytes are bounded by the media policy.
    handle, tmp = tempfile.mkstemp(prefix="vlmkit-video-")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        del data
        yield Path(tmp), named
    finally:
        os.unlink(tmp)


def _frame_list_plan(count: int, sampling: FrameSampling) -> tuple[list[int], float]:
    """(indices kept of a list of `count` frames, the list's frame rate)."""
    rate = sampling.fps if sampling.fps is not None else FRAME_LIST_FPS
    keep = min(count if sampling.nframes is None else max(sampling.nframes, 1), count, sampling.max_frames)
    return (sample_indices(count, keep) if keep < count else list(range(count))), rate


def _from_frames(sources: list, where: str, sampling: FrameSampling) -> VideoFrames:
    if not sources:
        raise MediaError(f"{where}: the list of frames is empty")
    indices, rate = _frame_list_plan(len(sources), sampling)
    frames = [load_image(sources[i], where=f"{where}: frame {i + 1}") for i in indices]
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        raise MediaError(_mixed_sizes(where, sizes))
    return VideoFrames(frames, [i / rate for i in indices], rate * len(indices) / len(sources))


def _mixed_sizes(where: str, sizes: set[tuple[int, int]]) -> str:
    """The error for a frame list of several (width, height) sizes."""
    shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
    return f"{where}: the frames differ in size ({shown}, w x h); give frames of one size"


# FFmpeg's demuxers of still images: such a file opens as a one-frame "video" that cannot be seeked.
_STILL_IMAGE_FORMATS = ("image2",)


def _av():
    """PyAV, an optional dependency (the `video` extra)."""
    try:
        import av
    except ImportError:
        raise MediaError("video input needs PyAV: pip install 'vlmkit[video]' (or pip install av)") from None
    return av


def _open(path: Path, where: str):
    av = _av()
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise MediaError(f"{where}: not a readable video ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise MediaError(f"{where}: the file has no video stream")
    if container.format.name in _STILL_IMAGE_FORMATS or container.format.name.endswith("_pipe"):
        container.close()
        raise MediaError(f"{where}: a still image, not a video; list it under images (or give a list of frames)")
    if container.format.flags & av.format.Flags.no_timestamps.value:
        # a raw stream (Annex-B H.264 named .h264 or .mp4, ...): no frame times, no index to seek in, and a
        # frame rate FFmpeg guesses (25); sampling it would pick the wrong frames
        name = container.format.name
        container.close()
        raise MediaError(
            f"{where}: a raw {name} stream without a container, so its frame times are unknown; put it in "
            f"one first, e.g. ffmpeg -framerate FPS -i FILE -c copy OUT.mp4"
        )
    return container


def _frame_count(container, stream, where: str) -> tuple[int, float]:
    """(total frames, frames per second) from the header; packets are counted when it has no count."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    video_fps = float(rate) if rate else 0.0
    if video_fps <= 0:
        raise MediaError(f"{where}: the video does not state its frame rate")
    total = stream.frames
    if not total and stream.duration is not None and stream.time_base is not None:
        total = round(float(stream.duration * stream.time_base) * video_fps)
    if not total:
        try:
            total = sum(1 for p in container.demux(stream) if p.size)  # no decoding; then rewind
            container.seek(0, stream=stream)
        except _av().FFmpegError as e:
            raise MediaError(f"{where}: the video is corrupt or cannot be seeked in ({_reason(e)})") from None
    if total < 1:
        raise MediaError(f"{where}: the video has no frames")
    return total, video_fps


def _decode(path: Path, where: str, sampling: FrameSampling) -> VideoFrames:
    av = _av()
    with _open(path, where) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        indices, total, video_fps = _frame_plan(container, stream, where, sampling)
        try:
            frames = _seek_and_decode(container, stream, indices, video_fps, where)
        except av.FFmpegError as e:
            raise MediaError(f"{where}: the video is corrupt ({_reason(e)})") from None
    if not frames:
        raise MediaError(f"{where}: no frame could be decoded")
    while len(frames) < len(indices):  # a header that overstates the frame count: repeat the last one
        frames.append(frames[-1])
    return VideoFrames(frames, [i / video_fps for i in indices], len(indices) / total * video_fps)


def _seek_and_decode(container, stream, indices: list[int], video_fps: float, where: str) -> list[Image.Image]:
    """RGB frames at `indices` (ascending, starting at 0), holding one decoded frame at a time.

    A frame's index is (its presentation time - the first frame's) * fps; the first frame's time
    is read, not taken from the header (AVI files often start at 1 while saying 0). For a target
    more than _SEEK_GAP_SECONDS past the last decoded frame, seek to the keyframe before it;
    otherwise decode forward. More than DECODED_PER_SAMPLED frames decoded per frame sampled is a
    MediaTooLargeError (a very high frame rate, or keyframes far apart).
    """
    budget = DECODED_PER_SAMPLED * len(indices)
    decoded = 0
    time_base = float(stream.time_base)
    origin = None  # pts of the first frame
    out: list[Image.Image] = []
    frames = None
    position = -1  # index of the last decoded frame
    last = None
    for target in indices:
        if frames is None or (origin is not None and target - position > _SEEK_GAP_SECONDS * video_fps):
            offset = origin if origin is not None else stream.start_time or 0
            container.seek(offset + int(target / video_fps / time_base), stream=stream, backward=True)
            frames = container.decode(stream)
        picked = None
        for frame in frames:
            last = frame
            decoded += 1
            if decoded > budget:
                raise MediaTooLargeError(
                    f"{where}: sampling {len(indices)} frames needs more than {budget} frames decoded (a very high "
                    f"frame rate or keyframes far apart); re-encode it, e.g. ffmpeg -i IN -r 30 -g 60 OUT.mp4"
                )
            if frame.pts is None or origin is None and position >= 0:
                position += 1  # no timestamps: count frames (never seeks again)
            else:
                origin = frame.pts if origin is None else origin
                position = round((frame.pts - origin) * time_base * video_fps)
            if position >= target:
                picked = frame
                break
        if picked is None:  # past the last frame: the header's count was too high
            if last is None:
                break
            picked = last
        out.append(picked.to_image())
    return out


def _reason(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__
