import pytest

from vlmkit.errors import DataError
from vlmkit.sample import to_sample


def test_placeholders_become_parts_in_order(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    row = {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Compare <image> and<image>."},
            {"role": "assistant", "content": "Same."},
            {"role": "user", "content": "<video>Now this"},
        ],
        "images": ["a.png", "http://example.com/b.png"],
        "videos": ["/abs/v.mp4"],
    }
    sample = to_sample(row, where="d.jsonl:3", base_dirs=[tmp_path])
    assert [m["role"] for m in sample.messages] == ["system", "user", "assistant", "user"]
    assert sample.messages[1]["content"] == [
        {"type": "text", "text": "Compare "},
        {"type": "image", "image": str(tmp_path / "a.png")},
        {"type": "text", "text": " and"},
        {"type": "image", "image": "http://example.com/b.png"},
        {"type": "text", "text": "."},
    ]
    assert sample.messages[3]["content"][0] == {"type": "video", "video": "/abs/v.mp4"}
    assert sample.media("image") == [str(tmp_path / "a.png"), "http://example.com/b.png"]
    assert sample.ends_with_assistant is False


def test_openai_content_parts():
    row = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is it?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "video_url", "video_url": {"url": "http://x/v.mp4"}},
                ],
            }
        ]
    }
    parts = to_sample(row).messages[0]["content"]
    assert parts == [
        {"type": "text", "text": "What is it?"},
        {"type": "image", "image": "data:image/png;base64,AAAA"},
        {"type": "video", "video": "http://x/v.mp4"},
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"messages": [{"role": "user", "content": "<image><image>hi"}], "images": ["a.png"]},
            "d.jsonl:7: 2 <image> placeholder(s) in the messages but 1 image(s) listed in 'images'",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "images": ["a.png"]},
            "d.jsonl:7: 0 <image> placeholder(s) in the messages but 1 image(s)",
        ),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "d.jsonl:7: message 0 has role 'robot'"),
        ({"messages": []}, "d.jsonl:7: no 'messages' list"),
        (
            {"messages": [{"role": "system", "content": "x"}]},
            "d.jsonl:7: the conversation has no user or assistant",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "unsupported type 'audio'"),
    ],
)
def test_bad_rows_name_the_row(row, message):
    with pytest.raises(DataError) as err:
        to_sample(row, where="d.jsonl:7")
    assert message in str(err.value)
    assert "\n" not in str(err.value)
