"""The runtime's Rust tokenizer must give byte-identical ids to the reference's transformers tokenizer."""

from __future__ import annotations

import pytest

from rewardrt.runtime.api import build_texts
from rewardrt.runtime.tokenizer import encode, load_tokenizer

TEXTS = [
    "", " ", "Paris", "The capital of France is Paris.", "[SEP]", "a [SEP] b [SEP] c",
    "Ünïcödé façade — naïve café, 東京 and Москва!", "emoji 🤖🚀 and RTL שלום עולם مرحبا",
    "combining e\u0301 and zero\u200bwidth", "tabs\tand\nnewlines\r\n", "x" * 3000,
    " ".join(["word"] * 1200), "[CLS] [PAD] [MASK] [UNK]", "numbers 3.14159 1,000,000 -42",
    "control\x00\x01chars\x7f", "A" * 10 + " " + "supercalifragilisticexpialidocious " * 40,
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    from rewardrt.export.reference import load_tokenizer as hf_load
    from rewardrt.models.base import base_model_dir

    return hf_load(base_model_dir(verify=False))


@pytest.fixture(scope="module")
def tokenizer_json():
    from rewardrt.models.base import base_model_dir

    return (base_model_dir(verify=False) / "tokenizer.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("max_length", [512, 128, 16])
def test_ids_match_transformers(hf_tokenizer, tokenizer_json, dev_pairs, max_length):
    refs, resps = dev_pairs
    responses = TEXTS + list(resps[:100])
    references = (TEXTS[::-1] + list(refs[:100]))[: len(responses)]
    texts = build_texts(responses, references)
    ours = encode(load_tokenizer(tokenizer_json, max_length, "test"), texts)
    theirs = hf_tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    assert ours == theirs
    assert max(len(x) for x in ours) == max_length  # long texts really were truncated


def test_no_fixed_padding(tokenizer_json):
    # all-MiniLM-L6-v2's tokenizer.json pads to 128: the runtime must not
    tok = load_tokenizer(tokenizer_json, 512, "test")
    assert len(encode(tok, ["a [SEP] b"])[0]) == 5
