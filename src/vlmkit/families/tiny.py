"""Tiny random models of each family, for tests, demos and trying the CLI offline.

`build_tiny_model(family, output_dir)` writes a folder that plain transformers loads
(the family's `auto_class`, `AutoTokenizer`, `AutoImageProcessor`): a randomly
initialised model at toy size, the family's real chat template and image-processor
config, and a tokenizer whose special tokens have the real checkpoints' ids.

The tokenizer's vocabulary is the family's own recipe (`Family.tiny_vocabulary`; e.g. the
real Qwen2 vocabulary rebuilt offline), so a tiny model tokenizes text exactly as the real
checkpoints do and its special tokens have their real ids. `small_vocab=True` trains a
600-token BPE on the spot instead (faster tests; special tokens then follow the small
vocabulary, so their ids are not the real ones).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from vlmkit.errors import VlmkitError
from vlmkit.families.family import Family

SMALL_VOCAB_SIZE = 600
_SMALL_CORPUS = (
    "What color is the square? The square is red. How many circles are there? There are three circles. "
    "Describe this image. A photo of a cat sitting on a mat next to a dog. Who are they? They are friends. "
    "You are a helpful assistant. Find the object and give its box. red green blue yellow white black "
    "one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 , . ? ! : ; ( ) [ ] { } \" ' - "
    "The quick brown fox jumps over the lazy dog. Hello world! Please answer the question about the picture."
)


def small_vocab_backend():
    """A byte-level BPE of `SMALL_VOCAB_SIZE` tokens trained on a small English corpus (a
    `tokenizers.Tokenizer`, before any special token): the `small_vocab` vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SMALL_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator([_SMALL_CORPUS] * 4, trainer=trainer)
    return backend


def build_tokenizer(family: Family, small_vocab: bool = False):
    """A `PreTrainedTokenizerFast` with the family's special tokens and chat template."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    if small_vocab:
        backend = small_vocab_backend()
    elif family.tiny_vocabulary is None:
        raise VlmkitError(f"{family.name} has no tiny-model vocabulary of its own; pass --small-vocab")
    else:
        backend = family.tiny_vocabulary()
        first_id = backend.get_vocab_size()
        if first_id != family.first_special_id:
            raise VlmkitError(
                f"{family.name}'s tiny vocabulary has {first_id} tokens, expected {family.first_special_id}"
            )
    backend.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in family.special_tokens])
    if family.bos_token is not None:  # Llama-style: the bos token goes before every text
        from tokenizers import processors

        bos = family.bos_token
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=family.eos_token,
        pad_token=family.pad_token,
        bos_token=family.bos_token,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        extra_special_tokens=dict(family.tokenizer_extra),
    )
    tokenizer.chat_template = family.chat_template
    return tokenizer


def build_tiny_model(
    family: Family, output_dir: str | Path, small_vocab: bool = False, seed: int = 0
) -> Path:
    """Write a tiny random `family` model to `output_dir`; returns the folder."""
    import torch
    import transformers
    from transformers import AutoConfig, GenerationConfig

    transformers.utils.logging.disable_progress_bar()
    if family.write_tiny_model is not None:
        if small_vocab:
            raise VlmkitError(f"{family.name}'s tiny model keeps the real vocabulary; leave out --small-vocab")
        return family.write_tiny_model(Path(output_dir), seed)
    if family.remote_code:
        raise VlmkitError(
            f"{family.name} has no tiny model: its model is remote code shipped with the checkpoints, "
            "which vlmkit cannot build offline; pick another family (vlmkit families)"
        )
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise VlmkitError(f"{output_dir} exists and is not empty; choose a new folder")
    tokenizer = build_tokenizer(family, small_vocab=small_vocab)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _ in family.special_tokens}
    vocab_size = len(tokenizer)
    config_dict = family.tiny_config(vocab_size, ids)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    torch.manual_seed(seed)
    model = getattr(transformers, family.auto_class).from_config(config, dtype=torch.float32)
    # the stop tokens: those the tiny config lists (as an instruction-tuned checkpoint's config.json
    # does, e.g. <eos> and <end_of_turn>), else the eos and pad tokens
    stops = config_dict.get("eos_token_id") or [ids[family.eos_token], ids[family.pad_token]]
    model.generation_config = GenerationConfig(
        eos_token_id=stops,
        pad_token_id=ids[family.pad_token],
        bos_token_id=ids.get(family.bos_token),
        do_sample=False,
    )

    # Write into a sibling temp folder and rename, so an interrupted build never leaves a half model.
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "preprocessor_config.json").write_text(json.dumps(family.preprocessor_config, indent=2) + "\n")
    if family.processor_config is not None:
        (tmp / "processor_config.json").write_text(json.dumps(family.processor_config, indent=2) + "\n")
    if output_dir.exists():
        output_dir.rmdir()
    tmp.rename(output_dir)
    return output_dir
