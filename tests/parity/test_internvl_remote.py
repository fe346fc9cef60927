"""OpenGVLab's remote-code InternVL checkpoints: `vlmkit convert` against the original InternVLChatModel.

The reference vectors (vectors/internvl_remote_{internlm2,qwen2}.json; how they were made: vectors/README.md) are
OpenGVLab's own model code (transformers 4.45.2) run on the tiny original-layout checkpoints that
`vlmkit tiny-model internvl-remote` (V1.5: InternLM2) and `internvl2-remote` (InternVL2-1B: Qwen2) write with
--seed 0: the prompt its `chat()` builds and its token ids,
the logits of one forward pass, and greedy ids. Here the same checkpoint (byte-identical, checked by
sha256) is converted, loaded with plain transformers (InternVLForConditionalGeneration, no remote code)
and through vlmkit's own template, and must give the same ids, logits to 1e-4 (fp32) and the same greedy ids.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2Tokenizer
from typer.testing import CliRunner

import vlmkit
from vlmkit.backends.transformers_backend import GenerationOptions
from vlmkit.cli import app
from vlmkit.families.internvl.remote import use_bpe_files
from vlmkit.sample import to_sample

# language model -> (tiny-model name, the recorded vectors)
LAYOUTS = {"internlm2": "internvl-remote", "qwen2": "internvl2-remote"}
VECTORS = {
    llm: json.loads((Path(__file__).parent / "vectors" / f"internvl_remote_{llm}.json").read_text()) for llm in LAYOUTS
}
IMAGE_MEAN, IMAGE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(
    scope="module",
    # InternVL-Chat-V1.5's layout in the fast tier; InternVL2-1B's (Qwen2) in the slow one (~25 s more each), with
    # the tokenizer as tokenizer.json and as InternVL2-1B ships it, vocab.json + merges.txt (the same BPE, so the
    # same vectors: the original's tokenizer gives the recorded prompt ids on both, checked below)
    params=["internlm2", pytest.param("qwen2", marks=pytest.mark.slow), pytest.param("qwen2-bpe-files", marks=pytest.mark.slow)],
)
def converted(tmp_path_factory, request) -> tuple[Path, Path, dict]:
    """(the tiny original-layout checkpoint, its conversion, the reference vectors), made through the CLI."""
    llm = request.param.removesuffix("-bpe-files")
    root = tmp_path_factory.mktemp(f"internvl_remote_{request.param}")
    runner = CliRunner()
    built = runner.invoke(app, ["tiny-model", LAYOUTS[llm], str(root / "remote"), "--seed", "0"])
    assert built.exit_code == 0, built.output
    if request.param.endswith("-bpe-files"):
        use_bpe_files(root / "remote")
        reference = VECTORS[llm]["cases"]["image_448_seed0"]
        original = Qwen2Tokenizer.from_pretrained(root / "remote")  # what the original code loads these files with
        query = reference["query"].replace("<IMG_CONTEXT>*N", "")
        assert original(query)["input_ids"] == reference["input_ids_without_image_span"]
    done = runner.invoke(app, ["convert", "--model", str(root / "remote"), "--output", str(root / "hf")])
    assert done.exit_code == 0, done.output
    assert f"converted {root / 'remote'} to {root / 'hf'}" in done.output
    return root / "remote", root / "hf", VECTORS[llm]


def image_448() -> Image.Image:
    """The reference script's image: tests/conftest.py random_image(448, 448, seed=0)."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8))


def with_image_span(ids_without_span: list[int], context_id: int, start_id: int, tokens: int) -> list[int]:
    out = []
    for token in ids_without_span:
        out.append(token)
        if token == start_id:
            out += [context_id] * tokens
    return out


def assert_logits_match(logits: torch.Tensor, reference: dict) -> None:
    """(T, V) logits against the recorded ones: whole rows at 1e-4, every row's sums at 1e-4 per entry."""
    assert list(logits.shape) == reference["shape"]
    for position, row in reference["rows"].items():
        torch.testing.assert_close(logits[int(position)], torch.tensor(row), atol=1e-4, rtol=0)
    tolerance = 1e-4 * logits.shape[-1]
    torch.testing.assert_close(logits.sum(-1), torch.tensor(reference["row_sum"]), atol=tolerance, rtol=0)
    torch.testing.assert_close(logits.abs().sum(-1), torch.tensor(reference["row_abs_sum"]), atol=tolerance, rtol=0)


