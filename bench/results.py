"""Raw records -> the figures we report: medians per engine and ratios to the PyTorch reference.

A speed ratio is taken per round (each round runs every engine once, back to back) and the median
over rounds is quoted, so slow drifts of the machine cancel out. Speed ratios are "speedups"
(> 1: faster than the reference); memory and size ratios are fractions of the reference.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from rewardrt.bench.engines import ENGINES, REFERENCE
from rewardrt.models.evaluate import NOTICED_DROP
from rewardrt.runtime.metrics import fidelity


ORDER = {e.name: i for i, e in enumerate(ENGINES)}


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _paired_ratio(per_round: dict[str, dict[int, float]], engine: str, higher_is_faster: bool) -> float:
    """Median over rounds of the engine's figure against the reference's in the same round."""
    ratios = []
    for r, ref in per_round[REFERENCE].items():
        value = per_round[engine].get(r)
        if value is None or value <= 0 or ref <= 0:
            continue
        ratios.append(value / ref if higher_is_faster else ref / value)
    return _median(ratios) if ratios else float("nan")


def latency(records: list[dict], workload: str = "latency") -> list[dict]:
    """Batch-1 rows per (threads, tokens, engine) of ``workload``: "latency" (exact lengths) or
    "latency_dev" (ordinary dev pairs, tokens "dev")."""
    pooled: dict[tuple, list[float]] = defaultdict(list)
    per_round: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for rec in records:
        if rec["workload"] != workload:
            continue
        key = (rec["threads"], rec["tokens"])
        pooled[key + (rec["engine"],)].extend(rec["times"])
        per_round[key][rec["engine"]][rec["round"]] = _median(rec["times"])
    rows = []
    for (t, tokens, engine), times in sorted(pooled.items(), key=lambda kv: (kv[0][:2], ORDER.get(kv[0][2], 99))):
        ms = np.asarray(times) * 1000
        rows.append({"threads": t, "tokens": tokens, "engine": engine, "n": int(ms.size),
                     "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
                     "p99_ms": float(np.percentile(ms, 99)),
                     "speedup": _paired_ratio(per_round[(t, tokens)], engine, higher_is_faster=False)})
    return rows


def rates(records: list[dict], workload: str, key_field: str | None) -> list[dict]:
    """pairs/s per engine (median over rounds) and its ratio to the reference."""
    per_round: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for rec in records:
        if rec["workload"] != workload:
            continue
        key = (rec["threads"], rec.get(key_field) if key_field else None)
        per_round[key][rec["engine"]][rec["round"]] = rec["pairs"] / rec["seconds"]
    rows = []
    for (t, k), engines in sorted(per_round.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        for engine, by_round in sorted(engines.items(), key=lambda kv: ORDER.get(kv[0], 99)):
            row = {"threads": t, "engine": engine, "rounds": len(by_round),
                   "pairs_per_s": _median(list(by_round.values())),
                   "speedup": _paired_ratio(engines, engine, higher_is_faster=True)}
            if key_field:
                row[key_field] = k
            rows.append(row)
    return rows


def cold_start(records: list[dict]) -> list[dict]:
    per_repeat: dict[str, dict[int, float]] = defaultdict(dict)
    rss: dict[str, list[int]] = defaultdict(list)
    for rec in records:
        per_repeat[rec["engine"]][rec["repeat"]] = rec["seconds"]
        rss[rec["engine"]].append(rec["peak_rss"])
    return [{"engine": e, "repeats": len(v), "seconds": _median(list(v.values())),
             "speedup": _paired_ratio(per_repeat, e, higher_is_faster=False),
             "peak_rss_one_pair": int(max(rss[e]))} for e, v in per_repeat.items()]


def fraction_of_reference(values: dict[str, float]) -> dict[str, float]:
    ref = values[REFERENCE]
    return {e: (v / ref if ref else float("nan")) for e, v in values.items()}


def fidelity_rows(scores: dict[str, list[float]]) -> list[dict]:
    ref = scores[REFERENCE]
    return [{"engine": e, **fidelity(ref, s).as_dict()} for e, s in scores.items() if e != REFERENCE]


def swap_rows(scores: dict[str, list[float]], probes: dict[str, int]) -> list[dict]:
    """Per engine and probe: mean of score(s, s) - score(s, edit(s)) and share of drops > 0.15."""
    total = sum(probes.values())
    rows = []
    for engine, values in scores.items():
        v = np.asarray(values, dtype=np.float64)
        drops = v[:total] - v[total:]
        start = 0
        for probe, n in probes.items():
            d = drops[start : start + n]
            start += n
            if n:
                rows.append({"engine": engine, "probe": probe, "n": n, "mean_drop": float(d.mean()),
                             "noticed": float(np.mean(d > NOTICED_DROP))})
    return rows


def summary_ratios(results: dict) -> dict[str, dict[str, float]]:
    """engine -> flat {figure: ratio to the reference}, every ratio the report quotes."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for row in results["latency"]:
        out[row["engine"]][f"latency_speedup_{row['tokens']}tok_{row['threads']}t"] = row["speedup"]
    for row in results.get("latency_dev", []):
        out[row["engine"]][f"latency_dev_speedup_{row['threads']}t"] = row["speedup"]
    for row in results["throughput"]:
        out[row["engine"]][f"throughput_speedup_b{row['batch']}_{row['threads']}t"] = row["speedup"]
    for row in results["rl"]:
        out[row["engine"]][f"rl_speedup_{row['threads']}t"] = row["speedup"]
    for row in results["cold_start"]:
        out[row["engine"]]["cold_start_speedup"] = row["speedup"]
    for engine, info in results["engines"].items():
        out[engine]["peak_rss_fraction"] = info["peak_rss_fraction"]
        out[engine]["installed_size_fraction"] = info["installed_fraction"]
        out[engine]["model_file_fraction"] = info["model_fraction"]
    return dict(out)


def int8_efficiency(profiles: dict[str, dict], peak: dict, batch: int) -> list[dict]:
    """Per thread count, at batch ``batch``: the integer GEMMs' GOPS (their 2·M·K·N over their own
    kernel time: over all profiled calls, and in the call where they ran fastest) and the encoder's
    effective GOPS (2·M·K·N of every dense-layer GEMM, whatever its scheme, over the whole call),
    each against the INT8 peak GEMM (its best call) at the same thread count. On a shared machine
    the best-call figures are the comparable ones: both sides are then the least disturbed call."""
    rows = []
    for t, prof in profiles.items():
        case = prof["cases"].get(f"batch {batch}")
        best = next((r["best_gops"] for r in peak["rows"]
                     if r["op"] == "MatMulIntegerToFloat" and r["threads"] == int(t)), None)
        if case is None or not best:
            continue
        integer = case["integer_gemm"]["gops"]
        integer_best = case["integer_gemm"].get("best_gops")
        effective = case["all_gemm"]["gop_per_call"] / case["run_ms"] * 1e3 if case["run_ms"] else None
        rows.append({"threads": int(t), "peak_gops": best,
                     "integer_gemm_gops": integer, "integer_gemm_of_peak": integer / best if integer else None,
                     "integer_gemm_best_gops": integer_best,
                     "integer_gemm_best_of_peak": integer_best / best if integer_best else None,
                     "integer_gemm_share_of_call": case["integer_gemm"]["ms_per_call"] / case["run_ms"],
                     "encoder_effective_gops": effective,
                     "encoder_effective_of_peak": effective / best if effective else None})
    return rows
