"""Dataset readers: every supported format, real peer files, sampling, splitting and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmkit.data import (
    detect_format,
    load_dataset,
    load_datasets,
    parse_spec,
    read_rows,
    row_to_sample,
    sample_indices,
    split_dataset,
)
from vlmkit.errors import DataError

PEERS = Path("/work/shared/data/peers")
needs_peers = pytest.mark.skipif(not PEERS.is_dir(), reason="peer data not present")


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def parts(sample, i: int) -> list[tuple[str, str]]:
    """(type, text or media path) of message i, paths relative to nothing (as resolved)."""
    return [(p["type"], p.get("text", p.get("image", p.get("video")))) for p in sample.messages[i]["content"]]


# --- messages (ms-swift 3 / LLaMA-Factory) -----------------------------------------------------


def test_messages_rows_pass_through(tmp_path):
    a, b = png(tmp_path / "img" / "a.png"), png(tmp_path / "img" / "b.png")
    rows = [
        {
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "<image>Compare with <image>?"},
                {"role": "assistant", "content": "Both red."},
            ],
            "images": ["img/a.png", "img/b.png"],
        },
        {  # OpenAI-style parts
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "img/a.png"}},
                        {"type": "text", "text": "Hi"},
                    ],
                },
                {"role": "assistant", "content": "Red."},
            ]
        },
    ]
    ds = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    assert ds.format == "messages" and len(ds) == 2 and ds.bad == []
    s = ds[0]
    assert s.where == f"{tmp_path / 'd.jsonl'}:1"
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant"]
    assert parts(s, 1) == [("image", str(a)), ("text", "Compare with "), ("image", str(b)), ("text", "?")]
    assert s.text("assistant") == "Both red."
    assert parts(ds[1], 0) == [("image", str(a)), ("text", "Hi")]


# --- ms-swift 2.x query / response / history (seed 000) -----------------------------------------

SEED_000 = [
    {"query": "<image>55555", "response": "66666", "images": ["image_path"]},
    {
        "query": "eeeee<image>eeeee<image>eeeee",
        "response": "fffff",
        "history": [],
        "images": ["p1.png", "p2.png"],
    },
    {
        "query": "EEEEE",
        "response": "FFFFF",
        "history": [["query1", "response2"], ["query2", "response2"]],
        "images": [],
    },
    {"query": "<video>55555", "response": "66666", "videos": ["video_path.mp4"]},
    {
        "query": "Find <bbox>",
        "response": "<ref-object>",
        "images": ["/coco2014/train2014/COCO_train2014_000000001507.jpg"],
        "objects": '[{"caption": "guy in red", "bbox": [138, 136, 235, 359], "bbox_type": "real", "image": 0}]',
    },
    {
        "query": "Find <ref-object>",
        "response": "<bbox>",
        "images": ["/coco2014/train2014/COCO_train2014_000000001507.jpg"],
        "objects": '[{"caption": "guy in red", "bbox": [[138, 136, 235, 359],[1,2,3,4]], "bbox_type": "real", "image": 0}]',
    },
    {
        "query": "Find <|object_ref_start|>the man<|object_ref_end|>",
        "response": "<|box_start|>(123,235),(324,546)<|box_end|>",
        "images": ["/coco2014/train2014/COCO_train2014_000000001507.jpg"],
    },
]


def test_query_response_rows_from_seed_000(tmp_path):
    png(tmp_path / "p1.png")
    png(tmp_path / "p2.png")
    ds = load_dataset(write_jsonl(tmp_path / "swift.jsonl", SEED_000))
    assert ds.format == "query-response" and len(ds) == 7

    s = ds[0]
    assert [m["role"] for m in s.messages] == ["user", "assistant"]
    assert parts(s, 0) == [("image", str(tmp_path / "image_path")), ("text", "55555")]  # missing: not opened

    s = ds[1]
    assert parts(s, 0) == [
        ("text", "eeeee"),
        ("image", str(tmp_path / "p1.png")),
        ("text", "eeeee"),
        ("image", str(tmp_path / "p2.png")),
        ("text", "eeeee"),
    ]

    s = ds[2]
    assert [(m["role"], m["content"][0]["text"]) for m in s.messages] == [
        ("user", "query1"),
        ("assistant", "response2"),
        ("user", "query2"),
        ("assistant", "response2"),
        ("user", "EEEEE"),
        ("assistant", "FFFFF"),
    ]
    assert parts(ds[3], 0) == [("video", str(tmp_path / "video_path.mp4")), ("text", "55555")]

    s = ds[4]
    assert s.objects == [
        {"caption": "guy in red", "bbox": [138, 136, 235, 359], "bbox_type": "real", "image": 0}
    ]
    coco = "/coco2014/train2014/COCO_train2014_000000001507.jpg"
    assert parts(s, 0) == [
        ("image", coco),
        ("text", "Find <bbox>"),
    ]  # no <image>: prepended, as ms-swift does
    assert s.text("user") == "Find <bbox>" and s.text("assistant") == "<ref-object>"
    assert ds[5].objects[0]["bbox"] == [[138, 136, 235, 359], [1, 2, 3, 4]]
    assert ds[6].text("assistant") == "<|box_start|>(123,235),(324,546)<|box_end|>"
    assert ds[6].text("user") == "Find <|object_ref_start|>the man<|object_ref_end|>"


def test_query_response_inline_img_url_and_history(tmp_path):
    """ms-swift's Qwen-VL style `<img>URL</img>` in a query, also inside history."""
    url = "http://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/road.png"
    row = {
        "query": "距离最远的城市是哪？",
        "response": "广州",
        "history": [[f"<img>{url}</img>距离各城市多远？", "马踏：14公里"]],
    }
    s = load_dataset(write_jsonl(tmp_path / "q.jsonl", [row]))[0]
    assert parts(s, 0) == [("image", url), ("text", "距离各城市多远？")]
    assert parts(s, 2) == [("text", "距离最远的城市是哪？")]
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]


