"""Qwen3.5 through the CLI: the workflows seed 000 (ms-swift's Qwen2-VL best practice) runs for Qwen2-VL,
done for Qwen3.5 as its user types them: chat and batch inference, LoRA sft at a pixel limit, a merged
export that plain transformers loads and resizes as trained, grounding boxes back in the original image's
pixels, video, the vLLM command line; and the one-line refusal of --packing (linear attention).

The tiny Qwen3.5 here has the 600-token vocabulary (fast to load in every command; the real 248k one is
checked in tests/parity/test_qwen3_5.py); where a reply is checked, a scripted model (tests/scripted.py)
answers a known text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import greedy_replies, random_image
from test_seeds import checkpoints, lora_b_max, read_jsonl, refcoco_rows, vlmkit, write_jsonl
from videos import make_video

import vlmkit as vlmkit_api

REPLY = "图中是一只猫。\n它在睡觉。"
BOX_REPLY = '```json\n[{"bbox_2d": [216, 283, 367, 748], "label": "guy in red"}]\n```'
MAX_PIXELS = 32 * 32 * 16  # 16 patches of 32x32 (4 image tokens each side at most)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    return build_tiny_model(family_by_name("qwen3.5"), tmp_path_factory.mktemp("q35") / "m", small_vocab=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model):
    """`vlmkit sft --tuner lora --max-pixels` on image rows with multi-line CJK replies, then
    `vlmkit export --merge-lora`: (work folder, checkpoint, merged folder)."""
    work = tmp_path_factory.mktemp("qwen3_5")
    (work / "images").mkdir()
    rows = []
    for i in range(4):
        random_image(200 + 40 * i, 300, seed=i).save(work / "images" / f"{i}.png")
        rows.append({"query": "<image>这是什么？", "response": REPLY, "images": [f"images/{i}.png"]})
    write_jsonl(work / "train.jsonl", rows)
    vlmkit("sft", "--model", str(model), "--tuner", "lora", "--dataset", "train.jsonl",
           "--max-pixels", str(MAX_PIXELS), "--max-steps", "3", "--lr", "0.05", "--output-dir", "out", cwd=work)  # fmt: skip
    ckpt = checkpoints(work / "out")[-1]
    vlmkit("export", "--ckpt", str(ckpt), "--merge-lora", "--output", "merged", cwd=work)
    return work, ckpt, work / "merged"


@pytest.mark.slow
def test_lora_export_carries_the_pixel_limit_and_answers_as_the_python_api(trained):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    work, ckpt, merged = trained
    assert lora_b_max(ckpt) > 0, "training left every lora_B at 0"
    assert json.loads((ckpt / "vlmkit.json").read_text())["max_pixels"] == MAX_PIXELS
    config = json.loads((merged / "preprocessor_config.json").read_text())
    assert config["max_pixels"] == config["size"]["longest_edge"] == MAX_PIXELS
    image = random_image(1080, 1440, seed=5)  # plain transformers resizes as vlmkit trained
    grid = AutoImageProcessor.from_pretrained(merged)(images=[image], return_tensors="pt")["image_grid_thw"][
        0
    ]
    ours = vlmkit_api.load(str(merged)).encode(
        {"messages": [{"role": "user", "content": "<image>Hi"}], "images": [image]}
    )
    assert grid.tolist() == ours["image_grid_thw"][0].tolist() and grid[1] * grid[2] * 16 * 16 <= MAX_PIXELS
    assert (
        type(AutoModelForImageTextToText.from_pretrained(merged)).__name__
        == "Qwen3_5ForConditionalGeneration"
    )
    vlmkit("infer", "--model", "merged", "--input", "train.jsonl", "--output", "preds.jsonl",
           "--max-new-tokens", "6", cwd=work)  # fmt: skip
    preds = read_jsonl(work / "preds.jsonl")
    assert [p["labels"] for p in preds] == [REPLY] * 4
    assert [p["response"] for p in preds] == greedy_replies(
        vlmkit_api.load(str(merged)), work / "train.jsonl", 6
    )


def plain_transformers_prompt(folder: Path) -> str:
    """The prompt plain transformers renders for a question with the folder's own chat template, no arguments."""
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": [{"type": "text", "text": "这是什么？"}]}]
    return AutoTokenizer.from_pretrained(folder).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def vlmkit_prompt(folder: Path) -> str:
    return vlmkit_api.load(str(folder)).template.render_text(
        {"messages": [{"role": "user", "content": "这是什么？"}]}, add_generation_prompt=True
    )


