"""Convert an OpenGVLab remote-code InternVL checkpoint into transformers' native InternVL folder.

`convert_checkpoint(source, output)` is `vlmkit convert`: it writes a folder that
`InternVLForConditionalGeneration` loads without remote code (weights renamed as `remote_names.py`
says, shard by shard in the source dtype), with the tokenizer (InternVL's image tokens named the
way `InternVLProcessor` reads them), a chat template of the original conversation format,
`preprocessor_config.json` / `processor_config.json` (tiles and tokens per tile from the source
config) and vlmkit.json (family, prompt format, default system message, tile limits, and what it
was converted from). The tokenizer comes from tokenizer.json, Qwen2's vocab.json + merges.txt (read by
transformers' Qwen2Tokenizer) or InternLM2's sentencepiece tokenizer.model (`spm_tokenizer.py`); the one
written is checked on the conversation's own strings and sample texts against the original (for
tokenizer.model the `sentencepiece` package on the file itself) and refused in one line if it differs.

`converted_copy(source)` is the conversion on load (`vlmkit infer/sft/serve --model SOURCE`): the
converted folder lives next to the source, `<source>-vlmkit-hf`, is made once (one line on
stderr says so), and is made again when the source's config or weights change (their sizes and
modification times are its fingerprint, kept in its vlmkit.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.families.family import read_model_config
from vlmkit.families.internvl.remote_names import (
    CONVERSATIONS,
    chat_template,
    check_convertible,
    convert_tensor,
    is_remote_checkpoint,
    native_config,
)
from vlmkit.families.internvl.template import IMAGE_CONTEXT, IMAGE_END, IMAGE_START

CONVERTED_SUFFIX = "-vlmkit-hf"
CONVERSION_VERSION = 2  # bump when the output changes, so cached copies are made again (2: tokenizer.model carried exactly)
IMAGE_TOKENS = {"start_image_token": IMAGE_START, "end_image_token": IMAGE_END, "context_image_token": IMAGE_CONTEXT}


def fingerprint(source: Path) -> str:
    """Changes when the source's config, weights or tokenizer change (names, sizes, modification times)."""
    digest = hashlib.sha256(f"conversion {CONVERSION_VERSION}".encode())
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".model", ".txt"):
            stat = path.stat()
            digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# vocab.json + merges.txt (InternVL2-1B/2B, InternVL2.5-1B: Qwen2's BPE) load with the class tokenizer_config.json
# names; only Qwen2's is known to be these files (its pre-tokenizer and normaliser come with the class).
BPE_FILE_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast")
# Text users send, beside the conversation's own strings, for the tokenizer check (`_check_tokenizer`).
SAMPLE_TEXTS = [
    "Hello world",
    " leading space",
    "trailing space ",
    "a\n\nb  c\t d\r\n",
    "你好，世界。这是一只猫🐱",
    "The square is red. 1452 + 45304 = 46766",
    "<|im_end|> x",
]


def _tokenizer_file(source: Path) -> str:
    """Which of the tokenizer layouts `source` has (the first of tokenizer.json, vocab.json + merges.txt, tokenizer.model)."""
    if (source / "tokenizer.json").is_file():
        return "tokenizer.json"
    if (source / "vocab.json").is_file() and (source / "merges.txt").is_file():
        return "vocab.json"
    if (source / "tokenizer.model").is_file():
        return "tokenizer.model"
    raise VlmkitError(
        f"{source}: no tokenizer.json, vocab.json + merges.txt or tokenizer.model; copy the tokenizer files from "
        "the original checkpoint"
    )


def _load_tokenizer(source: Path):
    """The source's tokenizer without its remote code: tokenizer.json as it is; Qwen2's vocab.json + merges.txt
    with the class tokenizer_config.json names; InternLM2's sentencepiece tokenizer.model (`spm_tokenizer.py`)."""
    import transformers
    from transformers import PreTrainedTokenizerFast

    from vlmkit.families.internvl.spm_tokenizer import sentencepiece_tokenizer

    # Not AutoTokenizer: it follows the checkpoint's auto_map to the remote code and asks to run it.
    layout = _tokenizer_file(source)
    if layout == "tokenizer.json":
        return PreTrainedTokenizerFast.from_pretrained(source)
    if layout == "tokenizer.model":
        return sentencepiece_tokenizer(source)
    config_file = source / "tokenizer_config.json"
    named = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    if named not in BPE_FILE_CLASSES:
        raise VlmkitError(
            f"{config_file}: tokenizer_class {named!r} with vocab.json + merges.txt is not converted "
            f"(Qwen2's {BPE_FILE_CLASSES[0]} is); add the checkpoint's tokenizer.json"
        )
    return getattr(transformers, named).from_pretrained(source)