def test_inference_rows_without_response_end_with_user(tmp_path):
    s = load_dataset(write_jsonl(tmp_path / "q.jsonl", [{"query": "hello"}]))[0]
    assert [m["role"] for m in s.messages] == ["user"] and not s.ends_with_assistant


def test_objects_string_that_is_not_json(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"query": "Find <bbox>", "response": "x", "objects": "[{bad"}])
    with pytest.raises(DataError, match=rf"^{path}:1: 'objects' is a string but not valid JSON"):
        load_dataset(path)[0]


# --- ShareGPT: Qwen-VL (seed 002), self-llm (seed 003), LLaVA / Qwen finetune -----------------


def test_qwen_vl_picture_rows_from_seed_002(tmp_path):
    image = png(tmp_path / "assets" / "demo.jpeg")
    rows = [
        {
            "id": "identity_0",
            "conversations": [
                {"from": "user", "value": "Picture 1: <img>assets/demo.jpeg</img>\n图中的狗是什么品种？"},
                {"from": "assistant", "value": "图中是一只拉布拉多犬。"},
                {"from": "user", "value": "框出图中的格子衬衫"},
                {"from": "assistant", "value": "<ref>格子衬衫</ref><box>(588,499),(725,789)</box>"},
            ],
        }
    ]
    ds = load_dataset(write_json(tmp_path / "qwenvl.json", rows))
    assert ds.format == "sharegpt"
    s = ds[0]
    assert s.where == f"{tmp_path / 'qwenvl.json'}:2" and s.extra == {"id": "identity_0"}
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert parts(s, 0) == [("image", str(image)), ("text", "\n图中的狗是什么品种？")]
    assert parts(s, 3) == [("text", "<ref>格子衬衫</ref><box>(588,499),(725,789)</box>")]


