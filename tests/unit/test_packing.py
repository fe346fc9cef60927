"""Packing (several rows per sequence) and length-grouped batching for `vlmkit sft`.

The central check: a packed batch of rows with images of different sizes and text-only rows
gives the same loss and gradients, in fp32, as running each row alone and taking the per-token
mean, for every Qwen-VL family; its M-RoPE positions are the model's own for each row alone; and
no row sees another.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import random_image
from typer.testing import CliRunner

from vlmkit.errors import VlmkitError
from vlmkit.families import FAMILIES as REGISTERED
from vlmkit.families import family_by_name
from vlmkit.families.encoding import IGNORE_INDEX
from vlmkit.sample import Sample
from vlmkit.train.packing import PackedDataset, collate_packed, pack_lengths, resolve_packing
from vlmkit.train.sampler import BatchStats, LengthGroupedSampler, collate_padded

# every registered family that packs, so a new one is checked without a change here
QWEN_FAMILIES = [f.name for f in REGISTERED.values() if f.packing and not f.remote_code]


# -- bin packing and sampling (no model) -------------------------------------------------------------


def test_pack_lengths_fits_every_row_once():
    lengths = [7, 3, 9, 1, 5, 5, 2, 8, 4, 6]
    packs = pack_lengths(lengths, capacity=10)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= 10 for p in packs)
    assert len(packs) == 5  # the optimum: 9+1, 8+2, 7+3, 6+4, 5+5
    assert pack_lengths([10, 10], capacity=10) == [[0], [1]]
    assert pack_lengths([], capacity=10) == []


def test_pack_lengths_best_fit_prefers_the_fullest_pack():
    # 6 and 5 open two packs (room 4 and 5); 4 goes to the fuller one (room 4), 5 then fits the other.
    assert pack_lengths([6, 5, 4, 5], capacity=10) == [[0, 2], [1, 3]]


def test_seeded_packing_mixes_rows_of_one_length_across_packs():
    # rows of length 10 and 20 (think: two answers of different lengths); unseeded best-fit decreasing
    # puts all the 20s together, the seeded order spreads both kinds over the packs, reproducibly
    lengths = [10] * 60 + [20] * 60
    assert all(len({lengths[i] for i in p}) == 1 for p in pack_lengths(lengths, capacity=100))
    packs = pack_lengths(lengths, capacity=100, seed=3)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= 100 for p in packs)
    assert sum(len({lengths[i] for i in p}) == 2 for p in packs) >= len(packs) // 2
    assert pack_lengths(lengths, capacity=100, seed=3) == packs
    assert pack_lengths(lengths, capacity=100, seed=4) != packs


def test_pack_lengths_rejects_an_over_long_row():
    with pytest.raises(VlmkitError, match="row 1 has 12 tokens, more than the packing length 10"):
        pack_lengths([3, 12], capacity=10)


def test_length_grouped_sampler_groups_similar_lengths_and_reshuffles_per_epoch():
    lengths = [int(n) for n in torch.randint(1, 500, (400,), generator=torch.Generator().manual_seed(0))]
    sampler = LengthGroupedSampler(lengths, group_size=4, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(400)) and list(sampler) == first

    def padding(order: list[int]) -> float:
        batches = [order[i : i + 4] for i in range(0, len(order), 4)]
        slots = sum(4 * max(lengths[i] for i in b) for b in batches)
        return 1 - sum(lengths) / slots

    assert (
        padding(first) < 0.1 < padding(list(torch.randperm(400, generator=torch.Generator().manual_seed(0))))
    )
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(LengthGroupedSampler(lengths, 4, seed=1)) == first  # same seed, same order (resume, DDP)


def test_batch_stats_fractions():
    stats = BatchStats()
    assert stats.log_fields() == {}
    stats.add({"samples": 3, "tokens": 60, "slots": 80, "capacity": 100})
    stats.add({"samples": 1, "tokens": 30, "slots": 40, "capacity": 50})
    assert stats.log_fields() == {"padding_fraction": 0.25, "fill_fraction": 0.6, "samples_seen": 4}


def test_resolve_packing_rule():
    qwen, other = family_by_name("qwen2-vl"), family_by_name("llava")
    assert resolve_packing(None, qwen, "sdpa") == (True, "")
    assert resolve_packing(False, qwen, "sdpa") == (False, "")
    assert resolve_packing(True, qwen, "flash_attention_2") == (True, "")
    enabled, why = resolve_packing(None, other, "sdpa")
    assert not enabled and "does not support packing" in why
    with pytest.raises(
        VlmkitError, match="--packing: the llava family does not support packing; use --no-packing"
    ):
        resolve_packing(True, other, "sdpa")
    with pytest.raises(VlmkitError, match="--attn-impl flex_attention cannot mask packed rows"):
        resolve_packing(True, qwen, "flex_attention")


# -- against the tiny models ---------------------------------------------------------------------------


def _samples(folder: Path) -> list[Sample]:
    """Rows with one image, none, two images of other sizes, and a short text-only one."""
    sizes = [(40, 60), (90, 50), (30, 30)]
    for k, (h, w) in enumerate(sizes):
        random_image(h, w, seed=k).save(folder / f"{k}.png")

    def row(question: str, answer: str, images: list[int]) -> Sample:
        content = [{"type": "image", "image": str(folder / f"{k}.png")} for k in images]
        content.append({"type": "text", "text": question})
        return Sample(
            messages=[
                {"role": "user", "content": content},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ]
        )

    return [
        row("What is in the picture?", "A cat sitting on a mat.", [0]),
        row("Hello there", "Hi! How can I help you today?", []),
        row("Compare the two images.", "The first is taller than the second.", [1, 2]),
        row("Short", "OK.", []),
    ]


@pytest.fixture(scope="module")
def small_models(tmp_path_factory) -> dict[str, Path]:
    """Each Qwen-VL family's tiny model with the 600-token BPE (fast: a small output layer)."""
    from vlmkit.families.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("small_packing")
    return {
        name: build_tiny_model(family_by_name(name), root / name.replace(".", "_"), small_vocab=True)
        for name in QWEN_FAMILIES
    }


