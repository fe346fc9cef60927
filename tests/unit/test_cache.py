"""The on-disk encode cache, parallel encoding into it, and the decode-once image path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_image
from PIL import Image
from transformers import AutoTokenizer
from typer.testing import CliRunner

from vlmkit.data import load_dataset
from vlmkit.data.cache import EncodeCache, encode_dataset
from vlmkit.families import family_for_model_dir
from vlmkit.families.qwen2_vl.template import Qwen2VLTemplate
from vlmkit.media.images import load_image, load_image_resized
from vlmkit.sample import to_sample


def make_template(model: Path, **settings):
    tokenizer = AutoTokenizer.from_pretrained(model)
    return family_for_model_dir(model).load_template(model, tokenizer, **settings)


def photo(height: int, width: int, seed: int = 0) -> Image.Image:
    """A smooth photo-like image (gradients and mild noise), as JPEG decoders are tuned for."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    pixels = pixels + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.fixture
def media(tmp_path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    random_image(60, 80, seed=1).save(folder / "a.png")
    photo(90, 120, seed=2).save(folder / "b.jpg", quality=90)
    random_image(50, 50, seed=3).save(folder / "c.png")
    return folder


def rows(media: Path) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": "<image><image>Compare."},
                {"role": "assistant", "content": "ok"},
            ],
            "images": [str(media / "a.png"), str(media / "b.jpg")],
        },
        {
            "messages": [
                {"role": "user", "content": "<image>Colour?"},
                {"role": "assistant", "content": "red"},
            ],
            "images": [str(media / "c.png")],
        },
        {"messages": [{"role": "user", "content": "No image."}, {"role": "assistant", "content": "fine"}]},
    ]


