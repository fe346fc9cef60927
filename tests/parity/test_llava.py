"""LLaVA-1.5 and LLaVA-NeXT: parity with the real chat templates and transformers' processors, and the
tiny models through inference, training, export and `infer --ckpt`."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHAT_TEMPLATES, random_image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoTokenizer,
    LlavaNextProcessor,
    LlavaProcessor,
)
from typer.testing import CliRunner

from vlmkit.errors import DataError, VlmkitError
from vlmkit.families import family_by_name
from vlmkit.sample import to_sample

FAMILIES = ["llava", "llava-next"]
PROCESSORS = {"llava": LlavaProcessor, "llava-next": LlavaNextProcessor}
# (h, w): square, portrait, very wide, a photo, a thin strip, and sizes that pick each grid pinpoint.
SIZES = [(336, 336), (300, 217), (50, 500), (1080, 1920), (17, 913), (700, 400), (1000, 340), (340, 1000)]

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hello"}]},
    {
        "messages": [
            {"role": "user", "content": "<image>What is this?"},
            {"role": "assistant", "content": "A cat."},
        ],
        "images": [random_image(40, 60)],
    },
    {
        "system": "Answer in French.",
        "messages": [
            {"role": "user", "content": "Compare <image> and <image>\nplease"},
            {"role": "assistant", "content": "Le premier est rouge."},
            {"role": "user", "content": "And now?<image>"},
            {"role": "assistant", "content": "  Spaces and\n\nnewlines kept."},
        ],
        "images": [random_image(64, 64, 1), random_image(100, 30, 2), random_image(30, 100, 3)],
    },
]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """(family, small_vocab) -> folder. Small vocabulary: a whole tiny model, built on first use. Real
    Qwen2 vocabulary: the tokenizer and processor files only (no weights), which is all parity needs."""
    from vlmkit.families.tiny import build_tiny_model, build_tokenizer

    root = tmp_path_factory.mktemp("llava")

    class Lazy(dict):
        def __missing__(self, key):
            name, small = key
            family = family_by_name(name)
            folder = root / f"{name}-{small}"
            if small:
                self[key] = build_tiny_model(family, folder, small_vocab=True)
                return self[key]
            if "tokenizer" not in self:
                self["tokenizer"] = build_tokenizer(family)
            tokenizer = self["tokenizer"]
            tokenizer.chat_template = family.chat_template
            tokenizer.save_pretrained(folder)
            (folder / "config.json").write_text(json.dumps({"model_type": family.model_type}))
            (folder / "preprocessor_config.json").write_text(json.dumps(family.preprocessor_config))
            (folder / "processor_config.json").write_text(json.dumps(family.processor_config))
            self[key] = folder
            return folder

    return Lazy()


@functools.cache
def tokenizer_of(folder: Path):
    return AutoTokenizer.from_pretrained(folder)


@functools.cache
def processor_of(name: str, folder: Path):
    """transformers' processor of the folder (made from parts, to reuse the loaded tokenizer)."""
    settings = {k: v for k, v in family_by_name(name).processor_config.items() if k != "processor_class"}
    return PROCESSORS[name](AutoImageProcessor.from_pretrained(folder), tokenizer_of(folder), **settings)


def template_of(folder: Path, **settings):
    tokenizer = tokenizer_of(folder)
    return family_by_name(json.loads((folder / "config.json").read_text())["model_type"]).load_template(
        folder, tokenizer, **settings
    )


