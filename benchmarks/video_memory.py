"""Peak memory of sampling frames from a long video with `vlmkit.media.video.load_video`.

Makes (once, cached) a 1920x1080 H.264 video of the given length at a low bitrate, then in a
fresh Python process imports vlmkit, resets the kernel's peak-RSS mark (/proc/self/clear_refs),
samples `--nframes` frames and reads the peak (VmHWM) again. The difference over the RSS before
sampling is what sampling costs: the sampled RGB
frames (1920*1080*3 bytes = 6.2 MB each) plus the decoder's buffers; decoding the whole
video into memory would need minutes * 60 * fps * 6.2 MB.

    python benchmarks/video_memory.py                     # 10 minutes, 32 frames
    python benchmarks/video_memory.py --minutes 1 --nframes 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 1920, 1080


def make_video(path: Path, minutes: float, fps: int, gop: int) -> None:
    """A 1080p H.264 video whose frames cycle through 16 solid colours with a moving bar."""
    import av

    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "40", "g": str(gop), "keyint_min": str(gop)}
        stream.thread_type = "AUTO"
        frames = []
        for k in range(16):
            pixels = np.full((HEIGHT, WIDTH, 3), (k * 16, 255 - k * 16, 96), dtype=np.uint8)
            pixels[:, k * 120 : k * 120 + 60] = 255
            frames.append(av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p"))
        for i in range(round(minutes * 60 * fps)):
            frame = frames[(i // fps) % 16]
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


MEASURE = """
import json, resource, sys, time
import av, PIL.Image, vlmkit.media.video as video  # imported first: the baseline holds them


def status(key):  # kB, from the kernel's view of this process
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])


with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
before = status("VmRSS")
start = time.perf_counter()
sampling = video.FrameSampling(fps=None, nframes=int(sys.argv[2]), min_frames=4, max_frames=768, frame_factor=2)
frames = video.load_video(sys.argv[1], "bench", sampling)  # qwen-vl-utils' numbers
seconds = time.perf_counter() - start
peak = status("VmHWM")
print(json.dumps({"baseline_mb": before / 1024, "peak_mb": peak / 1024, "delta_mb": (peak - before) / 1024,
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "frames": len(frames.frames), "seconds": seconds}))
"""


def measure(path: Path, nframes: int) -> dict:
    """Peak-RSS figures (MB) of sampling `nframes` frames from `path` in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(nframes)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=25, help="frame rate of the generated video")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval of the generated video")
    parser.add_argument("--nframes", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vlmkit-bench")
    args = parser.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    path = args.cache / f"video_{WIDTH}x{HEIGHT}_{args.minutes:g}min_{args.fps}fps_g{args.gop}.mp4"
    if not path.exists():
        start = time.perf_counter()
        make_video(path, args.minutes, args.fps, args.gop)
        print(f"made {path} ({path.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - start:.0f} s")
    total = round(args.minutes * 60 * args.fps)
    result = measure(path, args.nframes)
    whole = total * WIDTH * HEIGHT * 3 / 2**20
    print(
        f"{args.minutes:g} min {WIDTH}x{HEIGHT} @ {args.fps} fps ({total} frames, keyframe every {args.gop}): "
        f"sampled {result['frames']} frames in {result['seconds']:.1f} s; peak RSS {result['peak_mb']:.0f} MB, "
        f"{result['delta_mb']:.0f} MB over the {result['baseline_mb']:.0f} MB baseline "
        f"(the sampled RGB frames alone: {result['frames'] * WIDTH * HEIGHT * 3 / 2**20:.0f} MB; "
        f"the whole video decoded: {whole:,.0f} MB)"
    )


if __name__ == "__main__":
    main()
