"""The benchmark scripts stay runnable: benchmarks/gpu.py at toy size on CPU, vs_swift.py's pure parts."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_gpu_toy_runs_every_case_on_cpu(tmp_path):
    gpu = _load("gpu")
    out = tmp_path / "gpu.json"
    results = gpu.main(["--toy", "--json", str(out)])
    assert json.loads(out.read_text())["device"] == "CPU (toy sizes)"
    train = results["shapes"]["toy"]["train"]
    assert set(train) == {"lora, padded", "lora, packed", "full, padded", "full, packed"}
    for name, r in train.items():
        assert "error" not in r, name
        assert r["tokens_per_s"] > 0 and r["step_s"] > 0, name
        assert 0 < r["mfu"] < 1, name  # a tiny model on one thread is far from the matmul peak
        assert math.isfinite(r["loss"]) and r["loss"] > 0, name
    infer = results["shapes"]["toy"]["infer"]
    assert infer["latency_s"] > 0 and infer["batch_tokens_per_s"] > 0
    assert "| toy | full, packed |" in results["table"]


@pytest.mark.slow
def test_gpu_check_dry_run_walks_every_path(tmp_path):
    """benchmarks/gpu_check.py --dry-run (~25 s): the CPU-runnable paths run at toy size, and each GPU-only
    path gets as far as vlmkit's one-line refusal on CPU, so no option the GPU check uses can rot."""
    gpu_check = _load("gpu_check")
    out = tmp_path / "check.json"
    results = gpu_check.main(["--dry-run", "--json", str(out), "--work-dir", str(tmp_path / "work")])
    assert json.loads(out.read_text())["paths"] == results["paths"]
    paths = results["paths"]
    assert list(paths) == list(gpu_check.PATHS)
    assert [line.split(":")[0] for line in results["lines"]] == list(gpu_check.PATHS)
    assert not [p for p, r in paths.items() if r["status"] == "fail"], results["lines"]
    assert paths["bf16"]["status"] == "ok" and paths["bf16"]["tokens_per_s"] > 0
    assert paths["packing-flash"]["status"] == "ok" and paths["packing-flash"]["relative_difference"] < 1e-5
    assert paths["transformers"]["status"] == "ok"
    for path in ("qlora", "fsdp", "vllm-offline", "vllm-served"):
        assert paths[path]["status"] == "skip" and "vlmkit refuses it here" in paths[path]["text"] or (
            "vlmkit says: error: --backend vllm needs vLLM" in paths[path]["text"]
        ), paths[path]
    if paths["device-map"]["status"] == "ok":  # once vlmkit has --device-map: the same replies on CPU
        assert paths["device-map"]["equal"] == paths["device-map"]["rows"]


def test_gpu_model_flops_counts_each_part():
    gpu = _load("gpu")
    text = SimpleNamespace(num_hidden_layers=2, hidden_size=8)
    # full: 6 * 100 params * 10 tokens + 3 * (2 * 2 layers * 10^2 * 8) + 2 * 50 vit params * 4 patches
    assert gpu.model_flops([10], 4, 100, 50, text, "full") == 6000 + 3 * 3200 + 400
    # LoRA: no weight gradients for the frozen base -> 4 instead of 6; attention per sequence
    assert gpu.model_flops([6, 4], 0, 100, 50, text, "lora") == 4000 + 3 * (2 * 2 * 8 * (36 + 16))


def test_vs_swift_dataset_rows_and_step_parsing(tmp_path):
    vs_swift = _load("vs_swift")
    path = vs_swift.make_dataset(tmp_path, rows=12, unique_images=3, seed=1)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        images = row["images"]
        assert 1 <= len(images) <= 3 and len(set(images)) == len(images)
        assert row["messages"][0]["content"].count("<image>") == len(images)
        assert all(Path(p).is_file() for p in images)
    from PIL import Image

    sizes = {Image.open(p).size for p in {p for r in rows for p in r["images"]}}
    assert sizes <= set(vs_swift.PHOTO_SIZES) and len(sizes) == 3
    # the two sides' step logs -> (seconds, step), other records skipped
    swift_lines = [(1.0, json.dumps({"loss": "1.2", "global_step/max_steps": "4/16"})),
                   (2.0, json.dumps({"train_runtime": "3.1", "global_step/max_steps": "16/16"}))]  # fmt: skip
    assert vs_swift.logged_steps("swift", swift_lines) == [(1.0, 4)]
    ours = [(0.5, json.dumps({"step": 8, "loss": 1.0})), (0.7, json.dumps({"step": 8, "eval_loss": 1.0}))]
    assert vs_swift.logged_steps("vlmkit", ours) == [(0.5, 8)]


def test_vs_swift_table_puts_the_advantage_the_right_way_round():
    vs_swift = _load("vs_swift")
    results = {
        "preprocess": {
            "vlmkit": {"rows_per_s": 30.0, "peak_mib": 500.0},
            "swift": {"rows_per_s": 10.0, "peak_mib": 1000.0},
        }
    }
    table = vs_swift.table(results)
    assert "| preprocess | rows_per_s (rows/s) | 30 | 10 | 3.00x |" in table
    assert "| preprocess | peak_mib (MiB) | 500 | 1e+03 | 2.00x |" in table


def test_swift_plugin_gives_qwen_vl_utils_a_passing_torchvision_only(tmp_path, small_model):
    # A stand-in for qwen-vl-utils' module that imports torchvision at the top, as the real one does.
    package = tmp_path / "qwen_vl_utils"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "vision_process.py").write_text(
        "import torchvision\nfrom torchvision import io, transforms\n"
        "from torchvision.transforms import InterpolationMode\nMODE = InterpolationMode.BICUBIC\n"
    )
    script = (
        "import importlib.util, sys\n"
        "from qwen_vl_utils import vision_process\n"
        "assert vision_process.MODE.name == 'BICUBIC'\n"
        "assert 'torchvision' not in sys.modules and importlib.util.find_spec('torchvision') is None\n"
        "from transformers import AutoProcessor\n"
        f"processor = AutoProcessor.from_pretrained({str(small_model)!r})\n"
        "assert processor.video_processor is None and processor.image_processor is not None\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{BENCHMARKS / 'swift_plugin'}{os.pathsep}{tmp_path}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.slow
def test_datasets_scale_runs_at_a_small_size(tmp_path):
    scale = _load("datasets_scale")
    results = scale.main(["--rows", "300", "--workdir", str(tmp_path)])
    r = results[300]
    assert r["read"]["rows_per_s"] > 0 and 0 < r["check"]["anon_mb"] < 4096 and r["parquet_mb"] > 0