def test_qwen_vl_several_pictures_and_media_root(tmp_path):
    png(tmp_path / "coco" / "a.jpg")
    png(tmp_path / "coco" / "b.jpg")
    (tmp_path / "ann").mkdir()
    row = {
        "conversations": [
            {"from": "user", "value": "Picture 1: <img>a.jpg</img>\nPicture 2: <img>b.jpg</img>\nSame?"}
        ]
    }
    s = load_dataset(write_json(tmp_path / "ann" / "d.json", [row]), media_root=tmp_path / "coco")[0]
    assert parts(s, 0) == [
        ("image", str(tmp_path / "coco" / "a.jpg")),
        ("text", "\n"),
        ("image", str(tmp_path / "coco" / "b.jpg")),
        ("text", "\nSame?"),
    ]


def test_vision_start_rows_from_seed_003(tmp_path):
    image = png(tmp_path / "coco_2014" / "1.jpg")
    rows = [
        {
            "id": f"identity_{i}",
            "conversations": [
                {"from": "user", "value": f"COCO Yes: <|vision_start|>{path}<|vision_end|>"},
                {"from": "assistant", "value": "A snow skier assessing the mountain before starting to sky"},
            ],
        }
        for i, path in [(1, "coco_2014/1.jpg"), (2, str(image)), (3, "clips/a.mp4")]
    ]
    ds = load_dataset(write_json(tmp_path / "data_vl.json", rows))
    assert parts(ds[0], 0) == [("text", "COCO Yes: "), ("image", str(image))]
    assert parts(ds[1], 0) == [("text", "COCO Yes: "), ("image", str(image))]
    assert parts(ds[2], 0) == [("text", "COCO Yes: "), ("video", str(tmp_path / "clips" / "a.mp4"))]
    assert ds[0].text("assistant").startswith("A snow skier")


def test_vision_markers_around_pads_and_urls(tmp_path):
    url = "https://example.com/clip.mp4?sig=1"
    row = {
        "messages": [
            {
                "role": "user",
                "content": "<|vision_start|><|image_pad|><|vision_end|>and<|vision_start|>"
                + url
                + "<|vision_end|>",
            }
        ],
        "images": ["a.png"],
    }
    s = load_dataset(write_jsonl(tmp_path / "d.jsonl", [row]))[0]
    assert parts(s, 0) == [("image", str(tmp_path / "a.png")), ("text", "and"), ("video", url)]
    empty = {"query": "<img></img>hi"}
    with pytest.raises(DataError, match=r"e.jsonl:1: empty inline image tag '<img></img>'"):
        load_dataset(write_jsonl(tmp_path / "e.jsonl", [empty]))[0]


def test_llava_image_field_with_and_without_placeholder(tmp_path):
    image = png(tmp_path / "coco" / "x.jpg")
    rows = [
        {
            "id": "1",
            "image": "coco/x.jpg",
            "conversations": [
                {"from": "human", "value": "What is this?\n<image>"},
                {"from": "gpt", "value": "A red square."},
            ],
        },
        {  # LLaVA convention: no placeholder -> one prepended to the first user turn
            "image": "coco/x.jpg",
            "conversations": [
                {"from": "system", "value": "You look closely."},
                {"from": "human", "value": "Colour?"},
                {"from": "gpt", "value": "Red."},
            ],
        },
        {  # a list, role/content turns, a top-level system
            "image": ["coco/x.jpg", "coco/x.jpg"],
            "system": "Sys.",
            "conversations": [
                {"role": "user", "content": "<image><image>Same?"},
                {"role": "assistant", "content": "Yes"},
            ],
        },
    ]
    ds = load_dataset(write_json(tmp_path / "llava.json", rows))
    assert parts(ds[0], 0) == [("text", "What is this?\n"), ("image", str(image))]
    s = ds[1]
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant"]
    assert parts(s, 1) == [("image", str(image)), ("text", "\nColour?")]
    s = ds[2]
    assert s.messages[0] == {"role": "system", "content": [{"type": "text", "text": "Sys."}]}
    assert parts(s, 1) == [("image", str(image)), ("image", str(image)), ("text", "Same?")]