def test_shipped_chat_templates(models):
    real = (CHAT_TEMPLATES / "llava_1_5_hf_chat_template.jinja").read_text().split("\n", 1)[1]
    assert family_by_name("llava").chat_template == real
    for name in FAMILIES:
        folder = models[name, True]
        assert (folder / "chat_template.jinja").read_text() == family_by_name(name).chat_template


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_rendered_text_equals_the_chat_template(models, name, conversation, generation_prompt):
    template = template_of(models[name, False])
    sample = to_sample(CONVERSATIONS[conversation])
    expected = template.tokenizer.apply_chat_template(
        sample.messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    assert template.render_text(sample, add_generation_prompt=generation_prompt) == expected


@pytest.mark.parametrize("name", FAMILIES)
def test_ids_and_pixels_equal_transformers_processor(models, name):
    """Real Qwen2 vocabulary: input_ids, pixel_values (and image_sizes) equal the transformers processor's
    on the chat template's text. LLaVA-1.5's template writes no end token after a reply; vlmkit adds one
    (the model stops on it), so those are taken out before comparing."""
    folder = models[name, False]
    template = template_of(folder)
    sample = to_sample(CONVERSATIONS[2])
    encoded = template.encode(sample)
    processor = processor_of(name, folder)
    text = processor.tokenizer.apply_chat_template(sample.messages, tokenize=False)
    images = [part["image"] for m in sample.messages for part in m["content"] if part["type"] == "image"]
    expected = processor(text=text, images=images, return_tensors="pt")
    ids = encoded["input_ids"].tolist()
    if name == "llava":
        eos = template.tokenizer.eos_token_id
        assert ids.count(eos) == 2  # one after each reply
        ids = [i for i in ids if i != eos]
    assert ids == expected["input_ids"][0].tolist()
    torch.testing.assert_close(encoded["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    if name == "llava-next":
        batch = template.collate([encoded])
        assert batch["image_sizes"].tolist() == expected["image_sizes"].tolist()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_pixel_values_equal_transformers_image_processor(models, name, height, width):
    folder = models[name, True]
    template = template_of(folder)
    image = random_image(height, width, seed=height + width)
    encoded = template.encode(
        to_sample({"messages": [{"role": "user", "content": "<image>x"}], "images": [image]})
    )
    expected = AutoImageProcessor.from_pretrained(folder)([image], return_tensors="pt")
    assert encoded["pixel_values"].shape == expected["pixel_values"].shape
    torch.testing.assert_close(encoded["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    n_image_tokens = int((encoded["input_ids"] == template.image_token_id).sum())
    processor = processor_of(name, folder)
    assert n_image_tokens == processor._get_num_multimodal_tokens([(height, width)]).num_image_tokens[0]


def test_llava_next_token_counts_equal_transformers_formula(models):
    """AnyRes.token_count == LlavaNextProcessor's count for many sizes and every aspect ratio bucket."""
    folder = models["llava-next", True]
    template = template_of(folder)
    processor = processor_of("llava-next", folder)
    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(400)]
    sizes += [(1, 1), (336, 672), (672, 336), (1008, 336), (336, 1008), (1, 4000), (4000, 1), (673, 1345)]
    expected = processor._get_num_multimodal_tokens(sizes).num_image_tokens
    assert [template.vision.token_count(h, w) for h, w in sizes] == expected
    assert len(set(expected)) > 20  # the count really depends on the size


@pytest.mark.parametrize("name", FAMILIES)
def test_supervised_tokens_are_the_replies_and_their_end_token(models, name):
    template = template_of(models[name, False])
    tokenizer = template.tokenizer
    sample = to_sample(CONVERSATIONS[2])
    encoded = template.encode(sample)
    ids, labels = encoded["input_ids"].tolist(), encoded["labels"].tolist()
    assert ids[0] == tokenizer.bos_token_id and labels[0] == -100
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    assert runs == [" Le premier est rouge.</s>", "   Spaces and\n\nnewlines kept.</s>"]
    # generation prompt + reply == training text: the prompt's tokens are a prefix of the training ids
    prompt = template.encode(
        to_sample({**CONVERSATIONS[2], "messages": CONVERSATIONS[2]["messages"][:3]}), True
    )
    assert ids[: len(prompt["input_ids"])] == prompt["input_ids"].tolist()


@pytest.mark.parametrize("name", FAMILIES)
def test_count_tokens_reads_headers_only(models, name, tmp_path):
    template = template_of(models[name, True])
    paths = []
    for k, (h, w) in enumerate([(300, 217), (50, 500)]):
        paths.append(tmp_path / f"{k}.png")
        random_image(h, w, seed=k).save(paths[-1])
    sample = to_sample(
        {
            "messages": [
                {"role": "user", "content": "<image><image>Two?"},
                {"role": "assistant", "content": "Yes."},
            ],
            "images": [str(p) for p in paths],
        }
    )
    assert template.count_tokens(sample) == len(template.encode(sample)["input_ids"])
    assert template.fit_limit(sample, 10) is None  # a fixed image size cannot shrink


@pytest.mark.parametrize("name", FAMILIES)
def test_pixel_limits_and_video_are_refused(models, name, image_file):
    folder = models[name, True]
    with pytest.raises(VlmkitError, match="--max-pixels does not apply to"):
        template_of(folder, max_pixels=100_000)
    with pytest.raises(VlmkitError, match="--min-pixels does not apply to"):
        template_of(folder, min_pixels=1000, max_pixels=None)
    template = template_of(folder, min_pixels=None, max_pixels=None)
    video = to_sample(
        {"messages": [{"role": "user", "content": "<video>What?"}], "videos": ["clip.mp4"]}, where="v.jsonl:3"
    )
    with pytest.raises(DataError, match=r"v.jsonl:3: .*video input is not supported"):
        template.encode(video)
    with pytest.raises(DataError, match="v.jsonl:3"):
        template.count_tokens(video)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "tuner"), [("llava", "lora"), ("llava-next", "full")])
def test_sft_export_and_infer_ckpt(models, tmp_path, name, tuner):
    from vlmkit.cli import app
    from vlmkit.train import SFTConfig, sft

    folder = models[name, True]
    rows = []
    for k in range(4):
        path = tmp_path / f"{k}.png"
        random_image(40 + 30 * k, 80, seed=k).save(path)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "<image>Colour?"},
                    {"role": "assistant", "content": "red"},
                ],
                "images": [str(path)],
            }
        )
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = SFTConfig(
        model=str(folder),
        dataset=[str(train)],
        output_dir=str(tmp_path / "out"),
        tuner=tuner,
        max_steps=2,
        batch_size=2,
        lr=1e-3,
        logging_steps=1,
        save_steps=50,
        progress=False,
        num_workers=0,
        report_to="none",
        eval_generate=0,
    )
    if tuner == "full":
        config = SFTConfig(**{**config.__dict__, "freeze_vit": False, "freeze_aligner": False})
    before = AutoModelForImageTextToText.from_pretrained(folder).state_dict()
    run_dir = sft(config)
    checkpoint = run_dir / "checkpoint-2"
    assert json.loads((checkpoint / "vlmkit.json").read_text())["family"] == name
    lines = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 2 and all(np.isfinite(losses))

    runner = CliRunner()
    result = runner.invoke(
        app,
        ["export", "--ckpt", str(checkpoint), "--merge-lora", "--output", str(tmp_path / "exported")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    after = AutoModelForImageTextToText.from_pretrained(tmp_path / "exported").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.language_model.") for k in changed)
    if tuner == "full":  # everything unfrozen trains, the row-end embedding included
        assert "model.image_newline" in changed and any(k.startswith("model.vision_tower.") for k in changed)
    else:  # the vision tower and projector stay frozen by default
        assert not any(k.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for k in changed)

    chat = runner.invoke(
        app,
        ["infer", "--ckpt", str(checkpoint), "--max-new-tokens", "3"],
        input=f"<image>Colour?\n{tmp_path}/0.png\nexit\n",
        catch_exceptions=False,
    )
    assert chat.exit_code == 0 and chat.output.count("-" * 50) == 1, chat.output
    with pytest.raises(VlmkitError, match="--max-pixels does not apply"):
        runner.invoke(
            app, ["infer", "--ckpt", str(checkpoint), "--max-pixels", "5000"], catch_exceptions=False
        )


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("llava", "<image>×576 [image 1: 336×336 center crop of 300×217 (h×w)]"),
        ("llava-next", "<image>×1032 [image 1: base 336×336 + 1×2 tiles (336×672) from 300×217 (h×w)]"),
    ],
)
def test_preview_and_check_describe_fixed_size_images(models, tmp_path, name, note):
    from vlmkit.commands.data import format_tokens
    from vlmkit.data import load_datasets
    from vlmkit.data.check import check_dataset

    template = template_of(models[name, True])
    random_image(300, 217).save(tmp_path / "a.png")
    row = {
        "messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "Red."}],
        "images": ["a.png"],
    }
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    data = load_datasets([str(tmp_path / "d.jsonl")])
    shown = format_tokens(template, template.encode(data[0]))
    assert note in shown and shown.endswith("[[ Red.</s>]] ")
    report = check_dataset(data, template, max_length=100, truncation="shrink", progress=False)
    assert [bad.where for bad in report.bad] == [f"{tmp_path / 'd.jsonl'}:1"]
    assert "images have a fixed size, raise --max-length" in report.bad[0].reason


