"""`sft --streaming`'s data path: rows read as a stream, split across processes and DataLoader workers with no
row twice per pass, packed per window, and resumed at the row after the last one trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ocr_parquet import write_ocr_parquet

from vlmkit.data.streaming import open_stream
from vlmkit.errors import VlmkitError
from vlmkit.families import family_by_name
from vlmkit.train import SFTConfig, streaming
from vlmkit.train.streaming import TrainingStream, collate_stream


def write_jsonl(path: Path, n: int) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"n{i}"}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    from transformers import AutoTokenizer

    from vlmkit.families.tiny import build_tiny_model

    model_dir = build_tiny_model(
        family_by_name("qwen2-vl"), tmp_path_factory.mktemp("m") / "m", small_vocab=True
    )
    return family_by_name("qwen2-vl").load_template(
        model_dir, AutoTokenizer.from_pretrained(model_dir), max_pixels=4000
    )


def where_of(self, row, limit):  # stands in for encoding: the rows' locations are what is checked here
    return {"where": row.where}


def wheres(items) -> list[list[str]]:
    return [[e["where"] for e in group] for group, _ in items]


def test_stream_reads_each_reader_s_rows_from_a_start(tmp_path):
    parquet = write_ocr_parquet(tmp_path / "ocr.parquet", 600)
    stream = open_stream([f"{parquet}#300", str(write_jsonl(tmp_path / "d.jsonl", 5))])
    everything = [(i, row.where) for i, row in stream.rows()]
    assert [w for _, w in everything[:2]] == [f"{parquet}:#0", f"{parquet}:#1"]
    assert len(everything) == 306 and everything[300][1].endswith("d.jsonl:1")  # #N: the first N rows
    assert isinstance(list(stream.rows())[-1][1].data, Exception)  # "not json": a bad row, not an error
    for start, step, offset in [(0, 3, 2), (74, 4, 1), (128, 2, 0)]:
        # one shard each: reader `offset` of `step` keeps the rows j % step == offset of each source (j: the
        # row's place in it), numbered across the sources from 0
        share = [w for i, w in everything if (i if i < 300 else i - 300) % step == offset]
        assert [(k, r.where) for k, r in stream.rows(start, step, offset)] == list(enumerate(share))[start:]
    assert stream.parts[0].format == "ocr" and stream.parts[1].format == "messages"


def test_streamed_rows_are_the_rows_read_without_streaming(tmp_path):
    """Each source kind (Parquet shards in a folder, an Arrow file, a save_to_disk folder, a CSV, JSONL) streams
    the rows `load_dataset` reads, with the same locations, format and converted values."""
    import datasets

    from vlmkit.data import load_dataset

    ocr = datasets.Dataset.from_parquet(str(write_ocr_parquet(tmp_path / "ocr.parquet", 9)))
    (tmp_path / "shards").mkdir()
    for k in range(2):
        ocr.shard(2, k, contiguous=True).to_parquet(
            str(tmp_path / "shards" / f"train-0000{k}-of-00002.parquet")
        )
    ocr.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    (tmp_path / "caps.csv").write_text(
        "image_path,caption\n" + "".join(f"{i}.png,photo {i}\n" for i in range(5))
    )
    for spec in ["shards", "saved", str(arrow), "caps.csv", str(write_jsonl(tmp_path / "d.jsonl", 4))]:
        spec = str(tmp_path / spec)
        stored = load_dataset(spec)
        streamed = [row for _, row in open_stream([spec]).rows()]
        assert [(r.where, r.format, r.data) for r in streamed if isinstance(r.data, dict)] == [
            (r.where, r.format, r.data) for r in stored.rows
        ], spec
        assert stored.schemas == open_stream([spec]).schemas


def test_readers_take_every_row_once_per_pass(template, tmp_path, monkeypatch):
    """2 processes x 2 DataLoader workers: the four readers' rows over one pass are all rows, each once."""
    monkeypatch.setattr(TrainingStream, "_encode", where_of)
    monkeypatch.setattr(streaming, "WINDOW", 5)
    stream = open_stream([str(write_ocr_parquet(tmp_path / "ocr.parquet", 37))])
    seen = []
    for rank in range(2):
        data = TrainingStream(
            stream,
            template,
            max_length=300,
            truncation="delete",
            capacity=300,
            rank=rank,
            world_size=2,
            seed=1,
        )
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
        for _, (group, (reader, position)) in zip(range(40), loader, strict=False):
            if position[0] == 0:  # the first pass over the data
                seen += [(reader, e["where"]) for e in group]
    rows = [w for _, w in seen]
    assert sorted(rows) == sorted(f"{tmp_path / 'ocr.parquet'}:#{i}" for i in range(37))  # all, none twice
    for reader, where in seen:
        assert int(where.rpartition("#")[2]) % 4 == reader  # process r, worker w read rows i % 4 == 2r + w


