"""`vlmkit infer` (chat and batch) and the Python API on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import PEERS, random_image

import vlmkit
from vlmkit.backends.transformers_backend import GenerationOptions
from vlmkit.errors import VlmkitError
from vlmkit.infer.batch import run_batch


def vlmkit_cli(*args: str, stdin: str = "", timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlmkit", *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def vlm(small_model):
    return vlmkit.load(str(small_model), max_pixels=20_000)


def test_piped_chat_streams_a_reply_and_survives_a_missing_image(small_model, image_file, tmp_path):
    missing = tmp_path / "missing.png"
    script = f"<image>What is this?\n{image_file}\nclear\n<image>And this?\n{missing}\n{image_file}\nHi\nexit\n"
    result = vlmkit_cli("infer", "--model", str(small_model), "--max-new-tokens", "8", stdin=script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("Input an image path or URL <<< ") == 3  # the missing file is asked again
    assert "History cleared." in out
    # Three replies (both image turns and "Hi"), each closed by the separator.
    assert out.count("-" * 50) == 3
    reply = out.split("Input an image path or URL <<< ")[1].split("\n", 1)[1].split("-" * 50)[0]
    assert reply.strip(), "the reply is empty"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {str(missing)!r} is not a file, an http(s) URL or a data: URL; the message is kept: give the "
        """image's path or URL, or an empty line to cancel (a message of several lines goes between two lines of \"\"\")"""
    ]


def test_chat_ends_at_end_of_input(small_model):
    result = vlmkit_cli("infer", "--model", str(small_model), "--max-new-tokens", "2", stdin="Hello\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("-" * 50) == 1


def test_missing_model_is_one_clear_error(tmp_path):
    result = vlmkit_cli("infer", "--model", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: no such folder: {tmp_path / 'nope'} (--model takes a model folder or a hub id like Qwen/Qwen2-VL-2B-Instruct)"
    )


def test_batch_inference_over_the_llamafactory_demo(tiny_models, tmp_path):
    output = tmp_path / "preds.jsonl"
    source = PEERS / "llamafactory" / "mllm_demo.json"
    result = vlmkit_cli(
        "infer",
        "--model",
        str(tiny_models["qwen2-vl"]),
        "--input",
        str(source),
        "--output",
        str(output),
        "--max-new-tokens",
        "4",
        "--max-pixels",
        "20000",
        "--batch-size",
        "4",
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    inputs = json.loads(source.read_text())
    assert len(rows) == len(inputs) == 6
    # Each row's reply is the model's own (greedy) reply to that row's question, through the Python API.
    prompts = [
        {"messages": r["messages"][:-1], "images": [str(source.parent / i) for i in r["images"]]} for r in inputs
    ]
    expected = vlmkit.load(str(tiny_models["qwen2-vl"]), max_pixels=20000).generate(prompts, max_new_tokens=4)
    for row, original, reply in zip(rows, inputs, expected, strict=True):
        assert row["messages"] == original["messages"]  # input fields kept, in input order
        assert row["labels"] == original["messages"][-1]["content"]
        assert "error" not in row and row["response"] == reply
    assert f"wrote 6 rows to {output} (0 failed)" in result.stdout
    assert not list(tmp_path.glob("*.tmp"))


def test_batch_failed_rows_get_an_error_and_the_run_continues(vlm, tmp_path, image_file):
    data = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "<image>Hi"}], "images": [str(image_file)]}),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "<image>Hi"}], "images": ["gone.png"]}),
        json.dumps(
            {"messages": [{"role": "user", "content": "<image><image>Hi"}], "images": [str(image_file)]}
        ),
        json.dumps(
            {"messages": [{"role": "user", "content": "Plain"}, {"role": "assistant", "content": "ref"}]}
        ),
    ]
    data.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.jsonl"
    counts = run_batch(vlm, data, output, GenerationOptions(max_new_tokens=3), batch_size=2, progress=False)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert counts == {"ok": 2, "failed": 3}
    assert [("error" in r) for r in rows] == [False, True, True, True, False]
    assert rows[1]["error"].startswith(f"{data}:2: ")
    assert rows[2]["error"] == f"{data}:3: image 1: file not found: {tmp_path / 'gone.png'}"
    assert "2 <image> placeholder(s)" in rows[3]["error"]
    assert rows[4]["labels"] == "ref"
    ok = [{"messages": [{"role": "user", "content": "<image>Hi"}], "images": [str(image_file)]},
          {"messages": [{"role": "user", "content": "Plain"}]}]  # fmt: skip
    assert [rows[0]["response"], rows[4]["response"]] == vlm.generate(ok, max_new_tokens=3)


