"""Where the time of a rewardrt artifact goes, from onnxruntime's own profiler: per op type, the
share of kernel time and milliseconds per call, at batch 1 and batch 32; and the integer
throughput its GEMMs reach.

The session is the runtime's (``rewardrt.runtime.session.session_options``) with profiling turned
on; inputs are tokenized and padded exactly as ``RewardModel`` does. The first ``warmup`` calls of
each case are left out. Kernel times are the profiler's ``*_kernel_time`` events; the time a call
spends outside kernels (feeds, fetches, allocation) is ``run_ms - kernel_ms``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# ops whose cost is a GEMM with a constant right operand (the encoder's dense layers); attention's
# own batched products (inside MultiHeadAttention / Attention) are not counted
GEMM_OPS = ("MatMul", "MatMulIntegerToFloat", "MatMulInteger", "MatMulNBits", "Gemm", "DynamicQuantizeMatMul")
INTEGER_GEMM_OPS = ("MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeMatMul")


def _shape(entry: dict) -> list[int]:
    (dims,) = entry.values()
    return [int(d) for d in dims]


def gemm_ops(event: dict) -> int:
    """2·M·K·N of one GEMM node event: M and N from its output, K from its first input."""
    args = event.get("args", {})
    try:
        a = _shape(args["input_type_shape"][0])
        out = _shape(args["output_type_shape"][0])
    except (KeyError, IndexError, ValueError):
        return 0
    if not a or not out:
        return 0
    m = int(np.prod(out[:-1])) if len(out) > 1 else 1
    return 2 * m * a[-1] * out[-1]


def _session_events(trace: list[dict]) -> tuple[list[dict], list[dict]]:
    runs = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    nodes = [e for e in trace if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    return runs, nodes


def breakdown(trace: list[dict], skip_runs: int = 0) -> dict:
    """Per-op-type figures from a profiler trace, over the calls after the first ``skip_runs``."""
    runs, nodes = _session_events(trace)
    kept = runs[skip_runs:]
    if not kept:
        raise ValueError(f"the trace has {len(runs)} runs; nothing left after skipping {skip_runs}")
    windows = [(r["ts"], r["ts"] + r["dur"]) for r in kept]
    starts = np.array([w[0] for w in windows])
    per_op: dict[str, dict] = defaultdict(lambda: {"us": 0.0, "nodes": 0})
    integer = {"ops": 0, "us": 0.0}
    gemm = {"ops": 0, "us": 0.0}
    integer_per_run = np.zeros((len(kept), 2))  # (ops, us) of each call's integer GEMMs
    for e in nodes:
        i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if i < 0 or e["ts"] > windows[i][1]:
            continue  # a warm-up call
        op = e["args"].get("op_name", "?")
        per_op[op]["us"] += e["dur"]
        per_op[op]["nodes"] += 1
        if op in GEMM_OPS:
            gemm["ops"] += gemm_ops(e)
            gemm["us"] += e["dur"]
        if op in INTEGER_GEMM_OPS:
            integer["ops"] += gemm_ops(e)
            integer["us"] += e["dur"]
            integer_per_run[i] += (gemm_ops(e), e["dur"])
    calls = len(kept)
    kernel_us = sum(v["us"] for v in per_op.values())
    run_us = sum(r["dur"] for r in kept)
    ops = [{"op": op, "ms_per_call": v["us"] / calls / 1e3, "share": v["us"] / kernel_us if kernel_us else 0.0,
            "nodes_per_call": v["nodes"] / calls}
           for op, v in sorted(per_op.items(), key=lambda kv: -kv[1]["us"])]

    def gops(d: dict) -> float | None:
        return d["ops"] / (d["us"] * 1e3) if d["us"] > 0 else None  # ops per ns = GOPS

    return {"calls": calls, "run_ms": run_us / calls / 1e3, "kernel_ms": kernel_us / calls / 1e3,
            "ops": ops,
            # best_gops: the call whose integer GEMMs ran fastest (comparable with the peak's best call)
            "integer_gemm": {"gops": gops(integer), "ms_per_call": integer["us"] / calls / 1e3,
                             "gop_per_call": integer["ops"] / calls / 1e9,
                             "best_gops": max((o / (u * 1e3) for o, u in integer_per_run if u > 0), default=None)},
            "all_gemm": {"gops": gops(gemm), "ms_per_call": gemm["us"] / calls / 1e3,
                         "gop_per_call": gemm["ops"] / calls / 1e9}}


def graph_nodes(path: str | Path) -> dict:
    """Nodes of the artifact's graph as written: {"graph_nodes": total, "graph_ops": op type -> count}
    (onnxruntime's own fusions at load may run fewer: the profile's nodes per call)."""
    from collections import Counter

    import onnx

    counts = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {"graph_nodes": sum(counts.values()), "graph_ops": dict(counts.most_common())}


def profile_artifact(path: str | Path, refs: Sequence[str], resps: Sequence[str], threads: int,
                     single_calls: int = 16, batch: int = 32, batch_calls: int = 2,
                     tokens: tuple[int, int] = (20, 80), warmup: int = 2) -> dict:
    """Profile ``path`` on the pairs whose ``reference [SEP] response`` has ``tokens`` tokens (ordinary
    pairs): batch 1 = ``single_calls`` calls of one pair; batch ``batch`` = ``batch_calls`` calls of
    ``batch`` pairs each, padded to the longest as the runtime does (pairs reused if too few).
    One profiling session per case (onnxruntime writes one trace per session)."""
    from rewardrt.runtime.session import make_session, session_options
    from rewardrt.runtime.spec import spec_from_metadata
    from rewardrt.runtime.tokenizer import PairEncoder, load_tokenizer, pad

    plain = make_session(path, threads)
    spec, tok_json = spec_from_metadata(plain.get_modelmeta().custom_metadata_map, str(path))
    del plain
    ids, _ = PairEncoder(load_tokenizer(tok_json, str(path)), spec.max_length)(list(refs), list(resps))
    ordinary = [x for x in ids if tokens[0] <= len(x) <= tokens[1]] or ids
    need = batch * batch_calls
    pool = (ordinary * (need // len(ordinary) + 1))[:need]
    cases = {"batch 1": [pad([x]) for x in ordinary[:single_calls]],
             f"batch {batch}": [pad(pool[i : i + batch]) for i in range(0, need, batch)]}
    out: dict = {"threads": threads, "warmup_calls": warmup, "token_window": list(tokens), "cases": {},
                 **graph_nodes(path)}
    with tempfile.TemporaryDirectory(prefix="rewardrt-profile-") as tmp:
        for name, feeds in cases.items():
            opts = session_options(threads)
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(tmp, name.replace(" ", "_"))
            session = make_session(path, options=opts)
            for input_ids, mask in [feeds[i % len(feeds)] for i in range(warmup)] + feeds:
                session.run(["score"], {"input_ids": input_ids, "attention_mask": mask})
            trace = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
            res = breakdown(trace, skip_runs=warmup)
            res["rows"] = int(feeds[0][0].shape[0])
            res["padded_tokens"] = float(np.mean([f[0].shape[1] for f in feeds]))
            res["real_tokens"] = float(np.mean([f[1].sum() / f[1].shape[0] for f in feeds]))
            out["cases"][name] = res
            del session
    return out


def call_overhead(path: str | Path, refs: Sequence[str], resps: Sequence[str], threads: int,
                  calls: int = 16, repeats: int = 3, tokens: tuple[int, int] = (20, 80)) -> dict:
    """Batch-1 time of ``RewardModel.score`` against ``session.run`` alone on the same, already
    tokenized pair, interleaved call by call: the difference is what a call costs outside
    onnxruntime (argument checks, tokenization, padding, sorting, result conversion)."""
    import time

    from rewardrt.runtime import RewardModel
    from rewardrt.runtime.tokenizer import pad

    model = RewardModel(path, threads=threads)
    session = model._scorer.session
    ids, _ = model._scorer.encoder(list(refs), list(resps))
    chosen = [i for i, x in enumerate(ids) if tokens[0] <= len(x) <= tokens[1]][:calls] or list(range(min(calls, len(ids))))
    score_s, run_s = [], []
    for _ in range(repeats + 1):
        for i in chosen:
            input_ids, mask = pad([ids[i]])
            t0 = time.perf_counter()
            session.run(["score"], {"input_ids": input_ids, "attention_mask": mask})
            t1 = time.perf_counter()
            model.score(resps[i], refs[i])
            t2 = time.perf_counter()
            run_s.append(t1 - t0)
            score_s.append(t2 - t1)
    n = len(chosen)
    score_ms = float(np.median(score_s[n:])) * 1e3  # the first pass is a warm-up
    run_ms = float(np.median(run_s[n:])) * 1e3
    return {"threads": threads, "calls": n * repeats, "score_ms": score_ms, "session_run_ms": run_ms,
            "overhead_ms": score_ms - run_ms, "overhead_share": (score_ms - run_ms) / score_ms}


def main(argv: list[str] | None = None) -> int:
    """``python -m rewardrt.bench.profile [--model M.onnx] [--threads 1,2] [--peak]``: the report's
    profile section (and, with ``--peak``, the INT8 peak comparison) for one artifact."""
    import argparse

    from rewardrt.bench import report, results
    from rewardrt.bench.workloads import read_dev

    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.profile", description=main.__doc__)
    p.add_argument("--model", default=None, help="artifact (default: the embedded default model)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--calls", type=int, default=16, help="batch-1 calls")
    p.add_argument("--batch-calls", type=int, default=4, help="calls of 32 pairs")
    p.add_argument("--peak", action="store_true", help="also measure the INT8 GEMM peak")
    p.add_argument("--pairs", dest="pairs_file", default=None, metavar="FILE.jsonl")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.model is None:  # what RewardModel() loads on this machine
        from rewardrt.runtime.api import select_default_model

        args.model = str(select_default_model())
    rows = read_dev(args.pairs_file)
    threads = tuple(int(t) for t in args.threads.split(","))
    profiles = {str(t): profile_artifact(args.model, [r["a"] for r in rows], [r["b"] for r in rows], t,
                                         args.calls, 32, args.batch_calls) for t in threads}
    res = {"profile": {"engine": "rewardrt-int8", "by_threads": profiles}}
    res["call_overhead"] = [call_overhead(args.model, [r["a"] for r in rows], [r["b"] for r in rows], t)
                            for t in threads]
    if args.peak:
        from rewardrt.bench.probes.int8peak import measure

        res["int8_peak"] = measure(threads, calls=8)
        res["int8_efficiency"] = results.int8_efficiency(profiles, res["int8_peak"], 32)
    print(f"model: {args.model}\n")
    print("\n".join(report.profile_section(res)))
    for o in res["call_overhead"]:
        print(f"batch-1 call, {o['threads']} thread(s): RewardModel.score {o['score_ms']:.2f} ms, session.run "
              f"{o['session_run_ms']:.2f} ms: {o['overhead_ms']:.2f} ms ({100 * o['overhead_share']:.0f}%) "
              f"outside onnxruntime (median of {o['calls']} interleaved calls)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
