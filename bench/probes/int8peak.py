"""The machine's INT8 GEMM peak as onnxruntime reaches it: one large uint8 x int8 GEMM
(``com.microsoft.MatMulIntegerToFloat``, the op and operand types of the ``token`` scheme, and plain
``MatMulInteger`` for comparison), in GOPS (2·M·K·N per call), at each thread count.

The peak quoted is the best call (the machine is shared, so the best call is the closest to what
the CPU can do); the median is kept next to it. ``python -m rewardrt.bench.probes.int8peak``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

DEFAULT_SHAPE = (4096, 1024, 4096)  # M, K, N


def _model(op: str, k: int, n: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(128, np.uint8), "azp")]
    if op == "MatMulIntegerToFloat":
        inits += [numpy_helper.from_array(np.array(0.01, np.float32), "as"),
                  numpy_helper.from_array(np.full(n, 0.01, np.float32), "ws")]
        node = helper.make_node(op, ["a", "w", "as", "ws", "azp"], ["y"], domain="com.microsoft")
        out = TensorProto.FLOAT
    elif op == "MatMulInteger":
        node = helper.make_node(op, ["a", "w", "azp"], ["y"])
        out = TensorProto.INT32
    else:
        raise ValueError(f"op must be MatMulIntegerToFloat or MatMulInteger, got {op!r}")
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", TensorProto.UINT8, ["m", k])],
                              [helper.make_tensor_value_info("y", out, ["m", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def measure(threads: tuple[int, ...] = (1, 2), shape: tuple[int, int, int] = DEFAULT_SHAPE,
            calls: int = 8, ops: tuple[str, ...] = ("MatMulIntegerToFloat", "MatMulInteger")) -> dict:
    """GOPS of each op at each thread count: best and median over ``calls`` timed calls."""
    from rewardrt.runtime.session import make_session

    m, k, n = shape
    a = np.random.default_rng(1).integers(0, 256, size=(m, k), dtype=np.uint8)
    work = 2 * m * k * n
    sessions = {}
    for op in ops:
        blob = _model(op, k, n).SerializeToString()
        for t in threads:
            sessions[(op, t)] = make_session(blob, t)
            sessions[(op, t)].run(None, {"a": a})  # warm-up: packs the weights
    times: dict[tuple, list[float]] = {key: [] for key in sessions}
    for _ in range(calls):  # configurations interleaved call by call, so machine drifts hit all alike
        for key, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, {"a": a})
            times[key].append(time.perf_counter() - t0)
    rows = [{"op": op, "threads": t, "best_gops": work / min(ts) / 1e9,
             "median_gops": work / statistics.median(ts) / 1e9, "calls": calls}
            for (op, t), ts in times.items()]
    return {"shape": {"m": m, "k": k, "n": n}, "gop_per_call": work / 1e9, "rows": rows}


def peak(result: dict, threads: int, op: str = "MatMulIntegerToFloat") -> float | None:
    row = next((r for r in result["rows"] if r["op"] == op and r["threads"] == threads), None)
    return None if row is None else row["best_gops"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.probes.int8peak", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--calls", type=int, default=8)
    p.add_argument("--shape", default="x".join(map(str, DEFAULT_SHAPE)), help="MxKxN")
    args = p.parse_args(argv)
    try:
        shape = tuple(int(v) for v in args.shape.split("x"))
        threads = tuple(int(v) for v in args.threads.split(","))
        if len(shape) != 3 or min(shape) < 1 or min(threads) < 1:
            raise ValueError
    except ValueError:
        print(f"error: --shape must be MxKxN and --threads like 1,2; got {args.shape!r}, {args.threads!r}",
              file=sys.stderr)
        return 2
    res = measure(threads, shape, args.calls)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
