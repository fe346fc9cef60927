"""Qwen-VL (first generation): prompt rendering, image sources, and loading through remote code.

The real checkpoint cannot be loaded here, so loading is tested with a stand-in: a folder whose
config.json says model_type `qwen` and whose `auto_map` names a tiny model, config and tokenizer written
by this test, so `vlmkit.load(..., trust_remote_code=True)` runs transformers' remote-code path offline.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_image
from PIL import Image
from typer.testing import CliRunner

from vlmkit.cli import app
from vlmkit.errors import MediaError, VlmkitError
from vlmkit.families import family_by_name, family_for_config, family_for_model_dir
from vlmkit.families.qwen_vl.template import QwenVLChatTemplate, render_qwen_vl_chat
from vlmkit.sample import Sample, to_sample

FAMILY = family_by_name("qwen-vl-remote")
SYS = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>"

# -- a stand-in for Qwen-VL-Chat's remote code -------------------------------------------------------

CONFIG_PY = """
from transformers import PretrainedConfig


class StandinConfig(PretrainedConfig):
    model_type = "qwen"

    def __init__(self, vocab_size=320, hidden_size=8, reply_ids=(), **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.reply_ids = list(reply_ids)
        self.num_hidden_layers = 1  # for the cache transformers' `generate` makes
        super().__init__(**kwargs)
"""

# Says `config.reply_ids` one token per step whatever the prompt, and records the prompts it was given.
MODELING_PY = """
import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_standin import StandinConfig


class StandinForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = StandinConfig
    prompts = []

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = torch.nn.Linear(config.hidden_size, config.vocab_size)
        self.step = 0
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if input_ids.shape[1] > 1:  # the prompt: a new generation starts
            StandinForCausalLM.prompts.append(input_ids.tolist())
            self.step = 0
        logits = self.head(self.embed(input_ids)) * 0  # (B, T, V)
        logits[:, -1, self.config.reply_ids[min(self.step, len(self.config.reply_ids) - 1)]] = 1.0
        self.step += 1
        return CausalLMOutputWithPast(logits=logits)
"""

TOKENIZER_PY = """
from transformers import PreTrainedTokenizerFast


class StandinTokenizer(PreTrainedTokenizerFast):
    pass
"""

STANDIN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<img>",
    "</img>",
]
REPLY = "<ref>dog</ref><box>(100,200),(500,600)</box>"


def _standin_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(["Picture what is this dog user assistant system"], trainer=trainer)
    # Like Qwen-VL's own tokenizer, which registers none of them with transformers, the stop tokens are
    # not marked special (a reply must still end before them); the grounding tags are (they must be kept).
    backend.add_tokens(
        [AddedToken(t, special=not t.startswith("<|"), normalized=False) for t in STANDIN_SPECIAL]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    """A model folder that only loads through `trust_remote_code` (model_type qwen, auto_map)."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("qwen_vl_standin")
    (folder / "configuration_standin.py").write_text(CONFIG_PY)
    (folder / "modeling_standin.py").write_text(MODELING_PY)
    (folder / "tokenization_standin.py").write_text(TOKENIZER_PY)
    tokenizer = _standin_tokenizer()
    tokenizer.save_pretrained(folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.update(
        tokenizer_class="StandinTokenizer",
        auto_map={"AutoTokenizer": [None, "tokenization_standin.StandinTokenizer"]},
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    vocab_size, hidden = len(tokenizer), 8
    reply_ids = tokenizer(REPLY)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    config = {
        "model_type": "qwen",
        "architectures": ["StandinForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_standin.StandinConfig",
            "AutoModelForCausalLM": "modeling_standin.StandinForCausalLM",
        },
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "reply_ids": reply_ids,
    }
    (folder / "config.json").write_text(json.dumps(config))
    weights = {
        "embed.weight": torch.randn(vocab_size, hidden),
        "head.weight": torch.randn(vocab_size, hidden),
        "head.bias": torch.zeros(vocab_size),
    }
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


# -- rendering ---------------------------------------------------------------------------------------


class _Chars:
    """A tokenizer stand-in for rendering tests: one id per character, Qwen's special tokens known."""

    pad_token_id = None

    def convert_tokens_to_ids(self, token):
        return {"<|im_end|>": 151645, "<|endoftext|>": 151643}[token]

    def __call__(self, text):
        return {"input_ids": [ord(c) for c in text]}


def _template(system=None) -> QwenVLChatTemplate:
    return QwenVLChatTemplate(_Chars(), FAMILY.box_format, system=system)


def test_single_image_matches_make_context(image_file):
    # Qwen-VL-Chat's qwen_generation_utils.make_context (chat_format "chatml"), no history:
    #   f"{im_start}system\n{system}{im_end}" + f"\n{im_start}user\n{query}{im_end}\n{im_start}assistant\n"
    # with query = tokenizer.from_list_format([{'image': path}, {'text': text}]) (tokenization_qwen.py):
    #   f"Picture 1: <img>{path}</img>\n" + text
    sample = to_sample(
        {"messages": [{"role": "user", "content": "<image>What is this?"}], "images": [str(image_file)]}
    )
    expected = (
        SYS + f"\n<|im_start|>user\nPicture 1: <img>{image_file.resolve()}</img>\nWhat is this?<|im_end|>"
        "\n<|im_start|>assistant\n"
    )
    assert _template().render_text(sample, add_generation_prompt=True) == expected
    encoded = _template().encode(sample, add_generation_prompt=True)
    assert encoded["input_ids"].tolist() == [ord(c) for c in expected]
    assert (encoded["labels"] == -100).all()


def test_multi_image_multi_turn_numbers_images_over_the_conversation(tmp_path):
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    for k, path in enumerate((a, b, c)):
        random_image(20, 30, seed=k).save(path)
    row = {
        "messages": [
            {"role": "user", "content": "<image><image>Compare them."},
            {"role": "assistant", "content": "Two cities."},
            {"role": "user", "content": "<image>And this one?"},
        ],
        "images": [str(a), str(b), str(c)],
    }
    # make_context history turns: f"\n{im_start}user\n{q}{im_end}\n{im_start}assistant\n{r}{im_end}"
    expected = (
        SYS
        + f"\n<|im_start|>user\nPicture 1: <img>{a}</img>\nPicture 2: <img>{b}</img>\nCompare them.<|im_end|>"
        + "\n<|im_start|>assistant\nTwo cities.<|im_end|>"
        + f"\n<|im_start|>user\nPicture 3: <img>{c}</img>\nAnd this one?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert _template().render_text(to_sample(row), add_generation_prompt=True) == expected


def test_system_prompt_replaces_the_default():
    row = {"system": "Answer in French.", "messages": [{"role": "user", "content": "Hi"}]}
    expected = "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert _template().render_text(to_sample(row), add_generation_prompt=True) == expected
    plain = to_sample({"messages": [{"role": "user", "content": "Hi"}]})
    assert (
        _template(system="Be brief.")
        .render_text(plain, True)
        .startswith("<|im_start|>system\nBe brief.<|im_end|>")
    )


def test_render_refuses_other_roles_and_video():
    messages = [{"role": "tool", "content": [{"type": "text", "text": "x"}]}]
    with pytest.raises(VlmkitError, match="no 'tool' role"):
        render_qwen_vl_chat(messages, [], True, where="row 3")
    video = [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}]
    with pytest.raises(VlmkitError, match="images only"):
        render_qwen_vl_chat(video, [], True)


def test_encode_for_training_is_refused():
    sample = to_sample(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    )
    with pytest.raises(VlmkitError, match="train Qwen2-VL or Qwen2.5-VL"):
        _template().encode(sample, add_generation_prompt=False)


# -- image sources -----------------------------------------------------------------------------------


def test_pil_and_data_url_images_become_png_files():
    template = _template()
    image = random_image(24, 32, seed=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    sample = Sample(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": image},
                    {"type": "image", "image": data_url},
                    {"type": "text", "text": "Same?"},
                ],
            }
        ]
    )
    text = template.render_text(sample, add_generation_prompt=True)
    paths = [part.split("</img>")[0] for part in text.split("<img>")[1:]]
    assert len(paths) == 2 and paths[0] == paths[1]  # same pixels -> one file
    written = Path(paths[0])
    assert written.parent == Path(template._files.name)
    assert (np.asarray(Image.open(written)) == np.asarray(image)).all()
    del template
    assert not written.exists()  # the folder goes with the template


def test_urls_are_kept_and_bad_sources_are_refused(tmp_path):
    template = _template()
    url = "https://example.com/dog.jpeg"
    assert template.image_source(url, "row 1") == url
    with pytest.raises(MediaError, match="row 1: no such image file"):
        template.image_source(str(tmp_path / "missing.png"), "row 1")
    with pytest.raises(MediaError, match="row 2"):
        template.image_source(b"not an image", "row 2")


def test_long_paths_are_copied_to_a_short_name(tmp_path):
    deep = tmp_path / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    random_image(10, 10).save(deep / "img.png")
    template = _template()  # its folder of written images lives as long as it does
    source = template.image_source(str(deep / "img.png"), "row 1")
    assert len(source.encode()) <= 256 and source.endswith(".png") and Path(source).is_file()


# -- the family --------------------------------------------------------------------------------------


def test_family_resolves_from_model_type_qwen(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen", "visual": {"image_size": 448}}))
    assert family_for_model_dir(tmp_path) is FAMILY
    assert family_for_config({"model_type": "qwen"}) is FAMILY
    assert FAMILY.auto_class == "AutoModelForCausalLM" and FAMILY.remote_code
    with pytest.raises(VlmkitError, match="qwen-vl-remote has no chat template file"):  # e.g. for the vLLM backend
        _ = FAMILY.chat_template


def test_families_lists_it_as_untested_remote_code():
    result = CliRunner().invoke(app, ["families"])
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.startswith("qwen-vl-remote "))
    assert "model_type=qwen " in line and "remote code: inference only, untested" in line
    assert "vlmkit convert" in line


def test_tiny_model_refuses(tmp_path):
    result = CliRunner().invoke(app, ["tiny-model", "qwen-vl-remote", str(tmp_path / "m")])
    assert isinstance(result.exception, VlmkitError)  # `vlmkit` prints it as one `error:` line
    assert "qwen-vl-remote has no tiny model" in str(result.exception)
    assert not (tmp_path / "m").exists()


def test_sft_refuses_with_one_line(standin, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})
        + "\n"
    )
    result = CliRunner().invoke(
        app,
        [
            "sft",
            "--model",
            str(standin),
            "--dataset",
            str(data),
            "--output-dir",
            str(tmp_path / "out"),
            "--trust-remote-code",
            "--no-progress",
        ],
    )
    assert isinstance(result.exception, VlmkitError)  # `vlmkit` prints it as one `error:` line
    message = str(result.exception)
    # sft never trains remote code: it converts on load (issue 28 #7), which this stand-in (no Qwen-VL weights
    # or vocabulary) cannot be; an original folder trains (tests/integration/test_first_hour.py)
    assert "\n" not in message and message.startswith(f"{standin}: no qwen.tiktoken")
    assert not (tmp_path / "out").exists()


