"""Qwen-VL checkpoint folders: the tokenizer, `vlmkit convert` (original layout -> `qwen_vl`), and the tiny
original-layout model of `vlmkit tiny-model qwen-vl`.

The tokenizer is Qwen's own vocabulary (the checkpoint's `qwen.tiktoken`: 151,643 byte-level BPE ranks and
Qwen's split pattern, NFC-normalised, as tokenization_qwen.py builds it with tiktoken) with the special
tokens after it in the remote tokenizer's order, so every id is the real one. The remote tokenizer writes an
image as `<img>` + the path's bytes padded with `<imgpad>` to 256 tokens + `</img>`; vlmkit writes 256
`<imgpad>` and passes the pixels, and the model overwrites those 256 positions either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from vlmkit.errors import VlmkitError
from vlmkit.families.qwen_vl import convert
from vlmkit.settings import write_settings

FIRST_SPECIAL_ID = 151643
# The remote tokenizer's special tokens in its order (all special there too; a reply's grounding tags are
# kept by the family's box format, `keep_tokens`).
SPECIAL_TOKENS = tuple(
    (token, True)
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))
    + ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>")
)
QWEN_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PREPROCESSOR_CONFIG = {
    "image_size": 448,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": "bicubic",
}
TINY_TEXT = {
    "vocab_size": 151936, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "tie_word_embeddings": False,
}  # fmt: skip
TINY_VISION = {"image_size": 448, "patch_size": 14, "width": 32, "layers": 2, "heads": 2, "mlp_ratio": 2.0,
               "output_dim": 128, "n_queries": 256}  # fmt: skip


def build_tokenizer(vocab_file: str | Path):
    """A `PreTrainedTokenizerFast` of Qwen-VL from its `qwen.tiktoken`, special tokens at their real ids."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(vocab_file), pattern=QWEN_SPLIT_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    if backend.get_vocab_size() != FIRST_SPECIAL_ID:
        raise VlmkitError(
            f"{vocab_file}: {backend.get_vocab_size()} ranks, expected Qwen's {FIRST_SPECIAL_ID}"
        )
    backend.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )


def _generation_config():
    from transformers import GenerationConfig

    # Qwen-VL-Chat stops at <|im_end|> (its chat format's stop word) or <|endoftext|>.
    return GenerationConfig(eos_token_id=[151645, 151643], pad_token_id=151643, do_sample=False)


def _fresh_folder(output_dir: Path, force: bool = False) -> Path:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not force:
        raise VlmkitError(f"{output_dir} exists and is not empty; choose a new folder")
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir(parents=True)
    return tmp


def _finish(tmp: Path, output_dir: Path) -> Path:
    """Put the complete folder `tmp` at `output_dir` (replacing what is there only now: an interrupted
    write never leaves a half folder under the asked name)."""
    if output_dir.is_dir() and not output_dir.is_symlink():
        shutil.rmtree(output_dir)
    elif output_dir.exists() or output_dir.is_symlink():
        output_dir.unlink()
    tmp.rename(output_dir)
    return output_dir


def fingerprint(source: Path) -> str:
    """Changes when the source's config, weights or vocabulary change (names, sizes, modification times)."""
    digest = hashlib.sha256(b"qwen-vl conversion 1")
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin", ".tiktoken"):
            stat = path.stat()
            digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def converted_copy(source: Path) -> Path:
    """The `qwen_vl` copy of an original folder beside it (`<source>-vlmkit`), made once and remade when the
    source changes; a line on stderr says which (for conversion on load)."""
    from vlmkit.settings import read_settings

    source = Path(source).resolve()
    output = source.with_name(source.name + "-vlmkit")
    made = read_settings(output).get("converted_from", {}) if (output / "config.json").is_file() else {}
    if made.get("fingerprint") == fingerprint(source):
        print(
            f"using {output} (converted from the original Qwen-VL checkpoint {source})",
            file=sys.stderr,
            flush=True,
        )
        return output
    if not os.access(source.parent, os.W_OK):
        raise VlmkitError(
            f"{source} is an original Qwen-VL checkpoint and {source.parent} is not writable for its converted "
            f"copy; run `vlmkit convert --model {source} --output DIR` and pass --model DIR"
        )
    print(
        f"converting the original Qwen-VL checkpoint {source} to {output} (once)", file=sys.stderr, flush=True
    )
    return convert_checkpoint(source, output, force=True)


