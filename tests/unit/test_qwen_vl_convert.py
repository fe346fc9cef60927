"""Qwen-VL's original config -> vlmkit's: what cannot be reproduced is refused, by name."""

import pytest

from vlmkit.errors import VlmkitError
from vlmkit.families.qwen_vl.convert import native_config, original_config

REAL = {  # Qwen/Qwen-VL-Chat's config.json, the fields the conversion reads
    "model_type": "qwen", "hidden_size": 4096, "intermediate_size": 22016, "num_attention_heads": 32,
    "num_hidden_layers": 32, "kv_channels": 128, "layer_norm_epsilon": 1e-06, "max_position_embeddings": 8192,
    "no_bias": True, "rotary_emb_base": 10000, "rotary_pct": 1.0, "seq_length": 2048, "vocab_size": 151936,
    "visual": {"heads": 16, "image_size": 448, "image_start_id": 151857, "layers": 48, "mlp_ratio": 4.9231,
               "output_dim": 4096, "patch_size": 14, "width": 1664},
}  # fmt: skip


def test_the_real_config_converts_to_qwen2_sizes():
    native = native_config(REAL)
    text = native["text_config"]
    assert (text["intermediate_size"], text["num_key_value_heads"], text["rope_parameters"]["rope_theta"]) == (
        11008, 32, 10000.0)  # fmt: skip
    assert (native["image_start_token_id"], native["image_end_token_id"], native["image_token_id"]) == (
        151857, 151858, 151859)  # fmt: skip
    assert "image_start_id" not in native["vision_config"] and native["vision_config"]["width"] == 1664
    back = original_config(native)
    assert {k: back[k] for k in REAL if k != "visual"} == {k: v for k, v in REAL.items() if k != "visual"}
    assert back["visual"] == REAL["visual"]


@pytest.mark.parametrize(
    ("change", "named"),
    [({"rotary_pct": 0.5}, "rotary_pct 0.5"), ({"kv_channels": 64}, "kv_channels"), ({"no_bias": False}, "no_bias"),
     ({"visual": None}, "no `visual` section")],
)  # fmt: skip
def test_what_the_native_model_cannot_reproduce_is_refused(change, named):
    config = {**REAL, **change}
    if change.get("visual", 1) is None:
        del config["visual"]
    with pytest.raises(VlmkitError, match=f"config.json: cannot convert this Qwen checkpoint: .*{named}"):
        native_config(config)