def test_tiny_checkpoint_is_the_one_the_vectors_were_made_on(converted):
    remote, _, vectors = converted
    digest = hashlib.sha256((remote / "model.safetensors").read_bytes()).hexdigest()
    assert digest == vectors["checkpoint"]["model_safetensors_sha256"]
    assert json.loads((remote / "config.json").read_text()) == vectors["checkpoint"]["config"]


@pytest.mark.parametrize(
    "case", ["image_448_seed0", pytest.param("randn_3_tiles_seed1", marks=pytest.mark.slow)]  # 3 tiles: ~7 s
)
def test_converted_model_matches_the_original_code(converted, case):
    """Plain transformers on the converted folder: the reference ids in, the reference logits and greedy ids out."""
    _, hf, vectors = converted
    reference = vectors["cases"][case]
    tokenizer = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForImageTextToText.from_pretrained(hf, dtype=torch.float32).eval()
    assert not model.config.tie_word_embeddings
    assert not torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)
    if case == "image_448_seed0":
        x = torch.from_numpy(np.array(image_448())).permute(2, 0, 1).float() / 255.0
        pixels = ((x - torch.tensor(IMAGE_MEAN).view(3, 1, 1)) / torch.tensor(IMAGE_STD).view(3, 1, 1))[None]
    else:
        pixels = torch.randn(3, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    ids = with_image_span(
        reference["input_ids_without_image_span"],
        tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        tokenizer.convert_tokens_to_ids("<img>"),
        model.config.image_seq_length * pixels.shape[0],
    )
    assert len(ids) == reference["input_length"]
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixels).logits[0]
        generated = model.generate(
            input_ids=input_ids,
            pixel_values=pixels,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=vectors["max_new_tokens"],
            do_sample=False,
            eos_token_id=vectors["eos_token_id"],
        )
    assert_logits_match(logits, reference["logits"])
    assert generated[0, len(ids) :].tolist() == reference["generated_ids"]


def test_written_chat_template_renders_the_original_prompt(converted):
    """The converted folder's chat template (for transformers / vLLM users) writes what `chat()` writes,
    one `<IMG_CONTEXT>` per image that InternVLProcessor expands."""
    _, hf, vectors = converted
    tokenizer = AutoTokenizer.from_pretrained(hf)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": vectors["question"]}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = json.loads((hf / "vlmkit.json").read_text())["bos"]  # InternLM2's <s>, put first by its tokenizer
    assert bos == ("<s>" if vectors["template"] == "internlm2-chat" else None)
    query = vectors["cases"]["image_448_seed0"]["query"]
    assert text == (bos or "") + query.replace("<img><IMG_CONTEXT>*N</img>", "<IMG_CONTEXT>")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert [i for i in ids if i != tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")] == [
        i for i in vectors["cases"]["image_448_seed0"]["input_ids_without_image_span"]
        if i not in tokenizer.convert_tokens_to_ids(["<img>", "</img>"])
    ]  # one <s>, as the original's tokenizer(query) gives
    assert (tokenizer.start_image_token, tokenizer.context_image_token) == ("<img>", "<IMG_CONTEXT>")


def test_vlmkit_prompt_and_pixels_are_the_original_chat(converted):
    """vlmkit.load on the remote-code folder itself (converted on load): the prompt `chat()` builds (default
    system message, `<|im_end|>` turns without newline, `<s>` first), the same pixels and logits."""
    remote, hf, vectors = converted
    reference = vectors["cases"]["image_448_seed0"]
    vlm = vlmkit.load(remote, dtype="fp32", device="cpu")
    assert vlm.path == remote.with_name("remote-vlmkit-hf")
    sample = to_sample({"messages": [{"role": "user", "content": "<image>" + vectors["question"]}], "images": [image_448()]})
    encoded = vlm.encode(sample)
    ids = encoded["input_ids"].tolist()
    context = vlm.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert [i for i in ids if i != context] == reference["input_ids_without_image_span"]
    assert len(ids) == reference["input_length"]
    text = vlm.template.render_text(sample, add_generation_prompt=True)
    bos = "<s>" if vectors["template"] == "internlm2-chat" else ""  # the original's tokenizer adds it
    assert text == bos + reference["query"].replace("<img><IMG_CONTEXT>*N</img>", "<IMG_CONTEXT>")
    pixels = encoded["pixel_values"]
    assert pixels.shape == (1, 3, 448, 448)  # one tile, no thumbnail, as dynamic_preprocess gives a 448 px square
    # sums of 602k float32 values: equal up to summation order
    assert float(pixels.sum()) == pytest.approx(reference["pixel_values_sum"], rel=1e-6)
    assert float(pixels.abs().sum()) == pytest.approx(reference["pixel_values_abs_sum"], rel=1e-6)
    batch = vlm.on_device(vlm._inputs([encoded]))
    with torch.no_grad():
        logits = vlm.model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
    assert_logits_match(logits, reference["logits"])
    replies = vlm.generate_encoded([encoded], GenerationOptions(max_new_tokens=vectors["max_new_tokens"]))
    assert replies == [vlm.decode(reference["generated_ids"])]