def _probe_texts(config: dict[str, Any]) -> list[str]:
    """The conversation's own strings (the prompt `chat()` builds, with the image span, and a second turn after a
    reply; the same as vlmkit's template renders them) and text users send: CJK, newlines, runs of spaces, digits."""
    from vlmkit.families.internvl.template import render_internvl

    conversation = CONVERSATIONS[config["template"]]
    system, end = config.get("system_message", conversation["system"]), conversation["turn_end"]
    question, reply = "Describe this image.\n请用中文回答。", "A red square  on a mat.\n第二行：一只猫。"
    span = f"{IMAGE_START}{IMAGE_CONTEXT * 3}{IMAGE_END}\n"
    prompt = f"<|im_start|>system\n{system}{end}<|im_start|>user\n{span}{question}{end}<|im_start|>assistant\n"
    messages = [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": reply}]},
        {"role": "user", "content": [{"type": "text", "text": "And the count?"}]},
    ]
    rendered = "".join(s.text for s in render_internvl(messages, True, None, end))
    return [prompt, prompt + reply + end, rendered] + SAMPLE_TEXTS


def _check_tokenizer(source: Path, output: Path, tokenizer, config: dict[str, Any]) -> None:
    """Refuse, in one line, a written tokenizer that encodes the probe texts otherwise than the original: for
    tokenizer.model the `sentencepiece` package on the model file itself, else the source files as loaded."""
    from transformers import AutoTokenizer

    from vlmkit.families.internvl.spm_tokenizer import original_ids

    texts = _probe_texts(config)
    layout = _tokenizer_file(source)
    expected = original_ids(source, texts) if layout == "tokenizer.model" else [tokenizer(t)["input_ids"] for t in texts]
    written = AutoTokenizer.from_pretrained(output)
    for text, want in zip(texts, expected, strict=True):
        got = written(text)["input_ids"]
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
            raise VlmkitError(
                f"{source}/{layout}: the converted tokenizer encodes {text[:40]!r}... otherwise than the original (ids "
                f"{got[at : at + 3]} where it gives {want[at : at + 3]}, token {at}); not converted, please report it"
            )


def _convert_weights(source: Path, output: Path, config: dict[str, Any]) -> set[str]:
    """Rename every tensor of every safetensors file (same file names, index rewritten); the new names."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise VlmkitError(f"{source}: no *.safetensors weights (vlmkit converts safetensors checkpoints only)")
    names: dict[str, str] = {}
    for file in files:
        converted = {}
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                converted |= convert_tensor(name, f.get_tensor(name), config)
        save_file(converted, output / file.name, metadata={"format": "pt"})
        names |= dict.fromkeys(converted, file.name)
    index = source / "model.safetensors.index.json"
    if index.is_file():
        meta = json.loads(index.read_text()).get("metadata", {})
        (output / index.name).write_text(json.dumps({"metadata": meta, "weight_map": names}, indent=2) + "\n")
    return set(names)


def _check_names(native: dict[str, Any], names: set[str], source: Path) -> None:
    """Refuse a conversion whose tensors do not match the native model's parameters one to one."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.for_model(**native)
    with torch.device("meta"):
        expected = set(AutoModelForImageTextToText.from_config(config).state_dict())
    missing, unexpected = sorted(expected - names), sorted(names - expected)
    if missing or unexpected:
        raise VlmkitError(
            f"{source}: the converted weights do not fit transformers' InternVL "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); this checkpoint's layout is not supported"
        )


