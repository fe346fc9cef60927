"""The option groups of the non-training commands (issue 21): each checks its own values with the CLI's
one-line messages, the flat keyword arguments of the Python API become the group (`groups.from_keywords`),
and what the vLLM backend passes on of the encoding settings is the family's to say."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vlmkit.backends.vllm_args import BackendOptions
from vlmkit.errors import VlmkitError
from vlmkit.groups import from_keywords
from vlmkit.models.loader import LoadOptions
from vlmkit.serve.options import MediaAccess, ServeLimits
from vlmkit.settings import EncodingSettings


def test_flat_keywords_become_the_group_over_the_given_one():
    loading, rest = from_keywords(LoadOptions, {"dtype": "fp32", "min_pixels": 3136}, LoadOptions(device="cpu"))
    assert loading == LoadOptions(dtype="fp32", device="cpu")
    assert rest == {"min_pixels": 3136}


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (LoadOptions(dtype="fp8"), "--dtype fp8: choose one of auto, bf16, fp16, fp32"),
        (LoadOptions(device="tpu"), "--device tpu: choose one of auto, cpu, cuda (or cuda:N)"),
        (LoadOptions(attn_impl="flash"), "--attn-impl flash: choose one of sdpa, eager, flash_attention_2"),
        (LoadOptions(max_memory="0=1GiB"), "--max-memory and --offload-folder place layers for --device-map"),
        (LoadOptions(device="cpu", device_map="auto"), "--device cpu and --device-map auto: give one"),
        (BackendOptions(tensor_parallel_size=2), "--tensor-parallel-size: vLLM options; add --backend vllm"),
        (BackendOptions(backend="tgi"), "--backend tgi: choose transformers or vllm"),
        (ServeLimits(max_tokens=9000), "--max-tokens 9000 is over --max-total-tokens 8192"),
        (ServeLimits(max_batch_size=0), "--max-batch-size must be at least 1, got 0"),
        (MediaAccess(allow_media_dir=["/no/such/folder"]), "--allow-media-dir /no/such/folder: no such folder"),
    ],
)
def test_each_group_refuses_its_own_bad_values(group, message):
    with pytest.raises(VlmkitError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        group.check()


def test_defaults_pass_their_checks():
    for group in (LoadOptions(), BackendOptions(), ServeLimits(), MediaAccess(), BackendOptions(backend="vllm")):
        group.check()


def test_what_reaches_vllm_of_the_encoding_settings_is_the_familys_rule():
    from vlmkit.backends.vllm_args import not_passed_to_vllm
    from vlmkit.families import family_by_name

    qwen = family_by_name("qwen2-vl")
    given = EncodingSettings(min_pixels=3136, max_pixels=50176, system="Be brief.", fps=1.0)
    assert not_passed_to_vllm(qwen, given) == ["fps"]
    # a family whose processor arguments carry nothing: only the system prompt (the chat template) passes
    assert not_passed_to_vllm(replace(qwen, vllm_encoding_options=()), given) == ["min_pixels", "max_pixels", "fps"]
    assert not_passed_to_vllm(family_by_name("internvl"), EncodingSettings(max_tiles=2)) == ["max_tiles"]
