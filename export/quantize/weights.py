"""Weight-only int8: ``dequant`` blocks expanded at load, ``block`` (MatMulNBits); embedding tables
as float16 or int8 rows."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rewardrt.export.quantize.sites import add_const, replace_nodes


def dequant_weights(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes [K/b, b, N] and fp32 scales [K/b, 1, N] of ``w`` [K, N] in blocks of
    b = ``block_size`` rows (b = K, one scale per output channel, when ``block_size`` does not divide K)."""
    k, n = w.shape
    b = block_size if k % block_size == 0 else k
    blocks = w.reshape(k // b, b, n)
    absmax = np.abs(blocks).max(axis=1, keepdims=True)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(blocks / scale), -127, 127).astype(np.int8)
    return codes, scale


def dequant_matmul_nodes(node: onnx.NodeProto, w: np.ndarray, graph: onnx.GraphProto,
                          block_size: int, blocked: bool = True) -> list[onnx.NodeProto]:
    """``node`` reading int8 weights through one blocked ``DequantizeLinear`` (``blocked``, opset
    >= 21: codes ``[K, N]``, scales ``[K/b, N]``, axis 0) or, on older opsets, Cast·Mul·Reshape:
    constant either way, so onnxruntime's constant folding turns them into one fp32 initializer at
    load (the same fp32 weights bit for bit: code times scale, rounded once). The one-node form
    peaks lower while it is folded (measured on the v6 default: 134 MB RSS after load instead of
    204; ``bench/README.md``); it needs the session's ``session.disable_quant_qdq`` (set by
    ``rewardrt.runtime.session``), else onnxruntime fuses it with the MatMul into a MatMulNBits
    that quantizes the activations."""
    p = node.name or node.output[0]
    codes, scale = dequant_weights(w, block_size)
    mk = helper.make_node
    if blocked:
        kb, b, n = codes.shape
        add_const(graph, f"{p}.wq8", codes.reshape(kb * b, n))
        add_const(graph, f"{p}.wq8_scale", scale.reshape(kb, n))
        return [
            mk("DequantizeLinear", [f"{p}.wq8", f"{p}.wq8_scale"], [f"{p}.w_dequant"], axis=0, block_size=b,
               name=f"{p}.WeightDequant"),
            mk("MatMul", [node.input[0], f"{p}.w_dequant"], list(node.output), name=p),
        ]
    add_const(graph, f"{p}.wq8", codes)
    add_const(graph, f"{p}.wq8_scale", scale)
    add_const(graph, f"{p}.wq8_shape", np.array(w.shape, dtype=np.int64))
    return [
        mk("Cast", [f"{p}.wq8"], [f"{p}.wq8_f"], to=TensorProto.FLOAT, name=f"{p}.WeightCast"),
        mk("Mul", [f"{p}.wq8_f", f"{p}.wq8_scale"], [f"{p}.wq8_blocks"], name=f"{p}.WeightScale"),
        mk("Reshape", [f"{p}.wq8_blocks", f"{p}.wq8_shape"], [f"{p}.w_dequant"], name=f"{p}.WeightReshape"),
        mk("MatMul", [node.input[0], f"{p}.w_dequant"], list(node.output), name=p),
    ]


def apply_block(model: onnx.ModelProto, nodes: list[str], block_size: int) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4,
                                       bits=8, op_types_to_quantize=("MatMul",))
    q = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True, accuracy_level=4,
                             nodes_to_exclude=[n.name for n in model.graph.node if n.name not in set(nodes)],
                             algo_config=cfg)
    q.process()
    return q.model.model


EMBEDDING_TABLES = ("float16", "int8")


