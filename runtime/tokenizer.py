"""Tokenization of (reference, response) pairs with the Rust ``tokenizers`` library, from the JSON
embedded in the artifact.

A pair is ONE text, :func:`format_pair` (``f"{reference} [SEP] {response}"``, the literal ``[SEP]``
becoming the special token), whose ids are byte-identical to what transformers' tokenizer gives
the torch reference for the same text, padded to the batch.

**Truncation.** A pair longer than ``max_length`` tokens is cut in one of two ways:

- ``"keep_response_end"`` (the default): the reference's start and the *end* of the response are
  kept — ``[CLS] reference [SEP] …end of the response [SEP]`` — since an RL rollout's final answer
  is at its end. The reference is cut (at its end) only when it and the response both need more
  than half the room: then each keeps half; a side that needs less leaves the rest to the other.
- ``"keep_start"``: the end of the joined text is cut, as neural-txt's ``NeuralTxtReward`` (and
  transformers' ``truncation=True``) does; a long response loses its final answer.

The torch reference (``rewardrt.export.reference``) truncates with the same :func:`fit_pairs`, so
both sides see the same ids in either mode. The tokenizer.json shipped with all-MiniLM-L6-v2
switches on fixed padding to 128 and truncation at 128; both are switched off here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tokenizers import Tokenizer

from rewardrt.runtime.spec import TEMPLATE, ArtifactError

TRUNCATIONS = ("keep_response_end", "keep_start")
DEFAULT_TRUNCATION = "keep_response_end"
SPECIAL_TOKENS = 3  # [CLS] reference [SEP] response [SEP]


def format_pair(reference: str, response: str) -> str:
    """The model's single input text of a pair: the one place the template is applied."""
    return TEMPLATE.format(reference=reference, response=response)


def check_truncation(truncation: object) -> str:
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {', '.join(map(repr, TRUNCATIONS))}, got {truncation!r}")
    return truncation  # type: ignore[return-value]


def load_tokenizer(tokenizer_json: str, source: str) -> Tokenizer:
    """The artifact's tokenizer with padding and truncation off (:func:`fit_pairs` truncates)."""
    try:
        tok = Tokenizer.from_str(tokenizer_json)
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise ArtifactError(f"{source!r} carries a tokenizer that cannot be read: {exc}") from exc
    tok.no_padding()
    tok.no_truncation()
    if tok.token_to_id("[SEP]") is None:
        raise ArtifactError(f"{source!r} carries a tokenizer without a [SEP] token")
    return tok


def encode(tok: Tokenizer, texts: Sequence[str], special_tokens: bool = True) -> list[list[int]]:
    """Token ids per text (with or without [CLS]/[SEP]), as the tokenizer is set (unpadded)."""
    fast = getattr(tok, "encode_batch_fast", None)  # no offsets: faster, same ids
    encodings = (fast or tok.encode_batch)(list(texts), add_special_tokens=special_tokens)
    return [e.ids for e in encodings]


def fit_pairs(joined: list[list[int]], references: Sequence[str], responses: Sequence[str],
              plain: Callable[[list[str]], list[list[int]]], max_length: int, sep_id: int,
              truncation: str = DEFAULT_TRUNCATION) -> list[bool]:
    """Cut the rows of ``joined`` (each pair's untruncated ids, special tokens included) longer than
    ``max_length`` in place, by ``truncation``; True for each row that was cut.

    ``plain(texts)`` tokenizes texts without special tokens (only called for rows that are too
    long, with their references then their responses)."""
    check_truncation(truncation)
    long = [i for i, ids in enumerate(joined) if len(ids) > max_length]
    if long and truncation == "keep_start":
        for i in long:
            joined[i] = joined[i][: max_length - 1] + [sep_id]
    elif long:
        pieces = plain([references[i] for i in long] + [responses[i] for i in long])
        room = max_length - SPECIAL_TOKENS
        for k, i in enumerate(long):
            ref, resp = pieces[k], pieces[len(long) + k]
            keep_ref = min(len(ref), max(room - len(resp), room // 2))
            keep_resp = room - keep_ref
            joined[i] = ([joined[i][0], *ref[:keep_ref], sep_id]
                         + resp[len(resp) - keep_resp:] + [sep_id])
    flags = [False] * len(joined)
    for i in long:
        flags[i] = True
    return flags


class PairEncoder:
    """Token ids of (reference, response) pairs, truncated to ``max_length`` by ``truncation``."""

    def __init__(self, tok: Tokenizer, max_length: int, truncation: str = DEFAULT_TRUNCATION) -> None:
        self.tok = tok
        self.max_length = max_length
        self.truncation = check_truncation(truncation)
        self.sep_id = tok.token_to_id("[SEP]")

    def __call__(self, references: Sequence[str], responses: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """(ids per pair, whether each pair was truncated)."""
        joined = encode(self.tok, [format_pair(a, b) for a, b in zip(references, responses)])
        flags = fit_pairs(joined, references, responses, lambda t: encode(self.tok, t, False),
                          self.max_length, self.sep_id, self.truncation)
        return joined, flags


def pad(ids: Sequence[Sequence[int]], pad_id: int = 0, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to ``width`` (default: the longest row): (input_ids, attention_mask), both int64."""
    longest = max(len(row) for row in ids)
    if width is None:
        width = longest
    elif width < longest:
        raise ValueError(f"width {width} is shorter than the longest row ({longest} tokens)")
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return input_ids, mask
