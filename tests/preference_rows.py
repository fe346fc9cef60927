"""Preference rows in the real schemas of the datasets `vlmkit dpo` reads (RLAIF-V, RLHF-V, TRL's format,
ms-swift, LLaMA-Factory), made in the test: the same 4 pairs in each (tests/integration/test_dpo.py,
tests/unit/test_preference_data.py, tests/parity/test_dpo_trl.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from conftest import random_image

QUESTION = "图里是什么形状？\nOne line."
CHOSEN = ["一个红色的方块。\nA red square.", "蓝色的圆。\nA blue circle.", "绿色的三角形。", "一个方块。"]
REJECTED = ["一只猫。", "一条狗。\nA dog.", "没有东西。", "一辆车。"]


def png_bytes(i: int) -> bytes:
    buffer = io.BytesIO()
    random_image(40, 50, seed=i).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rlaif_v_row(i: int, image) -> dict:
    """A row of openbmb/RLAIF-V-Dataset (its columns, in its order)."""
    return {"ds_name": "RLAIF-V", "image": image, "question": QUESTION, "chosen": CHOSEN[i], "rejected": REJECTED[i],
            "origin_dataset": "OK-VQA", "origin_split": "train", "idx": i, "image_path": f"images/{i}.png"}  # fmt: skip


def rows_in_every_format(folder: Path) -> dict[str, list[dict]]:
    """The same 4 pairs in each format's own schema (JSON Lines; images as paths beside the file)."""
    for i in range(4):
        (folder / f"{i}.png").write_bytes(png_bytes(i))
    text = lambda i: json.dumps({"question": QUESTION, "chosen": CHOSEN[i], "rejected": REJECTED[i]}, ensure_ascii=False)  # noqa: E731
    return {
        "rlaif-v": [rlaif_v_row(i, {"bytes": None, "path": f"{i}.png"}) for i in range(4)],
        "rlhf-v": [{"ds_name": "RLHF-V", "text": text(i), "origin_dataset": "VQAv2", "origin_split": "train",
                    "idx": i, "image_path": f"{i}.png", "image": f"{i}.png"} for i in range(4)],
        "trl": [{"images": [f"{i}.png"],
                 "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
                 "chosen": [{"role": "assistant", "content": [{"type": "text", "text": CHOSEN[i]}]}],
                 "rejected": [{"role": "assistant", "content": [{"type": "text", "text": REJECTED[i]}]}]}
                for i in range(4)],
        "ms-swift": [{"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                                   {"role": "assistant", "content": CHOSEN[i]}],
                      "images": [f"{i}.png"], "rejected_response": REJECTED[i]} for i in range(4)],
        "sharegpt": [{"conversations": [{"from": "human", "value": f"<image>{QUESTION}"}],
                      "chosen": {"from": "gpt", "value": CHOSEN[i]}, "rejected": {"from": "gpt", "value": REJECTED[i]},
                      "images": [f"{i}.png"]} for i in range(4)],
    }  # fmt: skip


def rlaif_v_parquet(path: Path) -> Path:
    """RLAIF-V as the hub stores it: Parquet, `image` an Image feature ({bytes, path} struct)."""
    import datasets

    rows = [rlaif_v_row(i, {"bytes": png_bytes(i), "path": f"{i}.jpg"}) for i in range(4)]
    features = datasets.Features({k: datasets.Value("int64" if k == "idx" else "string") for k in rows[0]})
    features["image"] = datasets.Image()
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def unpaired_rows_in_every_format(folder: Path) -> dict[str, list[dict]]:
    """The same 4 pairs as `vlmkit kto`'s labelled rows, in each KTO format's own schema: row 2i the chosen
    reply of pair i (desirable), row 2i+1 its rejected reply (undesirable). Images as paths beside the file."""
    for i in range(4):
        (folder / f"{i}.png").write_bytes(png_bytes(i))
    replies = [(i, reply, label) for i in range(4) for reply, label in ((CHOSEN[i], True), (REJECTED[i], False))]
    return {
        # TRL's unpaired preference format (conversational, with images)
        "trl": [{"images": [f"{i}.png"],
                 "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
                 "completion": [{"role": "assistant", "content": [{"type": "text", "text": reply}]}],
                 "label": label} for i, reply, label in replies],
        # ms-swift's KTO rows (also LLaMA-Factory's kto_en_demo.json)
        "ms-swift": [{"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                                   {"role": "assistant", "content": reply}],
                      "images": [f"{i}.png"], "label": label} for i, reply, label in replies],
        # LLaMA-Factory's sharegpt rows with its kto_tag column
        "sharegpt": [{"conversations": [{"from": "human", "value": f"<image>{QUESTION}"},
                                        {"from": "gpt", "value": reply}],
                      "kto_tag": label, "images": [f"{i}.png"]} for i, reply, label in replies],
    }  # fmt: skip
