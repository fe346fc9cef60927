"""`vlmkit kto`'s labelled rows read as they are stored (`vlmkit.data.unpaired`): TRL's unpaired format, ms-swift's
and LLaMA-Factory's KTO rows, and every pair format of `vlmkit dpo` (each pair one desirable and one undesirable
row) become the same labelled conversations, encoded to the same ids; a file of desirable rows only is read as
it is; rows that are not KTO rows, and labels that are not true/false, are one line each."""

from __future__ import annotations

import pytest
from preference_rows import (
    CHOSEN,
    QUESTION,
    REJECTED,
    rows_in_every_format,
    unpaired_rows_in_every_format,
    write_jsonl,
)

from vlmkit.data.unpaired import load_unpaired_data, load_unpaired_datasets
from vlmkit.errors import DataError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("unpaired")
    paths = {f"kto {name}": write_jsonl(root / f"kto_{name}.jsonl", rows)
             for name, rows in unpaired_rows_in_every_format(root).items()}  # fmt: skip
    paths.update({f"pairs {name}": write_jsonl(root / f"{name}.jsonl", rows) for name, rows in rows_in_every_format(root).items()})
    return paths


def texts(sample) -> list[tuple[str, list[str]]]:
    return [(m["role"], [p["text"] if p["type"] == "text" else p["type"] for p in m["content"]]) for m in sample.messages]


@pytest.fixture(scope="module")
def template(small_model):
    from vlmkit.models.loader import load_tokenizer_and_template, resolve_model

    return load_tokenizer_and_template(resolve_model(str(small_model)))[1]


@pytest.mark.parametrize("name", ["kto trl", "kto ms-swift", "kto sharegpt", "pairs rlaif-v", "pairs rlhf-v", "pairs trl",
                                  "pairs ms-swift", "pairs sharegpt"])  # fmt: skip
def test_every_format_reads_to_the_same_labelled_rows(files, name, template):
    data = load_unpaired_data(str(files[name]))
    assert len(data) == 8 and (data.paired is not None) == name.startswith("pairs")
    reference = load_unpaired_data(str(files["kto ms-swift"]))
    for k in range(8):
        (sample, desirable), (expected, _) = data[k], reference[k]
        reply = CHOSEN[k // 2] if k % 2 == 0 else REJECTED[k // 2]
        assert desirable == (k % 2 == 0)  # a pair's chosen reply is desirable, its rejected one undesirable
        assert texts(sample) == [("user", ["image", QUESTION]), ("assistant", [reply])]
        got, want = template.encode(sample), template.encode(expected)
        assert got["input_ids"].tolist() == want["input_ids"].tolist()
        assert got["pixel_values"].equal(want["pixel_values"])
    assert data.labels(range(8)) == [True, False] * 4


def test_a_file_of_desirable_rows_only_is_read_as_it_is(files, tmp_path):
    """TRL's KTOTrainer trains on one-sided data (each label's loss is taken only when the batch has it);
    `vlmkit kto` reads it and says so in one warning line at start (tests/integration/test_kto.py)."""
    rows = [r for r in unpaired_rows_in_every_format(tmp_path)["trl"] if r["label"]]
    data = load_unpaired_data(str(write_jsonl(tmp_path / "good_only.jsonl", rows)))
    assert len(data) == 4 and data.labels(range(4)) == [True] * 4


def test_several_files_and_row_counts(files):
    data = load_unpaired_datasets([str(files["kto trl"]), f"{files['kto sharegpt']}#3"])
    assert len(data) == 11 and data.format == "trl+sharegpt"
    pairs = load_unpaired_datasets([str(files["pairs trl"]), f"{files['pairs rlhf-v']}#2"])
    assert len(pairs) == 12 and pairs.labels(range(12)) == [True, False] * 6


def test_rows_that_are_not_kto_rows_are_one_line_each(files, tmp_path):
    sft_rows = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"sft.jsonl: not a KTO dataset; keys found: messages; KTO formats"):
        load_unpaired_data(str(sft_rows))
    rows = unpaired_rows_in_every_format(tmp_path)["ms-swift"][:3]
    rows[1]["label"] = "yes"
    rows[2]["messages"] = rows[2]["messages"][:1]  # no reply for the label to judge
    data = load_unpaired_data(str(write_jsonl(tmp_path / "bad.jsonl", rows)))
    with pytest.raises(DataError, match=r"bad.jsonl:2: 'label' is 'yes'; expected true \(a desirable reply\) or false"):
        data[1]
    with pytest.raises(DataError, match=r"bad.jsonl:3: 'messages' must end with the assistant reply that the label"):
        data[2]
    with pytest.raises(Exception, match="either unpaired"):
        load_unpaired_datasets([str(files["kto trl"]), str(files["pairs trl"])])


def test_a_label_that_is_not_true_or_false_does_not_make_a_kto_row():
    """`label` is also an answer column of sft's VQA rows: `vlmkit data check` must keep checking those as sft rows."""
    from vlmkit.data.unpaired import unpaired_format

    messages = [{"role": "user", "content": "<image>Which option?"}, {"role": "assistant", "content": "B"}]
    assert unpaired_format([{"messages": messages, "label": "B"}]) is None
    assert unpaired_format([{"messages": messages, "label": 1}]) is None
    assert unpaired_format([{"messages": messages, "label": True}]) == "ms-swift"
