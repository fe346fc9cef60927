"""The generic path (`vlmkit.families.generic`) on two model types vlmkit has no folder for, built with
transformers alone (`tests/generic_models.py`): Idefics3 (reply spans found by rendering with and without each
reply) and Aya Vision. What a user of such a checkpoint relies on: the prompt ids and pixels are the checkpoint's
own processor's, `vlmkit infer` answers as plain transformers' `generate` does, `vlmkit sft --tuner lora` trains
the replies only, and what the generic path cannot do is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_image
from generic_models import BUILDERS, build_idefics3

TYPES = list(BUILDERS)
CJK_REPLY = "红色的方块。\n在左上角。"


def vlmkit_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlmkit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generic")
    for k, (h, w) in enumerate([(30, 40), (50, 20), (64, 64)]):
        random_image(h, w, seed=k).save(root / f"img{k}.png")
    return root


@pytest.fixture(scope="module")
def models(root) -> dict[str, Path]:
    return {name: build(root / name) for name, build in BUILDERS.items()}


def conversation(root: Path, case: str) -> list[dict]:
    """A user's conversation in vlmkit's messages format (image parts with a path)."""
    image = lambda k: {"type": "image", "image": str(root / f"img{k}.png")}  # noqa: E731
    text = lambda t: {"type": "text", "text": t}  # noqa: E731
    if case == "text-only":
        return [{"role": "user", "content": [text("Say hello.")]}, {"role": "assistant", "content": [text("Hello!")]}]
    if case == "single image":
        return [{"role": "user", "content": [image(0), text("What color is the square?")]},
                {"role": "assistant", "content": [text(CJK_REPLY)]}]  # fmt: skip
    return [
        {"role": "user", "content": [image(0), image(1), text("Compare them.")]},
        {"role": "assistant", "content": [text("The first is wider.")]},
        {"role": "user", "content": [image(2), text("And this one?")]},
        {"role": "assistant", "content": [text(CJK_REPLY)]},
    ]


def processor_messages(messages: list[dict]) -> list[dict]:
    """The same conversation as transformers' processors take it (images as `path` parts)."""
    return [
        {"role": m["role"], "content": [{"type": "image", "path": p["image"]} if p["type"] == "image" else p
                                        for p in m["content"]]}
        for m in messages
    ]  # fmt: skip


def template_of(folder: Path):
    from vlmkit.models.loader import load_tokenizer_and_template, resolve_model

    return load_tokenizer_and_template(resolve_model(str(folder)))[1]


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("case", ["single image", "several images", "text-only"])
def test_prompt_ids_and_pixels_are_the_processors(models, root, name, case):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(models[name])
    template = template_of(models[name])
    messages = conversation(root, case)
    for prompt in (messages, messages[:-1]):  # a training row, and the prompt of its last reply
        ours = template.encode({"messages": prompt}, add_generation_prompt=prompt is not messages)
        theirs = processor.apply_chat_template(
            processor_messages(prompt), add_generation_prompt=prompt is not messages, tokenize=True,
            return_dict=True, return_tensors="pt",
        )  # fmt: skip
        assert torch.equal(ours["input_ids"], theirs["input_ids"][0])
        pixel_keys = sorted(k for k in theirs if k not in ("input_ids", "attention_mask"))
        assert pixel_keys == ([] if case == "text-only" else sorted(k for k in ours if k.startswith("pixel")))
        for key in pixel_keys:
            assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("name", TYPES)