def test_a_failed_row_has_no_response_and_keeps_its_reference_in_labels(scripted_model, tmp_path, image_file):
    """ms-swift query/response rows (seed 000) keep the reference in `response`: a row that fails must not
    leave it there, where a scorer that ignores `error` reads a perfect answer; `vlmkit eval` on the
    predictions counts such rows failed, not correct."""
    from scripted import MULTILINE_CJK_REPLY

    rows = [
        {"query": "<image>图里有什么？", "response": MULTILINE_CJK_REPLY, "images": [str(image_file)]},
        {"query": "<image>图里有什么？", "response": "两只猫。\n都在睡觉。", "images": [str(tmp_path / "gone.png")]},
        {"query": "<image>还有呢？", "response": "没有了。", "history": ["不是一对"], "images": [str(image_file)]},
    ]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    result = vlmkit_cli("infer", "--model", str(scripted_model), "--input", str(data), "--output", str(preds), timeout=300)
    assert result.returncode == 0 and result.stdout == f"wrote 3 rows to {preds} (2 failed)\n", result.stderr
    out = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    assert [("error" in r, "response" in r) for r in out] == [(False, True), (True, False), (True, False)]
    assert [r["labels"] for r in out] == [row["response"] for row in rows]  # every reference, where answered rows keep it
    assert out[0]["response"] == MULTILINE_CJK_REPLY
    assert [r.get("response") == r["labels"] for r in out] == [True, False, False]  # a scorer ignoring `error`

    scored = vlmkit_cli(
        "eval", "--predictions", str(preds), "--metric", "exact_match", "--output", str(tmp_path / "ev"), timeout=300
    )
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())["models"]["preds"]
    assert (metrics["rows"], metrics["failed"], metrics["scores"]["exact_match"]["value"]) == (3, 2, 1.0)


def test_infer_and_eval_exit_non_zero_when_every_row_failed(small_model, tmp_path):
    """A run that answered no row is not a finished run: the rows and the report are still written (each
    row's error is in it), then one error line and a non-zero exit, so a script does not go on with them."""
    rows = [{"query": f"<image>图{i}里有什么？\n说说看。", "response": "一只猫。", "images": [f"gone{i}.png"]}
            for i in range(3)]  # fmt: skip
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    result = vlmkit_cli("infer", "--model", str(small_model), "--input", str(data), "--output", str(preds))
    assert result.returncode == 2 and result.stdout == f"wrote 3 rows to {preds} (3 failed)\n"
    assert result.stderr.strip() == (
        f"error: every row failed, none was answered; first error: {data}:1: image 1: file not found: "
        f"{tmp_path / 'gone0.png'}"
    )
    assert [json.loads(line)["labels"] for line in preds.read_text(encoding="utf-8").splitlines()] == ["一只猫。"] * 3

    scored = vlmkit_cli("eval", "--model", str(small_model), "--dataset", str(data), "--output", str(tmp_path / "ev"))
    assert scored.returncode == 2
    assert scored.stderr.strip().splitlines()[-1] == (
        f"error: {small_model.name}: all 3 rows failed, none is scored; first: line 1: {data}:1: image 1: file not "
        f"found: {tmp_path / 'gone0.png'}"
    )
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["models"][small_model.name]["failed"] == 3