def quantize_embedding_tables(model: onnx.ModelProto, precision: str = "float16", min_rows: int = 1000) -> list[str]:
    """Store large Gather tables (the word embeddings) in ``precision``; returns their names (the
    graph is rewritten in place).

    ``float16``: ``Cast(Gather(table16, ids))``, half the bytes, within 2^-11 of each entry: the
    scores move by at most a few 1e-4 (the default model on the bundled held-out pairs). ``int8``:
    ``Cast(Gather(table_q, ids)) * Gather(scales, ids)``, one fp32 scale per row, a quarter of the
    bytes; its rounding (up to 0.4% of the row's largest entry) moves a short answer's score by up to
    0.04 alone (a digit token's row), before any MatMul is quantized."""
    if precision not in EMBEDDING_TABLES:
        raise ValueError(f"embedding table precision must be one of {EMBEDDING_TABLES}, got {precision!r}")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done = []
    new_nodes: list[onnx.NodeProto] = []
    mk = helper.make_node
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or axis != 0 or len(table.dims) != 2 or table.dims[0] < min_rows:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(table).astype(np.float32)
        p = node.name or node.output[0]
        if precision == "float16":
            if not np.abs(w).max() < np.finfo(np.float16).max:
                raise ValueError(f"embedding table {table.name!r} holds values beyond float16's range; "
                                 "store it as int8 rows (--embedding-table int8)")
            add_const(graph, f"{table.name}.f16", w.astype(np.float16))
            new_nodes += [
                mk("Gather", [f"{table.name}.f16", node.input[1]], [f"{p}.rows_f16"], axis=0, name=f"{p}.Gather16"),
                mk("Cast", [f"{p}.rows_f16"], [node.output[0]], to=TensorProto.FLOAT, name=f"{p}.Cast"),
            ]
        else:
            absmax = np.abs(w).max(axis=1, keepdims=True)
            scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
            q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
            add_const(graph, f"{table.name}.q", q)
            add_const(graph, f"{table.name}.scale", scale)
            new_nodes += [
                mk("Gather", [f"{table.name}.q", node.input[1]], [f"{p}.rows_q"], axis=0, name=f"{p}.GatherQ"),
                mk("Gather", [f"{table.name}.scale", node.input[1]], [f"{p}.rows_scale"], axis=0,
                   name=f"{p}.GatherScale"),
                mk("Cast", [f"{p}.rows_q"], [f"{p}.rows_f"], to=TensorProto.FLOAT, name=f"{p}.Cast"),
                mk("Mul", [f"{p}.rows_f", f"{p}.rows_scale"], [node.output[0]], name=f"{p}.Dequant"),
            ]
        done.append(table.name)
    replace_nodes(graph, new_nodes)
    return done


def int8_tables(model: onnx.ModelProto) -> list[str]:
    """Names of the embedding tables stored as int8 rows by :func:`quantize_embedding_tables`."""
    return [t.name[: -len(".q")] for t in model.graph.initializer
            if t.name.endswith(".q") and t.data_type == TensorProto.INT8]


def float16_tables(model: onnx.ModelProto) -> list[str]:
    """Names of the embedding tables stored as float16 by :func:`quantize_embedding_tables`."""
    return [t.name[: -len(".f16")] for t in model.graph.initializer
            if t.name.endswith(".f16") and t.data_type == TensorProto.FLOAT16]


def float16_exact_weights(model: onnx.ModelProto, min_elements: int = 4096) -> list[str]:
    """Store the fp32 MatMul/Gemm weights that float16 holds exactly as float16 plus one ``Cast``
    back to fp32; returns their names (the graph is rewritten in place).

    Lossless: a weight is only stored this way when every entry survives the round trip bit for bit,
    which is the case for every layer a recipe trained with ``release_precision: float16`` (the
    default model's). onnxruntime folds the ``Cast`` once when the session loads, so the MatMul runs
    on the very fp32 weights it ran on before, at half the file bytes (v9 as a single file: 56.4 →
    42.6 MB). Weights that float16 does not hold exactly stay fp32."""
    graph = model.graph
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for i in node.input:
            readers.setdefault(i, set()).add(node.op_type)
    casts: list[onnx.NodeProto] = []
    kept: list[onnx.TensorProto] = []
    done: list[str] = []
    for t in graph.initializer:
        ops = readers.get(t.name, set())
        if (t.data_type != TensorProto.FLOAT or not ops or not ops <= {"MatMul", "Gemm"}
                or int(np.prod(t.dims)) < min_elements):
            kept.append(t)
            continue
        w = numpy_helper.to_array(t)
        half = w.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), w):  # also false for values beyond float16's range
            kept.append(t)
            continue
        kept.append(numpy_helper.from_array(half, f"{t.name}.f16w"))
        casts.append(helper.make_node("Cast", [f"{t.name}.f16w"], [t.name], to=TensorProto.FLOAT,
                                      name=f"{t.name}.CastWeight"))
        done.append(t.name)
    if done:
        del graph.initializer[:]
        graph.initializer.extend(kept)
        nodes = casts + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    return done
