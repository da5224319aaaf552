"""Turns (reference, response) pairs into scores: tokenize, group rows of similar length (one
padded width per group) into batches, run, restore input order.

A pair's score is bit-identical whatever its batch neighbours, the batch size and the order of the
inputs (for one artifact, one onnxruntime build and one machine). Every artifact's pooling sums
with a MatMul (``spec.single_row_safe``, True for every export since c4c13a0 and every default model
since v1; the runtime no longer reads it), so a graph runs the same kernels at any batch size, and
pad tokens only append exact zeros to the ends of the sequence reductions, so a row's score does
not depend on its padded width either (tests/test_determinism.py checks both). Rows are grouped by
:func:`padded_width` (which bounds the padding of a batch), and each batch is padded to its
longest row only, so a single pair runs at its own length.

Every op of the exported graphs works per row (INT8 plans quantize activations per token, never per
tensor), so nothing else depends on the neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from rewardrt.runtime.spec import INPUT_NAMES, OUTPUT_NAMES, ArtifactError, ArtifactSpec
from rewardrt.runtime.tokenizer import PairEncoder, pad

# Padded tokens per forward pass. Bounds peak memory: onnxruntime's arena grows to the largest
# pass's activations (an FFN intermediate alone is tokens x 1536 floats) and keeps that memory. 1024
# tokens (~25 ordinary pairs) already make the GEMMs tall enough: measured against 8192 on 512 dev
# pairs in calls of 64 and on GRPO-shaped calls, throughput within +-5% at 1 and 2 threads, while
# scoring all dev pairs in calls of 64 (v3 INT8, 1 thread) peaks at 175 MB RSS instead of 253 MB.
DEFAULT_MAX_BATCH_TOKENS = 1024
# Rows x width^2 per forward pass. Attention holds a batch x heads x width^2 float buffer, so long
# rows dominate peak memory: 262144 cells is 12.6 MB at 12 heads, one row at 512 tokens, 16 at 128.
# Long rows gain nothing from batching (their GEMMs are already tall), so this costs no speed.
MAX_ATTENTION_CELLS = 262144
# (step, up to): widths are multiples of 16 up to 128 tokens, of 32 up to 256, of 64 up to 512 and
# of 128 beyond, so padding adds at most 15 tokens to short rows and under 25% to longer ones.
WIDTH_LADDER = ((16, 128), (32, 256), (64, 512))
WIDTH_STEP_BEYOND = 128
# Distinct texts tokenized at once: bounds the memory of token ids for huge inputs.
TOKENIZE_CHUNK = 8192


def padded_width(length: int, cap: int) -> int:
    """The width a row of ``length`` tokens is padded to: a function of its own length only.

    ``cap`` is the artifact's max_length (the position table), which no row exceeds."""
    for step, top in WIDTH_LADDER:
        if length <= top:
            return min(cap, -(-length // step) * step)
    return min(cap, -(-length // WIDTH_STEP_BEYOND) * WIDTH_STEP_BEYOND)


class Scorer:
    """Stateless between calls (no buffers are reused), so one instance may be shared by threads."""

    def __init__(self, session: ort.InferenceSession, encoder: PairEncoder, spec: ArtifactSpec,
                 source: str, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS) -> None:
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if sorted(inputs) != sorted(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
            raise ArtifactError(
                f"{source!r} has inputs {inputs} and outputs {outputs}; expected inputs "
                f"{list(INPUT_NAMES)} and outputs {list(OUTPUT_NAMES)}"
            )
        self.session = session
        self.encoder = encoder
        self.spec = spec
        self._inputs = inputs  # the feed is built from the graph's own input list
        self.max_batch_tokens = max_batch_tokens

    def batches(self, lengths: np.ndarray, batch_size: int) -> list[tuple[int, np.ndarray]]:
        """(width, row indices) per forward pass: rows of one :func:`padded_width`, at most
        ``batch_size`` rows, ``max_batch_tokens`` padded tokens and ``MAX_ATTENTION_CELLS`` rows x
        width^2 each (at least one row); ``width`` is what the rows are padded to.

        The rows of each padded width are sorted by length and each batch is padded to its longest
        row (a row's score does not depend on its padded width, see the module doc), so a single
        pair runs at its own length and a batch pads less than the width ladder."""
        widths = np.fromiter((padded_width(int(n), self.spec.max_length) for n in lengths),
                             dtype=np.int64, count=len(lengths))
        out = []
        for width in np.unique(widths):
            rows = np.flatnonzero(widths == width)
            rows = rows[np.argsort(lengths[rows], kind="stable")]
            per_batch = max(1, min(batch_size, self.max_batch_tokens // int(width),
                                   MAX_ATTENTION_CELLS // int(width) ** 2))
            for i in range(0, len(rows), per_batch):
                chunk = rows[i:i + per_batch]
                out.append((int(lengths[chunk].max()), chunk))
        return out

    def run(self, references: Sequence[str], responses: Sequence[str], batch_size: int,
            output: str = "score") -> np.ndarray:
        """float32 scores (or raw head outputs) for the pairs, in input order.

        Identical pairs are scored once. Distinct pairs are tokenized ``TOKENIZE_CHUNK`` at a time
        (token ids of a huge list are never all held at once); rows are grouped by padded width and
        cut into batches of at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens.
        """
        if len(references) == 1:
            return self._score_one(references[0], responses[0], output)
        unique: dict[tuple[str, str], int] = {}
        slot = np.fromiter((unique.setdefault(p, len(unique)) for p in zip(references, responses)),
                           dtype=np.int64, count=len(references))
        distinct = list(unique)
        del unique
        result = np.empty(len(distinct), dtype=np.float32)
        for start in range(0, len(distinct), TOKENIZE_CHUNK):
            chunk = distinct[start:start + TOKENIZE_CHUNK]
            result[start:start + len(chunk)] = self._score_distinct(chunk, batch_size, output)
        return result[slot]

    def _score_one(self, reference: str, response: str, output: str) -> np.ndarray:
        """One pair, the batch path's pass without its bookkeeping: a single row runs at its own
        length with a mask of ones either way, so the score is the same bit for bit. Batch-1 calls
        (``RewardModel.score``) spend ~0.25 ms less in Python and numpy around the forward pass."""
        ids, _ = self.encoder([reference], [response])
        input_ids = np.array(ids, dtype=np.int64)
        feed = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
        (values,) = self.session.run([output], {name: feed[name] for name in self._inputs})
        return np.asarray(values[:1], dtype=np.float32)

    def _score_distinct(self, pairs: list[tuple[str, str]], batch_size: int, output: str) -> np.ndarray:
        ids, _ = self.encoder([a for a, _ in pairs], [b for _, b in pairs])
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        result = np.empty(len(ids), dtype=np.float32)
        for width, rows in self.batches(lengths, batch_size):
            input_ids, mask = pad([ids[i] for i in rows], width=width)
            feed = {"input_ids": input_ids, "attention_mask": mask}
            (values,) = self.session.run([output], {name: feed[name] for name in self._inputs})
            result[rows] = values[: len(rows)]
        return result
