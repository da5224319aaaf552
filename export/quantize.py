"""INT8 rewrites of an optimized fp32 graph, one MatMul at a time.

Why not plain ``quantize_dynamic``: it quantizes each activation tensor with ONE scale for the whole
batch, so (1) the mean⊕max pooling amplifies the noise of the few outlier channels that set that
scale (measured on MiniLM + a linear head: mean |Δ| 0.037-0.078, far over budget) and (2) a pair's
score depends on what else is in its batch. The schemes here quantize activations per token:

``token``  W8A8: activations int8 per token (symmetric, one scale per row, computed at run time),
           weights int8 per output channel (symmetric). Integer GEMM through ``MatMulIntegerToFloat``
           (MLAS u8s8, VNNI on AVX-512/AVX-VNNI CPUs), then the per-row scale.
``block``  ``MatMulNBits`` 8-bit weights in blocks of ``block_size`` along K with int8 activations
           quantized per block of each row (accuracy_level 4): finer scales, so more accurate where
           a row has outliers, at some speed cost.
``fp32``   left alone.

All schemes are row-wise, so a row's result never depends on other rows of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SCHEMES = ("fp32", "token", "block")
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


def _const(graph: onnx.GraphProto, name: str, array: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Make ``nodes`` the graph's nodes and drop the initializers no node reads any more."""
    del graph.node[:]
    graph.node.extend(nodes)
    still = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in still]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _opset(model: onnx.ModelProto) -> int:
    return next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


CHAINS = ("elementwise", "qlinear")


def _quantize_activation_nodes(x: str, p: str, graph: onnx.GraphProto, opset: int,
                               inv_smooth: np.ndarray | None, k: int,
                               chain: str = "qlinear") -> tuple[list[onnx.NodeProto], str, str]:
    """Per-token int8 quantization of activation ``x``: (nodes, uint8 tensor, per-row scale).

    Symmetric, one scale per row = max|x_row| / 127, stored as uint8 with zero point 128 so the GEMM
    runs on MLAS's u8s8 kernels (VNNI where the CPU has it).

    ``chain`` says how the divide-round-shift-cast step is written: ``elementwise`` as five ONNX
    ops (Div, Round, Clip, Add, Cast: five passes over the activation), ``qlinear`` as one per-axis
    ``QuantizeLinear`` on a [rows, K] view of it (one pass; the reshapes are views). Both give the
    same codes (round half to even of x / scale, plus 128). ``k``: the activation's last dimension."""
    if chain not in CHAINS:
        raise ValueError(f"chain must be one of {CHAINS}, got {chain!r}")
    mk = helper.make_node
    nodes: list[onnx.NodeProto] = []
    if inv_smooth is not None:
        _const(graph, f"{p}.inv_smooth", inv_smooth.astype(np.float32))
        nodes.append(mk("Mul", [x, f"{p}.inv_smooth"], [f"{p}.xsm"], name=f"{p}.Smooth"))
        x = f"{p}.xsm"
    _const(graph, f"{p}.inv127", np.array(1.0 / 127.0, dtype=np.float32))
    _const(graph, f"{p}.tiny", np.array(1e-12, dtype=np.float32))
    if opset >= 18:  # axes became an input in opset 18
        _const(graph, f"{p}.axes", np.array([-1], dtype=np.int64))
        reduce = mk("ReduceMax", [f"{p}.abs", f"{p}.axes"], [f"{p}.amax"], keepdims=1, name=f"{p}.ReduceMax")
    else:
        reduce = mk("ReduceMax", [f"{p}.abs"], [f"{p}.amax"], axes=[-1], keepdims=1, name=f"{p}.ReduceMax")
    nodes += [
        mk("Abs", [x], [f"{p}.abs"], name=f"{p}.Abs"),
        reduce,
        mk("Max", [f"{p}.amax", f"{p}.tiny"], [f"{p}.amax1"], name=f"{p}.Max"),
        mk("Mul", [f"{p}.amax1", f"{p}.inv127"], [f"{p}.ascale"], name=f"{p}.Scale"),
    ]
    if chain == "qlinear":
        # per-axis QuantizeLinear wants a 1-D scale and zero point along one axis: view the
        # activation as [rows, K]; the zero points (128 per row) come from a QuantizeLinear of the
        # scales themselves with a huge scale (round(s / 1e30) + 128 = 128), sized like them.
        _const(graph, f"{p}.flat", np.array([-1], dtype=np.int64))
        _const(graph, f"{p}.rows_k", np.array([-1, k], dtype=np.int64))
        _const(graph, f"{p}.huge", np.array(1e30, dtype=np.float32))
        _const(graph, f"{p}.zp128", np.array(128, dtype=np.uint8))
        nodes += [
            mk("Shape", [x], [f"{p}.shape"], name=f"{p}.Shape"),
            mk("Reshape", [f"{p}.ascale", f"{p}.flat"], [f"{p}.scale1d"], name=f"{p}.ScaleView"),
            mk("QuantizeLinear", [f"{p}.scale1d", f"{p}.huge", f"{p}.zp128"], [f"{p}.zp1d"],
               name=f"{p}.ZeroPoints"),
            mk("Reshape", [x, f"{p}.rows_k"], [f"{p}.x2d"], name=f"{p}.RowsView"),
            mk("QuantizeLinear", [f"{p}.x2d", f"{p}.scale1d", f"{p}.zp1d"], [f"{p}.xq2d"], axis=0,
               name=f"{p}.Quantize"),
            mk("Reshape", [f"{p}.xq2d", f"{p}.shape"], [f"{p}.xq"], name=f"{p}.View"),
        ]
        return nodes, f"{p}.xq", f"{p}.ascale"
    _const(graph, f"{p}.lo", np.array(-127.0, dtype=np.float32))
    _const(graph, f"{p}.hi", np.array(127.0, dtype=np.float32))
    _const(graph, f"{p}.zpf", np.array(128.0, dtype=np.float32))
    nodes += [
        mk("Div", [x, f"{p}.ascale"], [f"{p}.xs"], name=f"{p}.Div"),
        mk("Round", [f"{p}.xs"], [f"{p}.xr"], name=f"{p}.Round"),
        mk("Clip", [f"{p}.xr", f"{p}.lo", f"{p}.hi"], [f"{p}.xc"], name=f"{p}.Clip"),
        mk("Add", [f"{p}.xc", f"{p}.zpf"], [f"{p}.xz"], name=f"{p}.Shift"),
        mk("Cast", [f"{p}.xz"], [f"{p}.xq"], to=TensorProto.UINT8, name=f"{p}.Cast"),
    ]
    return nodes, f"{p}.xq", f"{p}.ascale"


