"""Chat turns reuse the KV cache of the turns before (`vlmkit.backends.chat_cache`): same replies as re-running the
whole conversation, with only the new tokens and images put through the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import random_image

import vlmkit
from vlmkit.backends import chat_cache
from vlmkit.families import FAMILIES as REGISTERED
from vlmkit.families import family_by_name

# every registered family with a chat cache and a small-vocabulary tiny model (Qwen-VL has its own test below),
# so a new one is checked without a change here (Qwen3.5 has no chat cache: tests/integration/test_qwen3_5_cli.py)
FAMILIES = [f.name for f in REGISTERED.values() if not f.remote_code and f.write_tiny_model is None and f.chat_cache]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Family name -> a tiny model with the 600-token BPE (fast to build and load), built when first used."""
    from vlmkit.families.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("chat-cache-models")

    class Lazy(dict):
        def __missing__(self, name: str) -> Path:
            self[name] = build_tiny_model(
                family_by_name(name), root / name.replace(".", "_"), small_vocab=True
            )
            return self[name]

    return Lazy()


def load(models, family: str):
    settings = {"max_pixels": 12_000} if family.startswith("qwen") else {}
    return vlmkit.load(str(models[family]), device="cpu", dtype="fp32", **settings)


TURNS = [
    ("Describe this.", [random_image(56, 84, seed=1)]),
    ("And this one?", [random_image(112, 56, seed=2)]),
    ("Compare them.", []),
    ("<image> and the last one?", [random_image(60, 60, seed=3)]),
]


def converse(vlm, reuse: bool, turns=TURNS) -> tuple[list[str], list[tuple[int, int]]]:
    chat = vlm.chat(system="Be brief.", reuse_cache=reuse)
    replies, work = [], []
    for text, images in turns:
        replies.append(chat.send(text, images=images, max_new_tokens=8))
        work.append((chat.tokens_run, chat.images_run))
    return replies, work


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_turns_give_the_replies_of_full_reencoding_and_run_only_what_is_new(models, family):
    vlm = load(models, family)
    full_replies, full_work = converse(vlm, reuse=False)
    replies, work = converse(vlm, reuse=True)
    assert replies == full_replies
    # without the cache every turn runs the whole conversation and all its images so far
    assert [images for _, images in full_work] == [1, 2, 2, 3]
    assert [images for _, images in work] == [1, 1, 0, 1]  # each image through the vision tower once
    assert work[0] == full_work[0]
    for (tokens, _), (all_tokens, _) in zip(work[1:], full_work[1:], strict=True):
        assert tokens < all_tokens
    assert work[2][0] < 60  # a text-only turn runs about its own tokens, not the images before it


def test_prefill_logits_equal_a_full_forward(models):
    """The keys kept and the M-RoPE positions given are right: after a cached prefill the next-token logits
    are those of one forward pass over the whole prompt."""
    vlm = load(models, "qwen2-vl")
    chat = vlm.chat()
    chat.send("Look.", images=[random_image(84, 56, seed=4)], max_new_tokens=5)
    sample = chat._sample("<image>Now this.", [random_image(56, 112, seed=5)], [])
    encoded = vlm.encode(sample)
    resume = chat_cache.resume_point(
        vlm.template, encoded, chat_cache.media_of(vlm.template, encoded), chat._cache
    )
    assert 0 < resume.keep < len(encoded["input_ids"]) and resume.first_image == 1
    inputs = chat_cache.prefill(vlm, encoded, chat._cache, resume)
    with torch.inference_mode():
        # the last prompt token, positioned from the cache length and the rope_deltas prefill set
        cached = vlm.model(
            input_ids=inputs["input_ids"][:, -1:], **{chat_cache.CACHE: inputs[chat_cache.CACHE]}
        ).logits[0, -1]
        full = vlm.model(**vlm._inputs([encoded])).logits[0, -1]
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


def test_an_image_changed_behind_the_same_tokens_is_encoded_again(models):
    vlm = load(models, "qwen2-vl")
    chat = vlm.chat()
    chat.send("What is it?", images=[random_image(56, 56, seed=6)], max_new_tokens=4)
    # same size (same placeholder tokens), other pixels, swapped into the history by hand
    chat.messages[0]["content"][0]["image"] = random_image(56, 56, seed=7)
    reply = chat.send("Sure?", max_new_tokens=6)
    assert chat.images_run == 1
    reference = vlm.chat(reuse_cache=False)
    reference.messages = [dict(m) for m in chat.messages[:2]]
    assert reference.send("Sure?", max_new_tokens=6) == reply