def arrow_shards(folder: Path, n: int, shards: int) -> Path:
    """A folder of `shards` Arrow files of LaTeX_OCR rows, as a hub dataset's files: `datasets` streams it
    through the same builder (`as_streaming_dataset`) as an hf:: dataset."""
    import datasets

    ocr = datasets.Dataset.from_parquet(str(write_ocr_parquet(folder.with_suffix(".parquet"), n)))
    ocr.save_to_disk(str(folder), num_shards=shards)
    for written in ("state.json", "dataset_info.json"):  # not a save_to_disk folder: files, as on the hub
        (folder / written).unlink()
    return folder


def first_pass(data: TrainingStream) -> list[str]:
    rows = []
    for group, (_, position) in data:
        if position[0] > 0:
            return rows
        rows += [e["where"] for e in group]


def test_readers_split_a_sharded_source_by_shard_and_see_every_row_once(template, tmp_path, monkeypatch):
    """Two processes stream a dataset stored in 4 shards (hub files; local Parquet shards): each shard is read
    by one of them alone (a hub stream was downloaded whole by every reader), and together they train every
    row once per pass."""
    from vlmkit.data import streaming as data_streaming

    monkeypatch.setattr(TrainingStream, "_encode", where_of)
    monkeypatch.setattr(streaming, "WINDOW", 4)
    opened: list[str] = []  # what a reader opens: a table by name, Parquet files by name
    table_batches, parquet_batches = data_streaming._table_batches, data_streaming._parquet_batches
    monkeypatch.setattr(data_streaming, "_table_batches", lambda t, name: (opened.append(name), table_batches(t, name))[1])
    monkeypatch.setattr(data_streaming, "_parquet_batches", lambda files, names: (opened.extend(names), parquet_batches(files, names))[1])  # fmt: skip
    hub_like = arrow_shards(tmp_path / "hub", 22, shards=4)
    (tmp_path / "parquet").mkdir()
    for k in range(4):
        write_ocr_parquet(tmp_path / "parquet" / f"train-0000{k}-of-00004.parquet", 5 + k)
    for source, rows in [(hub_like, 22), (tmp_path / "parquet", 26)]:
        stream = open_stream([str(source)])
        everything = [row.where for _, row in stream.rows()]
        assert len(everything) == rows
        seen, read_by = [], {}
        for rank in range(2):
            opened.clear()
            data = TrainingStream(stream, template, max_length=300, truncation="delete", capacity=None, rank=rank,
                                  world_size=2, seed=1)  # fmt: skip
            seen += first_pass(data)
            for shard in set(opened):
                read_by.setdefault(shard, []).append(rank)
        assert len(read_by) == 4 and all(len(ranks) == 1 for ranks in read_by.values()), read_by
        assert len(seen) == len(set(seen)) == rows  # every row once in a pass
        if source == tmp_path / "parquet":
            assert sorted(seen) == sorted(everything)  # rows named by their file, as read by one reader


def test_a_resumed_reader_of_a_sharded_source_continues_at_its_row(template, tmp_path, monkeypatch):
    monkeypatch.setattr(TrainingStream, "_encode", where_of)
    monkeypatch.setattr(streaming, "WINDOW", 4)
    stream = open_stream([str(arrow_shards(tmp_path / "hub", 14, shards=4))])
    options = dict(max_length=160, truncation="delete", capacity=160, rank=1, world_size=2, seed=3)
    whole = [item for _, item in zip(range(12), TrainingStream(stream, template, **options), strict=False)]
    assert all("(shard 2 of 4)" in w or "(shard 4 of 4)" in w for group in wheres(whole) for w in group)
    for stop in (1, 2, 5, 9):
        position = whole[stop - 1][1][1]
        resumed = TrainingStream(stream, template, **options, start={1: position})
        rest = [item for _, item in zip(range(12 - stop), resumed, strict=False)]
        assert wheres(rest) == wheres(whole[stop:]), stop


@pytest.mark.parametrize("capacity", [None, 160])
def test_a_resumed_stream_trains_the_rows_of_an_uninterrupted_one(template, tmp_path, monkeypatch, capacity):
    """Stopped after any item (mid-window, at a window's end, in the second pass), a stream started at that
    item's position yields what the uninterrupted stream yields next."""
    monkeypatch.setattr(TrainingStream, "_encode", where_of)
    monkeypatch.setattr(streaming, "WINDOW", 4)
    stream = open_stream([str(write_ocr_parquet(tmp_path / "ocr.parquet", 11))])
    options = dict(max_length=160, truncation="delete", capacity=capacity, rank=0, world_size=1, seed=3)
    whole = list(zip(range(30), TrainingStream(stream, template, **options), strict=False))
    whole = [item for _, item in whole]
    assert len({w for group in wheres(whole) for w in group}) == 11  # every row, and a second pass
    for stop in (1, 2, 5, 9, 17):
        position = whole[stop - 1][1][1]
        resumed = TrainingStream(stream, template, **options, start={0: position})
        rest = [item for _, item in zip(range(30 - stop), resumed, strict=False)]
        assert wheres(rest) == wheres(whole[stop:]), stop