def test_sharegpt_video_field_and_unknown_speaker(tmp_path):
    row = {
        "video": "v.mp4",
        "conversations": [{"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "x"}],
    }
    s = load_dataset(write_json(tmp_path / "v.json", [row]))[0]
    assert parts(s, 0) == [("video", str(tmp_path / "v.mp4")), ("text", "\nWhat?")]
    bad = {"conversations": [{"from": "narrator", "value": "hi"}]}
    with pytest.raises(
        DataError, match=r"v2.json:2: conversations turn 0 is from 'narrator'; expected one of"
    ):
        load_dataset(write_json(tmp_path / "v2.json", [bad]))[0]


def test_alpaca_rows(tmp_path):
    row = {"instruction": "<image>Describe", "input": "briefly", "output": "Red.", "images": ["a.png"]}
    s = load_dataset(write_jsonl(tmp_path / "a.jsonl", [row]))[0]
    assert parts(s, 0) == [("image", str(tmp_path / "a.png")), ("text", "Describe\nbriefly")]
    assert s.text("assistant") == "Red."


# --- real peer files ---------------------------------------------------------------------------


@needs_peers
def test_peer_llamafactory_mllm_demo():
    ds = load_dataset(PEERS / "llamafactory" / "mllm_demo.json")
    folder = PEERS / "llamafactory" / "mllm_demo_data"
    assert ds.format == "messages" and len(ds) == 6 and ds.bad == []
    s = ds[0]
    assert s.where.endswith("mllm_demo.json:2")
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert parts(s, 0) == [("image", str(folder / "1.jpg")), ("text", "Who are they?")]
    assert parts(s, 2) == [("text", "What are they doing?"), ("image", str(folder / "1.jpg"))]
    assert (
        s.text("assistant")
        == "They're Kane and Gretzka from Bayern Munich.They are celebrating on the soccer field."
    )
    for sample in ds:
        assert all(Path(p).is_file() for p in sample.media("image"))
    assert ds.check() == []


@needs_peers
def test_peer_llamafactory_mllm_video_demo():
    ds = load_dataset(PEERS / "llamafactory" / "mllm_video_demo.json")
    folder = PEERS / "llamafactory" / "mllm_demo_data"
    assert [s.media("video") for s in ds] == [
        [str(folder / "1.mp4")],
        [str(folder / "2.avi")],
        [str(folder / "3.mp4")],
    ]
    assert parts(ds[1], 0) == [("video", str(folder / "2.avi")), ("text", "What is she doing?")]
    assert not (folder / "1.mp4").exists() and (folder / "2.avi").exists()
    problems = ds.check()
    assert len(problems) == 1 and problems[0][0].endswith("mllm_video_demo.json:2")
    assert problems[0][1].startswith(f"video 1 not found: {folder / '1.mp4'}")


@needs_peers
def test_peer_qwen3vl_single_images_with_media_root(tmp_path):
    """The file's paths are `demo/images/...`, relative to the folder that holds `demo/`.

    The peer copy is named qwen3vl_finetune_demo/, so the original layout is rebuilt with
    a `demo` link; media_root is the folder holding it.
    """
    (tmp_path / "demo").symlink_to(PEERS / "qwen3vl_finetune_demo")
    ds = load_dataset(PEERS / "qwen3vl_finetune_demo" / "single_images.json", media_root=tmp_path)
    assert ds.format == "sharegpt" and len(ds) == 3
    s = ds[0]
    assert parts(s, 0) == [
        ("text", "Is the value of Favorable 38 in 2015?\n"),
        ("image", str(tmp_path / "demo" / "images" / "10095.png")),
    ]
    assert s.text("assistant") == "Yes"
    assert [Path(x.media("image")[0]).name for x in ds] == ["10095.png", "10095.png", "10149.png"]
    assert all(Path(x.media("image")[0]).is_file() for x in ds)
    assert ds.check() == []


@needs_peers
def test_peer_qwen3vl_video_rows_parse_with_missing_videos():
    ds = load_dataset(PEERS / "qwen3vl_finetune_demo" / "video.json")
    folder = PEERS / "qwen3vl_finetune_demo"
    assert ds.format == "sharegpt"
    assert [s.media("video") for s in ds] == [
        [str(folder / "v_7bUu05RIksU.mp4")],
        [str(folder / "v_TpB_zMG3XBA.mp4")],
        [str(folder / "v_rBMQFpHspmo.mp4")],
    ]
    assert parts(ds[1], 0)[1] == ("text", "\nCan you describe what the woman is doing on the lake?")
    assert [where.rsplit(":", 1)[1] for where, _ in ds.check()] == ["2", "15", "28"]


# --- files, locations and errors ---------------------------------------------------------------


def test_bad_json_line_is_reported_and_good_rows_load(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"query": "q", "response": "r"})
    path.write_text(f"{good}\n{{not json\n\n[1, 2]\n{good}\n", encoding="utf-8")
    ds = load_dataset(path)
    assert len(ds) == 2 and [r.where for r in ds.rows] == [f"{path}:1", f"{path}:5"]
    assert [w for w, _ in ds.bad] == [f"{path}:2", f"{path}:4"]
    assert ds.bad[0][1].startswith("invalid JSON (Expecting property name")
    assert ds.bad[1][1] == "expected a JSON object, got an array"
    rows = list(read_rows(path))
    assert isinstance(rows[1][1], DataError) and str(rows[1][1]).startswith(f"{path}:2: invalid JSON")


def test_placeholder_media_mismatch_names_file_and_line(tmp_path):
    rows = [
        {"query": "ok", "response": "r"},
        {"query": "<image><image>two?", "response": "r", "images": ["a.png"]},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    ds = load_dataset(path)
    with pytest.raises(DataError) as info:
        ds[1]
    assert str(info.value) == (
        f"{path}:2: 2 <image> placeholder(s) in the messages but 1 image(s) listed in 'images'; make them match"
    )
    assert ds.check() == [(f"{path}:2", str(info.value).removeprefix(f"{path}:2: "))]
    inline = {"query": "<img>a.png</img><image>", "response": "r"}  # the mismatch beside an inline tag
    with pytest.raises(
        DataError, match=rf"^{tmp_path / 'e.jsonl'}:1: 1 <image> placeholder\(s\).*but 0 image"
    ):
        load_dataset(write_jsonl(tmp_path / "e.jsonl", [inline]))[0]


def test_unknown_format_names_keys_and_formats(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(DataError) as info:
        load_dataset(path)
    message = str(info.value)
    assert message.startswith(
        f"{path}: unknown dataset format; keys found in the first rows: prompt, answer;"
    )
    for name in ("messages ('messages')", "sharegpt ('conversations')", "query-response ('query')", "alpaca"):
        assert name in message
    assert "\n" not in message


def test_row_in_another_format_fails_alone(tmp_path):
    rows = [{"query": "a", "response": "b"}] * 3 + [{"conversations": [{"from": "human", "value": "x"}]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    ds = load_dataset(path)
    assert ds.format == "query-response" and ds[0].text() == "ab"
    with pytest.raises(
        DataError, match=rf"^{path}:4: no 'query' key, but this file is in the query-response format"
    ):
        ds[3]
    assert detect_format([{"x": 1}, rows[3], rows[0], rows[0]]) == "query-response"


def test_json_file_layouts(tmp_path):
    row = {"query": "q", "response": "r"}
    lines = tmp_path / "lines.json"  # JSON Lines saved as .json
    write_jsonl(lines, [row, row])
    assert [r.where for r in load_dataset(lines).rows] == [f"{lines}:1", f"{lines}:2"]
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps([row, row, "x"]))
    ds = load_dataset(compact)
    assert [r.where for r in ds.rows] == [f"{compact}:#0", f"{compact}:#1"]
    assert ds.bad == [(f"{compact}:#2", "expected a JSON object, got a string")]
    single = tmp_path / "single.json"
    single.write_text(json.dumps(row, indent=2))
    assert len(load_dataset(single)) == 1
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"query": "q"},\n  {"query": }\n]')
    with pytest.raises(DataError, match=rf"^{broken}:3: invalid JSON .*none of it was read"):
        load_dataset(broken)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\n")
    assert load_dataset(bom)[0].text() == "qr"


def test_missing_file_wrong_extension_and_empty(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: dataset file not found"):
        load_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("a,b\n")
    with pytest.raises(DataError, match=r"d.txt: unsupported dataset file type '.txt'; use .json, .jsonl, .parquet"):
        load_dataset(tmp_path / "d.txt")
    (tmp_path / "d.csv").write_text("a,b\n")  # a CSV with a header and no rows
    with pytest.raises(DataError, match=r"d.csv: no dataset rows found"):
        load_dataset(tmp_path / "d.csv")
    (tmp_path / "e.jsonl").write_text("\n{oops\n")
    with pytest.raises(
        DataError, match=r"e.jsonl: no dataset rows found; 1 bad row\(s\), the first: .*e.jsonl:2"
    ):
        load_dataset(tmp_path / "e.jsonl")
    with pytest.raises(DataError, match="media root .*: not a folder"):
        load_dataset(write_jsonl(tmp_path / "f.jsonl", [{"query": "q"}]), media_root=tmp_path / "none")


# --- #N sampling, concatenation, splitting -----------------------------------------------------


def test_spec_parsing(tmp_path):
    assert parse_spec("a/b.jsonl") == (Path("a/b.jsonl"), None)
    assert parse_spec("a/b.jsonl#20000") == (Path("a/b.jsonl"), 20000)
    odd = tmp_path / "odd#1.jsonl"
    odd.write_text("")
    assert parse_spec(str(odd)) == (odd, None)
    for bad in ("d.jsonl#0", "d.jsonl#abc", "d.jsonl#-3"):
        with pytest.raises(DataError, match="is not a row count; write PATH#N"):
            parse_spec(bad)


def test_sampling_subset_repeat_and_determinism(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"query": str(i), "response": "r"} for i in range(10)])
    first = [s.text("user") for s in load_dataset(f"{path}#4")]
    again = [s.text("user") for s in load_dataset(f"{path}#4")]
    other = [s.text("user") for s in load_dataset(f"{path}#4", seed=7)]
    assert len(first) == 4 and len(set(first)) == 4 and first == again and first != other

    repeated = [s.text("user") for s in load_dataset(f"{path}#25")]
    assert len(repeated) == 25 and repeated[:20] == [str(i) for i in range(10)] * 2
    assert len(set(repeated[20:])) == 5
    assert sample_indices(10, 25) == sample_indices(10, 25)
    assert sorted(sample_indices(3, 3)) == [0, 1, 2]


def test_load_datasets_concatenates(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"query": "a", "response": "r"}] * 2)
    b = write_json(tmp_path / "b.json", [{"conversations": [{"from": "human", "value": "b"}]}])
    ds = load_datasets([str(a), f"{b}#3"])
    assert len(ds) == 5 and ds.format == "query-response+sharegpt"
    assert [s.text("user") for s in ds] == ["a", "a", "b", "b", "b"]
    with pytest.raises(DataError, match="no dataset given"):
        load_datasets([])


