"""The first hour of someone coming from ms-swift or LLaMA-Factory (issue 28 #1, #7): their flags and dataset
names get one `error:` line that names vlmkit's spelling, `--target-modules ALL` says how it differs, and the
CLI's own face (`--version`, the families in `--help`) answers at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import random_image
from typer.testing import CliRunner

import vlmkit
from vlmkit.cli import app
from vlmkit.errors import VlmkitError


def vlmkit_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlmkit", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


# (command line, the one line the user reads)
PEER_FLAGS = [
    (["sft", "--sft_type", "lora"], "--sft_type is ms-swift's; vlmkit: --tuner lora"),
    (["sft", "--train_type", "full"], "--train_type is ms-swift's; vlmkit: --tuner full"),
    (["sft", "--model_id_or_path", "qwen/Qwen2-VL-7B-Instruct"], "--model_id_or_path is ms-swift's; vlmkit: --model qwen/Qwen2-VL-7B-Instruct"),
    (["sft", "--num_train_epochs", "3"], "--num_train_epochs is ms-swift's; vlmkit: --epochs 3"),
    (["sft", "--learning_rate", "1e-4"], "--learning_rate is ms-swift's; vlmkit: --lr 1e-4"),
    (["sft", "--per_device_train_batch_size", "2"], "--per_device_train_batch_size is ms-swift's; vlmkit: --batch-size 2"),
    (["sft", "--gradient_accumulation_steps", "16"], "--gradient_accumulation_steps is ms-swift's; vlmkit: --grad-accum 16"),
    (["sft", "--max_length", "2048"], "--max_length: vlmkit spells it --max-length 2048"),
    (["sft", "--lora_rank", "16"], "--lora_rank: vlmkit spells it --lora-rank 16"),
    (["sft", "--lora_alpha", "32"], "--lora_alpha: vlmkit spells it --lora-alpha 32"),
    (["sft", "--target_modules", "all-linear"], "--target_modules: vlmkit spells it --target-modules all-linear"),
    (["sft", "--output_dir", "output"], "--output_dir: vlmkit spells it --output-dir output"),
    (["sft", "--freeze_vit", "true"], "--freeze_vit: vlmkit spells it --freeze-vit"),
    (["sft", "--freeze_vit", "false"], "--freeze_vit: vlmkit spells it --no-freeze-vit"),
    (["sft", "--eval_steps=50"], "--eval_steps: vlmkit spells it --eval-steps 50"),
    (["sft", "--save_steps", "100"], "--save_steps: vlmkit spells it --save-steps 100"),
    (["sft", "--max_pixels", "602112"], "--max_pixels: vlmkit spells it --max-pixels 602112"),
    (["infer", "--max_pixels", "602112"], "--max_pixels: vlmkit spells it --max-pixels 602112"),
    (["data", "check", "--max_pixels", "602112"], "--max_pixels: vlmkit spells it --max-pixels 602112"),
    (["infer", "--ckpt_dir", "output/v0/checkpoint-100"], "--ckpt_dir is ms-swift's; vlmkit: --ckpt output/v0/checkpoint-100"),
    (["sft", "--stage", "sft"], "--stage is LLaMA-Factory's; vlmkit: `vlmkit sft` is the sft stage; leave --stage out"),
    (["sft", "--finetuning_type", "lora"], "--finetuning_type is LLaMA-Factory's; vlmkit: --tuner lora"),
    (["sft", "--cutoff_len", "1024"], "--cutoff_len is LLaMA-Factory's; vlmkit: --max-length 1024"),
    (["sft", "--model_name_or_path", "Qwen/Qwen2-VL-2B-Instruct"], "--model_name_or_path is LLaMA-Factory's; vlmkit: --model Qwen/Qwen2-VL-2B-Instruct"),
    (["sft", "--template", "qwen2_vl"], "--template is LLaMA-Factory's; vlmkit: leave it out: the chat template comes from the checkpoint (its family's template)"),
]  # fmt: skip


@pytest.mark.parametrize("args, line", PEER_FLAGS, ids=[" ".join(a) for a, _ in PEER_FLAGS])
def test_a_peer_flag_names_vlmkit_spelling(args, line):
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, VlmkitError), result.output
    assert str(result.exception) == line


def test_seed_000_command_gets_one_line_naming_the_fix_not_a_spelling_guess():
    """Seed 000's `swift sft` line typed as `vlmkit sft`: one `error:` line, exit 2, no click usage block and
    no "Possible options: --dtype"."""
    result = vlmkit_cli("sft", "--model_type", "qwen2-vl-7b-instruct", "--model_id_or_path", "qwen/Qwen2-VL-7B-Instruct",
                        "--sft_type", "lora", "--dataset", "latex-ocr-print#20000")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --model_type is ms-swift's; vlmkit: leave it out: the family is read from the checkpoint's "
        "config.json; give --model ORG/NAME or a folder"
    ]
    result = vlmkit_cli("sft", "--model", "qwen/Qwen2-VL-7B-Instruct", "--sft_type", "lora")
    assert (result.returncode, result.stderr) == (2, "error: --sft_type is ms-swift's; vlmkit: --tuner lora\n")


def test_an_unknown_flag_of_nobody_keeps_click_answer():
    result = vlmkit_cli("sft", "--bogus_flag", "1")
    assert result.returncode == 2
    assert "No such option: --bogus_flag" in result.stderr


def test_ms_swift_dataset_name_says_hub_prefixes_and_file_formats(small_model, tmp_path):
    result = vlmkit_cli("sft", "--model", str(small_model), "--dataset", "latex-ocr-print#20000",
                        "--output-dir", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: latex-ocr-print: dataset file not found; ")
    for named in ("hf::ORG/NAME", "ms::ORG/NAME", ".jsonl", ".parquet", "AI-ModelScope/LaTeX_OCR"):
        assert named in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_target_modules_all_warns_how_it_differs_from_ms_swift(small_model, tmp_path):
    random_image(40, 50).save(tmp_path / "cat.png")
    row = {"messages": [{"role": "user", "content": "<image>这是什么？"}, {"role": "assistant", "content": "一只猫。\nA cat."}],
           "images": ["cat.png"]}  # fmt: skip
    (tmp_path / "train.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n")
    result = vlmkit_cli("sft", "--model", str(small_model), "--dataset", str(tmp_path / "train.jsonl"), "--target-modules",
                        "ALL", "--max-steps", "1", "--max-pixels", "4000", "--output-dir", str(tmp_path / "out"),
                        "--no-progress", "--report-to", "none")  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: --target-modules ALL: in vlmkit this is every Linear layer of the parts that train (the language "
        "model unless --no-freeze-vit / --no-freeze-aligner); ms-swift's ALL also wraps the vision tower's layers: "
        "add --no-freeze-vit to train those too"
    ]
    assert any((tmp_path / "out").rglob("adapter_model.safetensors"))


def test_version_prints_the_package_version():
    result = vlmkit_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"vlmkit {vlmkit.__version__}\n")


def test_help_names_every_family_without_importing_torch():
    from vlmkit.families import FAMILIES

    code = "import sys\nfrom vlmkit.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=120)
    def unwrapped(text: str) -> str:  # the help wraps anywhere, "Qwen-VL-Chat" too (after its hyphen)
        return "".join(text.split())

    help_text = unwrapped(result.stdout)
    assert result.stdout.splitlines()[-1] == "False"
    for family in FAMILIES.values():
        if family.description[:1].isupper():  # a variant (the remote-code Qwen-VL) is named by its family
            title = family.description.split(" (")[0].split(":")[0].split(",")[0]
            assert unwrapped(title) in help_text, family.name
    assert unwrapped("Qwen3-VL MoE") in help_text and unwrapped("Qwen-VL / Qwen-VL-Chat") in help_text


@pytest.mark.slow
def test_an_original_qwen_vl_folder_converts_on_load_once_like_internvl(tmp_path):
    """`vlmkit sft --model ORIGINAL_QWEN_VL` used to be refused ("convert it first") while an original InternVL
    folder converted on load: now both convert once, beside the original, with one line, and train."""
    original = tmp_path / "Qwen-VL-Chat"
    built = vlmkit_cli("tiny-model", "qwen-vl", str(original))
    assert built.returncode == 0, built.stderr
    assert json.loads((original / "config.json").read_text())["model_type"] == "qwen"  # the original layout
    random_image(40, 50).save(tmp_path / "cat.png")
    row = {"messages": [{"role": "user", "content": "<image>图里有什么？"}, {"role": "assistant", "content": "一只猫。\nA cat."}],
           "images": ["cat.png"]}  # fmt: skip
    (tmp_path / "train.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n")
    args = ("sft", "--model", str(original), "--dataset", str(tmp_path / "train.jsonl"), "--max-steps", "1",
            "--no-progress", "--report-to", "none")  # fmt: skip
    first = vlmkit_cli(*args, "--output-dir", str(tmp_path / "out1"))
    assert first.returncode == 0, first.stderr
    copy = original.with_name("Qwen-VL-Chat-vlmkit")
    assert f"converting the original Qwen-VL checkpoint {original} to {copy} (once)" in first.stderr.splitlines()
    assert any((tmp_path / "out1").rglob("adapter_model.safetensors"))
    second = vlmkit_cli(*args, "--output-dir", str(tmp_path / "out2"))
    assert second.returncode == 0, second.stderr
    assert f"using {copy} (converted from the original Qwen-VL checkpoint {original})" in second.stderr.splitlines()
    assert not any("converting" in line for line in second.stderr.splitlines())


@pytest.mark.slow
def test_sft_on_a_converted_internvl_prints_no_token_alignment_warning(tmp_path):
    """Every `sft` on a converted InternVL printed transformers' "The tokenizer has new PAD/BOS/EOS tokens ...
    Updated tokens: {'bos_token_id': ...}": the converted generation_config.json had no bos_token_id although
    the config and the tokenizer agree on it. Converted now with it; a folder converted before is filled in at
    load. The ids are the original tokenizer's."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    original = tmp_path / "InternVL-Chat-V1-5"
    built = vlmkit_cli("tiny-model", "internvl-remote", str(original))
    assert built.returncode == 0, built.stderr
    random_image(64, 64).save(tmp_path / "cat.png")  # square: one tile (a 40x50 image is 7 tiles + thumbnail)
    row = {"messages": [{"role": "user", "content": "<image>图里有什么？"}, {"role": "assistant", "content": "一只猫。\nA cat."}],
           "images": ["cat.png"]}  # fmt: skip
    (tmp_path / "train.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n")
    args = ("sft", "--dataset", str(tmp_path / "train.jsonl"), "--max-steps", "1", "--no-progress",
            "--report-to", "none")  # fmt: skip
    first = vlmkit_cli(*args, "--model", str(original), "--output-dir", str(tmp_path / "out1"))
    assert first.returncode == 0, first.stderr
    assert "PAD/BOS/EOS" not in first.stderr, first.stderr

    copy = original.with_name("InternVL-Chat-V1-5-vlmkit-hf")
    source = PreTrainedTokenizerFast.from_pretrained(original)  # the original layout's own tokenizer
    converted = AutoTokenizer.from_pretrained(copy)
    text = json.loads((copy / "config.json").read_text())["text_config"]
    generation = json.loads((copy / "generation_config.json").read_text())
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(converted, name) == getattr(source, name) is not None, name
        assert text[name] == getattr(source, name), name
    assert generation["bos_token_id"] == source.bos_token_id and generation["pad_token_id"] == source.pad_token_id
    assert source.eos_token_id in generation["eos_token_id"]

    # a folder converted before this fix (no bos_token_id in its generation_config.json) trains as quietly
    del generation["bos_token_id"]
    (copy / "generation_config.json").write_text(json.dumps(generation))
    second = vlmkit_cli(*args, "--model", str(copy), "--output-dir", str(tmp_path / "out2"))
    assert second.returncode == 0, second.stderr
    assert "PAD/BOS/EOS" not in second.stderr, second.stderr
