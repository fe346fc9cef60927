"""`--device-map` / `--max-memory`: a model split over devices (here the CPU and the disk, the only devices a
CPU machine has) answers as the unsplit model does; `vlmkit sft --device-map` trains as without it, and is
refused where it cannot work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from scripted import MULTILINE_CJK_REPLY

import vlmkit
from vlmkit.errors import VlmkitError
from vlmkit.models.export import export

SEPARATOR = "-" * 50


def cli(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlmkit", *args], input=stdin, capture_output=True, text=True, timeout=180,
        env={**os.environ, **(env or {})},
    )


def cpu_and_disk(model_dir: Path) -> str:
    """A --max-memory that leaves the CPU room for about 90% of the weights: the rest goes to disk."""
    size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    return f"cpu={int(0.9 * size)},disk=10GB"


def test_a_model_split_over_cpu_and_disk_gives_the_unsplit_logits_and_replies(small_model, tmp_path):
    whole = vlmkit.load(str(small_model), device="cpu")
    split = vlmkit.load(
        str(small_model), device_map="auto", max_memory=cpu_and_disk(small_model), offload_folder=tmp_path / "off"
    )
    assert set(split.model.hf_device_map.values()) == {"cpu", "disk"}
    assert split.device == "cpu"
    row = {"messages": [{"role": "user", "content": "What colour is the sky?"}]}
    batch = whole.template.collate([whole.encode(vlmkit.sample.to_sample(row))], padding_side="left")
    batch.pop("labels")
    with torch.inference_mode():
        assert torch.equal(whole.model(**batch).logits, split.model(**batch).logits)
    assert split.generate([row], max_new_tokens=12) == whole.generate([row], max_new_tokens=12)
    split_chat, whole_chat = split.chat(), whole.chat()  # two turns: the second reuses the first's cache
    for text in ("Hi", "And again?"):
        assert split_chat.send(text, max_new_tokens=6) == whole_chat.send(text, max_new_tokens=6)


@pytest.mark.slow  # loads the real-vocabulary scripted model split over CPU and disk: ~12 s on 2 cores
def test_infer_device_map_auto_chats_through_the_cli(scripted_model):
    result = cli(
        "infer", "--model", str(scripted_model), "--device-map", "auto", "--max-memory", cpu_and_disk(scripted_model),
        "--quiet", stdin="Hi\n你好\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    turn = f"{MULTILINE_CJK_REPLY}\n{SEPARATOR}\n"
    assert result.stdout == f"<<< Hi\n{turn}<<< 你好\n{turn}<<< "
    assert " on cpu, " in result.stderr and " on disk " in result.stderr
    assert [line for line in result.stderr.splitlines() if "warn" in line.lower()] == []


def test_eval_with_a_split_model_scores_as_the_unsplit_one(small_model, tmp_path):
    from vlmkit.eval.evaluate import evaluate

    data = tmp_path / "qa.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ho"}]}\n'
        '{"messages": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hey"}]}\n'
    )
    whole = evaluate(str(data), models=[str(small_model)], output=tmp_path / "whole", max_new_tokens=6, echo=str)
    split = evaluate(
        str(data), models=[str(small_model)], output=tmp_path / "split", max_new_tokens=6, echo=str,
        device_map="auto", max_memory=cpu_and_disk(small_model),
    )  # fmt: skip
    replies = [
        [json.loads(line)["response"] for line in next((tmp_path / run).glob("*.predictions.jsonl")).open()]
        for run in ("whole", "split")
    ]
    assert len(replies[0]) == 2 and replies[0] == replies[1]
    assert whole["models"] == split["models"]


def test_serve_device_map_with_the_vllm_backend_is_refused(small_model):
    from vlmkit.serve import serve

    with pytest.raises(VlmkitError) as e:
        serve(str(small_model), backend="vllm", device_map="auto")
    assert str(e.value) == "--device-map is for --backend transformers; vLLM spreads a model over GPUs itself"


def test_infer_and_eval_with_the_vllm_backend_refuse_device_map(small_model, tmp_path):
    from vlmkit.eval.evaluate import evaluate

    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}]}\n')
    result = cli("infer", "--model", str(small_model), "--backend", "vllm", "--device-map", "auto", "--input", str(data))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --device-map: not passed on to vLLM (yet); use --backend transformers"
    with pytest.raises(VlmkitError, match="^--device-map: not passed on to vLLM"):
        evaluate(str(data), models=[str(small_model)], backend="vllm", device_map="auto", output=tmp_path / "e")


def test_device_and_device_map_together_are_refused(small_model):
    result = cli("infer", "--model", str(small_model), "--device", "cpu", "--device-map", "auto")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --device cpu and --device-map auto: give one (--device-map places the layers)"
    )


@pytest.fixture(scope="module")
def two_rows(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data") / "d.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ho"}]}\n'
        '{"messages": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hey there"}]}\n'
    )
    return data


def sft(model: Path, data: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return cli(
        "sft", "--model", str(model), "--dataset", str(data), "--output-dir", str(out), "--max-steps", "2",
        "--save-steps", "2", "--logging-steps", "1", "--no-progress", "--report-to", "none", *extra, env=env,
    )  # fmt: skip


def losses(stdout: str) -> list[str]:
    return [word for line in stdout.splitlines() for word in line.split() if word.startswith(("loss=", "grad_norm="))]


@pytest.mark.slow  # two 2-step LoRA runs and three exports: ~30 s on 2 cores
def test_sft_with_a_device_map_trains_as_without_and_exports_the_same_weights(small_model, two_rows, tmp_path):
    plain = sft(small_model, two_rows, tmp_path / "plain")
    mapped = sft(small_model, two_rows, tmp_path / "mapped", "--device-map", "auto")
    assert plain.returncode == 0 and mapped.returncode == 0, mapped.stderr
    assert len(losses(mapped.stdout)) == 4 and losses(mapped.stdout) == losses(plain.stdout)
    assert [line for line in mapped.stderr.splitlines() if "warn" in line.lower()] == []
    checkpoint = next((tmp_path / "mapped").glob("*/v0-*/checkpoint-2"))

    # export: merged on a device-mapped model = merged without; an adapter onto offloaded layers is refused
    plain_export = export(checkpoint, tmp_path / "plain-export", merge_lora=True)
    mapped_export = export(checkpoint, tmp_path / "mapped-export", merge_lora=True, device_map="auto")
    plain_weights = load_file(plain_export / "model.safetensors")
    mapped_weights = load_file(mapped_export / "model.safetensors")
    assert plain_weights.keys() == mapped_weights.keys()
    assert all(torch.equal(plain_weights[k], mapped_weights[k]) for k in plain_weights)
    with pytest.raises(VlmkitError, match="cannot be applied to layers offloaded to cpu and disk"):
        export(checkpoint, tmp_path / "x", merge_lora=True, device_map="auto", max_memory=cpu_and_disk(small_model))
    assert not (tmp_path / "x").exists()


def test_sft_device_map_under_torchrun_is_refused_before_any_run_folder(small_model, two_rows, tmp_path):
    result = sft(small_model, two_rows, tmp_path / "out", "--device-map", "auto", env={"WORLD_SIZE": "2", "RANK": "0"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --device-map: this is process 0 of 2 (torchrun / accelerate launch); every process would spread its "
        "own copy of the model over all the GPUs: run without a launcher, or drop --device-map"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # reads the data and loads the model before it can see where the layers went: ~10 s
def test_sft_refuses_layers_offloaded_to_cpu_or_disk(small_model, two_rows, tmp_path):
    result = sft(small_model, two_rows, tmp_path / "out", "--device-map", "auto", "--max-memory", cpu_and_disk(small_model))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --device-map: training cannot update layers offloaded to cpu and disk; give the GPUs more "
        "--max-memory, use more GPUs, or --quant 4bit"
    )
