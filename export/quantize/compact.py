"""Fewer nodes on the batch-1 path: rewrites of a quantized graph that keep every value bit for bit.

At batch 1 (one pair of ~25 tokens) a call spends much of its time per node rather than per
arithmetic operation: onnxruntime dispatches each node, and an integer GEMM of 25 rows pays its
fixed costs (packing the activation, row sums) once per call whatever its width. So:

- :func:`fuse_sibling_gemms`: the integer GEMMs of one ``token`` group (MatMuls sharing one
  quantization of one activation: Q, K and V, or two of them) become ONE ``MatMulIntegerToFloat``
  on their weights side by side (``[K, N1 + N2 + ...]``), one row-scale ``Mul``, their fp32
  outlier-channel products likewise one ``MatMul`` and one ``Add``, then one ``Split``. Every
  output column is the same int32 sum times the same two scales as before, so the values are
  bit-identical (tests/test_quantize.py);
- :func:`share_zero_points`: the blocked ``QuantizeLinear`` that sizes each activation's zero
  points like its row scales (``[batch, sequence, 1]``) is made once per zero-point value and
  shared: every quantized activation of the encoder has that shape;
- :func:`drop_scale_floors`: the ``Max`` that kept a row scale above 1e-12 goes (an all-zero row
  still gives exactly 0, see there).

Both are row-wise like everything else, so a pair's score still never depends on its batch.
:func:`compact` runs all three; ``quantize()`` calls it (``QuantPlan.compact``).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rewardrt.export.quantize.sites import MS_DOMAIN, add_const, replace_nodes


def _scalar(inits: dict[str, onnx.TensorProto], name: str) -> tuple | None:
    """(dtype, value) of a scalar initializer, for comparing constants by value; None otherwise."""
    t = inits.get(name)
    if t is None:
        return None
    a = numpy_helper.to_array(t)
    return (a.dtype.str, a.item()) if a.size == 1 else None


def _readers(nodes: list[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in nodes:
        for i in n.input:
            out[i].append(n)
    return out


def topological(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """``nodes`` in an order where every input is produced before it is read, as close to the given
    order as possible (a rewrite may append a fused node after one of its readers)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(nodes)
    out: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or an unproduced input near node {rest[0].name!r}")
        pending = rest
    return out


def _member(mm: onnx.NodeProto, readers, producer, inits) -> dict | None:
    """An integer GEMM followed by its row-scale Mul (and, optionally, its outlier Add), or None."""
    if mm.domain != MS_DOMAIN or mm.op_type != "MatMulIntegerToFloat" or len(mm.input) != 5:
        return None
    if mm.input[1] not in inits or mm.input[3] not in inits:
        return None
    nxt = readers.get(mm.output[0], [])
    if len(nxt) != 1 or nxt[0].op_type != "Mul":
        return None
    rowscale = nxt[0]
    ascale = rowscale.input[1] if rowscale.input[0] == mm.output[0] else rowscale.input[0]
    m = {"mm": mm, "rowscale": rowscale, "ascale": ascale, "tail": None,
         "key": (mm.input[0], ascale, _scalar(inits, mm.input[2]), _scalar(inits, mm.input[4]))}
    after = readers.get(rowscale.output[0], [])
    if len(after) == 1 and after[0].op_type == "Add":
        add = after[0]
        other = add.input[1] if add.input[0] == rowscale.output[0] else add.input[0]
        src = producer.get(other)
        if src is not None and src.op_type == "MatMul" and src.input[1] in inits \
                and len(readers.get(other, [])) == 1:
            m["tail"] = (src, add)
    return m


