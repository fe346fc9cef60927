"""What is known of each model type on the generic path (`vlmkit.families.generic`), for `vlmkit families` and the
README's model table: the types tested here on a tiny model built with transformers alone, and, for the others,
whether their processor can load without torchvision (which the CPU machines vlmkit is tested on lack:
a processor with a video processor, or with only a torchvision image processor, cannot), read from
transformers' own registry of processor classes. Nothing here is a claim that an untested type works."""

from __future__ import annotations

# model type -> what ran on it (tests/integration/test_generic.py)
TESTED = {
    "idefics3": "ids and pixels = apply_chat_template(tokenize=True), labels on replies, infer = generate, chat, "
    "eval, LoRA and full sft, merged export, serve (the real SmolVLM/Idefics3 template)",
    "aya_vision": "ids and pixels = apply_chat_template(tokenize=True), labels on replies, infer = generate, chat, "
    "eval, LoRA and full sft, merged export, serve (a Command R7B-format template, not the hub's bytes)",
}


def processor_needs_torchvision(model_type: str) -> bool | None:
    """Whether transformers' processor for `model_type` needs torchvision to load: its class does, it has a video
    processor (transformers' video processors need torchvision), or its image processor has no PIL backend;
    None when transformers' registry names no processor class for the type."""
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    if name is None or not hasattr(transformers, name):
        return None
    try:
        attributes = getattr(transformers, name).get_attributes()
    except ImportError:  # the processor class itself requires torchvision (e.g. Pixtral's)
        return True
    backends = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    torchvision_only = isinstance(backends, dict) and "torchvision" in backends and "pil" not in backends
    return "video_processor" in attributes or torchvision_only


def generic_status(model_type: str) -> str:
    """One line: what was tested on `model_type`, else "not tested" and whether its processor needs torchvision."""
    if model_type in TESTED:
        return "tested: " + TESTED[model_type]
    needs = processor_needs_torchvision(model_type)
    if needs is None:
        return "not tested; transformers' registry names no processor class for it"
    if needs:
        return "not tested; its processor needs torchvision (a video processor or no PIL image processor)"
    return "not tested; its processor loads without torchvision"
