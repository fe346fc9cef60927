"""Every registered family (`vlmkit.families.FAMILIES`) through the same checks against transformers, on
its tiny model (default settings):

- encode: a prompt (with an image, and text only) becomes exactly the model inputs of the family's
  transformers processor applied to the checkpoint's chat template (ids, pixels, and every other input
  the processor makes, through `collate`);
- a training row starts with that same prompt and supervises exactly the reply and the stop token;
- collate: padding a batch (right for training, left for generation) changes no row's logits;
- generate: vlmkit's batched greedy replies equal transformers' `generate` on the processor's inputs
  (for a model transformers does not ship, and so has no processor for: on vlmkit's inputs of one row).

A family whose checkpoints run remote code has no tiny model and no transformers processor; it is
listed and skipped with that reason. Family-specific parity (tiling, resolution limits, the chat
template's text, video) stays in the family's own file (test_template.py, test_internvl.py, ...).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pytest
import torch
import transformers
from conftest import random_image
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

import vlmkit
from vlmkit.backends.transformers_backend import VLM
from vlmkit.errors import VlmkitError
from vlmkit.families import FAMILIES, family_by_name, family_for_model_dir
from vlmkit.sample import to_sample

FAMILY_PARAMS = [
    pytest.param(f.name, marks=pytest.mark.skip(reason=f"{f.name}: remote-code checkpoints, no tiny model"))
    if f.remote_code
    else f.name
    for f in FAMILIES.values()
]
PROMPTS = [
    {"messages": [{"role": "user", "content": "<image>Describe it."}], "images": [random_image(60, 90, 1)]},
    {"messages": [{"role": "user", "content": "A longer question with no image, so the batch is padded?"}]},
    {"messages": [{"role": "user", "content": "And this one?<image>"}], "images": [random_image(100, 30, 2)]},
]
REPLY = "A red square."


def tiny_model(name: str, root: Path) -> tuple[Path, VLM] | str:
    """(folder, `vlmkit.load` of it) for the tiny `name` model (600-token vocabulary where the family has
    one), or why there is none to test."""
    from vlmkit.families.tiny import build_tiny_model

    family = family_by_name(name)
    try:
        folder = build_tiny_model(family, root / name, small_vocab=True)
    except VlmkitError:  # a family whose tiny model keeps the real vocabulary
        folder = build_tiny_model(family, root / (name + "-real-vocab"))
    written = family_for_model_dir(folder)
    if written is not family:  # e.g. an original layout that `vlmkit convert` turns into this family
        return f"{name}'s tiny model is a {written.name} checkpoint"
    return folder, vlmkit.load(str(folder))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """loaded(name) -> (tiny model folder, `vlmkit.load` of it), built on first use; skips with the reason
    where the family has no tiny model of its own."""
    root, built = tmp_path_factory.mktemp("families"), {}

    def load(name: str) -> tuple[Path, VLM]:
        if name not in built:
            built[name] = tiny_model(name, root)
        if isinstance(built[name], str):
            pytest.skip(built[name])
        return built[name]

    return load


@functools.cache
def transformers_processor(name: str, folder: Path):
    """The family's transformers processor (the class `AutoProcessor` picks for its model_type), made from
    the checkpoint's tokenizer, image processor and processor_config.json settings; without a video
    processor, which needs torchvision and which images never use."""
    family = family_by_name(name)
    if family.model_type not in PROCESSOR_MAPPING_NAMES:
        return None  # a model transformers does not ship (vlmkit's own implementation)
    cls = getattr(transformers, PROCESSOR_MAPPING_NAMES[family.model_type])

    class ImagesOnly(cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            return None

    params = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in (family.processor_config or {}).items() if k in params}
    if "video_processor" in params:
        settings["video_processor"] = None
    if "feature_extractor" in params:  # Gemma 4's audio feature extractor, at its defaults: images never use it
        settings["feature_extractor"] = getattr(transformers, FEATURE_EXTRACTOR_MAPPING_NAMES[family.model_type])()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if getattr(tokenizer, "video_token", None) is None:
        tokenizer.video_token = "<video>"  # InternVL's processor reads it; no image uses it
    image_processor = AutoImageProcessor.from_pretrained(folder)
    # the checkpoint's template as vlmkit renders it (`Family.chat_template_for`: e.g. Qwen3.5 non-thinking)
    chosen = family.chat_template_for({}) if family.chat_template_for is not None else None
    chat_template = chosen or tokenizer.chat_template
    return ImagesOnly(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **settings)


def processor_inputs(name: str, folder: Path, row: dict) -> dict[str, torch.Tensor]:
    sample = to_sample(row)
    processor = transformers_processor(name, folder)
    if processor is None:
        pytest.skip(f"transformers has no processor for {family_by_name(name).model_type}")
    text = processor.apply_chat_template(sample.messages, tokenize=False, add_generation_prompt=True)
    images = [part["image"] for m in sample.messages for part in m["content"] if part["type"] == "image"]
    # as the processor's own `apply_chat_template(tokenize=True)` does: a template that writes the bos
    # token itself (Gemma's) is not given a second one by the tokenizer
    bos = processor.tokenizer.bos_token
    add_special_tokens = not (bos is not None and text.startswith(bos))
    return dict(processor(text=text, images=images or None, return_tensors="pt", add_special_tokens=add_special_tokens))


def assert_same_inputs(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert set(theirs) <= set(ours), f"vlmkit's batch lacks {set(theirs) - set(ours)}"
    for key, expected in theirs.items():
        if expected.is_floating_point():
            torch.testing.assert_close(ours[key].float(), expected.float(), atol=1e-5, rtol=0, msg=key)
        else:
            assert ours[key].tolist() == expected.tolist(), key


@pytest.mark.parametrize("name", FAMILY_PARAMS)
@pytest.mark.parametrize("prompt", range(len(PROMPTS)))
def test_prompt_encodes_as_the_transformers_processor(loaded, name, prompt):
    folder, vlm = loaded(name)
    encoded = vlm.encode(to_sample(PROMPTS[prompt]))
    batch = vlm.template.collate([encoded], padding_side="left")
    batch.pop("labels")
    expected = processor_inputs(name, folder, PROMPTS[prompt])
    assert_same_inputs(batch, expected)
    assert set(batch) - set(expected) <= {"image_sizes"}, "vlmkit passes the model inputs the processor does not"


@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_training_row_is_the_prompt_then_the_supervised_reply(loaded, name):
    _, vlm = loaded(name)
    prompt = to_sample(PROMPTS[0])
    row = to_sample({**PROMPTS[0], "messages": [*PROMPTS[0]["messages"], {"role": "assistant", "content": REPLY}]})
    prompt_ids = vlm.encode(prompt)["input_ids"].tolist()
    encoded = vlm.template.encode(row)
    ids, labels = encoded["input_ids"].tolist(), encoded["labels"].tolist()
    assert ids[: len(prompt_ids)] == prompt_ids
    supervised = [label for label in labels if label != -100]
    assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
    assert supervised == ids[len(prompt_ids) : len(prompt_ids) + len(supervised)]
    # LLaVA's template writes "ASSISTANT: reply": the space after the prompt belongs to the reply; GLM-4.5V/4.6V's
    # model writes the think block that opens every reply (empty here) after its prompt
    assert vlm.tokenizer.decode(supervised[:-1]) in (REPLY, " " + REPLY, "<think></think>\n" + REPLY)
    assert supervised[-1] in vlm.template.stop_token_ids


@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_templates_take_the_row_dicts_generate_takes(loaded, name):
    """`vlm.template.encode({...})` as `vlm.generate([{...}])` takes it (issue 28 #6)."""
    _, vlm = loaded(name)
    row = {**PROMPTS[0], "messages": [*PROMPTS[0]["messages"], {"role": "assistant", "content": REPLY}]}
    expected = vlm.template.encode(to_sample(row))
    encoded = vlm.template.encode(row)
    assert encoded["input_ids"].tolist() == expected["input_ids"].tolist()
    assert encoded["labels"].tolist() == expected["labels"].tolist()
    assert vlm.template.count_tokens(row) == len(expected["input_ids"])
    assert vlm.template.render_text(row) == vlm.template.render_text(to_sample(row))
    assert vlm.encode(PROMPTS[0])["input_ids"].tolist() == vlm.encode(to_sample(PROMPTS[0]))["input_ids"].tolist()
    with pytest.raises(TypeError, match=r"vlmkit\.to_sample"):
        vlm.template.encode("Describe it.")


@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_collate_padding_changes_no_rows_logits(loaded, name):
    _, vlm = loaded(name)
    rows = [
        {**PROMPTS[0], "messages": [*PROMPTS[0]["messages"], {"role": "assistant", "content": REPLY}]},
        {"messages": [*PROMPTS[1]["messages"], {"role": "assistant", "content": "Yes."}]},
    ]
    encoded = [vlm.template.encode(to_sample(row)) for row in rows]
    assert len(encoded[0]["input_ids"]) != len(encoded[1]["input_ids"]), "the batch must need padding"
    with torch.no_grad():
        alone = [vlm.model(**vlm.on_device(vlm.template.collate([one]))).logits[0] for one in encoded]
        for padding_side in ("right", "left"):  # right for training, left for generation
            batch = vlm.template.collate(encoded, padding_side=padding_side)
            out = vlm.model(**vlm.on_device(batch))
            assert torch.isfinite(out.loss)
            width = batch["input_ids"].shape[1]
            for i, one in enumerate(encoded):
                n = len(one["input_ids"])
                real = range(width - n, width) if padding_side == "left" else range(n)
                assert batch["input_ids"][i, real].tolist() == one["input_ids"].tolist()
                assert batch["labels"][i, real].tolist() == one["labels"].tolist()
                assert batch["attention_mask"][i].tolist() == [int(j in real) for j in range(width)]
                assert (batch["labels"][i][batch["attention_mask"][i] == 0] == -100).all()
                torch.testing.assert_close(out.logits[i, real], alone[i], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_batched_replies_equal_transformers_generate(loaded, name):
    folder, vlm = loaded(name)
    replies = vlm.generate(PROMPTS, max_new_tokens=5)
    for row, reply in zip(PROMPTS, replies, strict=True):
        if transformers_processor(name, folder) is None:  # then vlmkit's own inputs, one row alone
            inputs = vlm.template.collate([vlm.encode(to_sample(row))], padding_side="left")
            inputs.pop("labels")
        else:
            inputs = processor_inputs(name, folder, row)
        with torch.no_grad():
            out = vlm.model.generate(**vlm.on_device(inputs), max_new_tokens=5, do_sample=False)
        assert reply == vlm.decode(out[0, inputs["input_ids"].shape[1] :].tolist())
    assert all(replies)  # an empty reply (a stop token first) would pass the comparison above trivially


def test_every_family_is_covered_or_skipped_with_a_reason():
    names = [p if isinstance(p, str) else p.values[0] for p in FAMILY_PARAMS]
    assert names == [f.name for f in FAMILIES.values()]
    assert {"qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl", "llava", "llava-next", "qwen3.5", "qwen3.5-moe"} <= set(names)
