"""The MatMuls a plan can name, and the small graph edits every rewrite shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class MatMulSite:
    """A MatMul whose right operand is a constant 2-D weight."""

    name: str
    weight: str
    k: int
    n: int


def quantizable_matmuls(model: onnx.ModelProto) -> list[MatMulSite]:
    inits = {t.name: t for t in model.graph.initializer}
    sites = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            dims = list(inits[node.input[1]].dims)
            if len(dims) == 2:
                sites.append(MatMulSite(node.name, node.input[1], dims[0], dims[1]))
    return sites


def add_const(graph: onnx.GraphProto, name: str, array: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Make ``nodes`` the graph's nodes and drop the initializers no node reads any more."""
    del graph.node[:]
    graph.node.extend(nodes)
    still = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in still]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def opset_of(model: onnx.ModelProto) -> int:
    return next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))