SPM = Path(__file__).parent / "vectors" / "internlm2_spm"


@pytest.mark.parametrize("dummy_prefix", ["0", "1"])
def test_internlm2_sentencepiece_tokenizer_equals_the_original(dummy_prefix, tmp_path):
    """InternVL-Chat-V1.5 ships only InternLM2's tokenizer.model: the converted fast tokenizer gives the ids
    OpenGVLab's InternLM2Tokenizer gives (recorded; vectors/README.md), with and without sentencepiece's
    dummy prefix, on prompts with added tokens, CJK, emoji (byte fallback), runs of spaces and newlines;
    replies without special tokens decode back to their text."""
    from vlmkit.families.internvl.convert import _load_tokenizer

    reference = json.loads((SPM / "reference_ids.json").read_text())
    tokenizer = _load_tokenizer(SPM / f"add_dummy_prefix_{dummy_prefix}")
    expected = reference["by_add_dummy_prefix"][dummy_prefix]
    for text, ids in zip(reference["texts"], expected["ids"], strict=True):
        assert tokenizer(text)["input_ids"] == ids, text
        if "<" not in text:
            assert tokenizer.decode(ids[1:], skip_special_tokens=True) == text


def test_vllm_backend_gets_the_original_prompt_format(converted, tmp_path):
    """`vlmkit serve --backend vllm --model REMOTE_FOLDER`: vLLM serves the converted copy with a chat template
    that renders what vlmkit's template encodes (the original conversation format, not the -hf one)."""
    from vlmkit.backends.vllm_args import plan_vllm, serve_command_line

    remote, _, vectors = converted
    plan = plan_vllm(str(remote), None, {}, None, "internvl")
    args = serve_command_line(plan, served_model_name="internvl", template_dir=tmp_path / "t", port=8123)
    flags = {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--") and i + 1 < len(args)}
    assert Path(args[2]) == remote.with_name("remote-vlmkit-hf")
    vlm = vlmkit.load(remote, dtype="fp32", device="cpu")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": vectors["question"]}]}]
    rendered = vlm.tokenizer.apply_chat_template(
        messages, chat_template=Path(flags["--chat-template"]).read_text(), tokenize=False, add_generation_prompt=True
    )
    sample = to_sample({"messages": [{"role": "user", "content": "<image>" + vectors["question"]}], "images": [image_448()]})
    assert rendered == vlm.template.render_text(sample, add_generation_prompt=True)


def test_internlm2_user_defined_control_pieces_and_nfkc_equal_the_original():
    """Issue 27 #2: a tokenizer.model holding `<|im_start|>`, `<img>` ... as user-defined pieces (tokenizer_config.json
    adds only <unk>, <s>, </s>) and normalising as sentencepiece does by default (nmt_nfkc: newlines are spaces, spaces
    trimmed and collapsed, full-width letters folded): the converted tokenizer gives OpenGVLab's InternLM2Tokenizer's
    ids (recorded with transformers 4.45.2; vectors/README.md) on the internlm2-chat prompt, CJK, runs of spaces,
    tabs and newlines; each control token is one id."""
    from vlmkit.families.internvl.convert import _load_tokenizer

    reference = json.loads((SPM / "reference_ids_user_defined.json").read_text())
    tokenizer = _load_tokenizer(SPM / "user_defined_nmt_nfkc")
    for text, ids in zip(reference["texts"], reference["ids"], strict=True):
        assert tokenizer(text)["input_ids"] == ids, text
    prompt = tokenizer(reference["texts"][0])["input_ids"]
    assert prompt[:2] == [1, tokenizer.convert_tokens_to_ids("<|im_start|>")]
    assert prompt.count(tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")) == 2
