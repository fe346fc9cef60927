"""`vlmkit grpo`'s sample rollouts (`vlmkit.train.grpo_samples`): the lines of RUN/samples.jsonl, and the row's image
saved once with each completion's boxes and the solution's drawn in pixels of the original image (a Qwen2-VL reply
writes them on 0-1000); a resumed run keeps the lines up to its checkpoint. The run itself: test_grpo.py."""

from __future__ import annotations

import json

from PIL import Image

from vlmkit.data import load_datasets
from vlmkit.media.draw import PALETTE, REFERENCE_COLOUR
from vlmkit.models.loader import load_tokenizer_and_template, resolve_model
from vlmkit.settings import EncodingSettings
from vlmkit.train.grpo_samples import Rollout, SampleLog
from vlmkit.train.grpo_trainer import Prompts


def test_samples_are_written_with_the_boxes_drawn_in_original_pixels(small_model, tmp_path):
    Image.new("RGB", (200, 100), "white").save(tmp_path / "street.png")
    row = {"messages": [{"role": "user", "content": "<image>找到红色的车。\nLocate the red car."}],
           "images": ["street.png"], "solution": [20, 10, 60, 50]}  # fmt: skip
    (tmp_path / "refs.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    data = load_datasets([str(tmp_path / "refs.jsonl")])
    template = load_tokenizer_and_template(resolve_model(str(small_model)), EncodingSettings())[1]
    log = SampleLog(tmp_path / "run", Prompts(data, template, [row["solution"]]))
    (tmp_path / "run").mkdir()
    box = "<|box_start|>(500,200),(900,800)<|box_end|>"  # x 100-180, y 20-80 of the 200 x 100 image
    rollouts = [
        Rollout(0, f"车 {box}", {"iou": 0.0, "format": 1.0}, 0.2, -0.5),
        Rollout(0, "no box", {"iou": 0.0, "format": 0.0}, 0.0, 0.5),
    ]
    log.write(3, rollouts, callbacks=[])
    lines = [
        json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [x["completion"] for x in lines] == [f"车 {box}", "no box"]
    assert lines[0] == {
        "step": 3, "where": f"{tmp_path / 'refs.jsonl'}:1", "prompt": "找到红色的车。\nLocate the red car.",
        "completion": f"车 {box}", "rewards": {"iou": 0.0, "format": 1.0}, "reward": 0.2, "advantage": -0.5,
        "solution": [20, 10, 60, 50], "image": "samples/step-000003-row-0.png",
    }  # fmt: skip
    assert lines[1]["image"] == lines[0]["image"]  # the row's image, saved once for its completions
    drawn = Image.open(tmp_path / "run" / lines[0]["image"]).convert("RGB")
    assert drawn.size == (200, 100)  # original pixels
    assert drawn.getpixel((100, 50)) == PALETTE[0]  # the completion's box: its left edge at x = 100
    assert drawn.getpixel((179, 50)) == PALETTE[0]
    assert drawn.getpixel((20, 30)) == REFERENCE_COLOUR  # the solution's box: its left edge at x = 20
    assert drawn.getpixel((140, 50)) == (255, 255, 255)  # inside: the image itself

    log.write(4, rollouts[:1], callbacks=[])
    SampleLog(tmp_path / "run", log.prompts).start(3)  # resumed from checkpoint-3: step 4's lines go
    assert [json.loads(x)["step"] for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()] == [
        3,
        3,
    ]
