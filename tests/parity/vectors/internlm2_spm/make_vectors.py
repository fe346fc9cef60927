"""Two tiny InternLM2-style sentencepiece tokenizers and what OpenGVLab's InternLM2Tokenizer makes of some texts.

NOT run by the test suite (needs the `sentencepiece` package and the original tokenization_internlm2.py;
see ../README.md). Run from this folder:

    PYTHONPATH=/work/wt/ref_tf445:/path/to/sentencepiece python make_vectors.py /path/to/InternVL/internvl_chat
    PYTHONPATH=/work/wt/ref_tf445:/path/to/sentencepiece python make_vectors.py /path/to/InternVL/internvl_chat user_defined
"""

import importlib.util
import json
import sys
from pathlib import Path

import sentencepiece as spm

CORPUS = [
    "What color is the square? The square is red.",
    "Describe this image. A photo of a cat sitting on a mat.",
    "你好，世界。这是一只猫。",
    "Hello world! system user assistant",
    "one two three 1 2 3 (x) [y]",
] * 20
TEXTS = [
    "<|im_start|>system\nYou are helpful.<|im_end|><|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\n"
    "Describe this image.<|im_end|><|im_start|>assistant\n",
    "Hello world",
    " leading space",
    "你好，世界。这是一只猫🐱",
    "a\n\nb  c\t d",
    "<|im_end|>x",
    "<|im_end|> x",
    "The square is red. 1452 + 45304 = 46766",
    "trailing space ",
]


def main(internvl_chat: str) -> None:
    Path("corpus.txt").write_text("\n".join(CORPUS))
    code = Path(internvl_chat) / "internvl/model/internlm2/tokenization_internlm2.py"
    spec = importlib.util.spec_from_file_location("tokenization_internlm2", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = {}
    for dummy in (0, 1):
        folder = Path(f"add_dummy_prefix_{dummy}")
        folder.mkdir(exist_ok=True)
        # byte-fallback BPE with identity normalization and <unk>, <s>, </s> at 0, 1, 2, as InternLM2's model
        spm.SentencePieceTrainer.train(
            input="corpus.txt", model_prefix=str(folder / "tokenizer"), vocab_size=400, model_type="bpe",
            character_coverage=1.0, byte_fallback=True, add_dummy_prefix=bool(dummy), unk_id=0, bos_id=1, eos_id=2,
            pad_id=-1, user_defined_symbols=["<|im_start|>", "<|im_end|>"], remove_extra_whitespaces=False,
            normalization_rule_name="identity", minloglevel=2,
        )  # fmt: skip
        (folder / "tokenizer.vocab").unlink()
        # tokenizer_config.json (written by hand, as InternLM2's lists its added tokens) must already be there
        tokenizer = module.InternLM2Tokenizer.from_pretrained(folder)
        ids = [tokenizer(text).input_ids for text in TEXTS]
        out[str(dummy)] = {"ids": ids, "decoded": [tokenizer.decode(i[1:], skip_special_tokens=True) for i in ids]}
    Path("corpus.txt").unlink()
    Path("reference_ids.json").write_text(
        json.dumps({"texts": TEXTS, "by_add_dummy_prefix": out}, ensure_ascii=False, indent=1) + "\n"
    )


# The control tokens only as user-defined pieces of the model (tokenizer_config.json adds none of them) and
# sentencepiece's default normalisation (nmt_nfkc: a newline is a space; spaces trimmed and collapsed); no byte
# fallback, no dummy prefix. Issue 27 #2: such a model was converted wrongly.
CONTROL_PIECES = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>"]
SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
USER_DEFINED_TEXTS = TEXTS + [
    f"<|im_start|>system\n{SYSTEM}<|im_end|><|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\n"
    "Describe this image.\n请用中文  回答。<|im_end|><|im_start|>assistant\n",
    "  two leading, three trailing   ",
    "tab\there\n\n\nthree newlines",
    "Ｆｕｌｌｗｉｄｔｈ ①②",
]


def user_defined(internvl_chat: str) -> None:
    """user_defined_nmt_nfkc/ and reference_ids_user_defined.json (run: python make_vectors.py DIR user_defined)."""
    Path("corpus.txt").write_text("\n".join([SYSTEM] + CORPUS))
    code = Path(internvl_chat) / "internvl/model/internlm2/tokenization_internlm2.py"
    spec = importlib.util.spec_from_file_location("tokenization_internlm2", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = Path("user_defined_nmt_nfkc")
    folder.mkdir(exist_ok=True)
    spm.SentencePieceTrainer.train(
        input="corpus.txt", model_prefix=str(folder / "tokenizer"), vocab_size=300, hard_vocab_limit=False,
        model_type="bpe", character_coverage=1.0, byte_fallback=False, add_dummy_prefix=False, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, user_defined_symbols=CONTROL_PIECES, minloglevel=2,
    )  # fmt: skip
    (folder / "tokenizer.vocab").unlink()
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config = {
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": t} | flags for i, t in enumerate(["<unk>", "<s>", "</s>"])},
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config) + "\n")
    tokenizer = module.InternLM2Tokenizer.from_pretrained(folder)
    ids = [tokenizer(text).input_ids for text in USER_DEFINED_TEXTS]
    Path("corpus.txt").unlink()
    Path("reference_ids_user_defined.json").write_text(
        json.dumps({"texts": USER_DEFINED_TEXTS, "ids": ids}, ensure_ascii=False, indent=1) + "\n"
    )


if __name__ == "__main__":
    user_defined(sys.argv[1]) if sys.argv[2:] == ["user_defined"] else main(*sys.argv[1:])
