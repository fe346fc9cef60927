"""Video: frame sampling and decoding (vlmkit.media.video), Qwen-VL video encoding, infer / sft / data check.

Videos are generated in the test with PyAV: frame i is a solid colour that encodes i, so a
test can tell which frames were sampled. The peers' real files come from LLaMA-Factory's demo
data (mp4 and avi; its 1.mp4 is not shipped, which makes a handy missing-video row).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import PEERS, greedy_replies
from PIL import Image
from transformers import AutoTokenizer
from typer.testing import CliRunner
from videos import colour, make_video

import vlmkit
from vlmkit.cli import app
from vlmkit.errors import DataError, MediaError, VlmkitError
from vlmkit.families import family_by_name
from vlmkit.families.qwen2_vl.template import smart_resize
from vlmkit.families.qwen2_vl.video import group_timestamps, video_frame_size
from vlmkit.media.video import FrameSampling, load_video, probe_video, sample_indices, smart_nframes
from vlmkit.sample import to_sample

DEMO = PEERS / "llamafactory" / "mllm_demo_data"
PEER_VIDEOS = [DEMO / "3.mp4", DEMO / "4.mp4", DEMO / "2.avi"]


# qwen-vl-utils' sampling numbers (Qwen2-VL's video defaults): the rule is checked against them
QWEN_SAMPLING = {"fps": 2.0, "nframes": None, "min_frames": 4, "max_frames": 768, "frame_factor": 2}


def qwen(**changed) -> FrameSampling:
    """qwen-vl-utils' sampling numbers with `changed` ones."""
    return FrameSampling(**{**QWEN_SAMPLING, **changed})


def frame_index(image: Image.Image, count: int) -> int:
    """Which frame (0..count-1) a decoded image shows, by its mean colour."""
    mean = np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(0)
    return int(np.argmin([np.abs(mean - colour(i)).sum() for i in range(count)]))


def all_frames(path: Path) -> list[np.ndarray]:
    """Every frame decoded in order, no seeking (the reference for small files)."""
    with av.open(str(path)) as container:
        return [np.asarray(f.to_image()) for f in container.decode(video=0)]


# -- frame sampling ----------------------------------------------------------------------------------


def test_smart_nframes_follows_qwen_vl_utils():
    # duration * fps, floored to even, within [min_frames, max_frames] and the total
    assert smart_nframes(300, 30.0, qwen(fps=2.0)) == 20
    assert smart_nframes(301, 30.0, qwen(fps=2.0)) == 20
    assert smart_nframes(300, 30.0, qwen(fps=0.1)) == 4  # 1 frame, raised to min_frames
    assert smart_nframes(300, 30.0, qwen(fps=2.0, max_frames=9)) == 8  # max_frames floored to even
    assert smart_nframes(300, 30.0, qwen(fps=2.0, min_frames=5)) == 20
    assert smart_nframes(3000, 30.0, qwen(fps=2.0, min_frames=5, max_frames=11)) == 10
    assert smart_nframes(7, 30.0, qwen(fps=2.0)) == 4  # 0.47 frames -> min 4
    assert smart_nframes(5, 30.0, qwen(fps=30.0, min_frames=8)) == 4  # never more than the (even) total
    # nframes wins over fps and is rounded to the factor, then capped by the total
    assert smart_nframes(300, 30.0, qwen(fps=2.0, nframes=7)) == 8
    assert smart_nframes(300, 30.0, qwen(nframes=5)) == 4  # round(2.5) = 2 (banker's), as qwen-vl-utils
    assert smart_nframes(300, 30.0, qwen(nframes=1000)) == 300
    assert smart_nframes(301, 30.0, qwen(nframes=1000)) == 300
    assert smart_nframes(1, 30.0, qwen(fps=2.0)) == 1  # shorter than one temporal patch: all of it
    assert smart_nframes(300, 30.0, qwen(fps=None)) == 300  # every frame
    with pytest.raises(ValueError, match="no frames"):
        smart_nframes(0, 30.0, qwen())


