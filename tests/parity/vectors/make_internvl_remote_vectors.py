"""Record reference outputs of OpenGVLab's original InternVLChatModel on vlmkit's tiny original-layout checkpoint.

NOT run by the test suite: it needs the original remote code and transformers 4.45 (see README.md here).
Usage (from the repository root):

    PYTHONPATH=src python -m vlmkit tiny-model internvl-remote /tmp/ivr --llm internlm2 --seed 0
    PYTHONPATH=/work/wt/ref_tf445:/path/to/InternVL/internvl_chat \
        python tests/parity/vectors/make_internvl_remote_vectors.py /tmp/ivr tests/parity/vectors/internvl_remote_internlm2.json
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import transformers  # noqa: E402
from torch import nn

# The original ViT imports timm only for DropPath, which drop_path_rate 0 never builds; timm needs torchvision.
# (Stubbed after transformers, which probes for timm's spec at import.)
timm = types.ModuleType("timm")
timm.models = types.ModuleType("timm.models")
timm.models.layers = types.ModuleType("timm.models.layers")
timm.models.layers.DropPath = nn.Identity
sys.modules.update({"timm": timm, "timm.models": timm.models, "timm.models.layers": timm.models.layers})

from internvl.conversation import get_conv_template  # noqa: E402
from internvl.model.internvl_chat import InternVLChatModel  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
QUESTION = "Describe this image."
MAX_NEW_TOKENS = 8


def image_448() -> np.ndarray:
    """The test's image: tests/conftest.py random_image(448, 448, seed=0), as (448, 448, 3) uint8."""
    return np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)


def pixels_of(image: np.ndarray) -> torch.Tensor:
    """The model card's transform for a 448 px image that is one tile (Resize is then the identity):
    ToTensor + Normalize(ImageNet)."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]  # (1, 3, 448, 448)


def summary(logits: torch.Tensor, positions: list[int]) -> dict:
    """A record of (T, V) logits to compare at 1e-4: every position's sum and absolute sum, and the whole
    logit vector at `positions` (the start, around and inside the image span, the last 8)."""
    return {
        "shape": list(logits.shape),
        "row_sum": logits.sum(-1).tolist(),
        "row_abs_sum": logits.abs().sum(-1).tolist(),
        "rows": {str(i): logits[i].tolist() for i in positions},
    }


def prompt(model, tokenizer, tiles: int) -> tuple[str, torch.Tensor]:
    """The query `model.chat` builds for one image of `tiles` tiles, and its token ids."""
    template = get_conv_template(model.template)
    template.system_message = model.system_message
    template.append_message(template.roles[0], "<image>\n" + QUESTION)
    template.append_message(template.roles[1], None)
    query = template.get_prompt()
    image_tokens = "<img>" + "<IMG_CONTEXT>" * model.num_image_token * tiles + "</img>"
    query = query.replace("<image>", image_tokens, 1)
    return query, tokenizer(query, return_tensors="pt").input_ids


def run_case(model, tokenizer, pixel_values: torch.Tensor, eos_id: int) -> dict:
    query, input_ids = prompt(model, tokenizer, pixel_values.shape[0])
    image_flags = torch.ones(pixel_values.shape[0], 1, dtype=torch.long)
    with torch.no_grad():
        out = model(pixel_values=pixel_values, input_ids=input_ids, image_flags=image_flags, return_dict=True)
        generated = model.generate(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            eos_token_id=eos_id,
        )
        reply = model.chat(tokenizer, pixel_values, QUESTION, dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=False))
    ids = input_ids[0].tolist()
    start, end = ids.index(tokenizer.convert_tokens_to_ids("<img>")), ids.index(tokenizer.convert_tokens_to_ids("</img>"))
    positions = sorted({0, 1, start, start + 1, (start + end) // 2, end - 1, end, *range(len(ids) - 8, len(ids))})
    shown = query.replace("<IMG_CONTEXT>" * model.num_image_token * pixel_values.shape[0], "<IMG_CONTEXT>*N")
    return {
        "query": shown,
        "input_ids_without_image_span": [i for i in ids if i != model.img_context_token_id],
        "input_length": len(ids),
        "pixel_values_sum": float(pixel_values.sum()),
        "pixel_values_abs_sum": float(pixel_values.abs().sum()),
        "logits": summary(out.logits[0].float(), positions),
        "generated_ids": generated[0].tolist(),
        "chat_reply": reply,
    }


def main(checkpoint: str, output: str) -> None:
    torch.manual_seed(0)
    checkpoint = Path(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = InternVLChatModel.from_pretrained(checkpoint, torch_dtype=torch.float32, use_flash_attn=False).eval()
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    eos_id = tokenizer.convert_tokens_to_ids(get_conv_template(model.template).sep.strip())
    three_tiles = torch.randn(3, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    vectors = {
        "made_by": {
            "script": "tests/parity/vectors/make_internvl_remote_vectors.py",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "internvl_code": "OpenGVLab/InternVL internvl_chat/internvl (see README.md for the commit)",
            "dtype": "float32",
        },
        "checkpoint": {
            "config": json.loads((checkpoint / "config.json").read_text()),
            "model_safetensors_sha256": hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest(),
        },
        "template": model.template,
        "system_message": model.system_message,
        "question": QUESTION,
        "max_new_tokens": MAX_NEW_TOKENS,
        "eos_token_id": eos_id,
        "cases": {
            "image_448_seed0": run_case(model, tokenizer, pixels_of(image_448()), eos_id),
            "randn_3_tiles_seed1": run_case(model, tokenizer, three_tiles, eos_id),
        },
    }
    Path(output).write_text(json.dumps(vectors, indent=1) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main(*sys.argv[1:])