def test_split_dataset(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(json.dumps({"query": str(i), "response": "r"}) + "\n" for i in range(20)) + "{bad\n"
    )
    ds = load_dataset(path)
    train, val = split_dataset(ds, 0.1, seed=1)
    assert len(train) == 18 and len(val) == 2
    users = [s.text("user") for s in train] + [s.text("user") for s in val]
    assert sorted(users, key=int) == [str(i) for i in range(20)]
    assert [r.where for r in train.rows] == sorted(
        (r.where for r in train.rows), key=lambda w: int(w.rsplit(":")[1])
    )
    assert len(train.bad) == 1 and val.bad == []
    assert [r.where for r in split_dataset(ds, 0.1, seed=1)[1].rows] == [r.where for r in val.rows]
    assert len(split_dataset(ds, 0.0)[1]) == 0 and len(split_dataset(ds, 0.001)[1]) == 1
    with pytest.raises(DataError, match="--split-ratio 1.5: expected a fraction"):
        split_dataset(ds, 1.5)


def test_rows_are_not_mutated_by_conversion(tmp_path):
    png(tmp_path / "x.png")
    row = {
        "image": "x.png",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
    }
    ds = load_dataset(write_json(tmp_path / "d.json", [row]))
    assert parts(ds[0], 0) == parts(ds[0], 0) == [("image", str(tmp_path / "x.png")), ("text", "\nHi")]
    assert ds.rows[0].data == row
    assert row_to_sample(row, "sharegpt", "here").where == "here"


