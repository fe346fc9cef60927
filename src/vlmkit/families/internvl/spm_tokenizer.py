"""InternLM2's sentencepiece `tokenizer.model` as a fast tokenizer, without the checkpoint's remote code.

InternVL-Chat-V1.5 and the InternLM2-based InternVL2 ship only `tokenizer.model` (a byte-fallback BPE
sentencepiece model) and `tokenization_internlm2.py`. Their tokenizer splits the text at the added tokens
of tokenizer_config.json (`<|im_start|>`, `<img>` ...) and encodes each piece with sentencepiece, which puts
`▁` before each piece when the model's `add_dummy_prefix` is on; `<s>` goes first. The same as a
`tokenizers` pipeline: added tokens split first, then per piece a normalizer that prepends `▁` (when
`add_dummy_prefix`) and writes spaces as `▁`, and the BPE with byte fallback, its merges ordered by the
pieces' scores (transformers' `generate_merges`). The model file is read with protobuf (transformers' own
copy of sentencepiece's schema), so the `sentencepiece` package is not needed.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmkit.errors import VlmkitError

BPE_MODEL_TYPE = 2  # sentencepiece TrainerSpec.ModelType


def sentencepiece_tokenizer(source: Path):
    """A `PreTrainedTokenizerFast` equal to InternLM2Tokenizer(source) (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges
    from transformers.utils import sentencepiece_model_pb2_new as model_pb2

    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString((source / "tokenizer.model").read_bytes())
    except Exception as e:  # protobuf's DecodeError and friends
        raise VlmkitError(f"{source}/tokenizer.model: not a sentencepiece model ({e})") from None
    if proto.trainer_spec.model_type != BPE_MODEL_TYPE:
        raise VlmkitError(f"{source}/tokenizer.model: not a BPE sentencepiece model (InternLM2's is); not converted")
    config_file = source / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    pieces = [(p.piece, p.score) for p in proto.pieces]
    added = {int(i): t for i, t in (config.get("added_tokens_decoder") or {}).items()}
    for i, token in added.items():  # added tokens inside the model's range take the piece's place, as theirs do
        if i < len(pieces):
            pieces[i] = (token["content"], pieces[i][1])
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    merges = generate_merges(vocab, {piece: score for piece, score in pieces}, skip_tokens=[t["content"] for t in added.values()])
    unk = proto.trainer_spec.unk_piece or "<unk>"
    backend = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    backend.normalizer = normalizers.Sequence(
        ([normalizers.Prepend("▁")] if dummy_prefix else []) + [normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(content=" ", left=1)] if dummy_prefix else [])
    )
    backend.add_special_tokens(
        [AddedToken(t["content"], special=t.get("special", True), normalized=False) for _, t in sorted(added.items())]
    )
    bos = config.get("bos_token", "<s>")
    bos = bos["content"] if isinstance(bos, dict) else bos
    if config.get("add_bos_token", True):
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )

    def named(key: str, default: str | None) -> str | None:
        value = config.get(key, default)
        return value["content"] if isinstance(value, dict) else value

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=named("eos_token", "</s>"),
        unk_token=named("unk_token", unk),
        pad_token=named("pad_token", "</s>"),
        model_max_length=config.get("model_max_length", 32768),
        clean_up_tokenization_spaces=False,
    )
