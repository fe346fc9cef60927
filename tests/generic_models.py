"""Tiny random VLMs of two model types vlmkit has no family folder for, built with transformers alone (their own
processor classes and config classes), for the generic path's tests (`vlmkit.families.generic`).

- `idefics3` (HuggingFaceM4/Idefics3-8B-Llama3's layout; SmolVLM's generation): Idefics3Processor with the real
  chat template (`shared/data/chat_templates/idefics3_chat_template.jinja`), its PIL image processor at 32 px,
  4 image tokens per image; no `{% generation %}` marks, so reply spans come from rendering with and without
  each reply.
- `aya_vision` (CohereLabs/aya-vision-8b's layout): AyaVisionProcessor over GotOcr2's PIL image processor
  (28 px tiles, up to 2 tiles + the global one), Cohere2 language model. The chat template is Command R7B's
  plain-chat format (`<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>...<|END_RESPONSE|>
  <|END_OF_TURN_TOKEN|>`, as the Aya Vision model card's transcripts and llama.cpp's cohere2 template write it)
  with each image part written as `<image>`, which the processor expands; not the byte-identical hub file
  (which also carries a default system preamble and tool branches).

Both tokenizers are the 600-token BPE of `vlmkit.families.tiny` plus the special tokens; each model builds in
about a second.
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import CHAT_TEMPLATES

AYA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'][0]['text'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% if system_message != false %}{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + system_message + "
    "'<|END_OF_TURN_TOKEN|>' }}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>' }}"
    "{% endif %}{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ '<|END_RESPONSE|>' }}{% endif %}{{ '<|END_OF_TURN_TOKEN|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>' }}"
    "{% endif %}"
)


def idefics3_chat_template() -> str:
    return (CHAT_TEMPLATES / "idefics3_chat_template.jinja").read_text().split("\n", 1)[1]


def _tokenizer(specials: list[str], **named: str):
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from vlmkit.families.tiny import small_vocab_backend

    backend = small_vocab_backend()
    backend.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **named)


def _text_config(model_type: str, tokenizer, eos: str, pad: str, **extra) -> dict:
    return {
        "model_type": model_type,
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 1024,
        "eos_token_id": tokenizer.convert_tokens_to_ids(eos),
        "pad_token_id": tokenizer.convert_tokens_to_ids(pad),
        **extra,
    }


def _save(model, processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    return folder


def build_idefics3(folder: Path, chat_template: str | None = None) -> Path:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    specials = ["<|endoftext|>", "<|begin_of_text|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
                "<global-img>"]  # fmt: skip
    tokenizer = _tokenizer(specials, bos_token="<|begin_of_text|>", eos_token="<end_of_utterance>", pad_token="<|endoftext|>")
    images = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 64}, max_image_size={"longest_edge": 32}
    )
    processor = Idefics3Processor(
        image_processor=images, tokenizer=tokenizer, image_seq_len=4, chat_template=chat_template or idefics3_chat_template()
    )
    text = _text_config("llama", tokenizer, "<end_of_utterance>", "<|endoftext|>")
    config = Idefics3Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},  # fmt: skip
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        tie_word_embeddings=False,
        eos_token_id=text["eos_token_id"],
        pad_token_id=text["pad_token_id"],
    )
    torch.manual_seed(0)
    return _save(Idefics3ForConditionalGeneration(config), processor, folder)


def build_aya_vision(folder: Path) -> Path:
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    specials = ["<PAD>", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>",
                "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>", "<image>",
                "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "TILE", "TILE_GLOBAL"]  # fmt: skip
    tokenizer = _tokenizer(specials, bos_token="<BOS_TOKEN>", eos_token="<|END_OF_TURN_TOKEN|>", pad_token="<PAD>")
    images = GotOcr2ImageProcessorPil(
        size={"height": 28, "width": 28}, max_patches=2, crop_to_patches=True, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = AyaVisionProcessor(
        image_processor=images, tokenizer=tokenizer, patch_size=14, img_size=28, chat_template=AYA_CHAT_TEMPLATE
    )
    text = _text_config(
        "cohere2", tokenizer, "<|END_OF_TURN_TOKEN|>", "<PAD>", head_dim=32, sliding_window=64,
        layer_types=["sliding_attention", "full_attention"], bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    config = AyaVisionConfig(
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 7},  # fmt: skip
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),
        downsample_factor=2,
        alignment_intermediate_size=64,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    return _save(AyaVisionForConditionalGeneration(config), processor, folder)


BUILDERS = {"idefics3": build_idefics3, "aya_vision": build_aya_vision}
