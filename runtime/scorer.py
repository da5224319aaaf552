"""Turns texts into scores: tokenize, group by length, pad to each group, run, restore input order.

A pair's score does not depend on its batch neighbours beyond float32 rounding: every op of the
exported graphs works per row (INT8 plans quantize activations per token, never per tensor), so
batching changes speed, and at most the last bit or two of a score (~1e-7) through kernel blocking.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from rewardrt.runtime.spec import INPUT_NAMES, OUTPUT_NAMES, ArtifactError, ArtifactSpec
from rewardrt.runtime.tokenizer import encode, pad

# Padded tokens per forward pass. Bounds peak memory (attention is batch x heads x len^2) while
# keeping GEMMs large enough to be efficient; long texts thus run in smaller batches.
DEFAULT_MAX_BATCH_TOKENS = 8192


class Scorer:
    """Stateless between calls, so one instance may be shared by many threads."""

    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer, spec: ArtifactSpec,
                 source: str, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS) -> None:
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if sorted(inputs) != sorted(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
            raise ArtifactError(
                f"{source!r} has inputs {inputs} and outputs {outputs}; expected inputs "
                f"{list(INPUT_NAMES)} and outputs {list(OUTPUT_NAMES)}"
            )
        self.session = session
        self.tokenizer = tokenizer
        self.spec = spec
        self._inputs = inputs  # the feed is built from the graph's own input list
        self.max_batch_tokens = max_batch_tokens

    def run(self, texts: Sequence[str], batch_size: int, output: str = "score") -> np.ndarray:
        """float32 scores (or raw head outputs) for ``texts``, in input order.

        Identical texts are scored once. Rows are sorted by token length and cut into batches of at
        most ``batch_size`` rows and ``max_batch_tokens`` padded tokens.
        """
        unique: dict[str, int] = {}
        slot = np.fromiter((unique.setdefault(t, len(unique)) for t in texts), dtype=np.int64,
                           count=len(texts))
        ids = encode(self.tokenizer, list(unique))
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        result = np.empty(len(ids), dtype=np.float32)
        start = 0
        while start < len(order):
            stop = min(start + batch_size, len(order))
            # rows are sorted ascending, so the last row of a batch is its longest
            while stop - start > 1 and (stop - start) * lengths[order[stop - 1]] > self.max_batch_tokens:
                stop -= 1
            rows = order[start:stop]
            input_ids, mask = pad([ids[i] for i in rows])
            feed = {"input_ids": input_ids, "attention_mask": mask}
            (values,) = self.session.run([output], {name: feed[name] for name in self._inputs})
            result[rows] = values
            start = stop
        return result[slot]