@pytest.mark.slow
def test_exports_chat_template_renders_the_trained_thinking_mode(trained, model, tmp_path):
    """The default run (no thinking) and an `--enable-thinking` run: the mode is saved with the checkpoint, the
    export's vlmkit.json and its chat template, so vlmkit and plain transformers on the export render the same
    prompt (`<think>\\n` open for reasoning, or the empty think block)."""
    work, _, merged = trained
    assert plain_transformers_prompt(merged) == vlmkit_prompt(merged)
    assert vlmkit_prompt(merged).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    rows = [{"query": "这是什么？", "response": "<think>\n看颜色。\n</think>\n\n" + REPLY}]
    write_jsonl(tmp_path / "think.jsonl", rows)
    vlmkit("sft", "--model", str(model), "--tuner", "lora", "--dataset", "think.jsonl", "--enable-thinking",
           "--max-steps", "1", "--output-dir", "out", cwd=tmp_path)  # fmt: skip
    ckpt = checkpoints(tmp_path / "out")[-1]
    assert json.loads((ckpt / "vlmkit.json").read_text())["enable_thinking"] is True
    vlmkit("export", "--ckpt", str(ckpt), "--merge-lora", "--output", "thinking", cwd=tmp_path)
    thinking = tmp_path / "thinking"
    assert json.loads((thinking / "vlmkit.json").read_text())["enable_thinking"] is True
    assert plain_transformers_prompt(thinking) == vlmkit_prompt(thinking)
    assert vlmkit_prompt(thinking).endswith("<|im_start|>assistant\n<think>\n")


@pytest.mark.slow
def test_packing_is_refused_in_one_line(model, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"query": "Hi", "response": REPLY}])
    done = vlmkit("sft", "--model", str(model), "--dataset", "d.jsonl", "--packing",
                  "--output-dir", "out", cwd=tmp_path, ok=False)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: --packing: the qwen3.5 family does not support packing (its linear-attention layers would carry "
        "one packed sample's state into the next); use --no-packing"
    )


@pytest.fixture(scope="module")
def grounding_model(tmp_path_factory):
    from scripted import build_scripted_model

    return build_scripted_model(
        "qwen3.5", tmp_path_factory.mktemp("q35box") / "m", BOX_REPLY, small_vocab=True
    )


@pytest.mark.slow
def test_grounding_boxes_come_back_in_original_pixels_and_are_drawn(grounding_model, tmp_path):
    """Seed 000's refcoco rows: the 0-1000 JSON box a Qwen3.5 replies maps back to the 640x480 original."""
    random_image(480, 640, seed=4).save(tmp_path / "COCO_train2014_000000001507.jpg")
    write_jsonl(tmp_path / "refcoco.jsonl", refcoco_rows())
    check = vlmkit(
        "data", "check", "--model", str(grounding_model), "--dataset", "refcoco.jsonl", cwd=tmp_path
    )
    assert "3 good, 0 bad" in check.stdout, check.stdout
    vlmkit("infer", "--model", str(grounding_model), "--input", "refcoco.jsonl", "--output", "preds.jsonl",
           "--batch-size", "3", "--draw", "drawn", "--max-new-tokens", "80", cwd=tmp_path)  # fmt: skip
    preds = read_jsonl(tmp_path / "preds.jsonl")
    for p in preds:
        assert p["response"] == BOX_REPLY  # no think block: vlmkit runs Qwen3.5 without thinking
        (found,) = p["objects"]
        assert found["ref"] == "guy in red" and found["image_id"] == 0
        assert found["bbox"] == pytest.approx([138.2, 135.8, 234.9, 359.0], abs=1.0)
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 3