def read_original_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of an original-layout folder (model*.safetensors or pytorch_model*.bin shards)."""
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("model*.safetensors"))
    if files:
        return {k: v for f in files for k, v in load_file(str(f)).items()}
    files = sorted(model_dir.glob("pytorch_model*.bin"))
    if files:
        return {k: v for f in files for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}
    raise VlmkitError(f"{model_dir}: no model*.safetensors or pytorch_model*.bin weights")


def convert_checkpoint(model_dir: str | Path, output_dir: str | Path, force: bool = False) -> Path:
    """An original Qwen-VL / Qwen-VL-Chat folder -> a `qwen_vl` folder every vlmkit command loads; an
    existing non-empty `output_dir` is refused unless `force` (then replaced once the new one is complete)."""
    import transformers

    from vlmkit.families.qwen_vl.modeling import QwenVLConfig, QwenVLForConditionalGeneration

    transformers.utils.logging.disable_progress_bar()
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    config_path = model_dir / "config.json"
    try:
        original = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise VlmkitError(f"{model_dir}: no config.json; is this a model folder?") from None
    if original.get("model_type") != "qwen":
        raise VlmkitError(
            f"{config_path}: model_type {original.get('model_type')!r}, expected Qwen-VL's 'qwen'"
        )
    if not (model_dir / "qwen.tiktoken").is_file():
        raise VlmkitError(f"{model_dir}: no qwen.tiktoken (the Qwen-VL vocabulary)")
    config = QwenVLConfig(**convert.native_config(original, str(config_path)))
    state = convert.to_native(read_original_weights(model_dir), config.vision_config["heads"])
    with torch.device("meta"):
        model = QwenVLForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise VlmkitError(
            f"{model_dir}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.generation_config = _generation_config()
    tmp = _fresh_folder(output_dir, force)
    model.save_pretrained(tmp)
    build_tokenizer(model_dir / "qwen.tiktoken").save_pretrained(tmp)
    image = {**PREPROCESSOR_CONFIG, "image_size": config.vision_config["image_size"]}  # visual.py's transform
    (tmp / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
    write_settings(
        tmp, {"converted_from": {"path": str(model_dir.resolve()), "fingerprint": fingerprint(model_dir)}}
    )
    return _finish(tmp, output_dir)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Unit-scale random weights (biases and norms included, so that every tensor's conversion shows in
    the output), the same for a given seed on every machine."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("pos_embed"):
                continue
            noise = torch.randn(p.shape, generator=generator)
            if p.ndim == 1:  # norm weights around 1, biases around 0
                base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * noise)
            elif "embed_tokens" in name or name.endswith("query"):
                p.copy_(noise)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(noise / fan_in**0.5)


def write_tiny_original(output_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random Qwen-VL in the original remote-code layout (config.json model_type `qwen`,
    `transformer.*` tensors in model.safetensors, qwen.tiktoken); no Python code (`vlmkit convert` it,
    or copy in Qwen-VL-Chat's remote code to run the original)."""
    from safetensors.torch import save_file

    from vlmkit.families.qwen2_vl.vocab import qwen_vocab_file
    from vlmkit.families.qwen_vl.modeling import QwenVLConfig, QwenVLForConditionalGeneration

    output_dir = Path(output_dir)
    native = {"text_config": TINY_TEXT, "vision_config": TINY_VISION, "image_start_token_id": 151857,
              "image_end_token_id": 151858, "image_token_id": 151859}  # fmt: skip
    model = QwenVLForConditionalGeneration(QwenVLConfig(**native))
    _randomise(model, seed)
    state = convert.to_original(model.state_dict(), TINY_VISION["heads"])
    tmp = _fresh_folder(output_dir)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(tmp / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (tmp / "config.json").write_text(json.dumps(convert.original_config(native), indent=2) + "\n")
    generation = {"chat_format": "chatml", "do_sample": False, "eos_token_id": 151643, "max_new_tokens": 512,
                  "max_window_size": 6144, "pad_token_id": 151643}  # fmt: skip
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (tmp / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 8192, "tokenizer_class": "QWenTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
    }, indent=2) + "\n")  # fmt: skip
    shutil.copyfile(qwen_vocab_file(), tmp / "qwen.tiktoken")
    return _finish(tmp, output_dir)
