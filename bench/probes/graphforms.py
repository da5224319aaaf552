"""Forms of one quantized graph, timed against each other: the artifact as written, with the
export's compaction (``rewardrt.export.quantize.compact``: sibling integer GEMMs fused, zero points
shared), and with the expanded layer norms put back as fused ``SkipLayerNormalization`` /
``LayerNormalization`` nodes.

In one process, every variant's session open at once, rounds alternating and the variants' order
rotating each round: batch-1 latency of ``session.run`` on ordinary dev pairs (20-80 tokens, each
at its own length) and on calls of 32 of them, per variant the median over rounds of the per-round
median, and the ratio to the first variant per round (median). Also the node counts and whether
the scores match the first variant bit for bit.

``python -m rewardrt.bench.probes.graphforms --model M.onnx [--threads 1] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

import numpy as np
import onnx
from onnx import helper

# the names the export gives the plain-op layer norm (rewardrt.export.graph._expanded_layer_norm)
_LN_PARTS = ("Mean", "Center", "Square", "Variance", "AddEps", "Sqrt", "Normalize", "Gamma", "Beta")


def fused_layer_norms(model: onnx.ModelProto) -> int:
    """Put the plain-op layer norms of ``graph.expand_layer_norms`` back as one fused node each (in
    place; SkipLayerNormalization when the two Adds before it are the ones it wrote)."""
    graph = model.graph
    by_name = {n.name: n for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    drop, put = set(), {}
    for n in graph.node:
        if n.op_type != "ReduceMean" or not n.name.endswith(".Mean"):
            continue
        p = n.name[: -len(".Mean")]
        parts = {k: by_name.get(f"{p}.{k}") for k in _LN_PARTS}
        if any(v is None for k, v in parts.items() if k != "Beta"):
            continue
        eps = float(onnx.numpy_helper.to_array(inits[parts["AddEps"].input[1]]))
        gamma = parts["Gamma"].input[1]
        beta = parts["Beta"].input[1] if parts["Beta"] is not None else ""
        out = (parts["Beta"] or parts["Gamma"]).output[0]
        add0, add1 = by_name.get(f"{p}.Add0"), by_name.get(f"{p}.Add1")
        if add0 is not None and add1 is not None:
            ins = [add0.input[0], add0.input[1], gamma, beta, add1.input[1]]
            new = helper.make_node("SkipLayerNormalization", ins, [out], domain="com.microsoft",
                                   epsilon=eps, name=f"{p}.fused")
            first = add0
            drop.update(id(x) for x in (add0, add1))
        else:
            new = helper.make_node("LayerNormalization", [n.input[0], gamma, beta] if beta else [n.input[0], gamma],
                                   [out], axis=-1, epsilon=eps, name=f"{p}.fused")
            first = n
        drop.update(id(x) for x in parts.values() if x is not None)
        put[id(first)] = new
    nodes = []
    for n in graph.node:
        if id(n) in put:
            nodes.append(put[id(n)])
        if id(n) not in drop:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(put)


def variants(path: str) -> dict[str, bytes]:
    from rewardrt.export.quantize.compact import compact

    base = onnx.load(path)
    out = {"as written": base.SerializeToString()}
    compacted = onnx.ModelProto.FromString(out["as written"])
    compact(compacted)
    out["compacted"] = compacted.SerializeToString()
    fused = onnx.ModelProto.FromString(out["compacted"])
    fused_layer_norms(fused)
    out["compacted + fused layer norms"] = fused.SerializeToString()
    return out


def main(argv: list[str] | None = None) -> int:
    from rewardrt.bench.workloads import ORDINARY_TOKENS, read_dev
    from rewardrt.runtime.session import make_session
    from rewardrt.runtime.spec import spec_from_metadata
    from rewardrt.runtime.tokenizer import PairEncoder, load_tokenizer, pad

    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.probes.graphforms", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--pairs", type=int, default=48, help="batch-1 calls per round")
    args = p.parse_args(argv)
    forms = variants(args.model)
    sessions = {k: make_session(v, args.threads) for k, v in forms.items()}
    first = next(iter(sessions.values()))
    spec, tok = spec_from_metadata(first.get_modelmeta().custom_metadata_map, args.model)
    rows = read_dev()
    ids, _ = PairEncoder(load_tokenizer(tok, args.model), spec.max_length)([r["a"] for r in rows], [r["b"] for r in rows])
    ordinary = [x for x in ids if ORDINARY_TOKENS[0] <= len(x) <= ORDINARY_TOKENS[1]]
    singles = [pad([x]) for x in ordinary[: args.pairs]]
    batch = sorted(ordinary[: 32], key=len)
    batches = [pad(batch)]
    names = list(sessions)

    def run(s, feed):
        return s.run(["score"], {"input_ids": feed[0], "attention_mask": feed[1]})[0]

    same = {k: all(np.array_equal(run(sessions[k], f), run(sessions[names[0]], f)) for f in singles + batches)
            for k in names}
    t1 = {k: [] for k in names}
    t32 = {k: [] for k in names}
    for r in range(args.rounds + 1):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            s = sessions[k]
            times = []
            for f in singles:
                t = time.perf_counter()
                run(s, f)
                times.append(time.perf_counter() - t)
            tb = []
            for _ in range(3):
                t = time.perf_counter()
                run(s, batches[0])
                tb.append(time.perf_counter() - t)
            if r:  # round 0 is a warm-up
                t1[k].append(statistics.median(times) * 1e3)
                t32[k].append(statistics.median(tb) * 1e3)
    print(f"model {args.model}; {args.threads} thread(s); {args.rounds} rounds; load {os.getloadavg()[0]:.2f}")
    print("| form | nodes | batch-1 ms | ratio | batch-32 ms | ratio | scores == first |")
    print("|---|---|---|---|---|---|---|")
    for k in names:
        g = onnx.ModelProto.FromString(forms[k]).graph
        nodes = len(g.node)
        r1 = statistics.median(a / b for a, b in zip(t1[names[0]], t1[k]))
        r32 = statistics.median(a / b for a, b in zip(t32[names[0]], t32[k]))
        print(f"| {k} | {nodes} | {statistics.median(t1[k]):.2f} | {r1:.2f}x | {statistics.median(t32[k]):.1f} | "
              f"{r32:.2f}x | {'yes' if same[k] else 'no'} |")
    for k in names:
        c = collections.Counter(n.op_type for n in onnx.ModelProto.FromString(forms[k]).graph.node)
        print(k, dict(c.most_common(12)))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
