"""Tokenization with the Rust ``tokenizers`` library from the JSON embedded in the artifact.

The ids must be byte-identical to what transformers' tokenizer gives the torch reference for
``f"{reference} [SEP] {response}"`` with ``truncation=True, max_length=...`` and padding to the batch.
The tokenizer.json shipped with all-MiniLM-L6-v2 switches on fixed padding to 128 and truncation at
128; both are replaced here (no padding; truncation at the artifact's max_length).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from rewardrt.runtime.spec import ArtifactError


def load_tokenizer(tokenizer_json: str, max_length: int, source: str) -> Tokenizer:
    try:
        tok = Tokenizer.from_str(tokenizer_json)
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise ArtifactError(f"{source!r} carries a tokenizer that cannot be read: {exc}") from exc
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def encode(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text (special tokens included, truncated, unpadded)."""
    fast = getattr(tok, "encode_batch_fast", None)  # no offsets: faster, same ids
    encodings = (fast or tok.encode_batch)(list(texts), add_special_tokens=True)
    return [e.ids for e in encodings]


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