def test_labels_are_the_assistant_replies(models, root, name):
    """Supervised: each reply's text and the tokens its turn ends with, nothing else (no prompt, no image)."""
    template = template_of(models[name])
    encoded = template.encode({"messages": conversation(root, "several images")})
    ids, labels = encoded["input_ids"], encoded["labels"]
    supervised = (labels != -100).nonzero().flatten().tolist()
    runs = [[supervised[0]]]
    for k in supervised[1:]:
        runs[-1 if k == runs[-1][-1] + 1 else len(runs) :] = [runs[-1] + [k]] if k == runs[-1][-1] + 1 else [[k]]
    decoded = [template.tokenizer.decode(ids[run]) for run in runs]
    end = {"idefics3": "<end_of_utterance>", "aya_vision": "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"}[name]
    space = " " if name == "idefics3" else ""  # Idefics3's generation prompt ends at "Assistant:", before the space
    assert decoded == [f"{space}The first is wider.{end}", f"{space}{CJK_REPLY}{end}"]
    assert torch.equal(labels[supervised], ids[supervised])


def test_labels_equal_transformers_assistant_mask_with_generation_marks(root, tmp_path):
    """The same conversation through a chat template with `{% generation %}` marks: vlmkit's labels (read from the
    marks) are transformers' own `return_assistant_tokens_mask`, and equal to those found without marks."""
    from transformers import AutoProcessor

    marked = (
        "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}"
        "{% if message['role'] == 'assistant' %}{{':'}}{% generation %}{{' '}}{% for line in message['content'] %}"
        "{{line['text']}}{% endfor %}<end_of_utterance>{% endgeneration %}{% else %}"
        "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>{% endif %}"
        "{{ '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )
    folder = build_idefics3(tmp_path / "marked", chat_template=marked)
    plain = build_idefics3(tmp_path / "plain")
    messages = conversation(root, "several images")
    template = template_of(folder)
    assert template.marks_replies
    ours = template.encode({"messages": messages})
    theirs = AutoProcessor.from_pretrained(folder).apply_chat_template(
        processor_messages(messages), tokenize=True, return_dict=True, return_tensors="pt",
        return_assistant_tokens_mask=True,
    )  # fmt: skip
    assert torch.equal(ours["input_ids"], theirs["input_ids"][0])
    assert torch.equal((ours["labels"] != -100).long(), torch.as_tensor(theirs["assistant_masks"][0]).long())
    assert torch.equal(template_of(plain).encode({"messages": messages})["labels"], ours["labels"])


@pytest.mark.slow
@pytest.mark.parametrize("name", TYPES)
def test_infer_replies_equal_plain_transformers_generate(models, root, name, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    rows = [{"messages": conversation(root, case)} for case in ("single image", "several images", "text-only")]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    result = vlmkit_cli("infer", "--model", models[name], "--input", data, "--output", preds, "--max-new-tokens", 6)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    replies = [json.loads(line)["response"] for line in preds.read_text(encoding="utf-8").splitlines()]

    processor = AutoProcessor.from_pretrained(models[name])
    model = AutoModelForImageTextToText.from_pretrained(models[name]).eval()
    expected = []
    for row in rows:
        inputs = processor.apply_chat_template(
            processor_messages(row["messages"][:-1]), add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt",
        )  # fmt: skip
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        expected.append(processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    assert replies == expected


def train_rows(root: Path, folder: Path) -> Path:
    rows = [{"messages": conversation(root, case)} for case in ("single image", "several images", "text-only")]
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def lora_run(models, root) -> Path:
    """`vlmkit sft --tuner lora` on Aya Vision, 2 steps: the run the export and serve tests use."""
    out = root / "run"
    result = vlmkit_cli("sft", "--model", models["aya_vision"], "--dataset", train_rows(root, root), "--tuner", "lora",
                        "--max-steps", 2, "--lr", "1e-2", "--output-dir", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return next(out.glob("*/*/checkpoint-2"))  # OUTPUT/MODEL/RUN/checkpoint-2


@pytest.mark.slow
def test_sft_lora_trains_the_adapter_on_the_replies(models, root, lora_run, tmp_path):
    from safetensors.torch import load_file

    preview = vlmkit_cli("data", "preview", "--model", models["idefics3"], "--dataset", train_rows(root, tmp_path), "-n", 1)
    assert preview.returncode == 0, preview.stderr
    assert f"[[ {CJK_REPLY}<end_of_utterance>]]" in preview.stdout  # the reply and its end: supervised
    assert "[[" not in preview.stdout.split("Assistant:", 1)[0]  # the prompt (and its image) not
    adapter = load_file(lora_run / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # LoRA's B starts at zero: every one moved
    assert not any("vision_tower" in k for k in adapter)  # the vision tower is frozen by default
    assert json.loads((lora_run / "vlmkit.json").read_text())["family"] == "aya_vision"


@pytest.fixture(scope="module")
def merged(lora_run, root) -> Path:
    out = root / "merged"
    result = vlmkit_cli("export", "--ckpt", lora_run, "--merge-lora", "--output", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_merged_export_loads_in_plain_transformers_and_answers_the_same(merged, lora_run, root, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(merged)
    model = AutoModelForImageTextToText.from_pretrained(merged).eval()
    messages = conversation(root, "single image")[:1]
    inputs = processor.apply_chat_template(
        processor_messages(messages), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    plain = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"messages": messages}) + "\n")
    for flag, folder in (("--ckpt", lora_run), ("--model", merged)):
        result = vlmkit_cli("infer", flag, folder, "--input", data, "--output", tmp_path / "p.jsonl", "--max-new-tokens", 6)
        assert result.returncode == 0, result.stderr
        assert json.loads((tmp_path / "p.jsonl").read_text())["response"] == plain, flag


@pytest.mark.slow
def test_serve_answers_an_openai_image_request(merged, root):
    import base64

    import httpx
    from test_serve import start_server, stop_server

    proc, url = start_server("--model", str(merged), "--served-model-name", "aya", log=root / "serve.log")
    try:
        image = base64.b64encode((root / "img0.png").read_bytes()).decode()
        request = {
            "model": "aya",
            "max_tokens": 4,
            "temperature": 0,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                {"type": "text", "text": "What color is the square?"},
            ]}],
        }  # fmt: skip
        reply = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=120).json()
    finally:
        stop_server(proc)
    from vlmkit import load

    vlm = load(str(merged))
    expected = vlm.generate([{"messages": conversation(root, "single image")[:1]}], max_new_tokens=4)[0]
    assert reply["choices"][0]["message"]["content"] == expected


@pytest.mark.slow
def test_what_the_generic_path_cannot_do_is_refused_in_one_line(models, tmp_path):
    template_free = build_idefics3(tmp_path / "no-template")
    (template_free / "chat_template.jinja").unlink()
    for name in ("processor_config.json", "tokenizer_config.json"):
        config = json.loads((template_free / name).read_text())
        config.pop("chat_template", None)
        (template_free / name).write_text(json.dumps(config))
    text_only = tmp_path / "bert"
    text_only.mkdir()
    (text_only / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases = {
        (template_free,): "model_type 'idefics3' runs on vlmkit's generic path, which needs the checkpoint's chat template",
        (text_only,): "model_type 'bert' has no vlmkit family",
        (models["aya_vision"], "--max-pixels", "50000"): "--max-pixels does not apply to aya_vision models",
    }
    for (model, *options), message in cases.items():
        result = vlmkit_cli("infer", "--model", model, "--input", tmp_path / "none.jsonl", *options)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_families_lists_generic_with_its_limits():
    result = vlmkit_cli("families")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    generic = [line for line in result.stdout.splitlines() if line.startswith("generic")]
    assert generic and "no resolution options" in generic[0] and "no packing" in generic[0]
    types = result.stdout.split("model types that take the generic path", 1)[1]
    assert "idefics3" in types and "aya_vision" in types and "qwen2_vl," not in types


def test_vllm_translation_passes_the_checkpoints_own_chat_template(models, tmp_path):
    """`vlmkit serve --backend vllm` on a generic model: vLLM gets the folder and the checkpoint's own chat template
    (vLLM's own processor for the model type encodes), no processor options of vlmkit's."""
    from transformers import AutoProcessor

    from vlmkit.backends.vllm_args import plan_vllm, serve_command_line

    plan = plan_vllm(str(models["aya_vision"]), None, {}, None, "aya")
    assert plan.engine_args["model"] == str(models["aya_vision"]) and plan.engine_args["mm_processor_kwargs"] == {}
    args = serve_command_line(plan, served_model_name="aya", template_dir=tmp_path)
    template = Path(args[args.index("--chat-template") + 1]).read_text()
    assert template == AutoProcessor.from_pretrained(models["aya_vision"]).chat_template


@pytest.mark.parametrize("name", TYPES)
def test_module_groups_are_the_model_classes_parts(models, name):
    """`--freeze-vit` and friends act on the checkpoint's own vision tower, projector and language model."""
    from vlmkit.families import family_for_model_dir

    groups = family_for_model_dir(models[name]).module_groups
    assert groups == {
        "idefics3": {"vit": ("model.vision_model.",), "aligner": ("model.connector.",),
                     "llm": ("model.text_model.", "lm_head.")},
        "aya_vision": {"vit": ("model.vision_tower.",), "aligner": ("model.multi_modal_projector.",),
                       "llm": ("model.language_model.", "lm_head.")},
    }[name]  # fmt: skip


@pytest.mark.slow
def test_full_sft_with_the_vision_tower_unfrozen_trains_it_and_keeps_the_aligner(models, root, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "full"
    result = vlmkit_cli("sft", "--model", models["idefics3"], "--dataset", train_rows(root, tmp_path), "--tuner", "full",
                        "--no-freeze-vit", "--max-steps", 1, "--lr", "1e-3", "--output-dir", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    trained = load_file(next(out.glob("*/*/checkpoint-1")) / "model.safetensors")
    base = load_file(models["idefics3"] / "model.safetensors")
    moved = {k.split(".")[1] for k in base if not torch.equal(base[k], trained[k])}
    assert {"vision_model", "text_model"} <= moved and "connector" not in moved  # the aligner: frozen by default


@pytest.mark.slow
def test_eval_scores_the_base_and_the_lora_run(models, root, lora_run, tmp_path):
    out = tmp_path / "ev"
    result = vlmkit_cli("eval", "--model", models["aya_vision"], "--ckpt", lora_run, "--dataset", train_rows(root, tmp_path),
                        "--metric", "exact_match", "--max-new-tokens", 4, "--output", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    scored = json.loads((out / "metrics.json").read_text())["models"]
    assert len(scored) == 2 and all(m["rows"] == 3 and m["failed"] == 0 for m in scored.values())


@pytest.mark.slow
def test_chat_second_turn_equals_plain_generate_on_the_whole_conversation(models, root):
    """The interactive chat re-encodes the conversation each turn (no chat cache on the generic path): the second
    reply is plain `generate`'s on the processor's encoding of the first turn, its reply and the new message."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = models["idefics3"]
    image = root / "img0.png"
    result = subprocess.run(
        [sys.executable, "-m", "vlmkit", "infer", "--model", str(folder), "--max-new-tokens", "5"],
        input=f"<image>What color?\n{image}\nAnd now?\nexit\n", capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    turns = [t for t in result.stdout.split("-" * 50) if "<<<" in t or t.strip()]
    first = turns[0].rstrip("\n").rsplit("\n", 1)[-1]
    second = turns[1].rstrip("\n").rsplit("\n", 1)[-1]

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    messages = [{"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": "What color?"}]}]
    replies = []
    for follow_up in ("And now?", None):
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        replies.append(processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
        if follow_up:
            messages += [{"role": "assistant", "content": [{"type": "text", "text": replies[-1]}]},
                         {"role": "user", "content": [{"type": "text", "text": follow_up}]}]  # fmt: skip
    assert [first.strip(), second.strip()] == [r.strip() for r in replies]