def test_sample_indices_match_transformers_qwen3_sampler():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    processor = Qwen3VLVideoProcessor()
    for total, n in [(146, 12), (150, 10), (270, 18), (1000, 32), (5, 4), (9, 9)]:
        expected = processor.sample_frames(VideoMetadata(total_num_frames=total, fps=30.0), num_frames=n)
        assert sample_indices(total, n) == expected.tolist()


# -- decoding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gop", [1, 10, 250])
def test_load_video_picks_the_sampled_frames_with_seeks(tmp_path, gop):
    path = make_video(tmp_path / "v.mp4", count=200, fps=10, gop=gop)  # 20 s: targets 4 s apart seek
    video = load_video(str(path), "test", qwen(nframes=6))
    assert [frame_index(f, 200) for f in video.frames] == sample_indices(200, 6) == [0, 40, 80, 119, 159, 199]
    assert video.timestamps == pytest.approx([i / 10 for i in [0, 40, 80, 119, 159, 199]])
    assert video.sample_fps == pytest.approx(6 / 200 * 10)
    assert all(f.size == (64, 48) and f.mode == "RGB" for f in video.frames)
    dense = load_video(str(path), "test", qwen(fps=2.0))  # 40 frames, 0.5 s apart: decoded forward
    assert [frame_index(f, 200) for f in dense.frames] == sample_indices(200, 40)


def test_load_video_bytes_file_url_and_mpeg4(tmp_path):
    path = make_video(tmp_path / "v.avi", count=30, fps=10, codec="mpeg4")
    expected = sample_indices(30, 4)
    for source in (path, str(path), path.as_uri(), path.read_bytes()):
        video = load_video(source, "clip", qwen(nframes=4))
        assert [frame_index(f, 30) for f in video.frames] == expected


@pytest.mark.parametrize("path", PEER_VIDEOS, ids=lambda p: p.name)
def test_peer_videos_sample_exactly_the_frames_of_a_full_decode(path):
    reference = all_frames(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total, video_fps = stream.frames, float(stream.average_rate)
    assert len(reference) == total
    for kwargs in ({"nframes": 8}, {"fps": 2.0}):
        video = load_video(str(path), "peer", qwen(**kwargs))
        n = smart_nframes(total, video_fps, qwen(**{"fps": None, **kwargs}))
        indices = sample_indices(total, n)
        assert len(video.frames) == n
        for image, index in zip(video.frames, indices, strict=True):
            assert np.array_equal(np.asarray(image), reference[index]), index
        probe = probe_video(str(path), "peer", qwen(**kwargs))
        assert (probe.height, probe.width) == (video.frames[0].height, video.frames[0].width)
        assert probe.timestamps == video.timestamps == [i / video_fps for i in indices]
        assert probe.sample_fps == video.sample_fps == pytest.approx(n / total * video_fps)


def test_frame_lists(tmp_path):
    images = [Image.new("RGB", (40, 30), colour(i)) for i in range(5)]
    paths = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    for source in (images, paths):
        video = load_video(source, "frames", qwen(fps=4.0))
        assert [frame_index(f, 5) for f in video.frames] == [0, 1, 2, 3, 4]  # all kept, in order
        assert video.timestamps == [0.0, 0.25, 0.5, 0.75, 1.0] and video.sample_fps == 4.0
    thinned = load_video(paths, "frames", qwen(fps=4.0, nframes=3))
    assert [frame_index(f, 5) for f in thinned.frames] == [0, 2, 4]
    assert thinned.timestamps == [0.0, 0.5, 1.0]
    assert probe_video(paths, "frames", qwen(fps=4.0, nframes=3)).timestamps == thinned.timestamps
    assert len(load_video(paths, "frames", qwen(max_frames=2)).frames) == 2


def test_video_errors_name_the_item_and_file(tmp_path):
    with pytest.raises(MediaError, match=r"^row 3: video 1: file not found: .*nope\.mp4$"):
        load_video(str(tmp_path / "nope.mp4"), "row 3: video 1", qwen())
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 not a video" * 100)
    for call in (load_video, probe_video):
        with pytest.raises(MediaError, match=r"^row 3: video 1: .*corrupt\.mp4: not a readable video"):
            call(str(corrupt), "row 3: video 1", qwen())
    audio = tmp_path / "audio.wav"
    with wave.open(str(audio), "wb") as f:  # a real media file without a video stream
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(8000), f.writeframes(b"\0\0" * 800)
    with pytest.raises(MediaError, match="audio.wav: the file has no video stream"):
        load_video(str(audio), "clip", qwen())
    with pytest.raises(MediaError, match="clip: the list of frames is empty"):
        load_video([], "clip", qwen())
    with pytest.raises(MediaError, match="frames differ in size"):
        load_video([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))], "clip", qwen())
    with pytest.raises(MediaError, match="a single image is not a video"):
        load_video(Image.new("RGB", (4, 4)), "clip", qwen())
    with pytest.raises(MediaError, match="clip: frame 2: file not found"):
        load_video([Image.new("RGB", (4, 4)), str(tmp_path / "missing.png")], "clip", qwen())


