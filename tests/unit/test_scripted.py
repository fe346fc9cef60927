"""The scripted test model replies its text, batched and alone, in vlmkit and in plain transformers."""

from __future__ import annotations

from scripted import MULTILINE_CJK_REPLY

import vlmkit


def test_scripted_model_replies_its_text_in_a_padded_batch(scripted_model):
    vlm = vlmkit.load(str(scripted_model))
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "user", "content": "A much longer question, so the batch is padded?"}]},
    ]
    assert vlm.generate(rows, max_new_tokens=200) == [MULTILINE_CJK_REPLY] * 2


def test_scripted_model_reply_is_a_plain_transformers_setting(scripted_model):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(scripted_model)
    model = AutoModelForImageTextToText.from_pretrained(scripted_model)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=200)
    assert tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True) == MULTILINE_CJK_REPLY
