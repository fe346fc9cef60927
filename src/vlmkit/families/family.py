"""The records a family folder fills in: `Family` (what shared code needs to know about a model family)
and `OriginalLayout` (its checkpoints in the authors' own layout, which vlmkit converts); and
`read_model_config`, a checkpoint's config.json, whose `model_type` names its family.

Family folders import these from here, not from `vlmkit.families`, whose registry (`FAMILIES`) imports
every family folder: the folders depend on this module and the registry on the folders, never in a
circle. `vlmkit.families` re-exports these names; shared code and users write `from vlmkit.families
import Family`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmkit.errors import VlmkitError

if TYPE_CHECKING:
    from vlmkit.families.interface import Template
    from vlmkit.media.grounding import BoxFormat


@dataclass(frozen=True)
class OriginalLayout:
    """A family's checkpoints as their authors ship them (remote code), which vlmkit converts.

    name: what `vlmkit tiny-model NAME` takes; model_type: their `config.json` model_type.
    convert(source, output, force) writes the family's native folder; converted_copy(source) returns
    the converted copy used on load (made once, with a line on stderr); build_tiny(output, seed) writes
    a toy checkpoint in the original layout. checkpoints / verified: one line each for `vlmkit families`.
    """

    name: str
    model_type: str
    convert: Callable[..., Path]
    converted_copy: Callable[[Path], Path]
    build_tiny: Callable[..., Path]
    checkpoints: str
    verified: str


@dataclass(frozen=True)
class Family:
    """What shared code needs to know about a model family.

    name: how users write it (`qwen2-vl`); model_type: `config.json`'s `model_type`.
    special_tokens: (token, special) pairs in the real tokenizer's order, starting at
    `first_special_id`; `special=False` tokens are kept when decoding.
    make_template(model_dir, tokenizer, **settings) -> a template object (the interface:
    `vlmkit.families.interface.Template`); `settings` are only fields of
    `vlmkit.settings.EncodingSettings` named in `encoding_options`, already merged with the settings saved
    in `model_dir` (given > saved); the template fills the rest from the checkpoint's config or its
    defaults. Callers use `Family.load_template`, which refuses the others first.
    tiny_config(vocab_size, special_ids) -> the model's `config.json` dict at toy size.
    module_groups: parameter-name prefixes of the parts users freeze or tune separately:
    "vit" (vision tower), "aligner" (vision-to-text projector), "llm" (language model and
    head). The longest matching prefix decides a parameter's group.
    encoding_options: the `EncodingSettings` fields the family's template takes (its resolution limits,
    video sampling, system prompt); the others are refused (`vlmkit.settings.check_encoding`).
    vision: one line for `vlmkit families` on how images become tokens.
    tokenizer_extra: named tokens the tokenizer carries (transformers' `extra_special_tokens`).
    processor_config: the checkpoint's `processor_config.json`, when it has one.
    packing: the template has `packing_position_ids` (each sample's position ids on its own, text
    row first) and the model honours them without an attention mask, so `vlmkit sft` can pack
    samples (`vlmkit.train.packing`); False keeps packing off for the family. no_packing_reason: why not,
    for the line that refuses `--packing` (None: nothing more to say).
    box_format: how the family writes and reads grounding boxes (`vlmkit.media.grounding.BoxFormat`; from
    the family folder's `boxes.py`), None for a family without grounding.
    auto_class: the transformers auto class that loads the checkpoint's weights.
    remote_code: the checkpoints run Python code shipped with them (`--trust-remote-code`); such a family
    has no tiny model (`vlmkit tiny-model` refuses it) and is untested against real checkpoints.
    train_refusal: None for a family `vlmkit sft` can train; else the one line saying why not and what
    to do instead (the family is inference only).
    processor_limits: (file name, its config, vlmkit.json settings) -> the config with the settings'
    resolution limits written the way transformers' processors read them, for checkpoints and exports
    (`vlmkit.models.processor_files`); None keeps the files as they are.
    register_classes: for a model transformers does not ship (vlmkit's own implementation), makes its
    auto classes know the model type; called once when the family is looked up (`family_by_name`,
    `family_for_config`), so before any checkpoint of it loads.
    write_tiny_model: (output_dir, seed) -> folder, for a family whose tiny model is not built from
    `tiny_config` (e.g. written in an original checkpoint layout to convert).
    convert_checkpoint: (model_dir, output_dir, force) -> folder, for an original layout that `vlmkit convert`
    turns into a family vlmkit loads natively; None where there is nothing to convert.
    converted_copy: model_dir -> the converted copy used on load (made once, with a line on stderr), for a
    remote-code family whose checkpoints every command converts unless remote code is asked for
    (`vlmkit.families.native_model_dir`), as an `OriginalLayout` does; None: loaded as they are.
    original_layouts: checkpoints of the family in another layout that vlmkit converts to this one
    (`OriginalLayout`: `vlmkit convert`, conversion on load, `vlmkit tiny-model NAME`).
    chat_template_for: (the template's settings) -> the Jinja chat template that renders what the template
    encodes with them (vLLM's); None: `chat_template` whatever the settings.

    chat_cache: the template can split an `encode` output per image (`interface.SplitsMedia`), so a chat
    turn reuses the model's cache of the turns before (`vlmkit.backends.chat_cache`); False re-encodes every turn.
    chat_positions(model, template, encoded) -> the position ids of a chat prompt that continues a cache,
    for families whose positions are not plain 1-D (`vlmkit.backends.chat_cache.ChatPositions`); None: 1-D
    positions from the cache length.
    vllm_processor_kwargs(settings) -> the `--mm-processor-kwargs` of `vlmkit serve --backend vllm` for
    the template settings; None: {} (vLLM's processor defaults). vllm_encoding_options: the encoding options
    (`EncodingSettings` fields) it passes on; with `--backend vllm` the others are refused (the system prompt
    always passes, in the chat template).
    verified: one line for `vlmkit families` and the README's model table: what the family was checked against
    here, and through which commands.
    tiny_vocabulary() -> the `tokenizers.Tokenizer` (before special tokens) of the family's tiny models,
    whose size is `first_special_id` (the real checkpoints' ids); None: only `--small-vocab` tiny models.
    """

    name: str
    model_type: str
    description: str
    folder: Path
    special_tokens: tuple[tuple[str, bool], ...]
    first_special_id: int
    eos_token: str
    pad_token: str
    preprocessor_config: dict[str, Any]
    make_template: Callable[..., Template]
    tiny_config: Callable[[int, dict[str, int]], dict[str, Any]]
    module_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    supports: tuple[str, ...] = ("image",)
    aliases: tuple[str, ...] = field(default=())
    box_format: BoxFormat | None = None
    encoding_options: tuple[str, ...] = ("system",)
    vision: str = ""
    tokenizer_extra: dict[str, str] = field(default_factory=dict)
    processor_config: dict[str, Any] | None = None
    # The token a tiny model's tokenizer puts before every text, as Llama tokenizers do; None: nothing.
    bos_token: str | None = None
    packing: bool = False
    no_packing_reason: str | None = None
    auto_class: str = "AutoModelForImageTextToText"
    remote_code: bool = False
    train_refusal: str | None = None
    processor_limits: Callable[[str, dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    register_classes: Callable[[], None] | None = None
    write_tiny_model: Callable[[Path, int], Path] | None = None
    convert_checkpoint: Callable[..., Path] | None = None
    converted_copy: Callable[[Path], Path] | None = None
    original_layouts: tuple[OriginalLayout, ...] = ()
    chat_template_for: Callable[[dict[str, Any]], str] | None = None
    chat_cache: bool = False
    chat_positions: Callable[[Any, Template, dict[str, Any]], Any] | None = None
    vllm_processor_kwargs: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    vllm_encoding_options: tuple[str, ...] = ()
    tiny_vocabulary: Callable[[], Any] | None = None
    verified: str = ""

    def load_template(
        self, model_dir: str | Path, tokenizer: Any, encoding: Any = None, **options: Any
    ) -> Template:
        """The family's template of `model_dir` with `encoding` (a `vlmkit.settings.EncodingSettings`, or its
        fields as keyword arguments) over the settings saved in `model_dir` (vlmkit.json), merged by
        `vlmkit.settings.resolve_encoding`; an option the family does not take is refused with one line."""
        from vlmkit.settings import encoding_settings, read_settings, resolve_encoding

        given = encoding_settings(encoding, **options)
        return self.make_template(model_dir, tokenizer, **resolve_encoding(self, given, read_settings(model_dir)))

    @property
    def resolution_options(self) -> tuple[str, ...]:
        """The resolution limits among `encoding_options` (what `vlmkit families` lists)."""
        from vlmkit.settings import RESOLUTION_FIELDS

        return tuple(name for name in self.encoding_options if name in RESOLUTION_FIELDS)

    @property
    def chat_template(self) -> str:
        path = self.folder / "chat_template.jinja"
        if not path.is_file():  # e.g. a remote-code family: only vlmkit's own template renders its prompt
            raise VlmkitError(f"{self.name} has no chat template file; use vlmkit's own serving and inference")
        return path.read_text()


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """The checkpoint's config.json contents; a clear error when it is missing or not JSON."""
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VlmkitError(f"{model_dir}: no config.json; is this a model folder?") from None
    except json.JSONDecodeError as e:
        raise VlmkitError(f"{path}: not valid JSON ({e})") from None