def test_batch_inference_and_eval_answer_rows_in_file_order_bad_lines_in_place(tmp_path):
    """`infer --input` and `eval` write one output row per input row in input order: a line that is not
    JSON keeps its place, in its own shard of a folder (it came first, or sorted by line number across
    shards, before)."""
    from vlmkit.data.readers import samples_in_order
    from vlmkit.eval.rows import read_dataset

    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"query": "a1"}\nnot json\n{"query": "a3"}\n')
    (folder / "b.jsonl").write_text('{"query": "b1"}\n[1]\n{"query": "b3"}\n')
    expected = ["a1", f"{folder / 'a.jsonl'}:2", "a3", "b1", f"{folder / 'b.jsonl'}:2", "b3"]

    def names(rows):
        return [raw.get("query") or str(sample).split(": ")[0] for raw, sample in rows]

    assert names(samples_in_order(load_dataset(folder))) == expected
    assert names(read_dataset(str(folder), None, None, None)[0]) == expected


GOOD_LINE = '{"query": "q", "response": "r"}'


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, "invalid JSON (nested too deeply"),
        ('{"query": "a \\ud800", "response": "r"}', "a string holds an unpaired UTF-16 surrogate"),
        ('{"query": "1" , "response": 1' + "0" * 5000 + "}", "invalid JSON (Exceeds the limit"),
    ],
    ids=["100,000 deep", "lone surrogate", "5,000-digit number"],
)
@pytest.mark.parametrize("layout", ["jsonl", "json array"])
def test_a_row_python_cannot_read_is_one_bad_row_the_others_load(tmp_path, line, reason, layout):
    """Issue 27 #14: each raised out of the reader (RecursionError, a tokenizer's TypeError later, ValueError)."""
    if layout == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("\n".join([GOOD_LINE, line, GOOD_LINE]) + "\n")
    else:
        path = tmp_path / "d.json"
        path.write_text("[\n" + ",\n".join([GOOD_LINE, line, GOOD_LINE]) + "\n]\n")
    ds = load_dataset(path)
    first = 1 if layout == "jsonl" else 2
    assert [r.where for r in ds.rows] == [f"{path}:{first}", f"{path}:{first + 2}"]
    assert [where for where, _ in ds.bad] == [f"{path}:{first + 1}"]
    assert ds.bad[0][1].startswith(reason), ds.bad


@pytest.mark.parametrize("value", ["NaN", "5", "true", '{"text": "x"}'])
def test_content_that_is_not_text_is_refused_not_written_out(tmp_path, value):
    """Issue 27 #14: `"content": NaN` trained on the text "nan", `5` on "5"."""
    messages, sharegpt = tmp_path / "messages.jsonl", tmp_path / "sharegpt.jsonl"
    messages.write_text('{"messages": [{"role": "user", "content": "How many?"}, {"role": "assistant", "content": '
                        + value + "}]}\n")  # fmt: skip
    sharegpt.write_text('{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ' + value + "}]}\n")
    for path, what in ((messages, "messages"), (sharegpt, "conversations")):
        with pytest.raises(DataError, match=rf"^{path}:1: {what} turn 1 is (a number|true/false|an object).*; expected text"):
            load_dataset(path)[0]