@pytest.mark.slow
def test_chat_answers_each_turn_without_a_cache_to_reuse(grounding_model, tmp_path):
    """`vlmkit infer --model M` typed: image turns, clear, a video turn; every reply printed in full (the
    chat cache is off for Qwen3.5, so each turn is encoded whole)."""
    random_image(120, 160, seed=1).save(tmp_path / "cat.png")
    make_video(tmp_path / "clip.mp4", count=8, fps=4)
    typed = "<image>找出穿红衣服的人\ncat.png\n再找一次\nclear\n<video>描述视频\nclip.mp4\nexit\n"
    done = vlmkit(
        "infer", "--model", str(grounding_model), "--max-new-tokens", "80", cwd=tmp_path, stdin=typed
    )
    assert done.stdout.count(BOX_REPLY + "\n" + "-" * 50) == 3, done.stdout
    assert "error" not in done.stderr.lower(), done.stderr


@pytest.mark.slow
def test_video_rows_answer_as_the_python_api(model, tmp_path):
    make_video(tmp_path / "clip.mp4", count=12, fps=4, size=(64, 96))
    rows = [{"query": "<video>视频里发生了什么？", "response": REPLY, "videos": ["clip.mp4"]}]
    write_jsonl(tmp_path / "videos.jsonl", rows)
    done = vlmkit("infer", "--model", str(model), "--input", "videos.jsonl", "--output", "preds.jsonl",
                  "--fps", "2", "--max-new-tokens", "5", cwd=tmp_path)  # fmt: skip
    # the normal path is silent: no "falling back to its reference PyTorch implementation" lines for the
    # linear-attention kernels, which run on GPUs only (vlmkit.models.loader.quiet_cpu_kernel_fallbacks)
    assert "falling back" not in done.stderr, done.stderr
    (pred,) = read_jsonl(tmp_path / "preds.jsonl")
    vlm = vlmkit_api.load(str(model), fps=2)
    assert [pred["response"]] == greedy_replies(vlm, tmp_path / "videos.jsonl", 5)
    encoded = vlm.encode(
        {"messages": [{"role": "user", "content": "<video>Hi"}], "videos": [str(tmp_path / "clip.mp4")]}
    )
    assert encoded["video_grid_thw"][0, 0] == 3  # 3 s at 2 fps: 6 frames, 2 per temporal patch
    assert vlm.tokenizer.decode(encoded["input_ids"]).count(" seconds>") == 3  # Qwen3-VL's timestamps


def test_vllm_serves_it_under_its_architecture_with_the_non_thinking_template(model, tmp_path):
    from vlmkit.backends.vllm_args import plan_vllm, serve_command_line

    # vLLM's registered names for the two families' checkpoints
    assert json.loads((model / "config.json").read_text())["architectures"] == [
        "Qwen3_5ForConditionalGeneration"
    ]
    settings = {"min_pixels": None, "max_pixels": MAX_PIXELS, "system": None}
    plan = plan_vllm(str(model), None, {}, settings, "q")
    args = serve_command_line(plan, served_model_name="q", template_dir=tmp_path / "t")
    flags = {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--") and i + 1 < len(args)}
    assert json.loads(flags["--mm-processor-kwargs"])["max_pixels"] == MAX_PIXELS
    messages = [{"role": "user", "content": "你好"}]
    template = Path(flags["--chat-template"]).read_text()
    rendered = plan.tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    assert rendered == plan.template.render_text({"messages": messages}, add_generation_prompt=True)
    assert rendered.endswith("<think>\n\n</think>\n\n")


@pytest.mark.slow
def test_moe_tiny_model_trains_with_lora_through_the_cli(tmp_path):
    """`vlmkit tiny-model qwen3.5-moe`, then LoRA: the adapter covers the full-attention and the
    linear-attention projections (the experts are fused parameters, trained by --tuner full)."""
    from safetensors.torch import load_file

    vlmkit("tiny-model", "qwen3.5-moe", "moe", "--small-vocab", cwd=tmp_path)
    config = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3_5MoeForConditionalGeneration"]
    random_image(60, 80).save(tmp_path / "a.png")
    write_jsonl(
        tmp_path / "d.jsonl", [{"query": "<image>What?", "response": "A red square.", "images": ["a.png"]}]
    )
    vlmkit("sft", "--model", "moe", "--dataset", "d.jsonl", "--max-steps", "2", "--lr", "0.05",
           "--output-dir", "run", cwd=tmp_path)  # fmt: skip
    adapter = load_file(checkpoints(tmp_path / "run")[-1] / "adapter_model.safetensors")
    assert any("self_attn" in name for name in adapter) and any("linear_attn" in name for name in adapter)
    assert not any("experts." in name and "shared_expert" not in name for name in adapter)
