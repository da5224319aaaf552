"""The runtime's Rust tokenizer must give byte-identical ids to the reference's transformers tokenizer."""

from __future__ import annotations

import pytest

from rewardrt.runtime.tokenizer import PairEncoder, format_pair, load_tokenizer

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
def test_keep_start_ids_match_transformers_truncation(hf_tokenizer, tokenizer_json, dev_pairs, max_length):
    """``keep_start`` is neural-txt's truncation: transformers' ``truncation=True`` on the text."""
    refs, resps = dev_pairs
    responses = TEXTS + list(resps[:100])
    references = (TEXTS[::-1] + list(refs[:100]))[: len(responses)]
    encoder = PairEncoder(load_tokenizer(tokenizer_json, "test"), max_length, "keep_start")
    ours, flags = encoder(references, responses)
    texts = [format_pair(a, b) for a, b in zip(references, responses)]
    theirs = hf_tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    assert ours == theirs
    assert max(len(x) for x in ours) == max_length  # long texts really were truncated
    untruncated = hf_tokenizer(texts)["input_ids"]
    assert flags == [len(x) > max_length for x in untruncated]


@pytest.mark.parametrize("max_length", [512, 128, 16])
def test_keep_response_end_ids_match_the_torch_reference(hf_tokenizer, tokenizer_json, dev_pairs, max_length):
    """The default truncation gives the same ids in the runtime (Rust tokenizers) and in the torch
    reference (transformers); untruncated pairs are the plain text's ids."""
    from rewardrt.export.reference import encode_pairs

    refs, resps = dev_pairs
    responses = TEXTS + list(resps[:100])
    references = (TEXTS[::-1] + list(refs[:100]))[: len(responses)]
    ours, flags = PairEncoder(load_tokenizer(tokenizer_json, "test"), max_length)(references, responses)
    enc = encode_pairs(hf_tokenizer, references, responses, max_length)
    theirs = [row[mask.bool()].tolist() for row, mask in zip(enc["input_ids"], enc["attention_mask"])]
    assert ours == theirs
    plain = hf_tokenizer([format_pair(a, b) for a, b in zip(references, responses)])["input_ids"]
    assert flags == [len(x) > max_length for x in plain]
    assert [x for x, cut in zip(ours, flags) if not cut] == [x for x, cut in zip(plain, flags) if not cut]
    assert all(len(x) <= max_length for x in ours) and any(flags)


def test_keep_response_end_keeps_the_reference_and_the_final_answer(tokenizer_json):
    tok = load_tokenizer(tokenizer_json, "test")
    reference = "The answer is 72."
    response = "Let me think. " + "We add the numbers step by step. " * 200 + "Final answer: 72"
    (ids,), (cut,) = PairEncoder(tok, 64)([reference], [response])
    assert cut and len(ids) == 64
    text = tok.decode(ids)
    assert text.startswith("the answer is 72. ") and text.endswith("final answer : 72")
    (start,), _ = PairEncoder(tok, 64, "keep_start")([reference], [response])
    assert "72" not in tok.decode(start[8:])  # the old truncation loses the final answer


def test_long_sides_share_the_room(tokenizer_json):
    tok = load_tokenizer(tokenizer_json, "test")
    sep = tok.token_to_id("[SEP]")
    encoder = PairEncoder(tok, 41)
    (short_resp, both_long), _ = encoder(["word " * 300] * 2, ["the response ends here", "answer " * 300 + "end"])
    for ids in (short_resp, both_long):
        assert ids[0] == tok.token_to_id("[CLS]") and ids[-1] == sep and len(ids) == 41
    # a short response keeps all its tokens, the reference takes the rest of the room
    assert tok.decode(short_resp[short_resp.index(sep) + 1:]) == "the response ends here"
    # both long: each keeps half of the 38 tokens of room, the response its end
    assert both_long.index(sep) - 1 == 19 and tok.decode(both_long[-3:-1]) == "answer end"


def test_unknown_truncation_is_refused(tokenizer_json):
    with pytest.raises(ValueError, match="truncation must be one of"):
        PairEncoder(load_tokenizer(tokenizer_json, "test"), 64, "middle")


def test_no_fixed_padding(tokenizer_json):
    # all-MiniLM-L6-v2's tokenizer.json pads to 128: the runtime must not
    (ids,), _ = PairEncoder(load_tokenizer(tokenizer_json, "test"), 512)(["a"], ["b"])
    assert len(ids) == 5
