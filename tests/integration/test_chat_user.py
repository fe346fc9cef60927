"""The chat and inference as users run them: `vlmkit infer` piped and interrupted, `vlmkit.load` and
`vlm.generate` / `vlm.chat()`, on the scripted model whose reply is a known multi-line CJK text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from scripted import MULTILINE_CJK_REPLY

import vlmkit
from vlmkit.commands.peer_env import PEER_VARIABLES
from vlmkit.infer.batch import CHAT_HELP

SEPARATOR = "-" * 50


def cli(*args: str, stdin: str = "", env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m vlmkit ARGS` with `stdin` piped in, in an environment without ms-swift's variables."""
    clean = {k: v for k, v in os.environ.items() if k not in PEER_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "vlmkit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
    )


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warn" in line.lower()]


@pytest.fixture(scope="module")
def scripted_vlm(scripted_model):
    return vlmkit.load(str(scripted_model))


def test_piped_chat_prints_the_whole_multiline_cjk_reply_every_turn(scripted_model):
    result = cli("infer", "--model", str(scripted_model), "--quiet", stdin="Hi\n你好，再说一遍\n")
    assert result.returncode == 0, result.stderr
    turn = f"{MULTILINE_CJK_REPLY}\n{SEPARATOR}\n"
    assert result.stdout == f"<<< Hi\n{turn}<<< 你好，再说一遍\n{turn}<<< "


