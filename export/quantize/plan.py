"""The quantization plan as one typed options object, and :func:`apply_plan` that rewrites a graph
by it (the export's *quantize* stage: :func:`quantize`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rewardrt.export.quantize.activations import (
    ACTIVATION_BITS, CHAINS, GELU_FLOOR, GELU_OPS, activation_nodes,
)
from rewardrt.export.quantize.compact import compact as compact_graph
from rewardrt.export.quantize.integer import fold_unshifts, integer_matmul_nodes, smoothing_factors
from rewardrt.export.quantize.opset import QLINEAR_OPSET, raise_opset
from rewardrt.export.quantize.sites import (
    MS_DOMAIN, MatMulSite, add_const, opset_of, quantizable_matmuls, replace_nodes,
)
from rewardrt.export.quantize.weights import (
    EMBEDDING_TABLES, apply_block, dequant_matmul_nodes, quantize_embedding_tables,
)
from rewardrt.runtime.cpu import INTEGER_GEMM_SCHEMES as INTEGER_SCHEMES

SCHEMES = ("fp32", "token", "token2", "block", "dequant")
WEIGHT_ONLY_SCHEMES = ("dequant", "block")  # int8 weights, activations not quantized by us


@dataclass(frozen=True)
class QuantPlan:
    """Everything :func:`apply_plan` needs to know besides the graph and the calibration statistics.

    ``schemes``: MatMul name -> scheme (:data:`SCHEMES`; MatMuls not named stay fp32).
    ``activation_bits``: width of the integer-GEMM activation codes; 7 is exact on every x86 CPU, 8
    only on CPUs with VNNI (see :func:`activation_range`). ``block_size``: along K, for ``block``
    and ``dequant`` weights. ``chain``: how activations are quantized (same codes either way, see
    :func:`activation_nodes`). ``one_sided_gelu``: ``token`` groups reading a GELU output quantize it
    one-sided, twice as finely (``qlinear`` chain only). With calibration statistics:
    ``smooth_alpha`` turns on SmoothQuant-style smoothing of ``token`` groups; up to
    ``outlier_channels`` input channels whose calibration max exceeds ``outlier_ratio`` x the median
    channel's stay fp32 (LLM.int8()-style decomposition), so they no longer set every token's scale;
    ``gptq`` rounds integer-GEMM weights GPTQ-style against the calibration inputs.
    ``embedding_table``: how :func:`quantize` stores the word-embedding table (float16 or int8 rows,
    see :func:`.weights.quantize_embedding_tables`)."""

    schemes: Mapping[str, str]
    activation_bits: int = 7
    block_size: int = 32
    chain: str = "qlinear"
    one_sided_gelu: bool = True
    smooth_alpha: float | None = None
    outlier_channels: int = 0
    outlier_ratio: float = 6.0
    gptq: bool = True
    embedding_table: str = "float16"

    def __post_init__(self) -> None:
        if not isinstance(self.schemes, Mapping):
            raise TypeError(f"schemes must be a MatMul name -> scheme mapping, got {type(self.schemes).__name__}")
        unknown = {s for s in self.schemes.values() if s not in SCHEMES}
        if unknown:
            raise ValueError(f"plan uses unknown schemes {sorted(unknown)}; known: {SCHEMES}")
        object.__setattr__(self, "schemes", MappingProxyType(dict(self.schemes)))  # the caller's dict stays theirs
        if self.activation_bits not in ACTIVATION_BITS or isinstance(self.activation_bits, bool):
            raise ValueError(f"activation_bits must be one of {ACTIVATION_BITS}, got {self.activation_bits!r}")
        if self.chain not in CHAINS:
            raise ValueError(f"chain must be one of {CHAINS}, got {self.chain!r}")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {self.block_size!r}")
        if self.embedding_table not in EMBEDDING_TABLES:
            raise ValueError(f"embedding_table must be one of {EMBEDDING_TABLES}, got {self.embedding_table!r}")

    def with_schemes(self, schemes: Mapping[str, str]) -> QuantPlan:
        """The same options on another MatMul -> scheme map (the plan search's trials)."""
        return replace(self, schemes=schemes)

    @property
    def counts(self) -> dict[str, int]:
        """Scheme -> number of MatMuls."""
        values = list(self.schemes.values())
        return {s: values.count(s) for s in dict.fromkeys(values)}


@dataclass(frozen=True)
class ActivationStats:
    """Per MatMul: per-channel max |input| and XᵀX of its input, over the real (unpadded) tokens of
    the calibration pairs (the export's *fit* stage computes them)."""

    absmax: Mapping[str, np.ndarray] = field(default_factory=dict)
    hessian: Mapping[str, np.ndarray] = field(default_factory=dict)


Group = tuple[str, str]  # (activation tensor, integer scheme): MatMuls sharing one quantization of it


def _smoothing(groups: dict[Group, list[onnx.NodeProto]], weights: dict[str, np.ndarray], plan: QuantPlan,
               stats: ActivationStats) -> tuple[dict[Group, np.ndarray | None], dict[Group, np.ndarray]]:
    """Per ``token`` group: the input's inverse smoothing factors (outlier channels zeroed), and the
    outlier channels that go the fp32 way. Scales ``weights`` in place to match."""
    inv_smooth: dict[Group, np.ndarray | None] = {}
    outlier_idx: dict[Group, np.ndarray] = {}
    for g, members in groups.items():
        inv_smooth[g] = None
        absmax = stats.absmax.get(members[0].name)
        if g[1] != "token" or absmax is None:  # token2 carries activations at ~13-15 bits: no smoothing
            continue
        if plan.outlier_channels > 0:
            top = np.argsort(-absmax)[:plan.outlier_channels]
            top = np.sort(top[absmax[top] > plan.outlier_ratio * np.median(absmax)])
            if top.size:
                outlier_idx[g] = top
        if plan.smooth_alpha is not None:
            stacked = np.concatenate([weights[m.name] for m in members], axis=1)
            sm = smoothing_factors(absmax, stacked, plan.smooth_alpha)
            if g in outlier_idx:  # outlier channels go the fp32 way, unsmoothed
                sm[outlier_idx[g]] = 1.0
            for m in members:
                weights[m.name] = weights[m.name] * sm[:, None]
            inv_smooth[g] = 1.0 / sm
        if g in outlier_idx:  # zero the outlier channels in the integer path
            keep = np.ones(weights[members[0].name].shape[0], dtype=np.float32)
            keep[outlier_idx[g]] = 0.0
            inv_smooth[g] = keep if inv_smooth[g] is None else inv_smooth[g] * keep
    return inv_smooth, outlier_idx


def _gelu_shifts(graph: onnx.GraphProto, groups: dict[Group, list[onnx.NodeProto]],
                 sites: dict[str, MatMulSite], inv_smooth: dict[Group, np.ndarray | None]) -> dict[Group, np.ndarray]:
    """Per ``token`` group reading a GELU output: the per-channel shift that makes it >= 0."""
    producer = {out: n.op_type for n in graph.node for out in n.output}
    shifts: dict[Group, np.ndarray] = {}
    for g, members in groups.items():
        if g[1] == "token" and producer.get(g[0]) in GELU_OPS:
            k = sites[members[0].name].k
            scale = inv_smooth[g] if inv_smooth[g] is not None else np.ones(k, dtype=np.float32)
            shifts[g] = (GELU_FLOOR * scale).astype(np.float32)  # outlier channels: 0, zeroed too
    return shifts


def apply_plan(model: onnx.ModelProto, plan: QuantPlan, stats: ActivationStats | None = None,
               cache: dict | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with each MatMul named in ``plan.schemes`` rewritten by its scheme.

    MatMuls of one integer scheme that read the same activation (Q, K and V) share one quantization
    of it. ``stats`` (calibration statistics) turn on what ``plan`` asks of them: smoothing and
    outlier channels from ``stats.absmax``, GPTQ rounding from ``stats.hessian``; pass the same
    ``cache`` dict to every call of one export to compute GPTQ once per MatMul and weights."""
    if not isinstance(plan, QuantPlan):
        raise TypeError(f"plan must be a QuantPlan, got {type(plan).__name__}")
    stats = stats or ActivationStats()
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    sites = {s.name: s for s in quantizable_matmuls(model)}
    missing = set(plan.schemes) - set(sites)
    if missing:
        raise ValueError(f"plan names MatMuls that are not in the graph: {sorted(missing)[:3]}")
    integer = [n for n in graph.node if n.name in sites and plan.schemes.get(n.name) in INTEGER_SCHEMES]
    dequant = any(plan.schemes.get(n) == "dequant" for n in sites)
    if (integer and plan.chain == "qlinear") or dequant:  # blocked QuantizeLinear / DequantizeLinear
        raise_opset(model, QLINEAR_OPSET)
    weights = {n.name: numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in integer}
    groups: dict[Group, list[onnx.NodeProto]] = {}
    for n in integer:
        groups.setdefault((n.input[0], plan.schemes[n.name]), []).append(n)
    inv_smooth, outlier_idx = _smoothing(groups, weights, plan, stats)
    shifts = (_gelu_shifts(graph, groups, sites, inv_smooth)
              if plan.one_sided_gelu and plan.chain == "qlinear" else {})
    hessians = stats.hessian if plan.gptq else {}
    opset = opset_of(model)
    new_nodes: list[onnx.NodeProto] = []
    quantized: dict[Group, tuple[str, str, str | None]] = {}
    outlier_cols: dict[Group, tuple[str, np.ndarray]] = {}
    block_nodes = []
    for node in graph.node:
        scheme = plan.schemes.get(node.name, "fp32") if node.name in sites else "fp32"
        if scheme in INTEGER_SCHEMES:
            g = (node.input[0], scheme)
            if g not in quantized:  # the first MatMul of its group quantizes the activation
                prefix = f"{node.name}.act"
                nodes, xq, ascale, rq = activation_nodes(
                    g[0], prefix, graph, opset, inv_smooth[g], sites[node.name].k, plan.chain,
                    residual=scheme == "token2", bits=plan.activation_bits, shift=shifts.get(g))
                new_nodes.extend(nodes)
                quantized[g] = (xq, ascale, rq)
                if g in outlier_idx:
                    add_const(graph, f"{prefix}.outlier_idx", outlier_idx[g].astype(np.int64))
                    new_nodes.append(helper.make_node(
                        "Gather", [g[0], f"{prefix}.outlier_idx"], [f"{prefix}.outlier_cols"], axis=-1,
                        name=f"{prefix}.OutlierGather"))
                    outlier_cols[g] = (f"{prefix}.outlier_cols", outlier_idx[g])
            hessian = None
            if node.name in hessians:
                scale = inv_smooth[g] if inv_smooth[g] is not None else 1.0
                hessian = hessians[node.name] * np.outer(scale, scale)
            new_nodes.extend(integer_matmul_nodes(node, weights[node.name], *quantized[g], graph,
                                                  outlier_cols.get(g), hessian, cache, plan.activation_bits,
                                                  shifts.get(g)))
        elif scheme == "dequant":
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            new_nodes.extend(dequant_matmul_nodes(node, w, graph, plan.block_size, opset >= QLINEAR_OPSET))
        else:
            if scheme == "block":
                block_nodes.append(node.name)
            new_nodes.append(node)
    replace_nodes(graph, fold_unshifts(new_nodes, graph))
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    if block_nodes:
        model = apply_block(model, block_nodes, plan.block_size)
    return model


def quantize(fp32: onnx.ModelProto, plan: QuantPlan, stats: ActivationStats | None = None,
             cache: dict | None = None, compact: bool = True) -> onnx.ModelProto:
    """The export's *quantize* stage: ``fp32`` rewritten by ``plan`` (:func:`apply_plan`), with its
    large embedding tables stored as ``plan.embedding_table`` says, then compacted (``compact``:
    sibling integer GEMMs fused, zero points shared; the same values bit for bit with fewer nodes,
    see :mod:`.compact`). ``fp32`` is left as it was."""
    model = apply_plan(fp32, plan, stats, cache)
    quantize_embedding_tables(model, plan.embedding_table)
    if compact:
        compact_graph(model)
    return model

