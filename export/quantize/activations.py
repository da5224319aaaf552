"""Per-token activation codes: their ranges (7 or 8 bits, one-sided after a GELU) and the nodes
that compute them (the ``qlinear`` or ``elementwise`` chain)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from rewardrt.export.quantize.opset import QLINEAR_OPSET
from rewardrt.export.quantize.sites import add_const

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


CHAINS = ("elementwise", "qlinear")


def activation_nodes(x: str, p: str, graph: onnx.GraphProto, opset: int,
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
    The MatMul then subtracts shift · W (see :func:`integer_matmul_nodes`)."""
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
        add_const(graph, f"{p}.inv_smooth", inv_smooth.astype(np.float32))
        nodes.append(mk("Mul", [x, f"{p}.inv_smooth"], [f"{p}.xsm"], name=f"{p}.Smooth"))
        x = f"{p}.xsm"
    qmax, zp = activation_range(bits)
    magnitude = f"{p}.abs"  # what the row's maximum is taken of: |x|, or x + shift (>= 0)
    if shift is not None:
        qmax, zp = one_sided_range(bits), 0
        add_const(graph, f"{p}.shift", shift.astype(np.float32))
        nodes.append(mk("Add", [x, f"{p}.shift"], [f"{p}.xshift"], name=f"{p}.Shift"))
        x = magnitude = f"{p}.xshift"
    add_const(graph, f"{p}.inv_qmax", np.array(1.0 / qmax, dtype=np.float32))
    add_const(graph, f"{p}.tiny", np.array(1e-12, dtype=np.float32))
    if opset >= 18:  # axes became an input in opset 18
        add_const(graph, f"{p}.axes", np.array([-1], dtype=np.int64))
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
            add_const(graph, f"{p}.huge", np.array(1e30, dtype=np.float32))
            add_const(graph, f"{p}.zp", np.array(zp, dtype=np.uint8))
            nodes.append(mk("QuantizeLinear", [f"{p}.ascale", f"{p}.huge", f"{p}.zp"], [f"{p}.zps"],
                            name=f"{p}.ZeroPoints"))
            zp_in = [f"{p}.zps"]
        nodes.append(mk("QuantizeLinear", [x, f"{p}.ascale", *zp_in], [f"{p}.xq"], name=f"{p}.Quantize", **block))
        if not residual:
            return nodes, f"{p}.xq", f"{p}.ascale", None
        add_const(graph, f"{p}.inv_steps", np.array(1.0 / residual_steps(bits), dtype=np.float32))
        nodes += [
            mk("DequantizeLinear", [f"{p}.xq", f"{p}.ascale", *zp_in], [f"{p}.xd"], name=f"{p}.Dequantize",
               **block),
            mk("Sub", [x, f"{p}.xd"], [f"{p}.r"], name=f"{p}.Residual"),
            mk("Mul", [f"{p}.ascale", f"{p}.inv_steps"], [f"{p}.rscale"], name=f"{p}.ResidualScale"),
            mk("QuantizeLinear", [f"{p}.r", f"{p}.rscale", *zp_in], [f"{p}.rq"], name=f"{p}.QuantizeResidual",
               **block),
        ]
        return nodes, f"{p}.xq", f"{p}.ascale", f"{p}.rq"
    add_const(graph, f"{p}.lo", np.array(-float(qmax), dtype=np.float32))
    add_const(graph, f"{p}.hi", np.array(float(qmax), dtype=np.float32))
    add_const(graph, f"{p}.zpf", np.array(float(zp), dtype=np.float32))
    nodes += [
        mk("Div", [x, f"{p}.ascale"], [f"{p}.xs"], name=f"{p}.Div"),
        mk("Round", [f"{p}.xs"], [f"{p}.xr"], name=f"{p}.Round"),
        mk("Clip", [f"{p}.xr", f"{p}.lo", f"{p}.hi"], [f"{p}.xc"], name=f"{p}.Clip"),
        mk("Add", [f"{p}.xc", f"{p}.zpf"], [f"{p}.xz"], name=f"{p}.Shift"),
        mk("Cast", [f"{p}.xz"], [f"{p}.xq"], to=TensorProto.UINT8, name=f"{p}.Cast"),
    ]
    return nodes, f"{p}.xq", f"{p}.ascale", None