def _setup(small_models, name: str, tmp_path: Path, attn: str = "sdpa"):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model_dir = small_models[name]
    template = family_by_name(name).load_template(
        model_dir, AutoTokenizer.from_pretrained(model_dir), max_pixels=6000
    )
    encoded = []
    for sample in _samples(tmp_path):
        e = template.encode(sample)
        e.pop("image_sizes", None)
        encoded.append(e)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attn
    ).train()  # train mode: the cache stays off, as in training (dropout is 0 in the tiny configs)
    return template, encoded, model


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("name", QWEN_FAMILIES)
def test_rope_positions_equal_the_models_own(small_models, tmp_path, name):
    template, encoded, model = _setup(small_models, name, tmp_path)
    for e in encoded:
        grids = {"image_grid_thw": e["image_grid_thw"]} if "image_grid_thw" in e else {}
        expected, _ = model.model.get_rope_index(e["input_ids"][None], e["mm_token_type_ids"][None], **grids)
        assert torch.equal(template.rope_positions(e), expected[:, 0])
    assert template.rope_positions(encoded[0]).max() < encoded[0]["input_ids"].shape[0] - 1  # images fold


@pytest.mark.parametrize(
    ("name", "attn"), [(name, "sdpa") for name in QWEN_FAMILIES] + [("qwen2-vl", "eager")]
)
def test_packed_loss_and_grads_equal_separate_rows(small_models, tmp_path, name, attn):
    template, encoded, model = _setup(small_models, name, tmp_path, attn)

    # Each row alone; the per-token mean over all supervised tokens of all rows.
    total, count = 0.0, 0
    for e in encoded:
        out = model(**template.collate([e]))
        n = int((e["labels"][1:] != IGNORE_INDEX).sum())
        total, count = total + out.loss * n, count + n
    separate = total / count
    separate.backward()
    separate_grads = _grads(model)

    layouts = {
        "one row": ([encoded], False),
        "two padded rows": ([encoded[:2], encoded[2:]], False),
        "padding-free": ([encoded[:2], encoded[2:]], True),
    }
    for layout, (packs, padding_free) in layouts.items():
        batch = collate_packed(template, packs, padding_free=padding_free, capacity=512)
        stats = batch.pop("batch_stats")
        assert stats["samples"] == 4 and stats["tokens"] == sum(e["input_ids"].shape[0] for e in encoded)
        packed = model(**batch).loss
        packed.backward()
        grads = _grads(model)
        assert packed.item() == pytest.approx(separate.item(), abs=1e-5), layout
        assert grads.keys() == separate_grads.keys()
        for key, grad in grads.items():
            torch.testing.assert_close(
                grad, separate_grads[key], atol=1e-6, rtol=1e-4, msg=f"{layout}: {key}"
            )