def test_edited_history_and_clear_fall_back_to_what_still_matches(models):
    vlm = load(models, "qwen2-vl")
    chat = vlm.chat()
    chat.send("First.", images=[random_image(56, 56, seed=8)], max_new_tokens=4)
    chat.send("Second.", max_new_tokens=4)
    chat.messages[1]["content"][0]["text"] = "an answer written by hand"
    reply = chat.send("Third.", max_new_tokens=6)
    assert chat.images_run == 0  # the image before the edit is still cached
    reference = vlm.chat(reuse_cache=False)
    reference.messages = list(chat.messages[:4])
    assert reference.send("Third.", max_new_tokens=6) == reply
    chat.clear()
    chat.send("Fresh start.", max_new_tokens=4)
    assert chat.tokens_run == len(vlm.encode(vlm.chat()._sample("Fresh start.", [], []))["input_ids"])


def test_a_failed_turn_keeps_the_cache_of_the_good_ones(models, tmp_path):
    vlm = load(models, "qwen2-vl")
    chat = vlm.chat()
    chat.send("One.", images=[random_image(56, 56, seed=9)], max_new_tokens=4)
    with pytest.raises(vlmkit.errors.VlmkitError, match="file not found"):
        chat.send("Two.", images=[tmp_path / "missing.png"], max_new_tokens=4)
    chat.send("Three.", max_new_tokens=4)
    assert chat.images_run == 0 and len(chat.messages) == 4


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen3-vl"])
def test_video_turns_are_kept_and_new_ones_run(models, family):
    vlm = load(models, family)
    frames = [random_image(56, 56, seed=10 + i) for i in range(4)]
    turns = [("What happens?", []), ("Why?", []), ("<image>And here?", [random_image(56, 84, seed=20)])]
    runs = {}
    for reuse in (False, True):
        chat = vlm.chat(reuse_cache=reuse)
        replies = [chat.send(turns[0][0], videos=[frames], max_new_tokens=6)]
        tokens = [chat.tokens_run]
        for text, images in turns[1:]:
            replies.append(chat.send(text, images=images, max_new_tokens=6))
            tokens.append(chat.tokens_run)
        runs[reuse] = replies, tokens
    assert runs[True][0] == runs[False][0]
    assert runs[True][1][0] == runs[False][1][0]
    assert all(cached < full for cached, full in zip(runs[True][1][1:], runs[False][1][1:], strict=True))


def test_sampled_turns_with_a_seed_match_too(models):
    vlm = load(models, "qwen2-vl")
    replies = {}
    for reuse in (False, True):
        chat = vlm.chat(reuse_cache=reuse)
        replies[reuse] = [
            chat.send(text, images=images, max_new_tokens=8, temperature=0.8, seed=3)
            for text, images in TURNS[:3]
        ]
    assert replies[True] == replies[False]


def test_a_turn_that_fails_while_generating_drops_the_cache(models, monkeypatch):
    vlm = load(models, "qwen2-vl")
    chat = vlm.chat()
    chat.send("One.", images=[random_image(56, 56, seed=11)], max_new_tokens=4)
    real_generate = type(vlm.model).generate

    def broken(self, *args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(type(vlm.model), "generate", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        chat.send("Two.", max_new_tokens=4)
    assert len(chat.messages) == 2  # the failed turn is not in the history
    monkeypatch.setattr(type(vlm.model), "generate", real_generate)
    reply = chat.send("Three.", max_new_tokens=6)
    # the cache may hold a half-run turn: it is not trusted, the whole conversation runs again
    assert chat.images_run == 1
    reference = vlm.chat(reuse_cache=False)
    reference.messages = list(chat.messages[:2])
    assert chat.tokens_run == len(vlm.encode(reference._sample("Three.", [], []))["input_ids"])
    assert reference.send("Three.", max_new_tokens=6) == reply


def test_qwen_vl_cached_turns_give_the_replies_of_full_reencoding(qwen_vl_models):
    """Qwen-VL (vlmkit's own implementation, real vocabulary: conftest's converted tiny model) too."""
    vlm = vlmkit.load(str(qwen_vl_models["native"]), device="cpu", dtype="fp32")
    full_replies, full_work = converse(vlm, reuse=False)
    replies, work = converse(vlm, reuse=True)
    assert replies == full_replies
    assert [images for _, images in work] == [1, 1, 0, 1] and [images for _, images in full_work] == [1, 2, 2, 3]
    assert all(tokens < all_tokens for (tokens, _), (all_tokens, _) in zip(work[1:], full_work[1:], strict=True))
