"""The integer-GEMM MatMul (``token``, ``token2``): int8 weights per output channel, optionally
GPTQ-rounded and SmoothQuant-smoothed, then the row scale; and the one-sided shift folded away."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rewardrt.export.quantize.activations import activation_range, residual_steps
from rewardrt.export.quantize.sites import MS_DOMAIN, add_const


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


def integer_matmul_nodes(node: onnx.NodeProto, w: np.ndarray, xq: str, ascale: str, rq: str | None,
                          graph: onnx.GraphProto, outliers: tuple[str, np.ndarray] | None,
                          hessian: np.ndarray | None = None,
                          cache: dict | None = None, bits: int = 7,
                          shift: np.ndarray | None = None) -> list[onnx.NodeProto]:
    """x·W from the quantized activation: int8 weights per output channel, then the row scale.

    ``outliers`` = (fp32 activation columns tensor, their channel indices): those input channels
    were zeroed before quantization and are multiplied here in fp32 with their weight rows.
    ``hessian`` (XᵀX of the activation as the integer path sees it) switches weight rounding to
    :func:`gptq_int8`; ``cache`` keeps its result across plans of one export. ``rq``: the residual
    codes (``token2``), multiplied by the same weights and added on their finer scale. ``shift``:
    the codes are one-sided codes of x + shift (zero point 0): shift · (int8 weights x their scales)
    is subtracted, so the result is x·W as the integer weights see it."""
    p = node.name or node.output[0]
    mk = helper.make_node
    tail: list[onnx.NodeProto] = []
    y = node.output[0]
    if outliers is not None:
        cols, idx = outliers
        add_const(graph, f"{p}.w_outliers", w[idx].astype(np.float32))
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
    else:
        # the weights as the integer path sees them depend on the plan (smoothing is fitted to the
        # MatMuls sharing the activation), so the key is their bytes, not the node's name
        key = (p, hashlib.sha1(w.tobytes()).hexdigest())
        codes = cache.get(key) if cache is not None else None
        if codes is None:
            codes = gptq_int8(w, hessian, w_scale)
            if cache is not None:
                cache[key] = codes
    add_const(graph, f"{p}.wq", codes)
    add_const(graph, f"{p}.wscale", w_scale)
    add_const(graph, f"{p}.one", np.array(1.0, dtype=np.float32))
    add_const(graph, f"{p}.zp", np.array(0 if shift is not None else activation_range(bits)[1], dtype=np.uint8))
    if rq is None:
        out = [
            mk("MatMulIntegerToFloat", [xq, f"{p}.wq", f"{p}.one", f"{p}.wscale", f"{p}.zp"],
               [f"{p}.yq"], domain=MS_DOMAIN, name=f"{p}.MatMulIntegerToFloat"),
            mk("Mul", [f"{p}.yq", ascale], [y if shift is None else f"{p}.yshift"], name=f"{p}.RowScale"),
        ]
        if shift is not None:
            correction = shift.astype(np.float64) @ (codes.astype(np.float64) * w_scale.astype(np.float64))
            add_const(graph, f"{p}.unshift", (-correction).astype(np.float32))
            out.append(mk("Add", [f"{p}.yshift", f"{p}.unshift"], [y], name=f"{p}.Unshift"))
        return out + tail
    add_const(graph, f"{p}.inv_steps", np.array(1.0 / residual_steps(bits), dtype=np.float32))
    return [
        mk("MatMulIntegerToFloat", [xq, f"{p}.wq", f"{p}.one", f"{p}.wscale", f"{p}.zp"],
           [f"{p}.yq_hi"], domain=MS_DOMAIN, name=f"{p}.MatMulIntegerToFloat"),
        mk("MatMulIntegerToFloat", [rq, f"{p}.wq", f"{p}.inv_steps", f"{p}.wscale", f"{p}.zp"],
           [f"{p}.yq_lo"], domain=MS_DOMAIN, name=f"{p}.MatMulIntegerToFloatResidual"),
        mk("Add", [f"{p}.yq_hi", f"{p}.yq_lo"], [f"{p}.yq"], name=f"{p}.ResidualAdd"),
        mk("Mul", [f"{p}.yq", ascale], [y], name=f"{p}.RowScale"),
    ] + tail


def fold_unshifts(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """``nodes`` with each one-sided MatMul's ``Unshift`` Add folded into the bias that is added
    further down (the layer norm's bias Add), when the path there is Adds only and no other node
    reads it: one Add less per FFN. Adding the constant a few Adds later is the same sum up to
    float rounding. Unshifts with no such bias stay as they are."""
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    folded: set[int] = set()
    for unshift in (n for n in nodes if n.op_type == "Add" and n.name.endswith(".Unshift")):
        correction = numpy_helper.to_array(inits[unshift.input[1]])
        tensor = unshift.output[0]
        for _ in range(4):  # Unshift -> outlier Add -> residual Add -> bias Add, at most
            nxt = readers.get(tensor, [])
            if len(nxt) != 1 or nxt[0].op_type != "Add" or tensor in outputs:
                break
            add = nxt[0]
            other = add.input[1] if add.input[0] == tensor else add.input[0]
            bias = inits.get(other)
            if bias is None:
                tensor = add.output[0]
                continue
            if (tuple(bias.dims) == correction.shape and bias.data_type == TensorProto.FLOAT
                    and len(readers[other]) == 1):
                summed = numpy_helper.to_array(bias).astype(np.float64) + correction
                bias.CopyFrom(numpy_helper.from_array(summed.astype(np.float32), other))
                for reader in readers[unshift.output[0]]:
                    reader.input[list(reader.input).index(unshift.output[0])] = unshift.input[0]
                folded.add(id(unshift))
            break
    return [n for n in nodes if id(n) not in folded]


def smoothing_factors(act_absmax: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel s = max|x|^alpha / max|W_row|^(1-alpha), kept in [1e-2, 1e2]."""
    a = np.maximum(act_absmax.astype(np.float64), 1e-5)
    b = np.maximum(np.abs(w).max(axis=1).astype(np.float64), 1e-5)
    return np.clip(a**alpha / b ** (1.0 - alpha), 1e-2, 1e2).astype(np.float32)

