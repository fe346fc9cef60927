"""`vlmkit convert` and conversion on load: what is refused (one line, nothing written) and when a
converted copy is reused or made again. Parity of the converted model: tests/parity/test_internvl_remote.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmkit.cli import app
from vlmkit.errors import VlmkitError
from vlmkit.families import native_model_dir
from vlmkit.families.internvl.remote import LLMS, remote_config


def config_only(folder: Path, **changes) -> Path:
    """A folder with only the tiny remote checkpoint's config.json, changed as given (refusals come first)."""
    folder.mkdir(parents=True)
    config = remote_config("internlm2", 600, dict.fromkeys(LLMS["internlm2"]["specials"], 1))
    for key, value in changes.items():
        if key == "llm_architecture":
            config["llm_config"]["architectures"] = [value]
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"ps_version": "v1"}, "ps_version 'v1'"),
        ({"llm_architecture": "Phi3ForCausalLM"}, "Phi3ForCausalLM is not converted"),
        ({"template": "vicuna_v1.1"}, "conversation template 'vicuna_v1.1' is not supported"),
        ({"model_type": "qwen2_vl"}, "model_type 'qwen2_vl' has no conversion"),
    ],
)
def test_unsupported_checkpoints_are_refused_in_one_line(tmp_path, changes, says):
    source = config_only(tmp_path / "src", **changes)
    done = CliRunner().invoke(app, ["convert", "--model", str(source), "--output", str(tmp_path / "out")])
    assert isinstance(done.exception, VlmkitError), done.output  # `main` prints it as one `error:` line, exit 2
    assert says in str(done.exception) and "\n" not in str(done.exception)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept_without_force(tmp_path):
    source = config_only(tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    done = CliRunner().invoke(app, ["convert", "--model", str(source), "--output", str(tmp_path / "out")])
    assert isinstance(done.exception, VlmkitError) and "exists and is not empty" in str(done.exception)
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_converted_copy_is_reused_then_made_again_when_the_source_changes(tmp_path, capsys):
    """~25 s: two conversions."""
    source = tmp_path / "InternVL-Chat-V1-5"
    assert CliRunner().invoke(app, ["tiny-model", "internvl-remote", str(source)]).exit_code == 0
    converted = native_model_dir(source)
    assert converted == tmp_path / "InternVL-Chat-V1-5-vlmkit-hf"
    assert "converting the remote-code checkpoint" in capsys.readouterr().err
    assert native_model_dir(source) == converted
    assert capsys.readouterr().err.startswith(f"using {converted}")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(config | {"max_dynamic_patch": 6}))
    os.utime(source / "config.json", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert native_model_dir(source) == converted
    assert "converting the remote-code checkpoint" in capsys.readouterr().err
    assert json.loads((converted / "preprocessor_config.json").read_text())["max_patches"] == 6
    assert json.loads((converted / "vlmkit.json").read_text())["max_tiles"] == 6


def test_families_lists_the_remote_code_checkpoints_and_what_was_verified():
    lines = CliRunner().invoke(app, ["families"], catch_exceptions=False).output.splitlines()
    remote = next(line for line in lines if line.strip().startswith("internvl-remote "))
    assert "model_type=internvl_chat" in remote and "InternVL-Chat-V1.5" in remote and "not the Phi-3 ones" in remote
    assert "vlmkit convert" in remote and "internvl_remote_internlm2.json" in remote
    assert any(line.strip().startswith("internvl2-remote ") and "internvl_remote_qwen2.json" in line for line in lines)


@pytest.mark.slow
def test_folder_with_only_internlm2_tokenizer_model_converts_and_chats(tmp_path):
    """InternVL-Chat-V1.5 as published: InternLM2's sentencepiece tokenizer.model, no tokenizer.json. ~25 s."""
    import shutil
    import subprocess
    import sys

    from conftest import random_image

    source = tmp_path / "InternVL-Chat-V1-5"
    assert CliRunner().invoke(app, ["tiny-model", "internvl-remote", str(source)]).exit_code == 0
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (source / name).unlink()
    spm = Path(__file__).resolve().parents[1] / "parity" / "vectors" / "internlm2_spm" / "add_dummy_prefix_1"
    shutil.copy(spm / "tokenizer.model", source)
    shutil.copy(spm / "tokenizer_config.json", source)
    random_image(448, 448).save(tmp_path / "cat.png")
    done = subprocess.run(
        [sys.executable, "-m", "vlmkit", "infer", "--model", str(source), "--max-new-tokens", "3"],
        input="<image>Describe this image.\ncat.png\nexit\n", capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "image 1: 1 tile(s) of 448×448" in done.stderr + done.stdout and "-" * 50 in done.stdout
    converted = tmp_path / "InternVL-Chat-V1-5-vlmkit-hf"
    saved = json.loads((converted / "vlmkit.json").read_text())
    assert (saved["bos"], saved["turn_end"]) == ("<s>", "<|im_end|>")
    assert json.loads((converted / "config.json").read_text())["image_token_id"] == 402  # tokenizer_config's <IMG_CONTEXT>


# InternLM2 sentencepiece models whose control tokens are user-defined pieces (not added tokens of
# tokenizer_config.json) and that normalise (nmt_nfkc: a newline becomes a space; runs of spaces collapse)
CONTROL_PIECES = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>"]


def with_internlm2_spm(folder: Path, dummy_prefix: bool = False) -> Path:
    """Give `folder` a sentencepiece tokenizer.model trained here (byte-level pieces off, the control tokens as
    user-defined pieces, sentencepiece's default normalisation) and InternLM2's tokenizer_config.json, which
    lists only <unk>, <s>, </s> as added tokens."""
    import sentencepiece

    from vlmkit.families.internvl.remote_names import CONVERSATIONS

    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    corpus = [CONVERSATIONS["internlm2-chat"]["system"], "What color is the square? The square is red.",
              "Describe this image. A photo of a cat on a mat.", "你好，世界。这是一只猫。", "one two three 1 2 3"] * 20  # fmt: skip
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=300, hard_vocab_limit=False,
        model_type="bpe", character_coverage=1.0, byte_fallback=False, add_dummy_prefix=dummy_prefix,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=CONTROL_PIECES, minloglevel=2,
    )  # fmt: skip
    (folder / "tokenizer.vocab").unlink()
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config = {
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": t} | flags for i, t in enumerate(["<unk>", "<s>", "</s>"])},
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def sentencepiece_ids(folder: Path, text: str) -> list[int]:
    """InternLM2Tokenizer(folder)(text).input_ids for a text without <s>, </s> or <unk> in it: `<s>`, then the
    sentencepiece model itself on the whole text (its added tokens are only those three)."""
    import sentencepiece

    return [1] + sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).encode(text)


@pytest.mark.slow
def test_internlm2_control_tokens_as_user_defined_pieces_convert_to_the_original_ids(tmp_path):
    """InternVL-Chat-V1.5 layout, control tokens only in tokenizer.model: `vlmkit convert` and `vlmkit infer
    --model ORIGINAL` write a tokenizer that gives the original's ids (the one written before cut <|im_start|>
    into <unk> pieces and kept newlines, which are <unk>, where sentencepiece makes them spaces). ~75 s."""
    import subprocess
    import sys

    from conftest import random_image
    from transformers import AutoTokenizer

    import vlmkit
    from vlmkit.sample import to_sample

    source = tmp_path / "InternVL-Chat-V1-5"
    assert CliRunner().invoke(app, ["tiny-model", "internvl-remote", str(source)]).exit_code == 0
    with_internlm2_spm(source)
    done = subprocess.run(
        [sys.executable, "-m", "vlmkit", "convert", "--model", str(source), "--output", str(tmp_path / "hf")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = AutoTokenizer.from_pretrained(tmp_path / "hf")
    system = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
    question = "Describe this image.\n请用中文  回答。"
    query = (
        f"<|im_start|>system\n{system}<|im_end|><|im_start|>user\n<img>{'<IMG_CONTEXT>' * 3}</img>\n{question}"
        "<|im_end|><|im_start|>assistant\n"
    )  # what the original chat() builds (internlm2-chat conversation)
    for text in (query, "A red square.\n\n第二行  一只猫。 ", "  leading\tand trailing  "):
        assert written(text)["input_ids"] == sentencepiece_ids(source, text), text
    assert written("<|im_start|>user\n")["input_ids"][1] == written.convert_tokens_to_ids("<|im_start|>")  # one id

    random_image(448, 448).save(tmp_path / "cat.png")
    done = subprocess.run(
        [sys.executable, "-m", "vlmkit", "infer", "--model", str(source), "--max-new-tokens", "3"],
        input=f"<image>{question}\ncat.png\nexit\n", capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    vlm = vlmkit.load(source, dtype="fp32", device="cpu")  # the copy `vlmkit infer` made
    assert vlm.path == tmp_path / "InternVL-Chat-V1-5-vlmkit-hf"
    sample = to_sample({"messages": [{"role": "user", "content": "<image>" + question}], "images": [random_image(448, 448)]})
    ids = vlm.encode(sample)["input_ids"].tolist()
    context = ids.count(vlm.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))
    assert ids == sentencepiece_ids(source, query.replace("<IMG_CONTEXT>" * 3, "<IMG_CONTEXT>" * context))


def test_internlm2_user_defined_pieces_with_dummy_prefix_are_refused(tmp_path):
    """No fast tokenizer writes sentencepiece's lone `▁` before such a piece: one line, nothing written."""
    source = with_internlm2_spm(config_only(tmp_path / "src"), dummy_prefix=True)
    done = CliRunner().invoke(app, ["convert", "--model", str(source), "--output", str(tmp_path / "out")])
    assert isinstance(done.exception, VlmkitError), done.output
    assert "tokenizer.model: user-defined pieces (<|im_start|>" in str(done.exception) and "\n" not in str(done.exception)
    assert not (tmp_path / "out").exists()


def test_a_converted_tokenizer_that_differs_from_sentencepiece_is_refused(tmp_path, monkeypatch):
    """The conversion checks the tokenizer it wrote against the sentencepiece model itself: a normaliser that
    misses sentencepiece's character map (newlines would stay newlines) is refused, nothing written."""
    from tokenizers import normalizers

    from vlmkit.families.internvl import spm_tokenizer

    source = tmp_path / "InternVL-Chat-V1-5"
    assert CliRunner().invoke(app, ["tiny-model", "internvl-remote", str(source)]).exit_code == 0
    with_internlm2_spm(source)
    monkeypatch.setattr(spm_tokenizer, "_normalizer", lambda spec, dummy: normalizers.Replace(" ", "▁"))
    done = CliRunner().invoke(app, ["convert", "--model", str(source), "--output", str(tmp_path / "out")])
    assert isinstance(done.exception, VlmkitError), done.output
    message = str(done.exception)
    assert message.startswith(f"{source}/tokenizer.model: the converted tokenizer encodes '<|im_start|>system")
    assert "otherwise than the original" in message and "\n" not in message
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [source]


def test_bpe_files_of_another_tokenizer_class_are_refused(tmp_path):
    source = config_only(tmp_path / "src")
    (source / "vocab.json").write_text(json.dumps({"a": 0}))
    (source / "merges.txt").write_text("#version: 0.2\n")
    (source / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    done = CliRunner().invoke(app, ["convert", "--model", str(source), "--output", str(tmp_path / "out")])
    assert isinstance(done.exception, VlmkitError), done.output
    assert "tokenizer_class 'GPT2Tokenizer' with vocab.json + merges.txt is not converted" in str(done.exception)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_qwen2_checkpoint_with_vocab_and_merges_converts_on_load_and_chats(tmp_path):
    """InternVL2-1B as published: vocab.json + merges.txt, no tokenizer.json. `vlmkit infer --model ORIGINAL`
    converts it; the written tokenizer encodes as transformers' Qwen2Tokenizer does on those files. ~25 s."""
    import subprocess
    import sys

    from conftest import random_image
    from transformers import AutoTokenizer, Qwen2Tokenizer

    from vlmkit.families.internvl.remote import use_bpe_files

    source = tmp_path / "InternVL2-1B"
    assert CliRunner().invoke(app, ["tiny-model", "internvl2-remote", str(source)]).exit_code == 0
    use_bpe_files(source)
    random_image(448, 448).save(tmp_path / "cat.png")
    done = subprocess.run(
        [sys.executable, "-m", "vlmkit", "infer", "--model", str(source), "--max-new-tokens", "3"],
        input="<image>Describe this image.\ncat.png\nexit\n", capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "image 1: 1 tile(s) of 448×448" in done.stderr + done.stdout
    written = AutoTokenizer.from_pretrained(tmp_path / "InternVL2-1B-vlmkit-hf")
    original = Qwen2Tokenizer.from_pretrained(source)
    for text in ("<|im_start|>user\n<img><IMG_CONTEXT></img>\n第一行\n  second line 123<|im_end|>\n", "It's 4096 px."):
        assert written(text)["input_ids"] == original(text)["input_ids"], text