# -- loading through remote code ---------------------------------------------------------------------


def test_load_without_trust_remote_code_is_refused(standin):
    import vlmkit

    with pytest.raises(VlmkitError, match="pass --trust-remote-code"):
        vlmkit.load(standin)
    with pytest.raises(VlmkitError, match="--max-pixels does not apply to qwen-vl-remote"):  # images are 448x448
        vlmkit.load(standin, trust_remote_code=True, max_pixels=200_000)


def test_load_and_generate_through_remote_code(standin, image_file):
    import vlmkit

    vlm = vlmkit.load(standin, trust_remote_code=True)
    assert type(vlm.model).__name__ == "StandinForCausalLM"
    assert type(vlm.tokenizer).__name__ == "StandinTokenizer"
    model_class = type(vlm.model)
    model_class.prompts.clear()
    row = {"messages": [{"role": "user", "content": "<image>Where is the dog?"}], "images": [str(image_file)]}
    [reply] = vlm.generate([row], max_new_tokens=40)
    assert reply == REPLY  # grounding tags survive decoding; generation stopped at <|im_end|>
    prompt = vlm.template.render_text(to_sample(row), add_generation_prompt=True)
    assert model_class.prompts == [[vlm.tokenizer(prompt)["input_ids"]]]
    from vlmkit.media.grounding import objects_in_reply

    [found] = objects_in_reply(vlm.template, to_sample(row), reply)
    # 0-1000 of the 80x60 (w x h) image: (100,200),(500,600) -> (8, 12), (40, 36)
    assert found["ref"] == "dog" and found["bbox"] == pytest.approx([8, 12, 40, 36], abs=1)


def test_chat_streams_box_text_and_numbers_images_over_turns(standin, tmp_path):
    import vlmkit

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    random_image(60, 80, seed=1).save(a)
    random_image(60, 80, seed=2).save(b)
    vlm = vlmkit.load(standin, trust_remote_code=True)
    model_class = type(vlm.model)
    model_class.prompts.clear()
    chat = vlm.chat()
    assert chat.send("Where is the dog?", images=[str(a)], max_new_tokens=40) == REPLY  # streamed
    chat.send("And here?", images=[str(b)], max_new_tokens=40)
    expected = (
        SYS
        + f"\n<|im_start|>user\nPicture 1: <img>{a}</img>\nWhere is the dog?<|im_end|>"
        + f"\n<|im_start|>assistant\n{REPLY}<|im_end|>"
        + f"\n<|im_start|>user\nPicture 2: <img>{b}</img>\nAnd here?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert model_class.prompts[-1] == [vlm.tokenizer(expected)["input_ids"]]