# -- Qwen-VL encoding --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Family name -> a tiny model with the 600-token BPE (fast to build and load; same special tokens)."""
    from vlmkit.families.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("video-models")
    return {
        name: build_tiny_model(family_by_name(name), root / name.replace(".", "_"), small_vocab=True)
        for name in ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")
    }


_TOKENIZERS: dict[Path, object] = {}


def video_template(model_dir: Path, **settings):
    family = family_by_name(json.loads((model_dir / "config.json").read_text())["model_type"])
    if model_dir not in _TOKENIZERS:
        _TOKENIZERS[model_dir] = AutoTokenizer.from_pretrained(model_dir)
    return family.load_template(model_dir, _TOKENIZERS[model_dir], **settings)


def video_sample(source, question: str = "What happens?", answer: str | None = "It changes colour."):
    messages = [
        {"role": "user", "content": [{"type": "video", "video": source}, {"type": "text", "text": question}]}
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return to_sample({"messages": messages}, where="row 1")


def reference_patchify(frames: np.ndarray, ps: int, ms: int, tps: int) -> torch.Tensor:
    """transformers' Qwen2VLVideoProcessor.patchify, written out from its published view/permute."""
    video = torch.from_numpy(frames)[None]  # (1, T, C, H, W)
    if pad := -video.shape[1] % tps:
        video = torch.cat([video, video[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
    b, t, c, h, w = video.shape
    gt, gh, gw = t // tps, h // ps, w // ps
    patches = video.view(b, gt, tps, c, gh // ms, ms, ps, gw // ms, ms, ps)
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return patches.reshape(gt * gh * gw, c * tps * ps * ps)


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_encode_video_shapes_tokens_and_patches(models, tmp_path, family):
    template = video_template(models[family], nframes=5, video_max_pixels=20_000)
    frames = [
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (70, 90, 3), dtype=np.uint8))
        for i in range(5)
    ]
    sample = video_sample(frames)
    encoded = template.encode(sample)
    ps, ms, tps = template.patch_size, template.merge_size, template.temporal_patch_size
    height, width = video_frame_size(template, 70, 90, 5)
    t, gh, gw = 3, height // ps, width // ps  # 5 frames -> padded to 6 -> 3 temporal patches
    assert encoded["video_grid_thw"].tolist() == [[t, gh, gw]]
    assert encoded["pixel_values_videos"].shape == (t * gh * gw, 3 * tps * ps * ps)
    # the patches: resized and normalised frames laid out as transformers' processor lays them out
    resized = np.stack([np.asarray(f.resize((width, height), Image.Resampling.BICUBIC)) for f in frames])
    normalised = (resized.astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - template.mean) / template.std
    expected = reference_patchify(normalised.astype(np.float32), ps, ms, tps)
    assert torch.allclose(encoded["pixel_values_videos"], expected, atol=1e-6)
    ids = encoded["input_ids"]
    video_id = template.video_token_id
    assert int((ids == video_id).sum()) == t * gh * gw // ms**2
    assert torch.equal(encoded["mm_token_type_ids"] == 2, ids == video_id)
    assert (encoded["labels"][ids == video_id] == -100).all()
    assert template.count_tokens(sample) == len(ids)
    text = template.tokenizer.decode(ids)
    if family == "qwen3-vl":  # "<t seconds>" + vision_start + pads + vision_end per temporal group
        seconds = group_timestamps([i / 2.0 for i in range(5)], tps)
        assert seconds == [0.25, 1.25, 2.0]
        per_group = "<|video_pad|>" * (gh * gw // ms**2)
        groups = "".join(f"<{s:.1f} seconds><|vision_start|>{per_group}<|vision_end|>" for s in seconds)
        assert f"<|vision_start|>{groups}<|vision_end|>What happens?" in text
        assert "second_per_grid_ts" not in encoded
    else:
        assert "<|vision_start|>" + "<|video_pad|>" * (t * gh * gw // 4) + "<|vision_end|>What" in text
    if family == "qwen2.5-vl":
        assert encoded["second_per_grid_ts"].tolist() == [pytest.approx(tps / 2.0)]  # frames at fps 2.0
    batch = template.collate([encoded, template.encode(video_sample(frames[:2]))])
    assert batch["video_grid_thw"].tolist() == [[t, gh, gw], [1, gh, gw]]
    assert batch["pixel_values_videos"].shape[0] == (t + 1) * gh * gw
    assert ("second_per_grid_ts" in batch) == (family == "qwen2.5-vl")


def test_qwen3_timestamps_match_transformers():
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    fps = 23.976
    for indices in ([0, 13, 25, 38, 51, 63], [0, 40, 80, 119, 159], [7]):
        expected = Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
        assert group_timestamps([i / fps for i in indices], 2) == pytest.approx(expected)


def test_frame_size_follows_the_published_budget_rules(models):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as qwen3_resize

    q3 = video_template(models["qwen3-vl"])
    for n, h, w in [(4, 1080, 1920), (32, 1080, 1920), (768, 360, 640), (2, 240, 320), (60, 720, 1280)]:
        # transformers' Qwen3VLVideoProcessor.resize with cap_pixels_per_frame=True and the checkpoint's size
        per_frame = max(min(768 * 32 * 32, 25165824 // n), int(4096 * 1.05))
        assert video_frame_size(q3, h, w, n) == qwen3_resize(n, h, w, 2, 32, 4096, per_frame * n)
    q2 = video_template(models["qwen2-vl"])
    for n, h, w in [(4, 1080, 1920), (32, 1080, 1920), (768, 360, 640), (300, 720, 1280)]:
        # qwen-vl-utils / Qwen2VLVideoProcessor (cap): 128..768 tokens per frame, 90% of 128k tokens in all
        per_frame = max(min(768 * 28 * 28, int(128000 * 28 * 28 * 0.9) * 2 // n), int(128 * 28 * 28 * 1.05))
        assert video_frame_size(q2, h, w, n) == smart_resize(h, w, 28, 128 * 28 * 28, per_frame)
    assert video_frame_size(q2, 1080, 1920, 4) == (560, 1008)  # 720 tokens: under the 768-token cap
    assert video_frame_size(q2, 1080, 1920, 768) == (336, 644)  # the total budget binds (235200 px)
    lowered = video_template(models["qwen2-vl"], video_max_pixels=128 * 28 * 28 * 2)
    assert math.prod(video_frame_size(lowered, 1080, 1920, 4)) <= 128 * 28 * 28 * 2


def test_min_frames_raises_the_frames_sampled_by_fps_and_travels(models, tmp_path):
    """--min-frames (added by one field, one option and the Qwen families' encoding_options)."""
    path = make_video(tmp_path / "v.mp4", count=100, fps=10)  # 10 s: 1 frame at --fps 0.1, raised to the minimum
    default = video_template(models["qwen2-vl"], fps=0.1)
    assert len(load_video(str(path), "v", default.video_sampling).frames) == 4  # qwen-vl-utils' minimum
    raised = video_template(models["qwen2-vl"], fps=0.1, min_frames=8)
    assert len(load_video(str(path), "v", raised.video_sampling).frames) == 8
    model = tmp_path / "model"
    shutil.copytree(models["qwen2-vl"], model)
    (model / "vlmkit.json").write_text(json.dumps(raised.settings))
    assert video_template(model).video_sampling.min_frames == 8  # saved with a run, read back
    with pytest.raises(DataError, match="--min-frames 0: must be at least 1"):
        video_template(models["qwen2-vl"], min_frames=0)
    with pytest.raises(VlmkitError, match="--min-frames does not apply to llava"):
        family_by_name("llava").load_template(models["qwen2-vl"], None, min_frames=8)  # refused before loading


def test_video_settings_travel_and_are_validated(models, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(models["qwen2-vl"], model)
    template = video_template(model)
    assert (template.fps, template.nframes, template.max_frames) == (2.0, None, 768)
    settings = {**template.settings, "nframes": 6, "video_max_pixels": 50_000}
    (model / "vlmkit.json").write_text(json.dumps(settings))
    saved = video_template(model)
    assert (saved.fps, saved.nframes, saved.video_max_pixels) == (2.0, 6, 50_000)
    given = video_template(model, fps=1.0)  # --fps replaces a saved --nframes
    assert (given.fps, given.nframes, given.video_max_pixels) == (1.0, None, 50_000)
    (model / "video_preprocessor_config.json").write_text(json.dumps({"fps": 1.5, "max_frames": 100}))
    (model / "vlmkit.json").unlink()
    assert (video_template(model).fps, video_template(model).max_frames) == (1.5, 100)
    with pytest.raises(DataError, match="--nframes 0: must be at least 1"):
        video_template(model, nframes=0)
    with pytest.raises(DataError, match="--fps -1.0: must be above 0"):
        video_template(model, fps=-1.0)
    lowered = video_template(model, video_max_pixels=1000)  # a maximum below the minimum lowers it
    assert (lowered.video_min_pixels, lowered.video_max_pixels) == (1000, 1000)
    with pytest.raises(VlmkitError, match="--video-max-pixels 100: below one 28x28 patch; give at least 784"):
        video_template(model, video_max_pixels=100)


def test_video_placeholder_and_media_errors(models, tmp_path):
    template = video_template(models["qwen2-vl"], nframes=4, video_max_pixels=20_000)
    missing = video_sample(str(tmp_path / "gone.mp4"))
    for call in (template.encode, template.count_tokens):
        with pytest.raises(MediaError, match=r"^row 1: video 1: file not found: .*gone\.mp4"):
            call(missing)
    system_video = to_sample(
        {
            "messages": [
                {"role": "system", "content": [{"type": "video", "video": str(DEMO / "4.mp4")}]},
                {"role": "user", "content": "hi"},
            ]
        }
    )
    q3 = video_template(models["qwen3-vl"], nframes=4)
    with pytest.raises(DataError, match="cannot place an video"):
        q3.encode(system_video)


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_tiny_models_train_step_and_generate_on_video(models, family):
    import vlmkit

    vlm = vlmkit.load(str(models[family]), nframes=4, video_max_pixels=12_000, device="cpu", dtype="fp32")
    sample = video_sample(str(DEMO / "4.mp4"))
    batch = vlm.template.collate([vlm.template.encode(sample)])
    vlm.model.train()
    loss = vlm.model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    visual = [p.grad for n, p in vlm.model.named_parameters() if "visual" in n and p.grad is not None]
    assert visual and any(g.abs().sum() > 0 for g in visual)  # the video reached the vision tower
    vlm.model.eval()
    prompts = [video_sample(str(DEMO / "2.avi"), answer=None), video_sample(str(DEMO / "4.mp4"), answer=None)]
    replies = vlm.generate(prompts, max_new_tokens=3)
    # batched (left-padded) video generation equals one by one
    assert replies == [vlm.generate([prompt], max_new_tokens=3)[0] for prompt in prompts]


def test_chat_asks_for_a_video_and_survives_a_missing_one(models, tmp_path):
    import io

    import vlmkit
    from vlmkit.backends.transformers_backend import GenerationOptions
    from vlmkit.infer.batch import SEPARATOR, run_chat

    vlm = vlmkit.load(str(models["qwen2-vl"]), nframes=4, video_max_pixels=12_000, device="cpu", dtype="fp32")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"junk" * 50)
    script = f"<video>What happens?\n{DEMO / '4.mp4'}\n<video>And here?\n/nope.mp4\n{corrupt}\nexit\n"
    stdout, stderr = io.StringIO(), io.StringIO()
    run_chat(vlm, GenerationOptions(max_new_tokens=3), stdin=io.StringIO(script), stdout=stdout, stderr=stderr, quiet=True)
    assert stdout.getvalue().count("Input a video path or URL <<< ") == 3  # /nope.mp4 is no file: asked again
    assert stdout.getvalue().count(SEPARATOR) == 1  # the first turn answered, the second refused
    errors = stderr.getvalue().splitlines()
    assert len(errors) == 2 and errors[0].startswith("error: '/nope.mp4' is not a file, an http(s) URL")
    assert errors[1].startswith("error: chat: video 2: ") and "not a readable video" in errors[1]  # 2nd of the chat


# -- commands ----------------------------------------------------------------------------------------


@pytest.fixture
def video_demo(tmp_path) -> Path:
    """LLaMA-Factory's video demo file beside its media folder (1.mp4 is not shipped: a bad row)."""
    shutil.copy(PEERS / "llamafactory" / "mllm_video_demo.json", tmp_path / "videos.json")
    (tmp_path / "mllm_demo_data").symlink_to(DEMO)
    return tmp_path / "videos.json"


def test_data_check_accepts_video_rows(models, video_demo, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"junk" * 50)
    rows = json.loads(video_demo.read_text()) + [
        {
            "messages": [{"role": "user", "content": "<video>?"}, {"role": "assistant", "content": "x"}],
            "videos": [str(corrupt)],
        }
    ]
    video_demo.write_text(json.dumps(rows, indent=2))
    result = CliRunner().invoke(
        app,
        [
            "data",
            "check",
            "-m",
            str(models["qwen3-vl"]),
            "-d",
            str(video_demo),
            "--nframes",
            "4",
            "--histogram",
            str(tmp_path / "h.png"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 1, result.output  # some rows are bad
    assert "4 rows in 1 file: 2 good, 2 bad" in result.output
    assert "missing video 1" in result.output and "unreadable video 1" in result.output
    assert "videos.json:2: video 1 not found" in result.output


def video_row(video) -> dict:
    return {
        "messages": [{"role": "user", "content": "<video>What happens?"}, {"role": "assistant", "content": "x"}],
        "videos": [video],
    }


def test_check_and_sft_refuse_up_front_the_videos_that_stop_training(models, tmp_path):
    """Issue 11 #8: a .jpg given as a video and a frame list of mixed sizes passed the check, then
    stopped `vlmkit sft` half-way. Both are bad rows now, in `data check` and in sft's validation."""
    from vlmkit.train import SFTConfig, sft

    Image.new("RGB", (64, 48), "red").save(tmp_path / "photo.jpg")
    for i, size in enumerate([(64, 48), (64, 48), (80, 48), (64, 48)]):
        Image.new("RGB", size, (i * 60, 0, 0)).save(tmp_path / f"f{i}.png")
    make_video(tmp_path / "ok.mp4", 8)
    rows = [video_row(str(tmp_path / "ok.mp4"))] * 6 + [
        video_row(str(tmp_path / "photo.jpg")),
        video_row([str(tmp_path / f"f{i}.png") for i in range(4)]),
    ]
    data = tmp_path / "videos.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = str(models["qwen2-vl"])
    result = CliRunner().invoke(
        app, ["data", "check", "-m", model, "-d", str(data), "--nframes", "4",
              "--histogram", str(tmp_path / "h.png"), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "checked 8 rows in 1 file: 6 good, 2 bad" in result.output
    assert f"videos.jsonl:7: video 1: {tmp_path / 'photo.jpg'}: a still image, not a video" in result.output
    assert (
        "videos.jsonl:8: video 1: the frames differ in size (64x48, 80x48, w x h); give frames of one size"
    ) in result.output
    run_dir = sft(
        SFTConfig(model=model, dataset=[str(data)], output_dir=str(tmp_path / "out"), max_steps=2, nframes=4,
                  max_pixels=4000, max_bad_fraction=0.5, progress=False, num_workers=0, report_to="none",
                  eval_generate=0, save_steps=50)
    )  # fmt: skip
    assert (run_dir / "checkpoint-2").is_dir()
    bad = [json.loads(line) for line in (run_dir / "bad_samples.jsonl").read_text().splitlines()]
    assert [b["where"].rpartition(":")[2] for b in bad] == ["7", "8"]


def test_infer_batch_with_video_rows(models, video_demo, tmp_path):
    output = tmp_path / "preds.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "infer",
            "-m",
            str(models["qwen2.5-vl"]),
            "--input",
            str(video_demo),
            "--output",
            str(output),
            "--nframes",
            "4",
            "--video-max-pixels",
            "12000",
            "--max-new-tokens",
            "3",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 3
    assert "1.mp4" in rows[0]["error"] and "response" not in rows[0]
    assert rows[1]["labels"] == "She is cooking."
    # the other rows' replies are the model's greedy replies to them, with the same frame settings
    vlm = vlmkit.load(str(models["qwen2.5-vl"]), nframes=4, video_max_pixels=12000, device="cpu")
    rest = video_demo.parent / "rest.json"
    rest.write_text(json.dumps(json.loads(video_demo.read_text())[1:]))
    assert [r.get("response") for r in rows[1:]] == greedy_replies(vlm, rest, 3)


def test_sft_trains_on_video_rows_and_saves_the_video_settings(small_model, tmp_path):
    from vlmkit.train import SFTConfig, sft

    clip = make_video(tmp_path / "clip.mp4", count=20, fps=10)
    rows = [
        {
            "messages": [
                {"role": "user", "content": "<video>What is she doing?"},
                {"role": "assistant", "content": "Cooking."},
            ],
            "videos": [str(DEMO / "2.avi")],
        },
        {
            "messages": [
                {"role": "user", "content": "<video><image>Colours?"},
                {"role": "assistant", "content": "Many."},
            ],
            "videos": [str(clip)],
            "images": [str(DEMO / "1.jpg")],
        },
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = sft(
        SFTConfig(
            model=str(small_model),
            dataset=[str(data)],
            output_dir=str(tmp_path / "out"),
            max_steps=3,
            batch_size=2,
            nframes=4,
            video_max_pixels=12_000,
            max_pixels=4000,
            logging_steps=1,
            save_steps=3,
            progress=False,
            num_workers=0,
            report_to="none",
            eval_generate=0,
        )
    )
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert losses and all(math.isfinite(x) for x in losses)
    assert (
        not (run_dir / "bad_samples.jsonl").exists()
        or not (run_dir / "bad_samples.jsonl").read_text().strip()
    )
    for folder in (run_dir, run_dir / "checkpoint-3"):
        saved = json.loads((folder / "vlmkit.json").read_text())
        assert (saved["nframes"], saved["video_max_pixels"], saved["fps"]) == (4, 12_000, None)


# -- memory ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sampling_a_long_1080p_video_holds_only_the_sampled_frames(tmp_path):
    """A small version of benchmarks/video_memory.py: 100 1080p frames (620 MB decoded); sampling 8
    must cost about the 8 RGB frames (50 MB) plus the decoder, far below the whole video."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import video_memory
    finally:
        sys.path.pop(0)
    path = tmp_path / "long.mp4"
    video_memory.make_video(path, minutes=20 / 60, fps=5, gop=50)
    result = video_memory.measure(path, nframes=8)
    assert result["frames"] == 8
    assert result["delta_mb"] < 200, result  # the whole video decoded would be 100 * 6.2 = 620 MB


def test_serve_counts_a_videos_frames_as_its_family_samples_them(tmp_path):
    """`vlmkit serve`'s --max-video-frames check samples with the template's own rule: InternVL takes any
    frame count (5 with --nframes 5), not Qwen's even counts (4), so a 5-frame video is over a limit of 4."""
    from vlmkit.errors import MediaTooLargeError
    from vlmkit.families.internvl.template import InternVLTemplate
    from vlmkit.families.tiny import build_tokenizer
    from vlmkit.serve.request import ServerConfig, _check_video

    video = make_video(tmp_path / "clip.mp4", 30)
    tokenizer = build_tokenizer(family_by_name("internvl"), small_vocab=True)
    template = InternVLTemplate(
        tokenizer, tile_size=28, tokens_per_tile=4, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        min_tiles=1, max_tiles=1, nframes=5,
    )  # fmt: skip
    assert template._video_frame_count(str(video), "clip") == 5
    with pytest.raises(MediaTooLargeError, match="gives 5 sampled frames"):
        _check_video(str(video), "request", template, ServerConfig(max_video_frames=4))
    _check_video(str(video), "request", template, ServerConfig(max_video_frames=5))


# -- export: what plain transformers and vLLM read ------------------------------------------------------


def vlmkit_cli(*args: str) -> str:
    """`python -m vlmkit ARGS` as a user runs it; its stdout (a failure shows stderr)."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "vlmkit", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow  # a 1-step video run and an export per family: ~15 s each on 2 cores
@pytest.mark.parametrize(
    ("family", "sampling"),
    [("qwen2-vl", ("--fps", "1.0")), ("qwen2.5-vl", ("--nframes", "4")), ("qwen3-vl", ("--nframes", "4"))],
)
def test_an_export_samples_video_as_the_run_did(models, tmp_path, family, sampling):
    """A video run's --fps/--nframes, --min/--max-frames and --video-max-pixels reach the export's video
    processor config as transformers reads it (Qwen2/2.5-VL ship none: transformers would read the image
    config instead, take every frame given and size frames by the image limits)."""
    from transformers.video_processing_utils import BaseVideoProcessor

    clip = make_video(tmp_path / "clip.mp4", count=30, fps=10)
    rows = [{"messages": [{"role": "user", "content": "<video>她在做什么？"}, {"role": "assistant", "content": "做饭。"}],
             "videos": [str(clip)]}]  # fmt: skip
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    frame_pixels = 50_176  # whole tokens of both 28x28 (Qwen2/2.5-VL) and 32x32 (Qwen3-VL) pixels
    vlmkit_cli(
        "sft", "--model", str(models[family]), "--dataset", str(data), "--output-dir", str(tmp_path / "run"),
        "--max-steps", "1", "--save-steps", "1", "--no-progress", "--report-to", "none", *sampling,
        "--min-frames", "2", "--max-frames", "6", "--video-max-pixels", str(frame_pixels),
    )  # fmt: skip
    checkpoint = next((tmp_path / "run").glob("*/v0-*/checkpoint-1"))
    vlmkit_cli("export", "--ckpt", str(checkpoint), "--merge-lora", "--output", str(tmp_path / "export"))
    run = json.loads((tmp_path / "export" / "vlmkit.json").read_text())
    assert (run["min_frames"], run["max_frames"], run["video_max_pixels"]) == (2, 6, frame_pixels)

    # what AutoVideoProcessor builds its Qwen2VL/Qwen3VLVideoProcessor from (the class itself needs torchvision)
    config, _ = BaseVideoProcessor.get_video_processor_dict(str(tmp_path / "export"))
    assert config["do_sample_frames"] is True  # Qwen2-VL's default is False: every frame given
    assert (config["fps"], config["num_frames"]) == (run["fps"], run["nframes"])
    assert (config["min_frames"], config["max_frames"]) == (2, 6)
    assert config["cap_pixels_per_frame"] is True  # qwen-vl-utils' per-frame share, as vlmkit encodes
    if family == "qwen3-vl":  # size is over all frames; the per-frame cap is in tokens of 32x32 pixels
        assert config["max_video_tokens"] * 32 * 32 == frame_pixels
        assert config["size"] == {"shortest_edge": 4096, "longest_edge": 25165824}
    else:  # Qwen2VLVideoProcessor.__init__: min_pixels/max_pixels override size; both say the same
        assert config["size"] == {"shortest_edge": frame_pixels, "longest_edge": frame_pixels}
        assert (config["min_pixels"], config["max_pixels"]) == (frame_pixels, frame_pixels)
    # and vlmkit loads the export with the run's sampling
    exported, trained = vlmkit.load(str(tmp_path / "export")), vlmkit.load(ckpt=str(checkpoint))
    assert exported.template.video_sampling == trained.template.video_sampling