def test_tiny_model_cli_and_real_vocabulary_ids(models, tmp_path):
    from vlmkit.cli import app

    tokenizer = tokenizer_of(models["llava", False])  # the real Qwen2 vocabulary with LLaVA's tokens
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<image>", "<pad>")}
    # As in the real Llama tokenizer (<unk> <s> </s> = 0 1 2, <image> <pad> = 32000 32001): <unk> <s> </s>
    # are already strings of the base vocabulary (kept whole as special tokens), <image> <pad> come after it.
    assert ids == {"<unk>": 128244, "<s>": 128245, "</s>": 128247, "<image>": 151643, "<pad>": 151644}
    assert tokenizer("Hello world")["input_ids"] == [128245, 9707, 1879]  # bos added, as Llama tokenizers do
    assert tokenizer("a<s>b</s>", add_special_tokens=False)["input_ids"] == [64, 128245, 65, 128247]
    assert tokenizer.decode([128245, 9707, 151643, 128247]) == "<s>Hello<image></s>"

    result = CliRunner().invoke(app, ["tiny-model", "llava-1.6", str(tmp_path / "m"), "--small-vocab"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "llava_next" and config["vision_config"]["image_size"] == 336
    small = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert config["image_token_index"] == small.convert_tokens_to_ids("<image>") == small.image_token_id
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "m").config.image_grid_pinpoints == [
        list(p) for p in family_by_name("llava-next").preprocessor_config["image_grid_pinpoints"]
    ]
    assert family_by_name("llava_1.5").name == "llava" and family_by_name("LLaVA-NeXT").name == "llava-next"
    lines = CliRunner().invoke(app, ["families"], catch_exceptions=False).output.splitlines()
    llava = next(line for line in lines if line.startswith("llava "))
    assert "inputs=image " in llava and "grounding=none" in llava and "(resolution options: none)" in llava
    assert "336x336 center crop, 576 tokens per image" in llava
    nxt = next(line for line in lines if line.startswith("llava-next "))
    assert "anyres" in nxt and "up to 2928 tokens per image" in nxt and "(resolution options: none)" in nxt