def test_batch_refuses_to_overwrite_its_input(vlm, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(VlmkitError, match="is the input file"):
        run_batch(vlm, data, data, GenerationOptions(max_new_tokens=2), progress=False)
    assert json.loads(data.read_text())["messages"][0]["content"] == "x"


def test_batched_greedy_generation_equals_one_by_one(vlm):
    samples = [
        {
            "messages": [{"role": "user", "content": "<image>Describe it"}],
            "images": [random_image(40, 70, 1)],
        },
        {
            "messages": [
                {"role": "user", "content": "A much longer text-only question, to force left padding"}
            ]
        },
        {
            "messages": [{"role": "user", "content": "<image>x<image>"}],
            "images": [random_image(90, 30, 2), random_image(28, 28)],
        },
    ]
    together = vlm.generate(samples, max_new_tokens=6)
    alone = [vlm.generate([s], max_new_tokens=6)[0] for s in samples]
    assert together == alone
    assert len(set(alone)) > 1 or alone[0]  # replies are real text, not all empty


def test_stream_equals_generate_and_chat_keeps_history(vlm):
    sample = {"messages": [{"role": "user", "content": "<image>Hi"}], "images": [random_image(50, 50)]}
    assert "".join(vlm.stream(sample, max_new_tokens=6)) == vlm.generate([sample], max_new_tokens=6)[0]
    chat = vlm.chat(system="Be brief.")
    first = chat.send("What is this?", images=[random_image(50, 50)], max_new_tokens=4)
    chat.send("And now?", max_new_tokens=4)
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert chat.messages[1]["content"][0]["text"] == first
    assert chat.messages[0]["content"][0]["type"] == "image"
    with pytest.raises(VlmkitError):
        chat.send("<image>broken", images=["/nonexistent.png"], max_new_tokens=2)
    assert len(chat.messages) == 4  # a failed turn leaves the history unchanged
    chat.clear()
    assert chat.messages == []


def test_generation_options_are_validated():
    with pytest.raises(VlmkitError, match="--max-new-tokens must be at least 1"):
        GenerationOptions(max_new_tokens=0).kwargs()
    with pytest.raises(VlmkitError, match="top-p"):
        GenerationOptions(temperature=0.7, top_p=0).kwargs()
    assert GenerationOptions(temperature=0.7).kwargs()["do_sample"] is True


def test_sampling_with_a_seed_is_reproducible(vlm):
    sample = {"messages": [{"role": "user", "content": "Tell me"}]}
    a = vlm.generate([sample], max_new_tokens=8, temperature=1.0, seed=3)
    b = vlm.generate([sample], max_new_tokens=8, temperature=1.0, seed=3)
    assert a == b


def test_loading_options(small_model, monkeypatch):
    from vlmkit.backends.transformers_backend import load

    bf16 = load(str(small_model), dtype="bf16", device="cpu")
    assert bf16.model.dtype == torch.bfloat16
    assert isinstance(
        bf16.generate([{"messages": [{"role": "user", "content": "hi"}]}], max_new_tokens=2)[0], str
    )
    with pytest.raises(VlmkitError, match="--dtype fp8: choose one of auto, bf16, fp16, fp32"):
        load(str(small_model), dtype="fp8")
    with pytest.raises(VlmkitError, match="--attn-impl flash: choose one of sdpa, eager, flash_attention_2"):
        load(str(small_model), attn_impl="flash")
    if not torch.cuda.is_available():
        with pytest.raises(VlmkitError, match="--device cuda: no CUDA GPU is visible"):
            load(str(small_model), device="cuda")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VlmkitError, match=r"^--model Qwen/Not-A-Real-Model: no such local folder, and no download from the hub"):
        load("Qwen/Not-A-Real-Model")