def test_a_streamed_row_over_max_length_trains_at_its_fitted_limit(small_model, tmp_path):
    """--streaming --truncation shrink: a row too long at the template's limit is encoded at the largest
    limit that fits (`fit_limit`), as without streaming; a row that fits is encoded as it is."""
    from conftest import random_image
    from transformers import AutoTokenizer

    from vlmkit.sample import to_sample

    template = family_by_name("qwen2-vl").load_template(
        small_model, AutoTokenizer.from_pretrained(small_model), max_pixels=20_000
    )
    random_image(300, 400).save(tmp_path / "big.png")
    rows = [
        {"messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "A"}],
         "images": [str(tmp_path / "big.png")]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "B"}]},
    ]  # fmt: skip
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    big = to_sample(rows[0])
    max_length = template.count_tokens(big) - 1
    limit = template.fit_limit(big, max_length)
    assert limit is not None and limit < template.max_limit
    data = TrainingStream(open_stream([str(tmp_path / "d.jsonl")]), template, max_length=max_length,
                          truncation="shrink", capacity=None, rank=0, world_size=1, seed=0)  # fmt: skip
    [([first], _), ([second], _)] = [item for _, item in zip(range(2), data, strict=False)]
    assert torch.equal(first["input_ids"], template.encode(big, limit=limit)["input_ids"])
    assert torch.equal(first["pixel_values"], template.encode(big, limit=limit)["pixel_values"])
    assert len(first["input_ids"]) <= max_length
    assert torch.equal(second["input_ids"], template.encode(to_sample(rows[1]))["input_ids"])


def test_bad_rows_are_skipped_listed_and_stop_the_run_past_the_limit(template, tmp_path):
    stream = open_stream([str(write_ocr_parquet(tmp_path / "ocr.parquet", 12, bad=(3,), cut=(5,)))])
    bad_file = tmp_path / "bad.jsonl"
    data = TrainingStream(stream, template, max_length=300, truncation="delete", capacity=None, rank=0,
                          world_size=1, seed=0, bad_file=bad_file, max_bad_fraction=0.01)  # fmt: skip
    items = [item for _, item in zip(range(10), data, strict=False)]
    assert len(items) == 10 and all(len(group) == 1 and group[0]["input_ids"].ndim == 1 for group, _ in items)
    lines = [json.loads(x) for x in bad_file.read_text().splitlines()]
    assert [(line["where"].rpartition(":")[2], line["kind"]) for line in lines] == [
        ("#3", "unreadable image"),  # found by the row's check (its header)
        ("#5", "failed while training"),  # found when encoded
    ]
    batch = collate_stream(lambda rows: {"n": len(rows)}, False, items[:2])
    assert batch == {"n": 2, "stream_position": {0: items[1][1][1]}}
    worse = open_stream([str(write_ocr_parquet(tmp_path / "worse.parquet", 12, bad=(1, 2)))])
    data = TrainingStream(worse, template, max_length=300, truncation="delete", capacity=None, rank=0,
                          world_size=1, seed=0, bad_file=bad_file, max_bad_fraction=0.0)  # fmt: skip
    with pytest.raises(VlmkitError, match="2 of .* rows read by one reader are bad"):
        list(zip(range(11), data, strict=False))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "--streaming needs --max-steps"),
        ({"max_steps": 5, "split_ratio": 0.1}, "--val-dataset/--split-ratio needs every row up front"),
        ({"max_steps": 5, "group_by_length": True}, "--group-by-length needs every row up front"),
    ],
)
def test_streaming_refuses_what_needs_every_row_up_front(options, message):
    with pytest.raises(VlmkitError, match=message):
        SFTConfig(model="m", dataset=["d.parquet"], streaming=True, **options).validate()


def test_positions_of_an_older_numbering_are_refused_for_several_readers(tmp_path):
    """A checkpoint whose positions counted rows in the whole source (before readers counted their own share)
    would resume several readers at other rows: refused in one line; one reader's share is the whole source,
    so its positions mean the same rows and resume."""
    from vlmkit.train.streaming import POSITION_FILE, read_positions, write_positions

    old = {"readers": 2, "positions": {"0": [0, 256, 1], "1": [0, 257, 0]}}
    (tmp_path / POSITION_FILE).write_text(json.dumps(old))
    with pytest.raises(VlmkitError, match="older vlmkit.*would train other rows") as refused:
        read_positions(tmp_path, 2)
    assert "\n" not in str(refused.value)
    (tmp_path / POSITION_FILE).write_text(json.dumps({"readers": 1, "positions": {"0": [1, 512, 3]}}))
    assert read_positions(tmp_path, 1) == {0: (1, 512, 3)}
    write_positions(tmp_path, 2, {0: (0, 128, 1), 1: (0, 128, 0)})
    assert read_positions(tmp_path, 2) == {0: (0, 128, 1), 1: (0, 128, 0)}
