"""INT8 rewrites of an optimized fp32 graph, one MatMul at a time.

Why not plain ``quantize_dynamic``: it quantizes each activation tensor with ONE scale for the whole
batch, so (1) the mean⊕max pooling amplifies the noise of the few outlier channels that set that
scale (measured on MiniLM + a linear head: mean |Δ| 0.037-0.078, far over budget) and (2) a pair's
score depends on what else is in its batch. The schemes here quantize activations per token:

``token``  activations quantized per token (symmetric, one scale per row, computed at run time; 7- or
           8-bit codes, see :func:`activation_range`), weights int8 per output channel (symmetric).
           Integer GEMM through ``MatMulIntegerToFloat`` (MLAS u8s8, VNNI on AVX-512/AVX-VNNI
           CPUs), then the per-row scale. A GELU output (never below -0.17) is quantized
           one-sided instead: x + 0.1701 on codes 0..2·qmax+1, twice as fine, the shift's product
           with the weights subtracted after the GEMM.
``token2`` the same integer GEMM run twice: once on the activation's codes and once on the codes of
           what they left over (the rounding residual, on a 2·qmax times finer grid of the same row),
           so activations are carried at about 13 (7-bit codes) or 15 bits; weights as in ``token``,
           unsmoothed. Twice the integer work plus a few elementwise passes.
``block``  ``MatMulNBits`` 8-bit weights in blocks of ``block_size`` along K with int8 activations
           quantized per block of each row (accuracy_level 4): finer scales, so more accurate where
           a row has outliers, at some speed cost.
``dequant`` weights stored as int8 in blocks of ``block_size`` along K (symmetric, one fp32 scale
           per block and output channel), expanded back to fp32 by a constant Cast·Mul·Reshape
           chain that onnxruntime folds once when the session loads: the MatMul then runs in fp32
           on the dequantized weights. A quarter of the file bytes like ``block``, fp32 speed and
           fp32 activations on every CPU (``block``'s MatMulNBits is about fp32 speed on VNNI CPUs and
           ~2.5x slower on AVX2-only ones), at the price of fp32 weights in memory.
``fp32``   left alone.

All schemes are row-wise, so a row's result never depends on other rows of the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rewardrt.runtime.cpu import INTEGER_GEMM_SCHEMES as INTEGER_SCHEMES

SCHEMES = ("fp32", "token", "token2", "block", "dequant")
WEIGHT_ONLY_SCHEMES = ("dequant", "block")  # int8 weights, activations not quantized by us
ACTIVATION_BITS = (7, 8)


def activation_range(bits: int) -> tuple[int, int]:
    """(largest code, zero point) of ``bits``-bit activation codes stored as uint8.

    8 bits: codes ±127 around 128 (uint8 1..255). 7 bits: ±63 around 64 (uint8 1..127). On x86 CPUs
    without int8 dot-product instructions (AVX2 only, no AVX512_VNNI/AVX_VNNI) onnxruntime's u8s8
    kernels add pairs of uint8 × int8 products in saturating 16-bit integers: 255 × 127 × 2
    overflows, 127 × 127 × 2 = 32,258 does not, so 7-bit codes give exact integer sums on every x86
    CPU (the same scores as measured at export), 8-bit codes only on VNNI CPUs."""
    if bits not in ACTIVATION_BITS:
        raise ValueError(f"activation bits must be one of {ACTIVATION_BITS}, got {bits!r}")
    qmax = 2 ** (bits - 1) - 1
    return qmax, qmax + 1


# Ops whose output never falls below -GELU_FLOOR: GELU's minimum is -0.16997 (erf form) and
# -0.17004 (tanh form, FastGelu). MatMuls reading such an output quantize it one-sided (below).
GELU_OPS = ("Gelu", "BiasGelu", "FastGelu")
GELU_FLOOR = 0.1701


def one_sided_range(bits: int) -> int:
    """Largest code of a one-sided ``bits``-bit activation (zero point 0): 255 for 8 bits, 127 for
    7, so the codes span [0, max] with about twice the resolution of the symmetric ±qmax codes on
    [-max, max]; 127 x 127 x 2 still fits AVX2's saturating int16 pair sums, as in
    :func:`activation_range`."""
    return 2 * activation_range(bits)[0] + 1


def residual_steps(bits: int) -> float:
    """The residual of a code is within ±scale/2: ±qmax codes on a grid of scale / (2·qmax)."""
    return 2.0 * activation_range(bits)[0]


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
    old = _opset(model)
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
            name = _const(graph, f"{node.name or node.output[0]}.axes",
                          np.array(list(axes.ints), dtype=np.int64))
            node.attribute.remove(axes)
            del node.input[1:]
            node.input.append(name)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = version
    model.ir_version = max(model.ir_version, 10)  # opset 21 needs IR version 10


CHAINS = ("elementwise", "qlinear")


def _quantize_activation_nodes(x: str, p: str, graph: onnx.GraphProto, opset: int,
                               inv_smooth: np.ndarray | None, k: int,
                               chain: str = "qlinear", residual: bool = False, bits: int = 7,
                               shift: np.ndarray | None = None,
                               ) -> tuple[list[onnx.NodeProto], str, str, str | None]:
    """Per-token int8 quantization of activation ``x``: (nodes, uint8 tensor, per-row scale, uint8
    codes of the rounding residual on a :func:`residual_steps` times finer grid or None).

    Symmetric, one scale per row = max|x_row| / qmax, stored as uint8 around a zero point (see
    :func:`activation_range`: ``bits`` 8 gives ±127 around 128, 7 gives ±63 around 64) so the GEMM
    runs on MLAS's u8s8 kernels (VNNI where the CPU has it).

    ``chain`` says how the divide-round-shift-cast step is written: ``elementwise`` as five ONNX
    ops (Div, Round, Clip, Add, Cast: five passes over the activation), ``qlinear`` as one blocked
    ``QuantizeLinear`` (opset >= :data:`QLINEAR_OPSET`; one block of ``k`` per row). Both give the
    same codes (round half to even of x / scale, plus the zero point). ``k``: the activation's last
    dimension.
    ``residual`` (``qlinear`` only) also quantizes x - dequantized codes for the ``token2`` scheme.

    ``shift`` (per channel, ``qlinear`` without ``residual`` only): for an activation known never to
    fall below -shift (a GELU output), quantize x + shift >= 0 one-sided instead: scale = max of the
    row / :func:`one_sided_range`, zero point 0, so the same bits resolve the row twice as finely.
    The MatMul then subtracts shift · W (see :func:`_integer_matmul_nodes`)."""
    if chain not in CHAINS:
        raise ValueError(f"chain must be one of {CHAINS}, got {chain!r}")
    if residual and chain != "qlinear":
        raise ValueError("the residual codes of the token2 scheme need chain='qlinear'")
    if shift is not None and (residual or chain != "qlinear"):
        raise ValueError("one-sided (shifted) activation codes need chain='qlinear' and no residual")
    if chain == "qlinear" and opset < QLINEAR_OPSET:
        raise ValueError(f"chain='qlinear' needs opset >= {QLINEAR_OPSET} (blocked QuantizeLinear), "
                         f"the graph has {opset}; see raise_opset")
    mk = helper.make_node
    nodes: list[onnx.NodeProto] = []
    if inv_smooth is not None:
        _const(graph, f"{p}.inv_smooth", inv_smooth.astype(np.float32))
        nodes.append(mk("Mul", [x, f"{p}.inv_smooth"], [f"{p}.xsm"], name=f"{p}.Smooth"))
        x = f"{p}.xsm"
    qmax, zp = activation_range(bits)
    magnitude = f"{p}.abs"  # what the row's maximum is taken of: |x|, or x + shift (>= 0)
    if shift is not None:
        qmax, zp = one_sided_range(bits), 0
        _const(graph, f"{p}.shift", shift.astype(np.float32))
        nodes.append(mk("Add", [x, f"{p}.shift"], [f"{p}.xshift"], name=f"{p}.Shift"))
        x = magnitude = f"{p}.xshift"
    _const(graph, f"{p}.inv_qmax", np.array(1.0 / qmax, dtype=np.float32))
    _const(graph, f"{p}.tiny", np.array(1e-12, dtype=np.float32))
    if opset >= 18:  # axes became an input in opset 18
        _const(graph, f"{p}.axes", np.array([-1], dtype=np.int64))
        reduce = mk("ReduceMax", [magnitude, f"{p}.axes"], [f"{p}.amax"], keepdims=1, name=f"{p}.ReduceMax")
    else:
        reduce = mk("ReduceMax", [magnitude], [f"{p}.amax"], axes=[-1], keepdims=1, name=f"{p}.ReduceMax")
    if shift is None:
        nodes.append(mk("Abs", [x], [f"{p}.abs"], name=f"{p}.Abs"))
    nodes += [
        reduce,
        mk("Max", [f"{p}.amax", f"{p}.tiny"], [f"{p}.amax1"], name=f"{p}.Max"),
        mk("Mul", [f"{p}.amax1", f"{p}.inv_qmax"], [f"{p}.ascale"], name=f"{p}.Scale"),
    ]
    if chain == "qlinear":
        # blocked QuantizeLinear, one block per row: scale and zero point have the row shape
        # [..., 1]. The zero points come from a QuantizeLinear of the scales themselves with a
        # huge scale (round(s / 1e30) + zp = zp), sized like them; one-sided codes have none (0).
        block = {"axis": -1, "block_size": k}
        zp_in = []
        if shift is None:
            _const(graph, f"{p}.huge", np.array(1e30, dtype=np.float32))
            _const(graph, f"{p}.zp", np.array(zp, dtype=np.uint8))
            nodes.append(mk("QuantizeLinear", [f"{p}.ascale", f"{p}.huge", f"{p}.zp"], [f"{p}.zps"],
                            name=f"{p}.ZeroPoints"))
            zp_in = [f"{p}.zps"]
        nodes.append(mk("QuantizeLinear", [x, f"{p}.ascale", *zp_in], [f"{p}.xq"], name=f"{p}.Quantize", **block))
        if not residual:
            return nodes, f"{p}.xq", f"{p}.ascale", None
        _const(graph, f"{p}.inv_steps", np.array(1.0 / residual_steps(bits), dtype=np.float32))
        nodes += [
            mk("DequantizeLinear", [f"{p}.xq", f"{p}.ascale", *zp_in], [f"{p}.xd"], name=f"{p}.Dequantize",
               **block),
            mk("Sub", [x, f"{p}.xd"], [f"{p}.r"], name=f"{p}.Residual"),
            mk("Mul", [f"{p}.ascale", f"{p}.inv_steps"], [f"{p}.rscale"], name=f"{p}.ResidualScale"),
            mk("QuantizeLinear", [f"{p}.r", f"{p}.rscale", *zp_in], [f"{p}.rq"], name=f"{p}.QuantizeResidual",
               **block),
        ]
        return nodes, f"{p}.xq", f"{p}.ascale", f"{p}.rq"
    _const(graph, f"{p}.lo", np.array(-float(qmax), dtype=np.float32))
    _const(graph, f"{p}.hi", np.array(float(qmax), dtype=np.float32))
    _const(graph, f"{p}.zpf", np.array(float(zp), dtype=np.float32))
    nodes += [
        mk("Div", [x, f"{p}.ascale"], [f"{p}.xs"], name=f"{p}.Div"),
        mk("Round", [f"{p}.xs"], [f"{p}.xr"], name=f"{p}.Round"),
        mk("Clip", [f"{p}.xr", f"{p}.lo", f"{p}.hi"], [f"{p}.xc"], name=f"{p}.Clip"),
        mk("Add", [f"{p}.xc", f"{p}.zpf"], [f"{p}.xz"], name=f"{p}.Shift"),
        mk("Cast", [f"{p}.xz"], [f"{p}.xq"], to=TensorProto.UINT8, name=f"{p}.Cast"),
    ]
    return nodes, f"{p}.xq", f"{p}.ascale", None


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


def _integer_matmul_nodes(node: onnx.NodeProto, w: np.ndarray, xq: str, ascale: str, rq: str | None,
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
    else:
        # the weights as the integer path sees them depend on the plan (smoothing is fitted to the
        # MatMuls sharing the activation), so the key is their bytes, not the node's name
        key = (p, hashlib.sha1(w.tobytes()).hexdigest())
        codes = cache.get(key) if cache is not None else None
        if codes is None:
            codes = gptq_int8(w, hessian, w_scale)
            if cache is not None:
                cache[key] = codes
    _const(graph, f"{p}.wq", codes)
    _const(graph, f"{p}.wscale", w_scale)
    _const(graph, f"{p}.one", np.array(1.0, dtype=np.float32))
    _const(graph, f"{p}.zp", np.array(0 if shift is not None else activation_range(bits)[1], dtype=np.uint8))
    if rq is None:
        out = [
            mk("MatMulIntegerToFloat", [xq, f"{p}.wq", f"{p}.one", f"{p}.wscale", f"{p}.zp"],
               [f"{p}.yq"], domain=MS_DOMAIN, name=f"{p}.MatMulIntegerToFloat"),
            mk("Mul", [f"{p}.yq", ascale], [y if shift is None else f"{p}.yshift"], name=f"{p}.RowScale"),
        ]
        if shift is not None:
            correction = shift.astype(np.float64) @ (codes.astype(np.float64) * w_scale.astype(np.float64))
            _const(graph, f"{p}.unshift", (-correction).astype(np.float32))
            out.append(mk("Add", [f"{p}.yshift", f"{p}.unshift"], [y], name=f"{p}.Unshift"))
        return out + tail
    _const(graph, f"{p}.inv_steps", np.array(1.0 / residual_steps(bits), dtype=np.float32))
    return [
        mk("MatMulIntegerToFloat", [xq, f"{p}.wq", f"{p}.one", f"{p}.wscale", f"{p}.zp"],
           [f"{p}.yq_hi"], domain=MS_DOMAIN, name=f"{p}.MatMulIntegerToFloat"),
        mk("MatMulIntegerToFloat", [rq, f"{p}.wq", f"{p}.inv_steps", f"{p}.wscale", f"{p}.zp"],
           [f"{p}.yq_lo"], domain=MS_DOMAIN, name=f"{p}.MatMulIntegerToFloatResidual"),
        mk("Add", [f"{p}.yq_hi", f"{p}.yq_lo"], [f"{p}.yq"], name=f"{p}.ResidualAdd"),
        mk("Mul", [f"{p}.yq", ascale], [y], name=f"{p}.RowScale"),
    ] + tail


def _fold_unshifts(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
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


def _dequant_matmul_nodes(node: onnx.NodeProto, w: np.ndarray, graph: onnx.GraphProto,
                          block_size: int) -> list[onnx.NodeProto]:
    """``node`` reading int8 weights through Cast·Mul·Reshape: all constant, so onnxruntime's
    constant folding turns them back into one fp32 initializer at load."""
    p = node.name or node.output[0]
    codes, scale = dequant_weights(w, block_size)
    _const(graph, f"{p}.wq8", codes)
    _const(graph, f"{p}.wq8_scale", scale)
    _const(graph, f"{p}.wq8_shape", np.array(w.shape, dtype=np.int64))
    mk = helper.make_node
    return [
        mk("Cast", [f"{p}.wq8"], [f"{p}.wq8_f"], to=TensorProto.FLOAT, name=f"{p}.WeightCast"),
        mk("Mul", [f"{p}.wq8_f", f"{p}.wq8_scale"], [f"{p}.wq8_blocks"], name=f"{p}.WeightScale"),
        mk("Reshape", [f"{p}.wq8_blocks", f"{p}.wq8_shape"], [f"{p}.w_dequant"], name=f"{p}.WeightReshape"),
        mk("MatMul", [node.input[0], f"{p}.w_dequant"], list(node.output), name=p),
    ]


def smoothing_factors(act_absmax: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel s = max|x|^alpha / max|W_row|^(1-alpha), kept in [1e-2, 1e2]."""
    a = np.maximum(act_absmax.astype(np.float64), 1e-5)
    b = np.maximum(np.abs(w).max(axis=1).astype(np.float64), 1e-5)
    return np.clip(a**alpha / b ** (1.0 - alpha), 1e-2, 1e2).astype(np.float32)


