"""The export's *fit* stage: what the plan search and the rewrites learn from calibration pairs,
computed once per export. Plain functions; :func:`fit` runs them all.

- the torch reference's raw scores of the pairs (what every trial plan is compared with), and
- per quantizable MatMul, the per-channel max |input| (smoothing, outlier channels) and XᵀX of its
  input (GPTQ rounding), over the real (unpadded) tokens of the pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from rewardrt.export.pairs import Pairs
from rewardrt.export.quantize import ActivationStats, quantizable_matmuls
from rewardrt.export.reference import TorchReward


@dataclass(frozen=True)
class Calibration:
    """The calibration pairs, the torch reference's raw scores of them, and the activation statistics
    of the fp32 graph on them."""

    pairs: Pairs
    reference_raw: np.ndarray
    stats: ActivationStats


def reference_raw(reference: TorchReward, pairs: Pairs, batch_size: int = 64) -> np.ndarray:
    """The torch reference's raw scores of ``pairs``, batched by length (far less padding than input
    order when long and short pairs mix; a row's score does not depend on its batch beyond float
    rounding, ~1e-7, well inside any gate), in input order."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs.references[i]) + len(pairs.responses[i]))
    refs = [pairs.references[i] for i in order]
    resps = [pairs.responses[i] for i in order]
    raw = np.asarray(reference.raw_scores(resps, refs, batch_size), dtype=np.float64)
    out = np.empty(len(pairs), dtype=np.float64)
    out[order] = raw
    return out


def activation_stats(fp32: onnx.ModelProto, pairs: Pairs, tokenizer_json: str, max_length: int,
                     threads: int | None = None) -> ActivationStats:
    """Per quantizable MatMul of ``fp32``: per-channel max |input| and XᵀX of its input on ``pairs``.

    MatMuls reading the same tensor (Q, K, V) share its statistics. The graph runs through the
    runtime's session factory with those inputs exposed as extra outputs."""
    from rewardrt.runtime.session import make_session
    from rewardrt.runtime.tokenizer import PairEncoder, load_tokenizer, pad

    probe = onnx.ModelProto.FromString(fp32.SerializeToString())
    names = {s.name for s in quantizable_matmuls(probe)}
    inputs = {n.name: n.input[0] for n in probe.graph.node if n.name in names}
    tensors = list(dict.fromkeys(inputs.values()))
    for tensor in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    session = make_session(probe.SerializeToString(), threads)
    ids, _ = PairEncoder(load_tokenizer(tokenizer_json, "calibration"), max_length)(pairs.references, pairs.responses)
    ids.sort(key=len)  # batches of similar length: little padding (the statistics are order-free)
    absmax: dict[str, np.ndarray] = {}
    hessian: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), 16):
        input_ids, mask = pad(ids[start : start + 16])
        outs = session.run(tensors, {"input_ids": input_ids, "attention_mask": mask})
        for t, o in zip(tensors, outs):
            x = o[mask.astype(bool)].astype(np.float64)
            m = np.abs(x).max(axis=0)
            absmax[t] = m if t not in absmax else np.maximum(absmax[t], m)
            hessian[t] = x.T @ x + hessian.get(t, 0.0)
    return ActivationStats({n: absmax[t] for n, t in inputs.items()}, {n: hessian[t] for n, t in inputs.items()})


def fit(fp32: onnx.ModelProto, pairs: Pairs, reference: TorchReward, tokenizer_json: str, max_length: int,
        threads: int | None = None) -> Calibration:
    """The *fit* stage: reference scores and activation statistics of ``fp32`` on ``pairs``."""
    return Calibration(pairs, reference_raw(reference, pairs),
                       activation_stats(fp32, pairs, tokenizer_json, max_length, threads))
