"""`vlmkit sft`, checkpoints, resume, export and merge on tiny models (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PEERS, greedy_replies, random_image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText
from typer.testing import CliRunner

from vlmkit.errors import VlmkitError
from vlmkit.train import SFTConfig, sft


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
    )
    return path


def run(model: Path, dataset: list[str], tmp_path: Path, **kw) -> Path:
    options = dict(
        model=str(model),
        dataset=dataset,
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        max_pixels=4000,
        logging_steps=1,
        save_steps=50,
        progress=False,
        num_workers=0,
        report_to="none",
        eval_generate=0,
        eval_max_new_tokens=8,  # a tiny random model never stops on its own
    )
    return sft(SFTConfig(**{**options, **kw}))


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        random_image(40 + 10 * i, 50, seed=i).save(folder / f"{i}.png")
    return folder


def seed_rows(images: Path) -> dict[str, list[dict]]:
    """Rows written as the seeds and peers write them (000: ms-swift; 002: Qwen-VL; 003: self-llm)."""
    return {
        "query-response": [
            {"query": "<image>55555", "response": "66666", "images": [f"{images}/0.png"]},
            {
                "query": "eeeee<image>eeeee<image>eeeee",
                "response": "fffff",
                "history": [],
                "images": [f"{images}/0.png", f"{images}/1.png"],
            },
            {
                "query": "EEEEE",
                "response": "FFFFF",
                "history": [["query1", "response2"], ["query2", "response2"]],
                "images": [],
            },
        ],
        "qwen-vl-picture": [
            {
                "id": "identity_0",
                "conversations": [
                    {
                        "from": "user",
                        "value": f"Picture 1: <img>{images}/2.png</img>\nWhat breed is the dog?",
                    },
                    {"from": "assistant", "value": "A labrador."},
                    {"from": "user", "value": "Box the checked shirt"},
                    {"from": "assistant", "value": "<ref>checked shirt</ref><box>(588,499),(725,789)</box>"},
                ],
            },
        ],
        "vision-start": [
            {
                "id": "identity_1",
                "conversations": [
                    {"from": "user", "value": f"COCO Yes: <|vision_start|>{images}/1.png<|vision_end|>"},
                    {
                        "from": "assistant",
                        "value": "A snow skier assessing the mountain before starting to ski",
                    },
                ],
            },
        ],
        "openai-parts": [
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is it?"},
                            {"type": "image_url", "image_url": {"url": f"file://{images}/0.png"}},
                        ],
                    },
                    {"role": "assistant", "content": "A square."},
                ]
            },
        ],
    }


@pytest.mark.parametrize("fmt", ["query-response", "qwen-vl-picture", "vision-start", "openai-parts"])
def test_seed_formats_train(small_model, tmp_path, images, fmt):
    data = write_jsonl(tmp_path / f"{fmt}.jsonl", seed_rows(images)[fmt])
    run_dir = run(small_model, [str(data)], tmp_path)
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log if "loss" in line] == [1, 2]
    assert (run_dir / "checkpoint-2" / "adapter_model.safetensors").is_file()


def test_peer_files_train(small_model, tmp_path):
    # Qwen3-VL finetune demo: paths are relative to the folder that holds demo/, which the copy renamed.
    root = tmp_path / "qwen"
    root.mkdir()
    (root / "demo").symlink_to(PEERS / "qwen3vl_finetune_demo")
    run_dir = run(
        small_model,
        [
            str(PEERS / "llamafactory" / "mllm_demo.json"),
            str(PEERS / "qwen3vl_finetune_demo" / "single_images.json"),
        ],
        tmp_path,
        media_root=str(root),
        max_steps=3,
    )
    assert (run_dir / "checkpoint-3" / "vlmkit_complete").is_file()
    assert not (run_dir / "bad_samples.jsonl").exists()


def test_run_folder_layout_and_saved_settings(small_model, tmp_path, images):
    data = write_jsonl(tmp_path / "d.jsonl", seed_rows(images)["query-response"])
    run_dir = run(
        small_model,
        [str(data)],
        tmp_path,
        system="Be brief.",
        max_pixels=3500,
        split_ratio=0.34,
        eval_steps=1,
        eval_generate=1,
    )
    assert run_dir.parent == tmp_path / "out" / small_model.name and run_dir.name.startswith("v0-")
    for name in ("args.json", "vlmkit.json", "train_log.jsonl", "loss.png", "val_predictions.jsonl"):
        assert (run_dir / name).is_file(), name
    settings = json.loads((run_dir / "checkpoint-2" / "vlmkit.json").read_text())
    assert (
        settings["max_pixels"] == 3500 and settings["system"] == "Be brief." and settings["tuner"] == "lora"
    )
    assert json.loads((run_dir / "args.json").read_text())["lr"] == 1e-4
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert any("eval_loss" in line for line in log)
    assert any("samples_per_second" in line for line in log)

    import vlmkit

    vlm = vlmkit.load(ckpt=run_dir / "checkpoint-2")
    assert vlm.template.max_pixels == 3500 and vlm.template.system == "Be brief."
    assert isinstance(
        vlm.generate([{"messages": [{"role": "user", "content": "hi"}]}], max_new_tokens=2)[0], str
    )
    second = run(small_model, [str(data)], tmp_path)
    assert second.name.startswith("v1-")


def test_bad_rows_are_skipped_reported_or_stop_training(small_model, tmp_path, images):
    good = [
        {
            "messages": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "yo"}],
            "images": [f"{images}/0.png"],
        }
    ] * 9
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [
            *good,
            {
                "messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}],
                "images": ["missing.png"],
            },
        ],
    )
    with pytest.raises(VlmkitError, match=r"1 of 10 train rows are bad \(10.0% > --max-bad-fraction 1.0%\)"):
        run(small_model, [str(data)], tmp_path)
    run_dirs = list((tmp_path / "out" / small_model.name).iterdir())
    assert len(run_dirs) == 1 and not list(run_dirs[0].glob("checkpoint-*"))  # stopped before training
    bad = [json.loads(line) for line in (run_dirs[0] / "bad_samples.jsonl").read_text().splitlines()]
    assert len(bad) == 1 and bad[0]["where"] == f"{data}:10" and "missing.png" in bad[0]["reason"]

    run_dir = run(small_model, [str(data)], tmp_path, max_bad_fraction=0.2)
    assert (run_dir / "checkpoint-2" / "vlmkit_complete").is_file()
    assert (run_dir / "bad_samples.jsonl").is_file()


def trained_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    name = (
        "adapter_model.safetensors"
        if (checkpoint / "adapter_model.safetensors").is_file()
        else "model.safetensors"
    )
    return load_file(checkpoint / name)


@pytest.mark.parametrize("tuner", ["lora", "full"])
def test_resume_ends_with_the_same_weights(small_model, tmp_path, tuner):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"<image>Q{i}"},
                {"role": "assistant", "content": f"A{i % 3}"},
            ],
            "images": [f"{tmp_path}/{i % 2}.png"],
        }
        for i in range(12)
    ]
    for i in range(2):
        random_image(30, 30, seed=i).save(tmp_path / f"{i}.png")
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    common = dict(
        tuner=tuner,
        max_steps=6,
        save_steps=3,
        save_total_limit=None,
        batch_size=2,
        lr=1e-3,
        lora_dropout=0.1,
        freeze_vit=False,
        freeze_aligner=False,
    )
    run_dir = run(small_model, [str(data)], tmp_path, **common)
    uninterrupted = trained_weights(run_dir / "checkpoint-6")
    # Pretend the run died after step 3: drop what came later, then resume.
    shutil.rmtree(run_dir / "checkpoint-6")
    resumed_dir = run(small_model, [str(data)], tmp_path, resume="latest", **common)
    assert resumed_dir == run_dir
    resumed = trained_weights(run_dir / "checkpoint-6")
    assert uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=0, atol=1e-6, msg=name)
    steps = [
        json.loads(line)["step"]
        for line in (run_dir / "train_log.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == [1, 2, 3, 4, 5, 6]  # the log was cut back to the checkpoint, not duplicated


def test_incomplete_checkpoints_are_never_used(small_model, tmp_path, images):
    data = write_jsonl(tmp_path / "d.jsonl", seed_rows(images)["query-response"])
    run_dir = run(small_model, [str(data)], tmp_path, max_steps=2, save_steps=1, save_total_limit=None)
    (run_dir / "checkpoint-2" / "vlmkit_complete").unlink()  # as if the save had been interrupted
    from vlmkit.train.run import resolve_resume

    assert resolve_resume("latest", tmp_path / "out", str(small_model)) == run_dir / "checkpoint-1"
    import vlmkit

    with pytest.raises(VlmkitError, match="checkpoint-2: this checkpoint is incomplete"):
        vlmkit.load(ckpt=run_dir / "checkpoint-2")


def test_full_tuning_trains_exactly_the_unfrozen_groups(small_model, tmp_path, images):
    data = write_jsonl(tmp_path / "d.jsonl", seed_rows(images)["query-response"] * 3)
    run_dir = run(
        small_model,
        [str(data)],
        tmp_path,
        tuner="full",
        freeze_vit=True,
        freeze_aligner=False,
        lr=1e-2,
        max_steps=3,
        weight_decay=0.0,
    )
    before = load_file(small_model / "model.safetensors")
    after = load_file(run_dir / "checkpoint-3" / "model.safetensors")
    assert before.keys() == after.keys()
    # Saved names follow the checkpoint layout: visual.* (tower and merger), model.* (language model).
    groups = {"vit": 0, "aligner": 0, "llm": 0}
    for name, tensor in before.items():
        changed = not torch.equal(tensor, after[name])
        if name.startswith("visual.merger."):
            groups["aligner"] += 1
            assert changed, name
        elif name.startswith("visual."):
            groups["vit"] += 1
            assert not changed, name
        elif name.startswith(("model.layers.", "lm_head.")):
            groups["llm"] += 1
            assert changed, name
    assert min(groups.values()) > 0, groups


def test_merged_export_equals_base_plus_adapter(small_model, tmp_path, images):
    from peft import PeftModel

    from vlmkit.models.export import export

    data = write_jsonl(tmp_path / "d.jsonl", seed_rows(images)["query-response"] * 3)
    run_dir = run(small_model, [str(data)], tmp_path, lr=5e-2, max_steps=4, lora_dropout=0.0)
    checkpoint = run_dir / "checkpoint-4"
    merged_dir = export(checkpoint, tmp_path / "merged", merge_lora=True)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
        "chat_template.jinja",
        "vlmkit.json",
    ):
        assert (merged_dir / name).is_file(), name
    assert json.loads((merged_dir / "vlmkit.json").read_text())["max_pixels"] == 4000

    import vlmkit

    encoded = vlmkit.load(str(merged_dir)).template.collate(
        [
            vlmkit.load(str(merged_dir)).encode(
                vlmkit.to_sample(
                    {"messages": [{"role": "user", "content": "<image>hi"}], "images": [f"{images}/1.png"]}
                )
            )
        ]
    )
    encoded.pop("labels")
    with torch.no_grad():
        merged = (
            AutoModelForImageTextToText.from_pretrained(merged_dir, dtype=torch.float32)
            .eval()(**encoded)
            .logits
        )
        base = AutoModelForImageTextToText.from_pretrained(small_model, dtype=torch.float32).eval()
        base_logits = base(**encoded).logits
        adapted = PeftModel.from_pretrained(base, checkpoint).eval()(**encoded).logits
    assert (merged - adapted).abs().max().item() < 1e-4
    assert (merged - base_logits).abs().max().item() > 1e-3
    with pytest.raises(VlmkitError, match="exists and is not empty"):
        export(checkpoint, merged_dir, merge_lora=True)

    adapter_dir = export(checkpoint, tmp_path / "adapter")
    assert (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "optimizer.pt").exists()


def test_export_carries_the_trained_limits_for_plain_transformers(small_model, tmp_path, images):
    """Issue 11 #4 and #15: the exported preprocessor config resizes as training did, for users who
    load it with plain transformers; --output defaults to CKPT-merged / CKPT-export."""
    from transformers import AutoImageProcessor

    import vlmkit
    from vlmkit.cli import app

    data = write_jsonl(tmp_path / "d.jsonl", seed_rows(images)["query-response"])
    checkpoint = run(small_model, [str(data)], tmp_path, max_steps=1, max_pixels=50_176) / "checkpoint-1"
    runner = CliRunner()
    folders = {"checkpoint": checkpoint}
    for flags, suffix in ((["--merge-lora"], "merged"), ([], "export")):
        result = runner.invoke(app, ["export", "--ckpt", str(checkpoint), *flags])
        assert result.exit_code == 0, result.output
        folders[suffix] = checkpoint.with_name(f"checkpoint-1-{suffix}")
        assert str(folders[suffix]) in result.output
    big = random_image(1080, 1920)
    sample = vlmkit.to_sample({"messages": [{"role": "user", "content": "<image>hi"}], "images": [big]})
    trained = vlmkit.load(str(folders["merged"])).encode(sample)["image_grid_thw"].tolist()
    assert trained == [[1, 12, 20]]  # 1080x1920 under 50176 pixels: 168x280 (the base allows 12845056)
    for name, folder in folders.items():
        config = json.loads((folder / "preprocessor_config.json").read_text())
        assert config["max_pixels"] == config["size"]["longest_edge"] == 50_176, name
        plain = AutoImageProcessor.from_pretrained(folder)(images=[big], return_tensors="pt")
        assert plain["image_grid_thw"].tolist() == trained, name

    # an export never overwrites a folder silently
    again = runner.invoke(app, ["export", "--ckpt", str(checkpoint), "--merge-lora"])
    assert isinstance(again.exception, VlmkitError)  # `main` prints it as one `error:` line, exit 2
    assert str(again.exception) == (
        f"--output {folders['merged']} exists and is not empty; choose a new folder or pass --force"
    )
    forced = runner.invoke(app, ["export", "--ckpt", str(checkpoint), "--merge-lora", "--force"])
    assert forced.exit_code == 0, forced.output
    assert (folders["merged"] / "model.safetensors").is_file()


def test_internvl_export_carries_the_trained_tile_limits(tiny_models, tmp_path):
    from transformers import AutoImageProcessor

    from vlmkit.models.export import export

    (tmp_path / "imgs").mkdir()
    random_image(60, 80).save(tmp_path / "imgs" / "0.png")
    row = {"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "red"}],
           "images": [str(tmp_path / "imgs" / "0.png")]}
    data = write_jsonl(tmp_path / "d.jsonl", [row])
    run_dir = run(tiny_models["internvl"], [str(data)], tmp_path, max_steps=1, max_pixels=None, max_tiles=2)
    exported = export(run_dir / "checkpoint-1", merge_lora=True)
    assert exported == run_dir / "checkpoint-1-merged"
    config = json.loads((exported / "preprocessor_config.json").read_text())
    assert (config["min_patches"], config["max_patches"]) == (1, 2)
    assert AutoImageProcessor.from_pretrained(exported).max_patches == 2


def test_yaml_config_with_flag_override(small_model, tmp_path, images):
    from vlmkit.cli import app

    data = write_jsonl(tmp_path / "d.jsonl", seed_rows(images)["query-response"])
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {small_model}\ndataset: {data}\nlora-rank: 4\nmax_steps: 1\nlr: 0.5\n"
        f"output-dir: {tmp_path / 'out'}\nreport-to: none\nmax-pixels: 4000\n"
    )
    result = CliRunner().invoke(app, ["sft", "--config", str(config), "--lr", "0.002", "--no-progress"])
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "out" / small_model.name).iterdir())
    args = json.loads((run_dir / "args.json").read_text())
    assert args["lora_rank"] == 4 and args["lr"] == 0.002 and args["max_steps"] == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_rnak: 4\n")
    with pytest.raises(VlmkitError, match=f"--config {bad}: unknown option 'lora_rnak'"):
        CliRunner().invoke(app, ["sft", "--config", str(bad)], catch_exceptions=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"quant": "4bit"},
            r"--quant 4bit \(QLoRA\) needs a CUDA GPU for bitsandbytes; this machine has none",
        ),
        ({"fsdp": "full_shard"}, "--fsdp full_shard needs CUDA GPUs: on CPU, accelerate trains with DDP instead"),
        ({"tuner": "adapter"}, "--tuner adapter: choose one of lora, full"),
        ({"freeze_llm": True}, "leave nothing to train"),
        ({"target_modules": "nope_proj"}, "--target-modules nope_proj: matches no Linear layer"),
    ],
)
def test_bad_options_are_one_clear_error(small_model, tmp_path, images, options, message):
    if (options.get("quant") or options.get("fsdp")) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data = write_jsonl(tmp_path / "d.jsonl", seed_rows(images)["query-response"])
    with pytest.raises(VlmkitError, match=message):
        run(small_model, [str(data)], tmp_path, **options)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_match_one_node_and_one_process(small_model, tmp_path):
    """Multi-node DDP as users launch it (README "Scaling out"): `torchrun --nnodes 2 --nproc-per-node 1
    --node-rank R --master-addr HOST --master-port P` on each node, here two "nodes" on the loopback.
    Its loss curve equals one node with two processes and one process with the same global batch (2).

    Tolerance 1e-4 (absolute, losses ~6): the runs do the same fp32 arithmetic except the order of the
    gradient sums (gloo's all-reduce of two halves vs one batch's mean), a difference of ~1e-7 relative per
    step (measured: at most 1e-6 over the 4 steps); a wrong global batch or an unsynchronised rank moves
    the losses from step 2 on by 1e-2 or more. All runs go at once (~40 s on 2 busy cores)."""
    rows = [
        {"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"number {i}"}]}
        for i in range(16)
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    common = ["-m", "vlmkit", "sft", "--model", str(small_model), "--dataset", str(data), "--max-steps", "4",
              "--logging-steps", "1", "--tuner", "full", "--lr", "1e-3", "--no-progress", "--report-to", "none",
              "--no-packing"]  # fmt: skip  (unpacked: each process gets its own rows; 16 rows -> 1 pack otherwise)
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    nodes_port = _free_port()
    commands = {
        "one process": [sys.executable, *common, "--batch-size", "2", "--output-dir", str(tmp_path / "one")],
        "one node": [*torchrun, "--nproc-per-node", "2", "--master-port", str(_free_port()), *common,
                     "--batch-size", "1", "--output-dir", str(tmp_path / "node")],
        **{f"node {rank}": [*torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                            "--master-addr", "127.0.0.1", "--master-port", str(nodes_port), *common,
                            "--batch-size", "1", "--output-dir", str(tmp_path / "nodes")]
           for rank in (0, 1)},
    }  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for name, cmd in commands.items()
    }
    try:
        for name, proc in procs.items():
            output, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"{name}:\n{output[-3000:]}"
    finally:
        for proc in procs.values():
            proc.kill()

    def losses(root: Path) -> list[float]:
        runs = list((root / small_model.name).iterdir())
        assert len(runs) == 1  # all ranks (and both nodes) share one run folder
        lines = [json.loads(line) for line in (runs[0] / "train_log.jsonl").read_text().splitlines()]
        return [line["loss"] for line in lines if "loss" in line]

    one = losses(tmp_path / "one")
    assert len(one) == 4 and one[0] != one[-1]
    assert losses(tmp_path / "node") == pytest.approx(one, abs=1e-4)
    assert losses(tmp_path / "nodes") == pytest.approx(one, abs=1e-4)


def test_cli_after_training_infer_ckpt_val_and_export(small_model, tmp_path, images):
    import vlmkit
    from vlmkit.cli import app

    rows = seed_rows(images)["query-response"]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", rows[:2])
    run_dir = run(small_model, [str(train)], tmp_path, val_dataset=[str(val)], eval_steps=1, max_pixels=3600)
    checkpoint = run_dir / "checkpoint-2"
    runner = CliRunner()

    preds = tmp_path / "val_preds.jsonl"
    result = runner.invoke(
        app,
        ["infer", "--ckpt", str(checkpoint), "--val", "--output", str(preds), "--max-new-tokens", "3"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [line["labels"] for line in lines] == ["66666", "fffff"]
    tuned = vlmkit.load(ckpt=str(checkpoint))  # the checkpoint through the Python API
    assert [line["response"] for line in lines] == greedy_replies(tuned, val, 3)

    chat = runner.invoke(
        app,
        ["infer", "--ckpt", str(checkpoint), "--merge-lora", "--max-new-tokens", "3"],
        input=f"<image>What?\n{images}/0.png\nexit\n",
        catch_exceptions=False,
    )
    assert chat.exit_code == 0 and chat.output.count("-" * 50) == 1, chat.output

    with pytest.raises(VlmkitError, match="--val needs --ckpt and no --input"):
        runner.invoke(app, ["infer", "--model", str(small_model), "--val"], catch_exceptions=False)
    with pytest.raises(VlmkitError, match="give either --model or --ckpt"):
        runner.invoke(app, ["infer", "--input", str(val)], catch_exceptions=False)

    exported = runner.invoke(
        app,
        ["export", "--ckpt", str(checkpoint), "--merge-lora", "--output", str(tmp_path / "merged")],
        catch_exceptions=False,
    )
    assert exported.exit_code == 0, exported.output
    assert json.loads((tmp_path / "merged" / "vlmkit.json").read_text())["max_pixels"] == 3600
    # plain transformers loads the merged export and computes what the checkpoint (base + adapter) does
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    prompt = {"messages": [{"role": "user", "content": "<image>What?"}], "images": [f"{images}/0.png"]}
    batch = tuned.template.collate([tuned.encode(vlmkit.to_sample(prompt))])
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, tuned.model(**batch).logits, atol=1e-4, rtol=1e-4)


def test_infer_val_writes_one_predictions_file_per_checkpoint(small_model, tmp_path, images):
    """Comparing checkpoints: `vlmkit infer --ckpt CKPT --val` twice gives two files (each beside its
    checkpoint, named after it, said on stdout), not one file beside the data that the second overwrites."""
    import vlmkit

    rows = seed_rows(images)["query-response"]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", rows[:2])
    run_dir = run(small_model, [str(train)], tmp_path, val_dataset=[str(val)], save_steps=1)
    wrote = {}
    for step in (1, 2):
        checkpoint = run_dir / f"checkpoint-{step}"
        result = subprocess.run(
            [sys.executable, "-m", "vlmkit", "infer", "--ckpt", str(checkpoint), "--val", "--max-new-tokens", "3"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        wrote[step] = run_dir / f"checkpoint-{step}.val.preds.jsonl"
        assert result.stdout == f"wrote 2 rows to {wrote[step]} (0 failed)\n"
    assert not (tmp_path / "val.preds.jsonl").exists()
    for step, path in wrote.items():  # each file holds its own checkpoint's replies
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [line["labels"] for line in lines] == ["66666", "fffff"]
        tuned = vlmkit.load(ckpt=str(run_dir / f"checkpoint-{step}"))
        assert [line["response"] for line in lines] == greedy_replies(tuned, val, 3)


def test_video_processor_configs_get_the_run_s_frame_limits():
    from vlmkit.families import family_by_name
    from vlmkit.models.processor_files import with_limits

    settings = {"min_pixels": 3136, "max_pixels": 50_176, "fps": 1.0, "max_frames": 16, "min_frames": 8,
                "video_max_pixels": 40_000}
    video = {"size": {"shortest_edge": 100_352, "longest_edge": 602_112}, "fps": 2.0, "max_frames": 768}
    name = "video_preprocessor_config.json"
    qwen2 = with_limits(family_by_name("qwen2-vl"), name, video, settings)
    assert qwen2["size"] == {"shortest_edge": 40_000, "longest_edge": 40_000}
    assert (qwen2["max_pixels"], qwen2["fps"], qwen2["max_frames"], qwen2["min_frames"]) == (40_000, 1.0, 16, 8)
    # Qwen3-VL's video size is over all frames (the family's budget); the frame limit is in 32x32-pixel tokens
    qwen3 = with_limits(family_by_name("qwen3-vl"), name, video, settings)
    assert qwen3["size"] == {"shortest_edge": 4096, "longest_edge": 25165824}
    assert (qwen3["fps"], qwen3["max_frames"], qwen3["max_video_tokens"]) == (1.0, 16, 40_000 // 1024)
    nested = with_limits(family_by_name("qwen2-vl"), "processor_config.json", {"image_processor": {}}, settings)
    assert nested["image_processor"]["size"] == {"shortest_edge": 3136, "longest_edge": 50_176}


def test_export_prints_one_line_and_no_progress_bars(small_model, tmp_path):
    """transformers' "Loading weights" / "Writing model shards" bars are noise on a few-second export (issue 28 #5d)."""
    result = subprocess.run(
        [sys.executable, "-m", "vlmkit", "export", "--ckpt", str(small_model), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [f"exported {small_model} to {tmp_path / 'out'}"]


def test_options_that_do_nothing_are_named_in_one_warning_line_each(small_model, tmp_path):
    """--top-p / --top-k with --temperature 0, and --merge-lora on a full model, were accepted silently
    (issue 28 #5f); the chat still runs."""
    result = subprocess.run(
        [sys.executable, "-m", "vlmkit", "infer", "-m", str(small_model), "--quiet", "--top-p", "0.8", "--top-k", "5",
         "--merge-lora"],
        input="exit\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: --top-p does nothing with --temperature 0 (greedy decoding); give --temperature > 0 to sample",
        "warning: --top-k does nothing with --temperature 0 (greedy decoding); give --temperature > 0 to sample",
        f"warning: --merge-lora does nothing: {small_model} is a full model, not a LoRA adapter checkpoint",
    ]
    sampled = subprocess.run(
        [sys.executable, "-m", "vlmkit", "infer", "-m", str(small_model), "--quiet", "--top-p", "0.8",
         "--temperature", "0.7"],
        input="exit\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sampled.returncode == 0 and sampled.stderr == "", sampled.stderr


def test_gradient_checkpointing_through_the_cli_on_the_installed_transformers(small_model, tmp_path, images):
    """`vlmkit sft --gradient-checkpointing` on the transformers a user has: 5.23 renamed the argument
    (`activation_checkpointing`), vLLM pins transformers < 5.21; `.ci/floor` runs this on the lowest version
    pyproject.toml declares and on vLLM's pin. The run trains with checkpointing on, and says nothing of it."""
    train = write_jsonl(tmp_path / "train.jsonl", seed_rows(images)["query-response"])
    result = subprocess.run(
        [sys.executable, "-m", "vlmkit", "sft", "--model", str(small_model), "--dataset", str(train),
         "--max-steps", "1", "--max-pixels", "3600", "--gradient-checkpointing", "--no-progress",
         "--report-to", "none", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "deprecat" not in (result.stdout + result.stderr).lower()
    (checkpoint,) = (tmp_path / "out").glob("*/*/checkpoint-1")
    arguments = torch.load(checkpoint / "training_args.bin", weights_only=False)  # the Trainer's own record
    assert arguments.gradient_checkpointing is True  # both spellings say it where transformers has both
    assert arguments.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert load_file(checkpoint / "adapter_model.safetensors")