@pytest.mark.parametrize("name", QWEN_FAMILIES)
def test_packed_positions_are_each_rows_own(small_models, tmp_path, name):
    template, encoded, model = _setup(small_models, name, tmp_path)
    batch = collate_packed(template, [encoded[:2], encoded[2:]])
    positions = batch["position_ids"]  # (4, B, T)
    assert positions.shape == (4, 2, batch["input_ids"].shape[1])
    start = 0
    for e in encoded[2:]:
        n = e["input_ids"].shape[0]
        assert torch.equal(positions[0, 1, start : start + n], torch.arange(n))
        assert torch.equal(positions[1:, 1, start : start + n], template.rope_positions(e))
        assert batch["labels"][1, start] == IGNORE_INDEX  # nothing predicted across the boundary
        start += n
    assert torch.equal(
        batch["image_grid_thw"], torch.cat([e["image_grid_thw"] for e in encoded if "image_grid_thw" in e])
    )


@pytest.mark.parametrize("name", QWEN_FAMILIES)
def test_no_attention_across_row_boundaries(small_models, tmp_path, name):
    template, encoded, model = _setup(small_models, name, tmp_path)
    model.eval()
    a, b = encoded[1], encoded[0]  # a text-only row before a row with an image
    changed = dict(a, input_ids=a["input_ids"].clone())
    changed["input_ids"][3:-2] = template.tokenizer.convert_tokens_to_ids("<|im_end|>")
    n = a["input_ids"].shape[0]
    with torch.no_grad():
        before = model(**{k: v for k, v in collate_packed(template, [[a, b]]).items() if k != "batch_stats"})
        after = model(
            **{k: v for k, v in collate_packed(template, [[changed, b]]).items() if k != "batch_stats"}
        )
        alone = model(**template.collate([b])).logits
    assert not torch.allclose(before.logits[0, :n], after.logits[0, :n])  # the change is visible in a ...
    torch.testing.assert_close(before.logits[0, n:], after.logits[0, n:], atol=1e-6, rtol=0)  # ... not in b
    torch.testing.assert_close(before.logits[0, n:], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", QWEN_FAMILIES)
def test_trainer_loss_projects_only_supervised_positions_and_equals_the_models(small_models, tmp_path, name):
    """`vlmkit sft`'s loss skips the vocabulary projection of unsupervised positions (memory) and is
    still exactly the model's own loss, padded or packed, averaged or summed over a token count."""
    from vlmkit.train.callbacks import supervised_loss

    template, encoded, model = _setup(small_models, name, tmp_path)
    batches = {
        "padded": collate_padded(template, encoded),
        "packed": collate_packed(template, [encoded[:2], encoded[2:]], padding_free=False, capacity=512),
    }
    for layout, batch in batches.items():
        batch.pop("batch_stats")
        with torch.no_grad():
            full = model(**batch)
            loss, outputs = supervised_loss(model, batch)
            summed, _ = supervised_loss(model, batch, num_items_in_batch=torch.tensor(1000))
        supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        assert outputs.logits.shape == (supervised, full.logits.shape[-1]), layout
        assert supervised < full.logits.shape[0] * full.logits.shape[1] / 2, layout  # most are skipped
        assert loss.item() == pytest.approx(full.loss.item(), abs=1e-6), layout
        assert summed.item() == pytest.approx(full.loss.item() * supervised / 1000, abs=1e-6), layout


def test_packed_dataset_items_are_the_packs_rows():
    rows = [{"input_ids": torch.arange(n)} for n in (3, 5, 2)]
    dataset = PackedDataset(rows, [[1, 2], [0]])
    assert len(dataset) == 2
    assert [r["input_ids"].shape[0] for r in dataset[0]] == [5, 2]


def test_collate_padded_counts_padding(small_models, tmp_path):
    template, encoded, _ = _setup(small_models, "qwen2-vl", tmp_path)
    batch = collate_padded(template, encoded[1:4:2])
    lengths = [e["input_ids"].shape[0] for e in encoded[1:4:2]]
    assert batch["batch_stats"] == {"samples": 2, "tokens": sum(lengths), "slots": 2 * max(lengths)}


# -- through `vlmkit sft` --------------------------------------------------------------------------------


def _dataset(folder: Path, n: int = 32) -> Path:
    """Rows of two length clusters (a few tokens, ~60 more), every third with an image."""
    (folder / "imgs").mkdir(parents=True)
    rows = []
    for i in range(n):
        words = " ".join(["word"] * (1 if i % 2 else 30))
        row = {"query": f"Question {i}: {words}", "response": f"Answer {i}: {words}"}
        if i % 3 == 0:
            image = folder / "imgs" / f"{i}.png"
            random_image(30 + 10 * (i % 5), 40, seed=i).save(image)
            row["query"] = "<image>" + row["query"]
            row["images"] = [str(image)]
        rows.append(row)
    path = folder / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sft(model: Path, data: Path, tmp_path: Path, *flags: str):
    from vlmkit.cli import app

    args = ["sft", "--model", str(model), "--dataset", str(data), "--output-dir", str(tmp_path / "out")]
    args += ["--max-steps", "3", "--batch-size", "2", "--max-pixels", "4000", "--max-length", "256"]
    args += ["--logging-steps", "1", "--no-progress", "--num-workers", "0", "--report-to", "none"]
    result = CliRunner().invoke(app, args + list(flags))
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "out" / model.name).iterdir())
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return result.output, json.loads((run_dir / "args.json").read_text()), log