def image_rows(folder, n: int):
    """`n` JSON Lines rows, each with its own image and an id, in `folder`/in.jsonl."""
    rows = []
    for i in range(n):
        random_image(40, 56, seed=i).save(folder / f"{i}.png")
        rows.append({"id": i, "query": f"<image>Row {i}: what is this?", "images": [str(folder / f"{i}.png")]})
    data = folder / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def test_batch_resumes_after_an_interruption_and_refuses_another_runs_rows(vlm, tmp_path, monkeypatch):
    data, output = image_rows(tmp_path, 7), tmp_path / "out.jsonl"
    options = GenerationOptions(max_new_tokens=4)
    clean = tmp_path / "clean.jsonl"
    run_batch(vlm, data, clean, options, batch_size=2, progress=False)
    output.write_text("an earlier output, kept until the new one is whole\n")

    generate, calls = vlm.generate_encoded, []

    def interrupted(encoded, options):  # Ctrl-C while the third batch generates
        calls.append(len(encoded))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return generate(encoded, options)

    monkeypatch.setattr(vlm, "generate_encoded", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_batch(vlm, data, output, options, batch_size=2, progress=False)
    assert output.read_text() == "an earlier output, kept until the new one is whole\n"
    partial = tmp_path / "out.jsonl.partial"
    # another input, or other generation options, cannot finish these rows: one line, nothing touched
    other = tmp_path / "other.jsonl"
    other.write_text(data.read_text())
    with pytest.raises(VlmkitError, match=r"^\S+out.jsonl.partial holds the partial output of another run \(input was"):
        run_batch(vlm, other, output, options, batch_size=2, progress=False)
    with pytest.raises(VlmkitError, match=r"\(generation was .*max_new_tokens': 4.*now .*max_new_tokens': 5"):
        run_batch(vlm, data, output, GenerationOptions(max_new_tokens=5), batch_size=2, progress=False)
    with monkeypatch.context() as other_pixels, pytest.raises(VlmkitError, match=r"\(encoding was .*'max_pixels': 20000"):
        other_pixels.setattr(vlm.template, "max_pixels", 12_544)  # another --max-pixels
        run_batch(vlm, data, output, options, batch_size=2, progress=False)

    calls.clear()
    monkeypatch.setattr(vlm, "generate_encoded", lambda e, o: calls.append(len(e)) or generate(e, o))
    counts = run_batch(vlm, data, output, options, batch_size=2, progress=False)
    assert calls == [2, 1]  # only rows 4, 5 and 6 were answered again
    assert counts == {"ok": 7, "failed": 0} and output.read_text() == clean.read_text()
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == list(range(7))
    assert not partial.exists()


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process_after_a_rank_is_killed_and_rerun(small_model, tmp_path):
    """`torchrun --nproc-per-node 2 -m vlmkit infer --input ...` (gloo on CPU): one output in input order,
    equal to a one-process run row for row; a rank killed mid-way, then the same command again, answers
    only the rows left and duplicates none. About 30 s (two torchrun launches on 2 CPU cores)."""
    import os
    import signal
    import time

    data = image_rows(tmp_path, 16)
    args = ["-m", "vlmkit", "infer", "-m", str(small_model), "--input", str(data), "--max-new-tokens", "24",
            "--batch-size", "2"]  # fmt: skip
    one = tmp_path / "one.jsonl"
    run_batch(vlmkit.load(str(small_model)), data, one, GenerationOptions(max_new_tokens=24), 2, progress=False)
    two, partial = tmp_path / "two.jsonl", tmp_path / "two.jsonl.partial"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *args, "-o", str(two)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and launch.poll() is None and time.monotonic() < deadline:
        for part in partial.glob("part-1-*.jsonl"):  # rank 1's rows, in a file named by its pid
            if part.read_text().count("\n") >= 2:
                killed = int(part.stem.split("-")[2])
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    _, stderr = launch.communicate(timeout=120)
    assert killed is not None and launch.returncode != 0, stderr[-2000:]
    answered = sum(p.read_text().count("\n") for p in partial.glob("part-*.jsonl"))
    assert 2 <= answered < 16 and not two.exists()  # stopped mid-way, nothing written to the output

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming {partial}: " in rerun.stderr and rerun.stdout.count(f"wrote 16 rows to {two}") == 1
    assert two.read_text().splitlines() == one.read_text().splitlines()
    assert not partial.exists()
