"""vlmkit's Qwen-VL (`qwen_vl`, no remote code) against the ORIGINAL Qwen-VL-Chat remote code.

The reference logits and greedy ids in vectors/qwen_vl/ were recorded by running the original remote code
(transformers 4.40.2) on the tiny original-layout checkpoint that `vlmkit tiny-model qwen-vl` writes with
seed 0 (vectors/qwen_vl/README.md says how). Here the same checkpoint goes through `vlmkit convert` and
vlmkit's template and model, and must give the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmkit.sample import to_sample

VECTORS = Path(__file__).parent / "vectors" / "qwen_vl"
IMG_START, IMG_END, IMG_PAD = 151857, 151858, 151859


def make_images(folder: Path) -> list[Path]:
    """The recording's two images (make_reference.py): 448x448 and 300x200 (w x h) RGB noise."""
    paths = []
    for seed, (h, w) in ((1, (448, 448)), (2, (200, 300))):
        pixels = np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)
        paths.append(folder / f"image{seed}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def native(qwen_vl_models):
    import vlmkit

    return vlmkit.load(str(qwen_vl_models["native"]))


def reference_sample(paths: list[Path]):
    """The recorded prompt as a vlmkit conversation: two images, then the question."""
    question = "What is the difference between the pictures? Give a <ref>box</ref>."
    content = [{"type": "image", "image": str(p)} for p in paths] + [{"type": "text", "text": question}]
    return to_sample({"messages": [{"role": "user", "content": content}]}, where="parity")


def test_logits_and_greedy_ids_equal_the_original_remote_code(native, tmp_path):
    reference = load_file(str(VECTORS / "reference.safetensors"))
    ref_ids = reference["input_ids"]
    encoded = native.encode(reference_sample(make_images(tmp_path)))
    ids = encoded["input_ids"]
    # The same tokens, except inside <img>..</img>: the remote tokenizer puts the path's bytes there
    # (padded with <imgpad>), vlmkit 256 <imgpad>; the model replaces those positions with the image.
    assert ids.shape == ref_ids.shape
    inside = torch.zeros_like(ids, dtype=torch.bool)
    for start, end in zip(
        (ref_ids == IMG_START).nonzero()[:, 0], (ref_ids == IMG_END).nonzero()[:, 0], strict=True
    ):
        assert end - start - 1 == 256
        inside[start + 1 : end] = True
    assert torch.equal(ids[~inside], ref_ids[~inside]) and (ids[inside] == IMG_PAD).all()

    batch = native.on_device(native.template.collate([encoded]))
    with torch.no_grad():
        logits = native.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits[0]
    torch.testing.assert_close(logits[:, reference["vocab_ids"]], reference["logits"], atol=1e-4, rtol=0)
    generated = native.model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
        do_sample=False, max_new_tokens=len(reference["generated_ids"]), eos_token_id=None,
    )[0, ids.shape[0]:]  # fmt: skip
    assert generated.tolist() == reference["generated_ids"].tolist()


def test_the_images_matter_to_the_compared_logits(native, tmp_path):
    """The comparison above would pass with images ignored only if they did not move the logits."""
    reference = load_file(str(VECTORS / "reference.safetensors"))
    paths = make_images(tmp_path)
    Image.fromarray(np.zeros((448, 448, 3), dtype=np.uint8)).save(paths[0])
    batch = native.template.collate([native.encode(reference_sample(paths))])
    with torch.no_grad():
        logits = native.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits[0]
    last = int((reference["input_ids"] == IMG_END).nonzero()[-1])
    assert (logits[last:, reference["vocab_ids"]] - reference["logits"][last:]).abs().max() > 1e-2


def test_conversion_round_trips_every_tensor(qwen_vl_models):
    from vlmkit.families.qwen_vl import convert

    original = load_file(str(qwen_vl_models["original"] / "model.safetensors"))
    native = load_file(str(qwen_vl_models["native"] / "model.safetensors"))
    # c_attn (weight, bias) of 2 layers and the resampler's in_proj (weight, bias) each split in three
    assert len(native) == len(original) + 2 * 2 * 2 + 2 * 2
    back = convert.to_original(native, vision_heads=2)
    assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in original)


