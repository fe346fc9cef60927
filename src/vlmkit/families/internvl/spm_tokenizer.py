"""InternLM2's sentencepiece `tokenizer.model` as a fast tokenizer, without the checkpoint's remote code.

InternVL-Chat-V1.5 and the InternLM2-based InternVL2 ship only `tokenizer.model` (a BPE sentencepiece
model) and `tokenization_internlm2.py`. Their tokenizer splits the text at the added tokens of
tokenizer_config.json (`<|im_start|>`, `<img>` ...) and at its special tokens (`<s>`, `</s>`, `<unk>`), encodes
each piece with sentencepiece, and puts `<s>` first. Sentencepiece itself normalises the piece (its
character map, e.g. nmt_nfkc's, which turns a newline into a space; with `remove_extra_whitespaces`, no
spaces at either end and one for each run), puts `▁` first when `add_dummy_prefix` is on, writes spaces as
`▁`, keeps its user-defined pieces (`<|im_start|>` in some models) whole wherever they occur, and runs the
BPE (with byte fallback where the model has it). The same as a `tokenizers` pipeline: the added and special
tokens split first (not normalised); per piece a normaliser doing the same steps; the user-defined pieces as
added tokens matched in the normalised text; the BPE, its merges ordered by the pieces' scores
(transformers' `generate_merges`). The model file is read with protobuf (transformers' own copy of
sentencepiece's schema).

`original_ids` is the original's encoding (the `sentencepiece` package on the model file itself), which
`convert.py` checks the written tokenizer against.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmkit.errors import VlmkitError

BPE_MODEL_TYPE = 2  # sentencepiece TrainerSpec.ModelType
USER_DEFINED = 4  # sentencepiece ModelProto.SentencePiece.Type: a piece kept whole wherever it occurs
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _read_model(source: Path):
    from transformers.utils import sentencepiece_model_pb2_new as model_pb2

    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString((source / "tokenizer.model").read_bytes())
    except Exception as e:  # protobuf's DecodeError and friends
        raise VlmkitError(f"{source}/tokenizer.model: not a sentencepiece model ({e})") from None
    if proto.trainer_spec.model_type != BPE_MODEL_TYPE:
        raise VlmkitError(f"{source}/tokenizer.model: not a BPE sentencepiece model (InternLM2's is); not converted")
    return proto


def _read_config(source: Path) -> dict:
    config_file = source / "tokenizer_config.json"
    return json.loads(config_file.read_text()) if config_file.is_file() else {}


def _content(value) -> str | None:
    return value["content"] if isinstance(value, dict) else value


def split_tokens(config: dict, vocab: dict[str, int]) -> dict[int, dict]:
    """id -> added token of tokenizer_config.json, plus its special tokens (`<s>`...) that the vocabulary
    holds: the tokens the original tokenizer splits the text at before sentencepiece sees it."""
    added = {int(i): dict(t) for i, t in (config.get("added_tokens_decoder") or {}).items()}
    known = {t["content"] for t in added.values()}
    for key in SPECIAL_TOKEN_KEYS:
        token = _content(config.get(key, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}.get(key)))
        if token and token not in known and token in vocab:
            added[vocab[token]] = {"content": token, "special": True}
            known.add(token)
    return added


def _normalizer(spec, dummy_prefix: bool):
    """Sentencepiece's normalisation of one piece of text (normalizer.cc), spaces written as `▁`."""
    from tokenizers import Regex, normalizers

    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:  # only spaces (after the character map), not newlines or tabs
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    steps += [normalizers.Prepend("▁")] if dummy_prefix else []  # Prepend leaves an empty text empty
    return normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])


def sentencepiece_tokenizer(source: Path):
    """A `PreTrainedTokenizerFast` equal to InternLM2Tokenizer(source) (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    proto = _read_model(source)
    config = _read_config(source)
    pieces = [(p.piece, p.score) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    added = split_tokens(config, vocab)
    for i, token in added.items():  # added tokens inside the model's range take the piece's place, as theirs do
        if i < len(pieces):
            pieces[i] = (token["content"], pieces[i][1])
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    # User-defined pieces: matched in the normalised text, as sentencepiece matches them in its own
    user_defined = [p.piece for i, p in enumerate(proto.pieces) if p.type == USER_DEFINED and i not in added]
    if user_defined and proto.normalizer_spec.add_dummy_prefix:
        # Sentencepiece writes a lone `▁` before such a piece at the start of a text; a tokenizers normaliser that
        # prepends it also prepends it to the added token itself, which then matches nothing.
        raise VlmkitError(
            f"{source}/tokenizer.model: user-defined pieces ({', '.join(user_defined[:3])} ...) with add_dummy_prefix "
            "on have no exact fast tokenizer; not converted, please report this checkpoint"
        )
    skip = [t["content"] for t in added.values()] + user_defined
    merges = generate_merges(vocab, {piece: score for piece, score in pieces}, skip_tokens=skip)
    unk = proto.trainer_spec.unk_piece or "<unk>"
    backend = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback))
    dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    backend.normalizer = _normalizer(proto.normalizer_spec, dummy_prefix)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(content=" ", left=1)] if dummy_prefix else [])
    )
    backend.add_special_tokens(
        [AddedToken(t["content"], special=t.get("special", True), normalized=False) for _, t in sorted(added.items())]
    )
    backend.add_tokens([AddedToken(piece, special=False, normalized=True) for piece in user_defined])
    bos = _content(config.get("bos_token", "<s>"))
    if config.get("add_bos_token", True):
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=_content(config.get("eos_token", "</s>")),
        unk_token=_content(config.get("unk_token", unk)),
        pad_token=_content(config.get("pad_token", "</s>")),
        model_max_length=config.get("model_max_length", 32768),
        clean_up_tokenization_spaces=False,
    )


def original_ids(source: Path, texts: list[str]) -> list[list[int]]:
    """What InternLM2Tokenizer(source)(text).input_ids gives: the text cut at the added and special tokens, each
    piece encoded by the `sentencepiece` package with the model file itself, `<s>` first."""
    import re

    try:
        import sentencepiece
    except ImportError:
        raise VlmkitError(
            f"{source}/tokenizer.model: checking its conversion needs the sentencepiece package; pip install sentencepiece"
        ) from None
    model = sentencepiece.SentencePieceProcessor(model_proto=(source / "tokenizer.model").read_bytes())
    config = _read_config(source)
    vocab = {model.id_to_piece(i): i for i in range(model.get_piece_size())}
    added = {t["content"]: i for i, t in split_tokens(config, vocab).items()}
    splitter = re.compile("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")")
    bos = [vocab[_content(config.get("bos_token", "<s>"))]] if config.get("add_bos_token", True) else []
    out = []
    for text in texts:
        tokens = []
        for piece in splitter.split(text) if added else [text]:
            tokens += [piece] if piece in added else model.encode(piece, out_type=str) if piece else []
        out.append(bos + [added[t] if t in added else model.piece_to_id(t) for t in tokens])  # as theirs: str, then id
    return out