def fuse_sibling_gemms(model: onnx.ModelProto) -> int:
    """Fuse the integer GEMMs that share one quantized activation and row scale (in place); returns
    how many GEMMs were removed. See the module doc."""
    graph = model.graph
    nodes = list(graph.node)
    inits = {t.name: t for t in graph.initializer}
    readers = _readers(nodes)
    producer = {o: n for n in nodes for o in n.output}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for n in nodes:
        m = _member(n, readers, producer, inits)
        if m is not None and None not in m["key"]:
            groups[m["key"]].append(m)
    drop: set[int] = set()
    added: list[tuple[int, list[onnx.NodeProto]]] = []  # (position of the first member, new nodes)
    removed = 0
    index = {id(n): i for i, n in enumerate(nodes)}
    for members in groups.values():
        if len(members) < 2:
            continue
        ks = {inits[m["mm"].input[1]].dims[0] for m in members}
        if len(ks) != 1:
            continue
        first = members[0]["mm"]
        p = f"{first.name}.fused{len(members)}"
        wq = np.concatenate([numpy_helper.to_array(inits[m["mm"].input[1]]) for m in members], axis=1)
        widths = [int(inits[m["mm"].input[1]].dims[1]) for m in members]
        # per output channel; a per-tensor scale is repeated over its MatMul's columns
        wscale = np.concatenate([np.broadcast_to(numpy_helper.to_array(inits[m["mm"].input[3]]).astype(np.float32)
                                                 .reshape(-1), (w,)) for m, w in zip(members, widths)])
        add_const(graph, f"{p}.wq", wq)
        add_const(graph, f"{p}.wscale", wscale.astype(np.float32))
        add_const(graph, f"{p}.split", np.array(widths, dtype=np.int64))
        mk = helper.make_node
        new = [mk("MatMulIntegerToFloat", [first.input[0], f"{p}.wq", first.input[2], f"{p}.wscale", first.input[4]],
                  [f"{p}.yq"], domain=MS_DOMAIN, name=f"{p}.MatMulIntegerToFloat"),
               mk("Mul", [f"{p}.yq", members[0]["ascale"]], [f"{p}.y"], name=f"{p}.RowScale")]
        y = f"{p}.y"
        tails = [m["tail"] for m in members]
        same_cols = len({t[0].input[0] for t in tails if t is not None}) == 1
        if all(t is not None for t in tails) and same_cols:
            w_out = np.concatenate([numpy_helper.to_array(inits[t[0].input[1]]) for t in tails], axis=1)
            add_const(graph, f"{p}.w_outliers", w_out.astype(np.float32))
            new += [mk("MatMul", [tails[0][0].input[0], f"{p}.w_outliers"], [f"{p}.y_outliers"],
                       name=f"{p}.OutlierMatMul"),
                    mk("Add", [y, f"{p}.y_outliers"], [f"{p}.y_all"], name=f"{p}.OutlierAdd")]
            y = f"{p}.y_all"
            outs = [t[1].output[0] for t in tails]
            for t in tails:
                drop.update((id(t[0]), id(t[1])))
        else:
            outs = [m["rowscale"].output[0] for m in members]
        new.append(mk("Split", [y, f"{p}.split"], outs, axis=-1, name=f"{p}.Split"))
        for m in members:
            drop.update((id(m["mm"]), id(m["rowscale"])))
        added.append((index[id(first)], new))
        removed += len(members) - 1
    if not added:
        return 0
    at = dict(added)
    out: list[onnx.NodeProto] = []
    for i, n in enumerate(nodes):
        if i in at:
            out.extend(at[i])
        if id(n) not in drop:
            out.append(n)
    replace_nodes(graph, topological(out, graph))
    return removed


def share_zero_points(model: onnx.ModelProto) -> int:
    """Make every blocked zero-point ``QuantizeLinear`` (the scale of a row quantized with a huge
    scale: round(s / 1e30) + zp = zp) of one zero-point value read by all rows' quantizations
    (in place); returns how many such nodes were removed. Every quantized activation of the encoder
    is ``[batch, sequence, K]``, so its zero points are ``[batch, sequence, 1]`` whichever it is."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep: list[onnx.NodeProto] = []
    for n in graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) == 3 and n.input[1] in inits:
            huge = _scalar(inits, n.input[1])
            zp = _scalar(inits, n.input[2])
            if huge is not None and zp is not None and huge[1] >= 1e29:
                if zp in first:
                    rename[n.output[0]] = first[zp]
                    continue
                first[zp] = n.output[0]
        keep.append(n)
    return _rewire(graph, keep, rename)


def _rewire(graph: onnx.GraphProto, keep: list[onnx.NodeProto], rename: dict[str, str]) -> int:
    """The graph's nodes become ``keep``, whose inputs named in ``rename`` now read its values (the
    outputs of the dropped nodes replaced by what stands in for them); returns how many were dropped."""
    if not rename:
        return 0
    for n in keep:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    replace_nodes(graph, keep)
    return len(rename)


def drop_scale_floors(model: onnx.ModelProto) -> int:
    """Remove the ``Max(row max, 1e-12)`` before each row scale (in place); returns how many.

    The floor only guarded the division of an all-zero row: such a row's scale is now 0, its codes
    whatever ``QuantizeLinear`` makes of 0/0, and the GEMM's finite result times the row scale 0 is
    exactly the 0 that x·W is for that row (plus the one-sided shift's correction, as before). Every
    other row gets the same scale, codes and output as before, bit for bit."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    rename: dict[str, str] = {}
    keep: list[onnx.NodeProto] = []
    for n in graph.node:
        if n.op_type == "Max" and len(n.input) == 2 and n.name.endswith(".act.Max"):
            floor = _scalar(inits, n.input[1])
            if floor is not None and 0 < floor[1] <= 1e-12:
                rename[n.output[0]] = n.input[0]
                continue
        keep.append(n)
    return _rewire(graph, keep, rename)


def compact(model: onnx.ModelProto) -> dict[str, int]:
    """The rewrites above, in place: {"gemms_fused": ..., "zero_points_shared": ..., "scale_floors_dropped": ...}."""
    return {"gemms_fused": fuse_sibling_gemms(model), "zero_points_shared": share_zero_points(model),
            "scale_floors_dropped": drop_scale_floors(model)}
