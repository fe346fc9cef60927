"""`vlmkit.models.placement`: the --device-map and --max-memory values users write, and their refusals."""

from __future__ import annotations

import json

import pytest

from vlmkit.errors import VlmkitError
from vlmkit.models.placement import (
    check_trainable,
    describe,
    from_pretrained_placement,
    input_device,
    parse_device_map,
    parse_max_memory,
)


def test_strategies_and_json_maps(tmp_path):
    for strategy in ("auto", "balanced", "balanced_low_0", "sequential"):
        assert parse_device_map(strategy) == strategy
    assert parse_device_map('{"model.visual": "cpu", "model.language_model": "disk", "lm_head": "cpu"}') == {
        "model.visual": "cpu", "model.language_model": "disk", "lm_head": "cpu"
    }
    saved = tmp_path / "map.json"
    saved.write_text(json.dumps({"": "cpu"}))
    assert parse_device_map(str(saved)) == {"": "cpu"}


def test_max_memory_in_both_spellings():
    assert parse_max_memory("cpu=60GiB,disk=200GB") == {"cpu": 60 * 2**30, "disk": 200 * 10**9}
    assert parse_max_memory('{"cpu": "1MiB", "disk": 5000}') == {"cpu": 2**20, "disk": 5000}
    assert parse_max_memory("cpu=800000") == {"cpu": 800_000}


@pytest.mark.parametrize(
    "device_map, max_memory, message",
    [
        ("fastest", None, "--device-map fastest: choose auto, balanced, balanced_low_0, sequential, or a JSON object"),
        ('{"": "gpu"}', None, "'gpu' is not a device; use a GPU index (0, 1, ...), cpu or disk"),
        ('{"": 7}', None, "there is no GPU 7 on this machine (0 visible)"),
        ("auto", "0=20GiB,cpu=60GiB", "--max-memory 0=20GiB,cpu=60GiB: there is no GPU 0 on this machine (0 visible)"),
        ("auto", "cpu:60GiB", "--max-memory cpu:60GiB: expected DEVICE=SIZE,... e.g. 0=20GiB,cpu=60GiB"),
        ("auto", "cpu=lots", "--max-memory cpu=lots: 'lots' is not a size (e.g. 20GiB, 500MB, or bytes)"),
        ('{"": "cpu"}', "cpu=1GB", "a JSON map places every module itself: leave one out"),
        (None, "cpu=1GB", "--max-memory and --offload-folder place layers for --device-map; give --device-map too"),
    ],
)
def test_refusals_are_one_line_naming_the_option(device_map, max_memory, message):
    with pytest.raises(VlmkitError) as e:
        from_pretrained_placement(device_map, max_memory)
    assert message in str(e.value) and "\n" not in str(e.value)


class Mapped:
    def __init__(self, device_map):
        self.hf_device_map = device_map


def test_inputs_go_to_the_first_gpu_and_the_summary_counts_modules():
    model = Mapped({"model.visual": 0, "model.language_model.layers.0": 1, "lm_head": "cpu"})
    assert input_device(model) == "cuda:0"
    assert input_device(Mapped({"": "cpu"})) == "cpu"
    assert describe(Mapped({"a": "cpu", "b": "disk", "c": "disk"})) == (
        "device map: 1 module on cpu, 2 modules on disk (disk-offloaded layers are read from disk at every step: slow)"
    )


def test_training_refuses_offloaded_layers_only():
    check_trainable(Mapped({"": "cpu"}))  # a CPU machine: every layer really is on the CPU
    check_trainable(Mapped({"a": 0, "b": 1}))
    for offloaded in ({"a": 0, "b": "cpu"}, {"a": "cpu", "b": "disk"}):
        with pytest.raises(VlmkitError, match="training cannot update layers offloaded to"):
            check_trainable(Mapped(offloaded))


@pytest.mark.parametrize("engine", [{"deepspeed": "zero2"}, {"fsdp": "full_shard"}])
def test_sft_device_map_with_deepspeed_or_fsdp_is_refused(engine):
    from vlmkit.train.config import SFTConfig

    with pytest.raises(VlmkitError) as e:
        SFTConfig(model="m", dataset=["d.jsonl"], device_map="auto", **engine).validate()
    assert str(e.value) == (
        f"--device-map and --{next(iter(engine))}: both place the model; --device-map splits one copy over the "
        "GPUs of one process (naive model parallel), DeepSpeed and FSDP shard it over processes: pick one"
    )
    with pytest.raises(VlmkitError, match="--max-memory limits --device-map; give --device-map too"):
        SFTConfig(model="m", dataset=["d.jsonl"], max_memory="0=20GiB").validate()


def test_device_map_under_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(VlmkitError) as e:
        from_pretrained_placement("auto")
    assert str(e.value) == (
        "--device-map: this is process 1 of 2 (torchrun / accelerate launch); every process would spread its own "
        "copy of the model over all the GPUs: run without a launcher, or drop --device-map"
    )