def convert_checkpoint(source: str | Path, output: str | Path, force: bool = False) -> Path:
    """Write the native-layout copy of the remote-code checkpoint `source` to `output`; returns it."""
    source, output = Path(source).expanduser(), Path(output).expanduser()
    config = read_model_config(source)
    if not is_remote_checkpoint(config):
        raise VlmkitError(
            f"{source}/config.json: model_type {config.get('model_type')!r} is not an OpenGVLab remote-code "
            "InternVL checkpoint (internvl_chat); nothing to convert"
        )
    check_convertible(config, f"{source}/config.json")
    if output.exists() and any(output.iterdir()) and not force:
        raise VlmkitError(f"{output} exists and is not empty; choose a new folder or pass --force")
    tokenizer = _load_tokenizer(source)
    vocab = tokenizer.get_vocab()
    missing = [t for t in IMAGE_TOKENS.values() if t not in vocab]
    if missing:
        raise VlmkitError(f"{source}: the tokenizer has no {', '.join(missing)}; not an InternVL chat checkpoint")
    rows = config["llm_config"]["vocab_size"]
    if len(tokenizer) > rows:
        raise VlmkitError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens, more than the language model's {rows} embedding "
            "rows; the tokenizer files do not belong to these weights"
        )
    native = native_config(config, vocab[IMAGE_CONTEXT])

    # Write into a sibling temp folder and rename, so an interrupted conversion never leaves half a model.
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir(parents=True)
    try:
        _check_names(native, _convert_weights(source, tmp, config), source)
        _write_files(source, tmp, config, native, tokenizer)
        _check_tokenizer(source, tmp, tokenizer, config)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    return output


def _write_files(source: Path, output: Path, config: dict[str, Any], native: dict[str, Any], tokenizer) -> None:
    from transformers import PreTrainedTokenizerFast

    from vlmkit.families.internvl.checkpoint import PREPROCESSOR_CONFIG
    from vlmkit.settings import write_settings

    conversation = CONVERSATIONS[config["template"]]
    system = config.get("system_message", conversation["system"])
    turn_end = conversation["turn_end"]
    added = tokenizer("", add_special_tokens=True)["input_ids"]
    bos = tokenizer.convert_ids_to_tokens(added[0]) if added else None  # InternLM2 puts <s> before every text
    (output / "config.json").write_text(json.dumps(native, indent=2) + "\n")
    stop = [tokenizer.convert_tokens_to_ids(turn_end.strip())]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
        stop.append(tokenizer.eos_token_id)
    # bos and pad as the config declares them: a generation config without one makes the Trainer "align" it
    # with the tokenizer and print transformers' "new PAD/BOS/EOS tokens" warning on every sft
    text = native["text_config"]
    generation = {"bos_token_id": text.get("bos_token_id"), "eos_token_id": stop,
                  "pad_token_id": text.get("pad_token_id"), "do_sample": False}  # fmt: skip
    (output / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        unk_token=tokenizer.unk_token,
        model_max_length=tokenizer.model_max_length,
        clean_up_tokenization_spaces=False,
        extra_special_tokens=dict(IMAGE_TOKENS),  # the names InternVLProcessor reads
    )
    tokenizer.chat_template = chat_template(turn_end, system, bos)
    tokenizer.save_pretrained(output)
    (output / "chat_template.jinja").write_text(tokenizer.chat_template)
    tile = native["vision_config"]["image_size"][0]
    tiles = {"min_patches": config.get("min_dynamic_patch", 1), "max_patches": config.get("max_dynamic_patch", 12)}
    if not config.get("dynamic_image_size", False):
        tiles = {"min_patches": 1, "max_patches": 1}
    preprocessor = PREPROCESSOR_CONFIG | {"size": {"height": tile, "width": tile}} | tiles
    (output / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    processor = {"processor_class": "InternVLProcessor", "image_seq_length": native["image_seq_length"]}
    (output / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    write_settings(
        output,
        {
            "family": "internvl",
            "system": system,
            "turn_end": turn_end,
            "bos": bos,
            "min_tiles": tiles["min_patches"],
            "max_tiles": tiles["max_patches"],
            "converted_from": {"path": str(source.resolve()), "template": config["template"], "fingerprint": fingerprint(source)},
        },
    )


def converted_copy(source: Path) -> Path:
    """The native copy of a remote-code checkpoint beside it (`<source>-vlmkit-hf`), made or refreshed."""
    from vlmkit.settings import read_settings

    source = source.resolve()
    output = source.with_name(source.name + CONVERTED_SUFFIX)
    made = read_settings(output).get("converted_from", {}) if (output / "config.json").is_file() else {}
    if made.get("fingerprint") == fingerprint(source):
        print(f"using {output} (converted from the remote-code checkpoint {source})", file=sys.stderr, flush=True)
        return output
    if not os.access(source.parent, os.W_OK):
        raise VlmkitError(
            f"{source} is an OpenGVLab remote-code InternVL checkpoint and {source.parent} is not writable for its "
            f"converted copy; run `vlmkit convert --model {source} --output DIR` and pass --model DIR"
        )
    print(f"converting the remote-code checkpoint {source} to transformers' InternVL layout in {output} (once)",
          file=sys.stderr, flush=True)  # fmt: skip
    return convert_checkpoint(source, output, force=True)
