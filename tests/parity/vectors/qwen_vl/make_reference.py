"""Record Qwen-VL-Chat's ORIGINAL remote code on a tiny checkpoint: logits and greedy ids (see README.md).

Runs outside vlmkit's environment (transformers 4.40.2, torchvision; see README.md). Reads a tiny
original-layout checkpoint made by `vlmkit tiny-model qwen-vl`, adds the remote code files to a copy of it,
and writes reference.safetensors + reference.json next to this file.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
REMOTE_FILES = ("configuration_qwen.py", "modeling_qwen.py", "qwen_generation_utils.py", "tokenization_qwen.py",
                "visual.py")  # fmt: skip
# SC-Tune's copy of visual.py comments out the file opening of `VisionTransformer.encode` (upstream
# Qwen-VL-Chat opens each path, converts it to RGB, then transforms it); the run restores those lines.
ENCODE_SC_TUNE = "        images = [self.image_transform(image) for image in images]\n"
ENCODE_UPSTREAM = """        paths, images = images, []
        for image_path in paths:
            image = Image.open(image_path)
            image = image.convert("RGB")
            images.append(self.image_transform(image))
"""


def make_images(folder: Path) -> list[Path]:
    """The two test images (also rebuilt by the test): 448x448 and 300x200 (w x h) RGB noise, PNG."""
    from PIL import Image

    paths = []
    for seed, (h, w) in ((1, (448, 448)), (2, (200, 300))):
        pixels = np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)
        paths.append(folder / f"image{seed}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", required=True, help="folder written by `vlmkit tiny-model qwen-vl`")
    parser.add_argument(
        "--remote-code", required=True, help="folder holding Qwen-VL-Chat's remote code files"
    )
    args = parser.parse_args()
    # torchvision's CPU-less wheel cannot load its C ops here; only its PIL transforms are used.
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = json.loads((HERE / "prompt.json").read_text())
    work = Path(tempfile.mkdtemp())
    model_dir = work / "model"
    shutil.copytree(args.tiny, model_dir)
    for name in REMOTE_FILES:
        shutil.copyfile(Path(args.remote_code) / name, model_dir / name)
    visual = (model_dir / "visual.py").read_text()
    assert visual.count(ENCODE_SC_TUNE) == 1
    (model_dir / "visual.py").write_text(visual.replace(ENCODE_SC_TUNE, ENCODE_UPSTREAM))

    # tokenization_qwen.py downloads a font (for drawing boxes, unused here) unless SimSun.ttf is in the
    # working directory: an empty stand-in keeps the run offline.
    (work / "SimSun.ttf").write_bytes(b"")
    os.chdir(work)
    paths = make_images(work)
    text = spec["text"].format(*paths)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, fp32=True).eval()
    input_ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[0].float()  # (T, V)
        generated = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
            max_new_tokens=spec["max_new_tokens"], top_p=None, top_k=None,
        )[0, input_ids.shape[1]:]  # fmt: skip
    vocab_ids = torch.from_numpy(np.random.RandomState(0).choice(logits.shape[1], 128, replace=False))
    vocab_ids = torch.cat([vocab_ids, torch.tensor(spec["always_ids"])]).unique()
    top2 = logits.topk(2, dim=-1).values
    from safetensors.torch import save_file

    save_file(
        {"input_ids": input_ids[0], "vocab_ids": vocab_ids, "logits": logits[:, vocab_ids].contiguous(),
         "argmax": logits.argmax(-1), "generated_ids": generated},
        str(HERE / "reference.safetensors"),
    )  # fmt: skip
    info = {
        "transformers": transformers.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
        "prompt_tokens": input_ids.shape[1], "generated": generated.tolist(),
        "min_top2_gap_of_argmax": float((top2[:, 0] - top2[:, 1]).min()),
    }  # fmt: skip
    (HERE / "reference.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