def test_tokenizer_is_qwen_vocabulary_with_the_real_special_ids(native, qwen_vl_models):
    """Text tokenizes as tiktoken does with tokenization_qwen.py's pattern; the special ids are the real ones."""
    import base64

    import tiktoken

    from vlmkit.families.qwen_vl.checkpoint import QWEN_SPLIT_PATTERN, SPECIAL_TOKENS

    lines = (qwen_vl_models["original"] / "qwen.tiktoken").read_text().splitlines()
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in lines)}
    specials = {token: 151643 + i for i, (token, _) in enumerate(SPECIAL_TOKENS)}
    encoding = tiktoken.Encoding(
        "qwen", pat_str=QWEN_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )
    text = "Picture 1: 图中的狗是什么品种？ It's 2024!\n\n  <ref>格子衬衫</ref><box>(588,499),(725,789)</box>"
    tokenizer = native.tokenizer
    assert tokenizer(text)["input_ids"] == encoding.encode(text, allowed_special="all")
    assert len(tokenizer) == 151860
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|extra_204|>": 151850,
                "<ref>": 151851, "</box>": 151854, "<img>": 151857, "</img>": 151858, "<imgpad>": 151859}  # fmt: skip
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in expected} == expected
    config = json.loads((qwen_vl_models["native"] / "config.json").read_text())
    assert (config["image_start_token_id"], config["image_token_id"]) == (IMG_START, IMG_PAD)


def test_convert_refuses_a_native_folder_and_a_full_output(qwen_vl_models, tmp_path):
    from typer.testing import CliRunner

    from vlmkit.cli import app
    from vlmkit.errors import VlmkitError

    original = qwen_vl_models["original"]  # loading it converts it (issue 28 #7): the test below
    result = CliRunner().invoke(
        app, ["convert", "--model", str(qwen_vl_models["native"]), "--output", str(tmp_path / "x")]
    )
    assert isinstance(result.exception, VlmkitError) and "no conversion" in str(result.exception)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(
        app, ["convert", "--model", str(original), "--output", str(tmp_path / "full")]
    )
    assert isinstance(result.exception, VlmkitError) and "exists and is not empty" in str(result.exception)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_inputs_past_the_original_training_length_warn(native, caplog):
    """Past 2048 tokens the original changes RoPE at inference and vlmkit does not: said, not silent."""
    ids = torch.full((1, 2049), 100)
    with torch.no_grad():
        native.model(input_ids=ids[:, :2048], logits_to_keep=1)
    assert "dynamic NTK" not in caplog.text
    with torch.no_grad():
        native.model(input_ids=ids, logits_to_keep=1)
    assert "Qwen-VL past 2048 tokens" in caplog.text


def test_families_says_what_runs_qwen_vl_and_against_what_it_was_checked():
    from typer.testing import CliRunner

    from vlmkit.cli import app

    lines = CliRunner().invoke(app, ["families"]).output.splitlines()
    native = next(line for line in lines if line.startswith("qwen-vl "))
    assert "model_type=qwen_vl " in native and "vlmkit convert" in native
    assert "logits match the original remote code (transformers 4.40.2) to 1e-4" in native
    remote = next(line for line in lines if line.startswith("qwen-vl-remote "))
    assert "model_type=qwen " in remote and "inference only" in remote


def test_converted_copy_is_made_once_beside_the_original(qwen_vl_models, capsys):
    """For conversion on load: `<original>-vlmkit`, reused while the original is unchanged."""
    import os

    from vlmkit.families.qwen_vl.checkpoint import converted_copy, fingerprint

    original = qwen_vl_models["original"]
    copy = converted_copy(original)
    assert copy == original.resolve().with_name("original-vlmkit") and "converting" in capsys.readouterr().err
    assert converted_copy(original) == copy and "using" in capsys.readouterr().err
    assert torch.equal(load_file(str(copy / "model.safetensors"))["lm_head.weight"],
                       load_file(str(qwen_vl_models["native"] / "model.safetensors"))["lm_head.weight"])  # fmt: skip
    before = fingerprint(original)
    stat = (original / "config.json").stat()
    os.utime(original / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert fingerprint(original) != before  # the next load converts again
    os.utime(original / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns))