def gptq_int8(w: np.ndarray, hessian: np.ndarray, scale: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """int8 codes of ``w`` [K, N] on the per-column grid ``scale`` [N], rounded GPTQ-style.

    Rounding input rows one at a time and spreading each row's error over the rows not yet rounded,
    weighted by the inverse of ``hessian`` = XᵀX of the calibration activations [K, K], minimises
    the error of x·W on inputs like the calibration ones rather than the error of W itself."""
    w = w.astype(np.float64).T.copy()                    # [N, K]: the paper's orientation
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += np.eye(len(h)) * damp * np.mean(np.diag(h))
    try:
        u = np.linalg.cholesky(np.linalg.inv(h)).T       # upper Cholesky factor of H⁻¹
    except np.linalg.LinAlgError:
        return np.clip(np.rint(w.T / scale), -127, 127).astype(np.int8)
    sc = scale.astype(np.float64)
    q = np.empty_like(w)
    for i in range(w.shape[1]):
        codes = np.clip(np.rint(w[:, i] / sc), -127, 127)
        q[:, i] = codes
        err = (w[:, i] - codes * sc) / u[i, i]
        w[:, i + 1:] -= np.outer(err, u[i, i + 1:])
    return q.T.astype(np.int8)


def _integer_matmul_nodes(node: onnx.NodeProto, w: np.ndarray, xq: str, ascale: str,
                          graph: onnx.GraphProto, outliers: tuple[str, np.ndarray] | None,
                          hessian: np.ndarray | None = None,
                          cache: dict | None = None) -> list[onnx.NodeProto]:
    """x·W from the quantized activation: int8 weights per output channel, then the row scale.

    ``outliers`` = (fp32 activation columns tensor, their channel indices): those input channels
    were zeroed before quantization and are multiplied here in fp32 with their weight rows.
    ``hessian`` (XᵀX of the activation as the integer path sees it) switches weight rounding to
    :func:`gptq_int8`; ``cache`` keeps its result across plans of one export."""
    p = node.name or node.output[0]
    mk = helper.make_node
    tail: list[onnx.NodeProto] = []
    y = node.output[0]
    if outliers is not None:
        cols, idx = outliers
        _const(graph, f"{p}.w_outliers", w[idx].astype(np.float32))
        w = w.copy()
        w[idx] = 0.0
        tail = [
            mk("MatMul", [cols, f"{p}.w_outliers"], [f"{p}.y_outliers"], name=f"{p}.OutlierMatMul"),
            mk("Add", [f"{p}.y_int", f"{p}.y_outliers"], [y], name=f"{p}.OutlierAdd"),
        ]
        y = f"{p}.y_int"
    w_absmax = np.abs(w).max(axis=0)
    w_scale = np.where(w_absmax > 0, w_absmax / 127.0, 1.0).astype(np.float32)
    if hessian is None:
        codes = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)
    elif cache is not None and p in cache:
        codes = cache[p]
    else:
        codes = gptq_int8(w, hessian, w_scale)
        if cache is not None:
            cache[p] = codes
    _const(graph, f"{p}.wq", codes)
    _const(graph, f"{p}.wscale", w_scale)
    _const(graph, f"{p}.one", np.array(1.0, dtype=np.float32))
    _const(graph, f"{p}.zp", np.array(128, dtype=np.uint8))
    return [
        mk("MatMulIntegerToFloat", [xq, f"{p}.wq", f"{p}.one", f"{p}.wscale", f"{p}.zp"],
           [f"{p}.yq"], domain=MS_DOMAIN, name=f"{p}.MatMulIntegerToFloat"),
        mk("Mul", [f"{p}.yq", ascale], [y], name=f"{p}.RowScale"),
    ] + tail