def test_three_turn_chat_prints_no_warnings(scripted_model):
    result = cli("infer", "--model", str(scripted_model), stdin="Hi\nAgain\nOnce more\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(MULTILINE_CJK_REPLY) == 3
    assert warning_lines(result.stderr) == []


def test_streamed_chat_reply_joins_to_the_generated_reply(scripted_vlm):
    generated = scripted_vlm.generate([{"messages": [{"role": "user", "content": "Hi"}]}], max_new_tokens=200)
    chat = scripted_vlm.chat()
    pieces = list(chat.stream("Hi", max_new_tokens=200))
    assert len(pieces) > 1  # it did stream
    assert "".join(pieces) == generated[0] == MULTILINE_CJK_REPLY
    assert "".join(chat.stream("Again", max_new_tokens=200)) == MULTILINE_CJK_REPLY
    assert chat.messages[-1]["content"][0]["text"] == MULTILINE_CJK_REPLY


@pytest.fixture(scope="module")
def lora_checkpoint(scripted_model, tmp_path_factory) -> Path:
    """A LoRA checkpoint of the scripted model after one `vlmkit sft` step."""
    root = tmp_path_factory.mktemp("ckpt")
    data = root / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ho"}]}\n')
    result = cli(
        "sft", "--model", str(scripted_model), "--dataset", str(data), "--output-dir", str(root / "run"),
        "--max-steps", "1", "--save-steps", "1", "--no-progress", "--report-to", "none",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return next((root / "run").glob("*/v0-*/checkpoint-1"))


@pytest.mark.slow  # a training step and a chat: ~25 s on 2 cores
def test_chat_with_a_lora_checkpoint_prints_no_warnings(lora_checkpoint):
    result = cli("infer", "--ckpt", str(lora_checkpoint), "--max-new-tokens", "4", stdin="Hi\nAgain\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(SEPARATOR) == 2
    assert warning_lines(result.stderr) == []


# -- inline media: one rule for dataset rows, the chat and the Python API ----------------------------------


@pytest.fixture
def picture(tmp_path) -> Path:
    from conftest import random_image

    path = tmp_path / "my picture.png"  # a space, as in files people drag into a terminal
    random_image(60, 80).save(path)
    return path


def test_inline_img_in_a_piped_chat_is_sent_as_an_image(scripted_model, picture):
    result = cli("infer", "--model", str(scripted_model), stdin=f"<img>{picture}</img>这是什么？\n")
    assert result.returncode == 0, result.stderr
    assert f"<<< <img>{picture}</img>这是什么？\n{MULTILINE_CJK_REPLY}\n{SEPARATOR}\n" in result.stdout
    assert "image 1: 80×60 resized to 84×56 (w×h), 6 tokens" in result.stderr.splitlines()


@pytest.mark.parametrize("form", ["<img>{}</img>", "Picture 1: <img>{}</img>\n", "<|vision_start|>{}<|vision_end|>"])
def test_inline_media_forms_are_images(scripted_vlm, picture, form):
    sample = vlmkit.to_sample({"messages": [{"role": "user", "content": form.format(picture) + "What is it?"}]})
    assert sample.media("image") == [str(picture)]
    assert sample.text().strip() == "What is it?"
    assert scripted_vlm.encode(sample)["image_grid_thw"].tolist() == [[1, 4, 6]]


def test_generate_and_chat_send_read_an_inline_image(scripted_vlm, picture):
    row = {"messages": [{"role": "user", "content": f"<img>{picture}</img>What is it?"}]}
    assert scripted_vlm.generate([row], max_new_tokens=200) == [MULTILINE_CJK_REPLY]
    chat = scripted_vlm.chat()
    assert chat.send(f"<img>{picture}</img>What is it?", max_new_tokens=200) == MULTILINE_CJK_REPLY
    assert chat.images_run == 1
    assert chat.messages[0]["content"][0] == {"type": "image", "image": str(picture)}


def test_a_missing_inline_image_is_one_clear_error(scripted_model, scripted_vlm, tmp_path):
    missing = tmp_path / "nope.png"
    result = cli("infer", "--model", str(scripted_model), "--quiet", stdin=f"<img>{missing}</img>What?\nHi\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"error: chat: image 1: file not found: {missing}"]
    assert result.stdout.count(MULTILINE_CJK_REPLY) == 1  # the chat goes on
    with pytest.raises(vlmkit.MediaError, match=f"sample 0: image 1: file not found: {missing}"):
        scripted_vlm.generate([{"messages": [{"role": "user", "content": f"<img>{missing}</img>What?"}]}])


def test_api_text_is_not_read_for_media():
    """What `vlmkit serve` does with OpenAI text parts: media come as image_url parts, text stays text."""
    text = "<img>/etc/passwd</img> and <image> are text here"
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    sample = vlmkit.to_sample(row, media_tags=False)
    assert sample.media("image") == []
    assert sample.text() == text


# -- what users see ----------------------------------------------------------------------------------------


def test_chat_describes_the_model_and_settings_once_at_start(scripted_model, picture):
    result = cli(
        "infer", "--model", str(scripted_model), "--max-pixels", "20000", "--system", "Be brief.",
        "--max-new-tokens", "1", stdin=f"<image>What?\n{picture}\nAnd now?\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"model: {scripted_model} (family qwen2-vl, device cpu, dtype float32)"
    assert lines[1].startswith("resolution: min_pixels=3136, max_pixels=20000, fps=2.0")
    assert lines[2] == "system prompt: --system"
    assert lines[3] == CHAT_HELP  # how to write a message of several lines
    assert lines[4:] == ["image 1: 80×60 resized to 84×56 (w×h), 6 tokens"]  # once: the 2nd turn adds none

    quiet = cli(
        "infer", "--model", str(scripted_model), "--quiet", "--max-new-tokens", "1", stdin=f"<image>What?\n{picture}\n"
    )
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_image_prompt_takes_dragged_in_paths_and_an_empty_answer_cancels_the_turn(scripted_model, picture):
    script = (
        f"<image>1?\n'{picture}'\n"  # quoted by the terminal
        f'<image>2?\n"{picture}"\n'
        f"<image>3?\nfile://{str(picture).replace(' ', '%20')}\n"
        "<image>4?\n   \n"  # empty: the turn is not sent
    )
    result = cli("infer", "--model", str(scripted_model), "--quiet", "--max-new-tokens", "1", stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(SEPARATOR) == 3  # three turns answered
    assert result.stderr.splitlines() == ["error: no path or URL given; the message was not sent (type it again)"]


PASTED = "<image>请描述这张图片。\n图里有几只猫？它们是什么颜色？\n\n回答请用中文。"  # a prompt pasted whole


def test_a_pasted_multiline_cjk_message_with_an_image_is_one_turn(scripted_model, picture):
    script = f'"""\n{PASTED}\n"""\n{picture}\n再说一遍\n'
    result = cli("infer", "--model", str(scripted_model), stdin=script)
    assert result.returncode == 0, result.stderr
    pasted = "".join(f"... {line}\n" for line in PASTED.split("\n"))
    turn = f"{MULTILINE_CJK_REPLY}\n{SEPARATOR}\n"
    assert result.stdout == (
        f'<<< """\n{pasted}... """\nInput an image path or URL <<< {picture}\n{turn}<<< 再说一遍\n{turn}<<< '
    )  # two turns: the pasted message with its image, then the next line
    assert result.stderr.splitlines()[3:] == [CHAT_HELP, "image 1: 80×60 resized to 84×56 (w×h), 6 tokens"]


def test_message_text_at_the_image_prompt_is_refused_and_the_message_kept(scripted_model, picture):
    """A paste without the quotes: its second line arrives at the image prompt. It is not a file, so it is
    refused in one line and the image is asked for again; the message is sent with the image given next."""
    script = "\n".join(PASTED.split("\n")[:2]) + f"\n{picture}\n"
    result = cli("infer", "--model", str(scripted_model), "--quiet", stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "error: '图里有几只猫？它们是什么颜色？' is not a file, an http(s) URL or a data: URL; the message is kept: "
        "give the image's path or URL, or an empty line to cancel (a message of several lines goes between "
        'two lines of """)'
    ]
    assert result.stdout.count("Input an image path or URL <<< ") == 2  # the refused line, then the path
    assert result.stdout.count(SEPARATOR) == 1  # the message answered once, with the picture


# -- Ctrl-C ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endless_model(small_model, tmp_path_factory) -> Path:
    """The small model, told never to stop (min_new_tokens in its generation config): a reply that streams
    until it is interrupted."""
    import json
    import shutil

    path = shutil.copytree(small_model, tmp_path_factory.mktemp("endless") / "m")
    config = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**config, "min_new_tokens": 10**6}))
    return path


def read_until(stream, done, timeout: float = 60) -> bytes:
    """Bytes read from `stream` until `done(bytes so far)` (or end of stream, or `timeout` seconds)."""
    import select
    import time

    data, deadline = b"", time.monotonic() + timeout
    while not done(data) and time.monotonic() < deadline:
        if select.select([stream], [], [], 1)[0]:
            chunk = os.read(stream.fileno(), 1000)
            if not chunk:
                break
            data += chunk
    return data


def test_ctrl_c_stops_the_streaming_reply_and_a_second_ctrl_c_leaves(endless_model):
    import signal

    chat = subprocess.Popen(
        [sys.executable, "-m", "vlmkit", "infer", "--model", str(endless_model), "--max-new-tokens", "1000000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    import threading
    import time

    shown = bytearray()  # stdout read as a terminal reads it: all the time, so a streaming reply never blocks

    def terminal() -> None:
        while chunk := os.read(chat.stdout.fileno(), 4096):
            shown.extend(chunk)

    reader = threading.Thread(target=terminal, daemon=True)
    reader.start()

    def shown_after(marker: bytes, count: int, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(bytes(shown).partition(marker)[2]) >= count:
                return True
            time.sleep(0.05)
        return False

    try:
        chat.stdin.write(b"Hi\n")
        chat.stdin.flush()
        assert shown_after(b"<<< Hi\n", 10)  # streaming
        chat.send_signal(signal.SIGINT)
        err = read_until(chat.stderr, lambda err: b"[reply stopped" in err)
        deadline = time.monotonic() + 60
        while not bytes(shown).endswith(b"\n<<< ") and time.monotonic() < deadline:  # the prompt is back
            time.sleep(0.05)
        chat.send_signal(signal.SIGINT)  # at the prompt: leave, at once (no seconds of interpreter teardown)
        chat.wait(timeout=60)
        more = chat.stderr.read()
        reader.join(timeout=10)
    finally:
        chat.kill()
    err = (err + more).decode()
    assert chat.returncode == 130
    assert bytes(shown).decode(errors="replace").endswith("\n<<< ")  # back at the prompt before leaving
    assert "[reply stopped; the turn is not kept. Ctrl-C again or Ctrl-D leaves]" in err
    assert "terminate called" not in err and "Traceback" not in err


# The chat as a busy machine runs it: once Ctrl-C has asked generation to stop, the step under way takes
# seconds more (here: 30 s, so the test does not depend on the machine's speed). The generating thread says
# when it has seen the request, so the second Ctrl-C lands while the chat waits for it.
SLOW_STOP = """
import sys, time
from vlmkit.backends import transformers_backend
seen = transformers_backend._Cancelled.__call__
def slow(self, input_ids, scores, **kwargs):
    if self.event.is_set():
        sys.stderr.write("[test: stopping]\\n"); sys.stderr.flush()
        time.sleep(30)
    return seen(self, input_ids, scores, **kwargs)
transformers_backend._Cancelled.__call__ = slow
from vlmkit.cli import main
sys.argv = ["vlmkit", *sys.argv[1:]]
main()
"""


def test_a_second_ctrl_c_while_the_reply_stops_leaves(endless_model):
    """Ctrl-C during a reply, and Ctrl-C again while the reply is still stopping (on a busy machine the step
    under way takes seconds): the user asked to leave, and the chat leaves at once with 130. It used to
    swallow the second Ctrl-C while it waited for generation to stop (and Python 3.11's interrupted
    `Thread.join` then took the running thread for stopped), print the prompt and wait there."""
    import signal
    import time

    chat = subprocess.Popen(
        [sys.executable, "-c", SLOW_STOP, "infer", "--model", str(endless_model), "--max-new-tokens", "1000000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        chat.stdin.write(b"Hi\n")
        chat.stdin.flush()
        assert read_until(chat.stdout, lambda out: len(out.partition(b"<<< Hi\n")[2]) >= 10)  # streaming
        chat.send_signal(signal.SIGINT)
        err = read_until(chat.stderr, lambda err: b"[test: stopping]" in err)
        assert b"[test: stopping]" in err
        chat.send_signal(signal.SIGINT)  # while the chat waits for the step under way
        started = time.monotonic()
        code = chat.wait(timeout=20)
        left_after = time.monotonic() - started
        out = chat.stdout.read().decode(errors="replace")
        err = (err + chat.stderr.read()).decode()
    finally:
        chat.kill()
    assert code == 130 and left_after < 10  # not after the 30 s step: it leaves with the process
    assert not out.endswith("<<< ")  # no new prompt
    assert "Traceback" not in err and "terminate called" not in err


def test_a_reply_closed_half_way_stops_generation_and_is_not_kept(endless_model):
    import threading

    vlm = vlmkit.load(str(endless_model))
    chat = vlm.chat()
    before = set(threading.enumerate())  # threads left by earlier tests may end meanwhile: compare sets
    reply = chat.stream("Hi", max_new_tokens=10**6)
    next(reply)
    assert set(threading.enumerate()) - before  # generation runs in its own thread
    reply.close()  # returns once generation has stopped
    assert not set(threading.enumerate()) - before
    assert chat.messages == []
    vlm.model.generation_config.min_new_tokens = None  # a normal reply from here on
    assert chat.send("Hi", max_new_tokens=3)  # the next turn runs the whole conversation
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]


# -- broken model folders and paths: one line, no traceback ------------------------------------------------


@pytest.mark.parametrize("damage", ["no weights", "truncated weights", "no preprocessor config"])
def test_an_incomplete_model_folder_is_one_clear_error(small_model, tmp_path, damage):
    import shutil

    folder = Path(shutil.copytree(small_model, tmp_path / "model"))
    weights = folder / "model.safetensors"
    if damage == "no weights":
        weights.unlink()
        expected = f"error: {folder}: no model weights (*.safetensors or *.bin); the folder is incomplete"
    elif damage == "truncated weights":
        size = weights.stat().st_size
        with weights.open("r+b") as f:
            f.truncate(size // 2)
        expected = f"error: {weights}: truncated or corrupt safetensors file ({size // 2:,} bytes, its header says {size:,})"
    else:
        (folder / "preprocessor_config.json").unlink()
        expected = f"error: {folder}: preprocessor_config.json not found; the model folder is incomplete"
    result = cli("infer", "--model", str(folder), stdin="Hi\n")
    assert result.returncode == 2
    assert result.stderr.startswith(expected) and len(result.stderr.splitlines()) == 1, result.stderr


def test_a_missing_relative_folder_is_not_looked_up_on_the_hub(tmp_path):
    (tmp_path / "runs").mkdir()  # `runs/x`: the user's run folder, not the hub id of org "runs"
    for missing in ("runs/x", "./x", "runs/x/checkpoint-5"):
        result = subprocess.run(
            [sys.executable, "-m", "vlmkit", "infer", "--model", missing],
            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: no such folder: {missing} (--model takes a model folder"), result.stderr
    hub = subprocess.run(
        [sys.executable, "-m", "vlmkit", "infer", "--model", "Qwen/Not-A-Real-Model"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert hub.stderr.startswith("error: --model Qwen/Not-A-Real-Model: no such local folder, and no download from the hub")
    assert len(hub.stderr.splitlines()) == 1


@pytest.mark.slow  # two processes at once: ~30 s on 2 busy cores
def test_two_batch_runs_writing_the_same_output_leave_one_whole_file(small_model, tmp_path):
    """Two runs at once on one --output: the second is refused in one line while the first writes (a lock
    on OUTPUT.partial), or, when they do not overlap, both finish; either way one whole file is left."""
    import json

    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Q{i}"}]}) + "\n" for i in range(40)))
    output = tmp_path / "preds.jsonl"
    output.write_text("an earlier run's output\n")
    command = [sys.executable, "-m", "vlmkit", "infer", "--model", str(small_model), "--input", str(source),
               "--output", str(output), "--max-new-tokens", "4", "--batch-size", "2"]  # fmt: skip
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    finished = 0
    for run in runs:
        out, err = run.communicate(timeout=300)
        if run.returncode == 0:
            assert out == f"wrote 40 rows to {output} (0 failed)\n"
            finished += 1
        else:
            assert run.returncode == 2 and err.startswith(f"error: --output {output} is being written by another "
                                                          "vlmkit run"), err  # fmt: skip
            assert len(err.splitlines()) == 1
    assert finished >= 1
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["messages"][0]["content"] for row in rows] == [f"Q{i}" for i in range(40)]
    assert not list(tmp_path.glob("*.tmp"))


# -- ms-swift's environment variables ----------------------------------------------------------------------


def test_ms_swift_variables_are_named_once_with_the_flag_that_does_their_job(small_model, tmp_path):
    env = {"MAX_PIXELS": "78400", "NFRAMES": "8", "MAX_NUM": "6", "SIZE_FACTOR": "28"}
    expected = [
        "warning: MAX_PIXELS=78400 is set in the environment; vlmkit does not read it: use --max-pixels 78400",
        "warning: NFRAMES=8 is set in the environment; vlmkit does not read it: use --nframes 8",
        "warning: SIZE_FACTOR=28 is set in the environment; vlmkit does not read it: the checkpoint's patch and "
        "merge sizes apply",
        "warning: MAX_NUM=6 is set in the environment; vlmkit does not read it: use --max-tiles 6",
    ]
    chat = cli("infer", "--model", str(small_model), "--quiet", "--max-new-tokens", "2", stdin="Hi\nAgain\n", env=env)
    assert chat.returncode == 0, chat.stderr
    assert chat.stderr.splitlines() == expected  # once, not per turn
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ho"}]}\n')
    check = cli(
        "data", "check", "--model", str(small_model), "--dataset", str(data), "--histogram", str(tmp_path / "h.png"), env=env
    )
    assert check.returncode == 0, check.stderr
    assert check.stderr.splitlines()[:4] == expected
    assert cli("families", env=env).stderr == ""  # a command that encodes nothing says nothing