def apply_plan(model: onnx.ModelProto, plan: Mapping[str, str], block_size: int = 32,
               act_absmax: Mapping[str, np.ndarray] | None = None,
               alpha: float | None = None, outliers: int = 0,
               outlier_ratio: float = 6.0, hessians: Mapping[str, np.ndarray] | None = None,
               cache: dict | None = None, chain: str = "qlinear",
               activation_bits: int = 7, one_sided: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` with each MatMul named in ``plan`` rewritten by its scheme.

    MatMuls of one integer scheme that read the same activation (Q, K and V) share one
    quantization of it, with ``activation_bits``-bit codes (see :func:`activation_range`: 7 is exact
    on every x86 CPU, 8 only on CPUs with VNNI). ``act_absmax`` (per MatMul: per-channel max
    |activation| on calibration data) with ``alpha`` turns on SmoothQuant-style smoothing for the
    ``token`` groups; with ``outliers`` > 0, up to
    that many input channels whose calibration max exceeds ``outlier_ratio`` x the median channel's
    stay fp32 (LLM.int8()-style decomposition), so they no longer set every token's scale.
    ``hessians`` (per MatMul: XᵀX of its calibration input) turn on GPTQ rounding of the weights;
    pass the same ``cache`` dict to every call of one export to compute it once per MatMul.
    ``chain``: how activations are quantized (see :func:`_quantize_activation_nodes`).
    ``one_sided``: ``token`` groups reading a GELU output (:data:`GELU_OPS`, >= -GELU_FLOOR) with
    the ``qlinear`` chain quantize it one-sided, twice as finely (the FFN's second MatMul, whose
    input has the largest outliers)."""
    if chain not in CHAINS:
        raise ValueError(f"chain must be one of {CHAINS}, got {chain!r}")
    activation_range(activation_bits)  # validates
    unknown = {s for s in plan.values() if s not in SCHEMES}
    if unknown:
        raise ValueError(f"plan uses unknown schemes {sorted(unknown)}; known: {SCHEMES}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    sites = {s.name: s for s in quantizable_matmuls(model)}
    missing = set(plan) - set(sites)
    if missing:
        raise ValueError(f"plan names MatMuls that are not in the graph: {sorted(missing)[:3]}")
    integer = [n for n in graph.node if n.name in sites and plan.get(n.name) in INTEGER_SCHEMES]
    if integer and chain == "qlinear":
        raise_opset(model, QLINEAR_OPSET)
    opset = _opset(model)
    weights = {n.name: numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in integer}
    # MatMuls reading the same activation with the same scheme share one quantization of it
    groups: dict[tuple[str, str], list[onnx.NodeProto]] = {}
    for n in integer:
        groups.setdefault((n.input[0], plan[n.name]), []).append(n)
    inv_smooth: dict[tuple[str, str], np.ndarray | None] = {}
    outlier_idx: dict[tuple[str, str], np.ndarray] = {}
    for g, members in groups.items():
        inv_smooth[g] = None
        stats = act_absmax[members[0].name] if act_absmax is not None and members[0].name in act_absmax else None
        if g[1] != "token" or stats is None:  # token2 carries activations at ~13-15 bits: no smoothing
            continue
        if outliers > 0:
            top = np.argsort(-stats)[:outliers]
            top = np.sort(top[stats[top] > outlier_ratio * np.median(stats)])
            if top.size:
                outlier_idx[g] = top
        if alpha is not None:
            stacked = np.concatenate([weights[m.name] for m in members], axis=1)
            sm = smoothing_factors(stats, stacked, alpha)
            if g in outlier_idx:  # outlier channels go the fp32 way, unsmoothed
                sm[outlier_idx[g]] = 1.0
            for m in members:
                weights[m.name] = weights[m.name] * sm[:, None]
            inv_smooth[g] = 1.0 / sm
        if g in outlier_idx:  # zero the outlier channels in the integer path
            keep = np.ones(weights[members[0].name].shape[0], dtype=np.float32)
            keep[outlier_idx[g]] = 0.0
            inv_smooth[g] = keep if inv_smooth[g] is None else inv_smooth[g] * keep
    producer = {out: n.op_type for n in graph.node for out in n.output}
    shifts: dict[tuple[str, str], np.ndarray] = {}
    if one_sided and chain == "qlinear":
        for g, members in groups.items():
            if g[1] == "token" and producer.get(g[0]) in GELU_OPS:
                k = sites[members[0].name].k
                scale = inv_smooth[g] if inv_smooth[g] is not None else np.ones(k, dtype=np.float32)
                shifts[g] = (GELU_FLOOR * scale).astype(np.float32)  # outlier channels: 0, zeroed too
    new_nodes: list[onnx.NodeProto] = []
    quantized: dict[tuple[str, str], tuple[str, str, str | None]] = {}
    outlier_cols: dict[tuple[str, str], tuple[str, np.ndarray]] = {}
    block_nodes = []
    for node in graph.node:
        scheme = plan.get(node.name, "fp32") if node.name in sites else "fp32"
        if scheme in INTEGER_SCHEMES:
            x = node.input[0]
            g = (x, scheme)
            if g not in quantized:
                prefix = f"{node.name}.act"
                nodes, xq, ascale, rq = _quantize_activation_nodes(
                    x, prefix, graph, opset, inv_smooth[g], sites[node.name].k, chain,
                    residual=scheme == "token2", bits=activation_bits, shift=shifts.get(g))
                new_nodes.extend(nodes)
                quantized[g] = (xq, ascale, rq)
                if g in outlier_idx:
                    _const(graph, f"{prefix}.outlier_idx", outlier_idx[g].astype(np.int64))
                    new_nodes.append(helper.make_node(
                        "Gather", [x, f"{prefix}.outlier_idx"], [f"{prefix}.outlier_cols"], axis=-1,
                        name=f"{prefix}.OutlierGather"))
                    outlier_cols[g] = (f"{prefix}.outlier_cols", outlier_idx[g])
            hessian = None
            if hessians is not None and node.name in hessians:
                scale = inv_smooth[g] if inv_smooth[g] is not None else 1.0
                hessian = hessians[node.name] * np.outer(scale, scale)
            new_nodes.extend(_integer_matmul_nodes(node, weights[node.name], *quantized[g], graph,
                                                   outlier_cols.get(g), hessian, cache, activation_bits,
                                                   shifts.get(g)))
            continue
        if scheme == "block":
            block_nodes.append(node.name)
        if scheme == "dequant":
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            new_nodes.extend(_dequant_matmul_nodes(node, w, graph, block_size))
            continue
        new_nodes.append(node)
    _replace_nodes(graph, _fold_unshifts(new_nodes, graph))
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