def smoothing_factors(act_absmax: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel s = max|x|^alpha / max|W_row|^(1-alpha), kept in [1e-2, 1e2]."""
    a = np.maximum(act_absmax.astype(np.float64), 1e-5)
    b = np.maximum(np.abs(w).max(axis=1).astype(np.float64), 1e-5)
    return np.clip(a**alpha / b ** (1.0 - alpha), 1e-2, 1e2).astype(np.float32)


def apply_plan(model: onnx.ModelProto, plan: Mapping[str, str], block_size: int = 32,
               act_absmax: Mapping[str, np.ndarray] | None = None,
               alpha: float | None = None, outliers: int = 0,
               outlier_ratio: float = 6.0, hessians: Mapping[str, np.ndarray] | None = None,
               cache: dict | None = None, chain: str = "qlinear") -> onnx.ModelProto:
    """A copy of ``model`` with each MatMul named in ``plan`` rewritten by its scheme.

    MatMuls of the ``token`` scheme that read the same activation (Q, K and V) share one
    quantization of it. ``act_absmax`` (per MatMul: per-channel max |activation| on calibration
    data) with ``alpha`` turns on SmoothQuant-style smoothing for them; with ``outliers`` > 0, up to
    that many input channels whose calibration max exceeds ``outlier_ratio`` x the median channel's
    stay fp32 (LLM.int8()-style decomposition), so they no longer set every token's scale.
    ``hessians`` (per MatMul: XᵀX of its calibration input) turn on GPTQ rounding of the weights;
    pass the same ``cache`` dict to every call of one export to compute it once per MatMul.
    ``chain``: how activations are quantized (see :func:`_quantize_activation_nodes`)."""
    if chain not in CHAINS:
        raise ValueError(f"chain must be one of {CHAINS}, got {chain!r}")
    unknown = {s for s in plan.values() if s not in SCHEMES}
    if unknown:
        raise ValueError(f"plan uses unknown schemes {sorted(unknown)}; known: {SCHEMES}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    opset = _opset(model)
    inits = {t.name: t for t in graph.initializer}
    sites = {s.name: s for s in quantizable_matmuls(model)}
    missing = set(plan) - set(sites)
    if missing:
        raise ValueError(f"plan names MatMuls that are not in the graph: {sorted(missing)[:3]}")
    token = [n for n in graph.node if n.name in sites and plan.get(n.name) == "token"]
    weights = {n.name: numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in token}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for n in token:
        groups.setdefault(n.input[0], []).append(n)
    inv_smooth: dict[str, np.ndarray | None] = {}
    outlier_idx: dict[str, np.ndarray] = {}
    for x, members in groups.items():
        inv_smooth[x] = None
        if outliers > 0 and act_absmax is not None and members[0].name in act_absmax:
            a = act_absmax[members[0].name]
            top = np.argsort(-a)[:outliers]
            top = np.sort(top[a[top] > outlier_ratio * np.median(a)])
            if top.size:
                outlier_idx[x] = top
        if alpha is not None and act_absmax is not None and members[0].name in act_absmax:
            stacked = np.concatenate([weights[m.name] for m in members], axis=1)
            s = smoothing_factors(act_absmax[members[0].name], stacked, alpha)
            if x in outlier_idx:  # outlier channels go the fp32 way, unsmoothed
                s[outlier_idx[x]] = 1.0
            for m in members:
                weights[m.name] = weights[m.name] * s[:, None]
            inv_smooth[x] = 1.0 / s
        if x in outlier_idx:  # zero the outlier channels in the integer path
            keep = np.ones(weights[members[0].name].shape[0], dtype=np.float32)
            keep[outlier_idx[x]] = 0.0
            inv_smooth[x] = keep if inv_smooth[x] is None else inv_smooth[x] * keep
    new_nodes: list[onnx.NodeProto] = []
    quantized: dict[str, tuple[str, str]] = {}
    outlier_cols: dict[str, tuple[str, np.ndarray]] = {}
    block_nodes = []
    for node in graph.node:
        scheme = plan.get(node.name, "fp32") if node.name in sites else "fp32"
        if scheme == "token":
            x = node.input[0]
            if x not in quantized:
                prefix = f"{node.name}.act"
                nodes, xq, ascale = _quantize_activation_nodes(x, prefix, graph, opset, inv_smooth[x],
                                                               sites[node.name].k, chain)
                new_nodes.extend(nodes)
                quantized[x] = (xq, ascale)
                if x in outlier_idx:
                    _const(graph, f"{prefix}.outlier_idx", outlier_idx[x].astype(np.int64))
                    new_nodes.append(helper.make_node(
                        "Gather", [x, f"{prefix}.outlier_idx"], [f"{prefix}.outlier_cols"], axis=-1,
                        name=f"{prefix}.OutlierGather"))
                    outlier_cols[x] = (f"{prefix}.outlier_cols", outlier_idx[x])
            hessian = None
            if hessians is not None and node.name in hessians:
                scale = inv_smooth[x] if inv_smooth[x] is not None else 1.0
                hessian = hessians[node.name] * np.outer(scale, scale)
            new_nodes.extend(_integer_matmul_nodes(node, weights[node.name], *quantized[x], graph,
                                                   outlier_cols.get(x), hessian, cache))
            continue
        if scheme == "block":
            block_nodes.append(node.name)
        new_nodes.append(node)
    _replace_nodes(graph, new_nodes)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    if block_nodes:
        model = _apply_block(model, block_nodes, block_size)
    return model


def _apply_block(model: onnx.ModelProto, nodes: list[str], block_size: int) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    import logging

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4,
                                       bits=8, op_types_to_quantize=("MatMul",))
    q = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True, accuracy_level=4,
                             nodes_to_exclude=[n.name for n in model.graph.node if n.name not in set(nodes)],
                             algo_config=cfg)
    q.process()
    return q.model.model


def quantize_embedding_tables(model: onnx.ModelProto, min_rows: int = 1000) -> list[str]:
    """Store large Gather tables (the word embeddings) as int8 rows with one fp32 scale per row.

    ``Gather(table, ids)`` becomes ``Cast(Gather(table_q, ids)) * Gather(scales, ids)``: exact per
    row up to int8 rounding (about 0.4% of the row's largest entry), a quarter of the bytes, and the
    cost is two small gathers. Returns the names of the tables rewritten (in place)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done = []
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or axis != 0 or len(table.dims) != 2 or table.dims[0] < min_rows:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(table).astype(np.float32)
        absmax = np.abs(w).max(axis=1, keepdims=True)
        scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        p = node.name or node.output[0]
        _const(graph, f"{table.name}.q", q)
        _const(graph, f"{table.name}.scale", scale)
        mk = helper.make_node
        new_nodes += [
            mk("Gather", [f"{table.name}.q", node.input[1]], [f"{p}.rows_q"], axis=0, name=f"{p}.GatherQ"),
            mk("Gather", [f"{table.name}.scale", node.input[1]], [f"{p}.rows_scale"], axis=0, name=f"{p}.GatherScale"),
            mk("Cast", [f"{p}.rows_q"], [f"{p}.rows_f"], to=TensorProto.FLOAT, name=f"{p}.Cast"),
            mk("Mul", [f"{p}.rows_f", f"{p}.rows_scale"], [node.output[0]], name=f"{p}.Dequant"),
        ]
        done.append(table.name)
    _replace_nodes(graph, new_nodes)
    return done


def int8_tables(model: onnx.ModelProto) -> list[str]:
    """Names of the embedding tables stored as int8 rows by :func:`quantize_embedding_tables`."""
    return [t.name[: -len(".q")] for t in model.graph.initializer
            if t.name.endswith(".q") and t.data_type == TensorProto.INT8]