def test_sft_packs_by_default_and_logs_the_fill_fraction(small_model, tmp_path):
    flags = ("--split-ratio", "0.25", "--eval-steps", "3", "--eval-generate", "0")
    output, args, log = _sft(small_model, _dataset(tmp_path), tmp_path, *flags)
    assert args["packing"] is True  # resolved and saved
    assert "packing: 24 rows into" in output and "fill_fraction=" in output
    assert [r["eval_loss"] > 0 for r in log if "eval_loss" in r] == [True]  # packed validation rows
    log = [r for r in log if "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(0 < r["fill_fraction"] <= 1 and 0 <= r["padding_fraction"] < 1 for r in log)
    assert log[-1]["samples_seen"] > 6  # more rows than the 2 x 3 sequences
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


@pytest.mark.slow
def test_sft_without_packing_groups_by_length_and_logs_padding(small_model, tmp_path):
    grouped = _sft(small_model, _dataset(tmp_path / "a"), tmp_path / "a", "--no-packing", "--group-by-length")
    shuffled = _sft(small_model, _dataset(tmp_path / "b"), tmp_path / "b", "--no-packing")
    padding = []
    for output, args, log in (grouped, shuffled):
        last = [r for r in log if "loss" in r][-1]
        assert args["packing"] is False and "fill_fraction" not in last
        assert last["samples_seen"] == 6 and "padding_fraction=" in output
        padding.append(last["padding_fraction"])
    assert grouped[1]["group_by_length"] is True and shuffled[1]["group_by_length"] is False
    assert padding[0] < padding[1]


def test_sft_help_shows_the_batching_options():
    from vlmkit.cli import app

    result = CliRunner().invoke(app, ["sft", "--help"], env={"COLUMNS": "200"})
    assert "--packing" in result.output and "--group-by-length" in result.output


@pytest.mark.slow
def test_sft_with_video_rows_does_not_pack(small_model, tmp_path):
    from videos import make_video

    from vlmkit.train import SFTConfig, sft

    data = _dataset(tmp_path, n=4)
    video = make_video(tmp_path / "clip.mp4", count=8, size=(28, 28))
    with data.open("a") as f:
        f.write(
            json.dumps({"query": "<video>What happens?", "response": "Colours.", "videos": [str(video)]})
            + "\n"
        )
    options = dict(
        model=str(small_model),
        dataset=[str(data)],
        output_dir=str(tmp_path / "out"),
        max_pixels=4000,
        num_workers=0,
        report_to="none",
        progress=False,
        max_steps=1,
    )
    with pytest.raises(VlmkitError, match="--packing: the data has video rows, which cannot be packed yet"):
        sft(SFTConfig(**options, packing=True))
    output, args, log = _sft(small_model, data, tmp_path / "auto", "--max-steps", "1", "--max-length", "1024")
    assert "packing off: the data has video rows" in output
    last = [r for r in log if "loss" in r][-1]
    assert args["packing"] is False and "fill_fraction" not in last and "padding_fraction" in last
