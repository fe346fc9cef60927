"""Tiny models whose reply is a known text: for tests of what users see (streamed multi-line and CJK replies,
box tokens, JSON), which tiny random models never produce.

`build_scripted_model(family, output_dir, reply)` writes a tiny random model of `family` (as
`vlmkit tiny-model`) whose `generation_config.json` carries a `sequence_bias` that makes greedy (and, in
practice, sampled) decoding produce `reply` and then the family's stop token, whatever the question or image.
The bias is keyed on the generation prompt's last tokens plus the reply so far, so it fires only in an
assistant turn and every turn gets the same reply. It is a plain transformers setting: the folder loads and
replies the same in `vlmkit infer`, `vlmkit serve`, the Python API and plain `transformers`.

A reply must survive a tokenize/decode round trip (`decode(encode(reply)) == reply`), which holds for any
text with the real Qwen vocabulary (the default); family grounding tokens written in the reply
(`<|box_start|>`, `<|object_ref_start|>` ...) are kept as their special ids.
"""

from __future__ import annotations

import json
from pathlib import Path

MULTILINE_CJK_REPLY = (
    "图中有两只猫。\n"
    "第一只在左边，第二只在右边。\n"
    "\n"
    "Details:\n"
    "- cat 1: sitting\n"
    "- cat 2: 睡觉 (sleeping)\n"
    '{"bbox_2d": [10, 20, 30, 40], "label": "猫"}'
)

BIAS = 100.0  # far above a tiny random model's logits (|logit| < ~5)
PROMPT_TAIL = 3  # generation-prompt tokens a key starts with (Qwen: <|im_start|> assistant \n)


def build_scripted_model(family: str, output_dir: str | Path, reply: str, small_vocab: bool = False) -> Path:
    """Write a tiny `family` model (a name as in `vlmkit families`) that answers `reply` to anything."""
    import vlmkit
    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model
    from vlmkit.sample import to_sample

    path = build_tiny_model(family_by_name(family), output_dir, small_vocab=small_vocab)
    vlm = vlmkit.load(str(path))
    prompt, other = (
        vlm.encode(to_sample({"messages": [{"role": "user", "content": question}]}))["input_ids"].tolist()
        for question in ("Hi", "Why?")
    )
    # the generation prompt's own last tokens (at most PROMPT_TAIL), which every question ends with: GLM's is
    # two (<|assistant|> \n)
    shared = next((n for n in range(PROMPT_TAIL) if prompt[-1 - n] != other[-1 - n]), PROMPT_TAIL)
    tail = prompt[len(prompt) - shared :]
    reply_ids = vlm.tokenizer.encode(reply, add_special_tokens=False)
    if vlm.decode(reply_ids) != reply:
        raise ValueError(f"{reply!r} does not survive this tokenizer's round trip; pick another reply")
    stop = vlm.template.stop_token_ids[0]
    script = [*reply_ids, stop]
    sequence_bias = [[tail + script[: i + 1], BIAS] for i in range(len(script))]

    config_file = path / "generation_config.json"
    config = json.loads(config_file.read_text())
    config["sequence_bias"] = sequence_bias
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    return path