def write_jsonl(path: Path, data: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


def assert_same_inputs(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name, value in a.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == b[name].dtype and torch.equal(value, b[name]), name
        else:
            assert value == b[name], name  # image_sizes: tuples stay tuples


def test_cached_inputs_equal_a_fresh_encode_and_the_second_lookup_hits(small_model, media, tmp_path):
    template = make_template(small_model, max_pixels=20_000)
    samples = [to_sample(r) for r in rows(media)]
    cache = EncodeCache(tmp_path / "cache", template)
    for sample in samples:
        assert_same_inputs(cache.encode(sample), template.encode(sample))
    assert (cache.hits, cache.misses) == (0, 3)
    again = EncodeCache(tmp_path / "cache", template)  # a new run: same settings, same folder
    for sample in samples:
        assert_same_inputs(again.encode(sample), template.encode(sample))
    assert (again.hits, again.misses) == (3, 0)
    stored = again.stored(samples[0])[0]
    assert [p.dtype for p in stored["resized_images"]] == [np.uint8, np.uint8]  # compact: uint8, not float
    assert json.loads((again.root / "template.json").read_text())["attributes"]["max_pixels"] == 20_000


def test_a_change_invalidates_exactly_what_it_touches(small_model, media, tmp_path):
    template = make_template(small_model, max_pixels=20_000)
    samples = [to_sample(r) for r in rows(media)]
    cache = EncodeCache(tmp_path / "cache", template)
    keys = [cache.key(s) for s in samples]
    for sample in samples:
        cache.encode(sample)

    # the data: another answer in one row
    edited = rows(media)
    edited[1]["messages"][1]["content"] = "blue"
    assert [cache.key(to_sample(r)) for r in edited] == [keys[0], cache.key(to_sample(edited[1])), keys[2]]
    assert cache.key(to_sample(edited[1])) != keys[1]

    # a media file rewritten: only the row that shows it
    random_image(60, 80, seed=9).save(media / "a.png")
    stat = (media / "a.png").stat()
    os.utime(media / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert [cache.key(s) for s in samples] == [cache.key(samples[0]), keys[1], keys[2]]
    assert cache.key(samples[0]) != keys[0]
    before = cache.misses
    assert_same_inputs(cache.encode(samples[0]), template.encode(samples[0]))  # the new pixels, not the old
    assert cache.misses == before + 1

    # a per-row limit (--truncation shrink) and the template's settings
    assert cache.key(samples[1], limit=10_000) != keys[1]
    for other in (
        make_template(small_model, max_pixels=30_000),
        make_template(small_model, max_pixels=20_000, system="Be brief."),
        make_template(small_model, max_pixels=20_000, min_pixels=2_000),
    ):
        assert EncodeCache(tmp_path / "cache", other).root != cache.root
    assert EncodeCache(tmp_path / "cache", make_template(small_model, max_pixels=20_000)).root == cache.root


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other key"])
def test_a_corrupt_entry_is_encoded_again_with_a_warning(small_model, media, tmp_path, damage):
    template = make_template(small_model, max_pixels=20_000)
    sample = to_sample(rows(media)[0])
    cache = EncodeCache(tmp_path / "cache", template)
    cache.encode(sample)
    path = cache.path(cache.key(sample))
    data = path.read_bytes()
    if damage == "truncate":  # what a killed writer without the rename would leave
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        other = to_sample(rows(media)[1])
        cache.encode(other)
        path.write_bytes(cache.path(cache.key(other)).read_bytes())
    with pytest.warns(UserWarning, match="unreadable encode-cache entry"):
        assert_same_inputs(cache.encode(sample), template.encode(sample))
    assert cache.read(cache.key(sample)) is not None  # rewritten whole


def test_an_unwritable_cache_warns_and_the_inputs_still_come(small_model, media, tmp_path):
    template = make_template(small_model, max_pixels=20_000)
    sample = to_sample(rows(media)[1])
    cache = EncodeCache(tmp_path / "cache", template)
    key = cache.key(sample)
    (cache.root / key[:2]).write_text("a file where the shard folder should be")
    with pytest.warns(UserWarning, match="cannot write to the encode cache"):
        assert_same_inputs(cache.encode(sample), template.encode(sample))
    assert cache.write_failed and not cache.path(key).exists()


def test_parallel_encode_fills_the_same_entries_as_serial_and_skips_bad_rows(small_model, media, tmp_path):
    template = make_template(small_model, max_pixels=20_000)
    data_rows = rows(media) * 2 + [{"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}], "images": ["missing.png"]}]  # fmt: skip
    dataset = load_dataset(write_jsonl(tmp_path / "train.jsonl", data_rows))

    serial = encode_dataset(dataset, template, workers=1, cache_dir=tmp_path / "serial")
    parallel = encode_dataset(dataset, template, workers=2, cache_dir=tmp_path / "parallel")
    assert (serial.rows, serial.encoded, serial.cached) == (7, 3, 3)  # the repeated rows share entries
    # two workers may both encode a repeated row before either has stored it; the rename makes that safe
    assert parallel.rows == 7 and parallel.encoded + parallel.cached == 6 and parallel.encoded >= 3
    for stats in (serial, parallel):
        assert len(stats.failed) == 1 and stats.failed[0][0].endswith("train.jsonl:7")
        assert "missing.png" in stats.failed[0][1]

    def files(root: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in root.rglob("*.safetensors")}

    assert files(tmp_path / "serial") == files(tmp_path / "parallel") and len(files(tmp_path / "serial")) == 3
    again = encode_dataset(dataset, template, workers=2, cache_dir=tmp_path / "parallel")
    assert (again.encoded, again.cached) == (0, 6)
    assert not list((tmp_path / "parallel").rglob("*.tmp"))


def test_a_shrunk_row_is_encoded_and_cached_at_its_fitted_limit(small_model, media, tmp_path):
    """--truncation shrink: `check_dataset`'s `GoodRow.limit` reaches the encode cache and the training
    dataset, which encode that row at its limit (shorter than at the template's own) and no other row."""
    from vlmkit.data.check import check_dataset
    from vlmkit.train.encoded import EncodedDataset

    template = make_template(small_model, max_pixels=20_000)
    dataset = load_dataset(write_jsonl(tmp_path / "train.jsonl", rows(media)))
    full = template.count_tokens(dataset[0])
    report = check_dataset(dataset, template, max_length=full - 1, truncation="shrink", progress=False)
    limits = {g.index: g.limit for g in report.good if g.limit}
    assert list(limits) == [0] and template.min_limit <= limits[0] < template.max_limit
    at_limit = template.encode(dataset[0], limit=limits[0])
    assert len(at_limit["input_ids"]) <= full - 1 < len(template.encode(dataset[0])["input_ids"])

    stats = encode_dataset(dataset, template, [g.index for g in report.good], limits, cache_dir=tmp_path / "c")
    cache = EncodeCache(tmp_path / "c", template)
    assert stats.encoded == 3 and cache.path(cache.key(dataset[0], limits[0])).exists()
    assert not cache.path(cache.key(dataset[0])).exists()  # stored under its limit only
    for with_cache in (None, cache):
        trained = EncodedDataset(dataset, template, [0, 1, 2], limits, with_cache)
        expected = {k: v for k, v in at_limit.items() if k != "image_sizes"}  # for people; training drops it
        assert_same_inputs(trained[0], expected)
        assert torch.equal(trained[1]["input_ids"], template.encode(dataset[1])["input_ids"])


@pytest.mark.slow
def test_sft_reads_the_cache_and_a_second_run_encodes_nothing(small_model, media, tmp_path, monkeypatch):
    from vlmkit.train import SFTConfig, sft

    calls = []
    original = Qwen2VLTemplate.encode

    def counting(self, sample, *args, **kwargs):
        calls.append(sample.where)
        return original(self, sample, *args, **kwargs)

    monkeypatch.setattr(Qwen2VLTemplate, "encode", counting)
    dataset = write_jsonl(tmp_path / "train.jsonl", rows(media))
    options = dict(
        model=str(small_model),
        dataset=[str(dataset)],
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        max_pixels=4000,
        logging_steps=1,
        save_steps=50,
        progress=False,
        num_workers=0,
        report_to="none",
        eval_generate=0,
        packing=False,
    )
    sft(SFTConfig(**options))
    assert len(set(calls)) == 3  # every row encoded once, then read back from the cache
    assert len(list((tmp_path / "out" / "encode_cache").rglob("*.safetensors"))) == 3
    calls.clear()
    sft(SFTConfig(**options))
    assert calls == []
    sft(SFTConfig(**options, encode_cache=False))  # --no-cache: encoded on every read, nothing stored
    assert len(calls) == 3
    assert len(list((tmp_path / "out" / "encode_cache").rglob("*.safetensors"))) == 3
    calls.clear()
    # other settings are other entries; --encode-workers 2 encodes them in worker processes first
    sft(SFTConfig(**{**options, "max_pixels": 3500, "encode_workers": 2}))
    assert calls == []  # this process only read them
    assert len(list((tmp_path / "out" / "encode_cache").rglob("*.safetensors"))) == 6


def test_data_encode_command_fills_the_cache_that_training_reads(small_model, media, tmp_path):
    from vlmkit.cli import app

    dataset = write_jsonl(tmp_path / "train.jsonl", rows(media))
    cache_dir = tmp_path / "out" / "encode_cache"
    args = ["data", "encode", "--model", str(small_model), "--dataset", str(dataset), "--max-pixels", "4000"]
    args += ["--cache-dir", str(cache_dir), "--workers", "2", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 encoded, 0 already cached" in result.output
    cache = EncodeCache(cache_dir, make_template(small_model, max_pixels=4000))
    for sample in load_dataset(dataset):
        cache.encode(sample)
    assert (cache.hits, cache.misses) == (3, 0)
    result = CliRunner().invoke(app, args[:-3] + ["--workers", "0"])
    assert "--workers 0: must be 1 or more" in str(result.exception)  # `vlmkit` prints it as one error line


def test_decode_once_gives_the_pixels_of_load_then_resize(tmp_path):
    path = tmp_path / "p.jpg"
    photo(300, 400, seed=5).save(path, quality=90)
    expected = np.asarray(load_image(path).resize((200, 150), Image.Resampling.BICUBIC))
    pixels, original = load_image_resized(path, lambda h, w: (150, 200))
    assert original == (300, 400) and np.array_equal(pixels, expected)


def test_an_image_used_by_several_rows_is_decoded_once(tmp_path, monkeypatch):
    from vlmkit.media import images as media

    images = media._ResizedImages(max_bytes=150 * 200 * 3 * 2)  # room for two 150x200 images
    monkeypatch.setattr(media, "RESIZED_IMAGES", images)
    decodes = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decodes.append(1) or real_load(self))
    path = tmp_path / "p.jpg"
    photo(300, 400, seed=5).save(path, quality=90)
    first, original = load_image_resized(path, lambda h, w: (150, 200))
    decoded = len(decodes)
    again, original_again = load_image_resized(str(path), lambda h, w: (150, 200))
    assert len(decodes) == decoded and again is first and original_again == original == (300, 400)
    assert not again.flags.writeable  # shared between rows: nobody may change it
    # other pixel limits, or the file rewritten, miss; the result is the exact decode every time
    smaller, _ = load_image_resized(path, lambda h, w: (90, 120))
    assert len(decodes) > decoded and smaller.shape == (90, 120, 3)
    photo(300, 400, seed=6).save(path, quality=90)
    os.utime(path, ns=(1, 1))  # a new modification time even on a coarse clock
    changed, _ = load_image_resized(path, lambda h, w: (150, 200))
    expected = np.asarray(load_image(path).resize((200, 150), Image.Resampling.BICUBIC))
    assert np.array_equal(changed, expected) and not np.array_equal(changed, first)
    assert images.used <= images.max_bytes and len(images.entries) == 2  # the least recent was dropped
    monkeypatch.setattr(media, "RESIZED_IMAGES", media._ResizedImages(max_bytes=0))  # --image-cache-mb 0
    assert (
        load_image_resized(path, lambda h, w: (150, 200))[0]
        is not load_image_resized(path, lambda h, w: (150, 200))[0]
    )


def test_jpeg_draft_is_close_to_a_full_decode_and_keeps_exif_orientation(tmp_path):
    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the upright image is 640 high, 480 wide
    photo(480, 640, seed=6).save(path, quality=92, exif=exif)
    exact, original = load_image_resized(path, lambda h, w: (h // 4, w // 4))
    fast, original_fast = load_image_resized(path, lambda h, w: (h // 4, w // 4), jpeg_draft=True)
    assert original == original_fast == (640, 480)
    assert exact.shape == fast.shape == (160, 120, 3)
    difference = np.abs(exact.astype(int) - fast.astype(int))
    assert 0 < difference.mean() < 1.5 and difference.max() <= 16
    # no reduced decode when the target is not at least half the size
    near, _ = load_image_resized(path, lambda h, w: (h * 2 // 3, w * 2 // 3), jpeg_draft=True)
    assert np.array_equal(near, load_image_resized(path, lambda h, w: (h * 2 // 3, w * 2 // 3))[0])


def test_patchify_equals_the_float_arithmetic_it_replaced(small_model):
    """The table-lookup patchify gives, value for value, what rescale-normalise-reshape gives."""
    template = make_template(small_model, max_pixels=200_000)
    pixels = np.asarray(photo(336, 448, seed=7))
    patches, grid = template.patchify(pixels)
    mean, std = template.mean, template.std
    ps, ms, tps = template.patch_size, template.merge_size, template.temporal_patch_size
    gh, gw = grid[1], grid[2]
    reference = (pixels.astype(np.float32).transpose(2, 0, 1) / 255.0 - mean) / std
    reference = reference.reshape(3, gh // ms, ms, ps, gw // ms, ms, ps).transpose(1, 4, 2, 5, 0, 3, 6)
    reference = np.repeat(reference[:, :, :, :, :, None], tps, axis=5).reshape(gh * gw, -1)
    assert patches.dtype == np.float32 and np.array_equal(patches, reference)


def test_a_family_without_a_compact_form_is_cached_as_its_encode_output(media, tmp_path):
    """Tiling families (InternVL) have no `patchify_images`: their entries hold the float pixel values."""
    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    model = build_tiny_model(family_by_name("internvl"), tmp_path / "internvl", small_vocab=True)
    template = make_template(model)
    sample = to_sample(rows(media)[1])
    cache = EncodeCache(tmp_path / "cache", template)
    assert not cache.compact
    cache.encode(sample)
    again = EncodeCache(tmp_path / "cache", template)
    assert_same_inputs(again.encode(sample), template.encode(sample))
    assert (again.hits, again.misses) == (1, 0)


def test_image_cache_budget_is_a_flag_of_the_run():
    """`vlmkit --image-cache-mb N COMMAND` sets this process's budget (0: off); no environment variable does."""
    from typer.testing import CliRunner

    from vlmkit.cli import app
    from vlmkit.media import images as media

    try:
        assert media.RESIZED_IMAGES.max_bytes == 64 * 2**20
        result = CliRunner().invoke(app, ["--image-cache-mb", "0", "families"])
        assert result.exit_code == 0, result.output
        assert media.RESIZED_IMAGES.max_bytes == 0
        result = CliRunner().invoke(app, ["--image-cache-mb", "-1", "families"])
        assert result.exit_code == 2 and "--image-cache-mb" in result.output  # a usage error
        assert "--image-cache-mb" in CliRunner().invoke(app, ["--help"]).output
    finally:
        media.set_image_cache_mb(media.IMAGE_CACHE_MB)
