"""Raising a traced graph's opset to what the ``qlinear`` activation chain needs."""

from __future__ import annotations

import numpy as np
import onnx

from rewardrt.export.quantize.sites import add_const, opset_of

# The qlinear chain quantizes each row of a [..., K] activation with ONE blocked QuantizeLinear
# (axis -1, block_size K: a scale and zero point of shape [..., 1]), which opset 21 introduced.
QLINEAR_OPSET = 21
# Default-domain ops whose versions from opset 13 to 21 only added types or options the traced
# graphs do not use, so raising the opset leaves their meaning as it was ...
_SAME_MEANING_UP_TO_21 = frozenset({
    "Cast", "Constant", "ConstantOfShape", "DequantizeLinear", "Equal", "Flatten", "Identity",
    "QuantizeLinear", "Reshape", "Shape", "Size", "Squeeze", "Transpose", "Unsqueeze"})
# ... and reductions whose ``axes`` attribute became an input in opset 18.
_AXES_BECAME_INPUT = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSumSquare"})


def raise_opset(model: onnx.ModelProto, version: int) -> None:
    """Raise ``model``'s default-domain opset to ``version`` (at most 21) in place, rewriting what
    changed on the way (reductions' ``axes`` attribute -> input); refuses a graph holding an op
    whose newer version this function does not know to mean the same."""
    if version > QLINEAR_OPSET:
        raise ValueError(f"raise_opset knows the op changes up to opset {QLINEAR_OPSET}, not {version}")
    old = opset_of(model)
    if old >= version:
        return
    graph = model.graph
    for op in sorted({n.op_type for n in graph.node if n.domain in ("", "ai.onnx")}):
        changed = onnx.defs.get_schema(op, old).since_version != onnx.defs.get_schema(op, version).since_version
        if changed and op not in _SAME_MEANING_UP_TO_21 | _AXES_BECAME_INPUT:
            raise ValueError(f"cannot raise the graph from opset {old} to {version}: {op} changed in between")
    for node in graph.node:
        axes = next((a for a in node.attribute if a.name == "axes"), None)
        if node.domain in ("", "ai.onnx") and node.op_type in _AXES_BECAME_INPUT and axes is not None:
            name = add_const(graph, f"{node.name or node.output[0]}.axes",
                          np.array(list(axes.ints), dtype=np.int64))
            node.attribute.remove(axes)
            del node.input[1:]
            node.input.append(name)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = version
    model.ir_version = max(model.ir_version, 10)  # opset 21 needs IR version 10

