"""Microbenchmark of the token scheme's activation-quantization chain: one MatMul x·W at realistic
shapes, as fp32, as the ``elementwise`` chain (Abs, ReduceMax, Max, Mul, Div, Round, Clip, Add,
Cast -> MatMulIntegerToFloat -> row scale) and as the ``qlinear`` chain (one blocked QuantizeLinear,
a block per row; the graph is raised to opset 21 for it). Variants run interleaved, round after
round, on the same input; the medians and the ratios to fp32 are printed, and the uint8 codes of
the two chains are compared bit for bit.

``--blocks`` and ``--residual`` add the ``block`` (MatMulNBits) and ``token2`` schemes; the CPU's
integer-kernel class (VNNI or AVX2) is printed with the table, since the ratios depend on it.

``python -m rewardrt.bench.probes.quantchain [--threads 1,2] [--rounds 15]`` (needs onnx: the [export] extra).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# (label, batch, tokens, K, N): batch 1 of an ordinary pair, and batch 32 x 64 tokens
SHAPES = (("b1x40 K384 N384", 1, 40, 384, 384), ("b1x40 K384 N1536", 1, 40, 384, 1536),
          ("b1x40 K1536 N384", 1, 40, 1536, 384), ("b32x64 K384 N384", 32, 64, 384, 384),
          ("b32x64 K384 N1536", 32, 64, 384, 1536), ("b32x64 K1536 N384", 32, 64, 1536, 384))
VARIANTS = ("fp32", "elementwise", "qlinear")
# the block scheme (MatMulNBits, 8-bit, accuracy_level 4) at two block sizes, for comparison
BLOCK_VARIANTS = ("block32", "block128")
# the token2 scheme (two integer GEMMs: the codes and their rounding residual), for comparison
RESIDUAL_VARIANTS = ("token2",)


def _matmul_model(k: int, n: int, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph(
        [node], "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", n])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the tracer writes at opset 17 (apply_plan raises both for qlinear)
    return model


def build(k: int, n: int, variant: str, expose_codes: bool = False):
    """The one-MatMul model in ``variant``; ``expose_codes`` adds the uint8 activation as an output."""
    import onnx

    from rewardrt.export.quantize import QuantPlan, apply_plan

    model = _matmul_model(k, n)
    if variant == "fp32":
        return model
    if variant.startswith("block"):
        return apply_plan(model, QuantPlan({"mm": "block"}, block_size=int(variant[len("block"):])))
    if variant == "token2":
        return apply_plan(model, QuantPlan({"mm": "token2"}))
    model = apply_plan(model, QuantPlan({"mm": "token"}, chain=variant))
    if expose_codes:
        model.graph.output.append(onnx.helper.make_tensor_value_info("mm.act.xq", onnx.TensorProto.UINT8, None))
    return model


def activation(batch: int, tokens: int, k: int, seed: int = 1) -> np.ndarray:
    """Activations like a BERT layer's: mostly unit scale, a few outlier channels, some exact ties."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, tokens, k)).astype(np.float32)
    x[..., rng.choice(k, 4, replace=False)] *= 20.0
    # one row whose scale is exactly 1 with values on .5 ties (round half to even must agree), one
    # all-zero row (the scale's floor) and one row of tiny values
    x[0, 0, :] = np.resize(np.array([127.0, -2.5, 3.5, -0.5, 0.5, 126.5, -127.0], np.float32), k)
    x[0, 1, :] = 0.0
    x[0, 2, :] *= 1e-30
    return x


def codes_match(k: int, n: int, x: np.ndarray, threads: int = 1) -> dict:
    """Do both chains give the same uint8 codes and outputs on ``x``?"""
    from rewardrt.runtime.session import make_session

    outs = {}
    for variant in ("elementwise", "qlinear"):
        outs[variant] = make_session(build(k, n, variant, True).SerializeToString(), threads).run(None, {"x": x})
    (ye, qe), (yq, qq) = outs["elementwise"], outs["qlinear"]
    return {"codes_identical": bool(np.array_equal(qe, qq)), "codes_differing": int(np.sum(qe != qq)),
            "output_max_abs_diff": float(np.abs(ye - yq).max())}


def run(threads: tuple[int, ...], rounds: int, calls: int, blocks: bool = False, residual: bool = False) -> dict:
    from rewardrt.runtime.cpu import cpu_features
    from rewardrt.runtime.session import make_session

    variants = VARIANTS + (BLOCK_VARIANTS if blocks else ()) + (RESIDUAL_VARIANTS if residual else ())
    results: dict = {"threads": list(threads), "rounds": rounds, "calls_per_round": calls,
                     "int8_dot_product": cpu_features()["int8_dot_product"], "shapes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for label, b, s, k, n in SHAPES:
            x = activation(b, s, k)
            check = codes_match(k, n, x)
            paths = {}
            for v in variants:
                paths[v] = Path(tmp) / f"{v}-{k}-{n}.onnx"
                paths[v].write_bytes(build(k, n, v).SerializeToString())
            for t in threads:
                sessions = {v: make_session(paths[v], t) for v in variants}
                for sess in sessions.values():  # warm-up
                    sess.run(None, {"x": x})
                per_round: dict[str, list[float]] = {v: [] for v in variants}
                for r in range(rounds):
                    order = variants[r % len(variants):] + variants[:r % len(variants)]
                    for v in order:
                        t0 = time.perf_counter()
                        for _ in range(calls):
                            sessions[v].run(None, {"x": x})
                        per_round[v].append((time.perf_counter() - t0) / calls)
                med = {v: statistics.median(ts) * 1e3 for v, ts in per_round.items()}
                # per-round ratios, then their median: drifts of the shared machine cancel out
                ratio = {f"{a}/{c}": statistics.median(x1 / x2 for x1, x2 in zip(per_round[a], per_round[c]))
                         for a, c in (("elementwise", "fp32"), ("qlinear", "fp32"), ("qlinear", "elementwise"))
                         + tuple((b, "fp32") for b in variants if b.startswith("block") or b == "token2")}
                results["shapes"].append({"shape": label, "threads": t, "ms": med, "ratios": ratio, **check})
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.probes.quantchain", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=20, help="calls per variant per round")
    p.add_argument("--blocks", action="store_true", help="also time the block scheme (MatMulNBits)")
    p.add_argument("--residual", action="store_true", help="also time the token2 scheme (two integer GEMMs)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    threads = tuple(int(t) for t in args.threads.split(","))
    res = run(threads, args.rounds, args.calls, args.blocks, args.residual)
    print(f"integer kernels of this CPU: {res['int8_dot_product']}")
    print(f"{'shape':20} {'t':>2} {'fp32 ms':>8} {'elem ms':>8} {'qlin ms':>8} {'elem/fp32':>9} "
          f"{'qlin/fp32':>9} {'qlin/elem':>9}  codes")
    for r in res["shapes"]:
        m, q = r["ms"], r["ratios"]
        print(f"{r['shape']:20} {r['threads']:>2} {m['fp32']:8.3f} {m['elementwise']:8.3f} {m['qlinear']:8.3f} "
              f"{q['elementwise/fp32']:9.3f} {q['qlinear/fp32']:9.3f} {q['qlinear/elementwise']:9.3f}  "
              f"{'identical' if r['codes_identical'] else str(r['codes_differing']) + ' differ'}"
              f" (out max|Δ| {r['output_max_abs_diff']:.1e})"
              + "".join(f"  {k} {v:.3f}" for k, v in q.items() if k.startswith(("block", "token2"))))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
