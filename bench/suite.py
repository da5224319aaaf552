"""``rewardrt bench``: every engine against the PyTorch reference, on one machine, in one run.

Order of a run: conditions -> checkpoint and artifacts (cached) -> workloads -> one worker process
per engine, measured in alternating rounds at each thread count -> fidelity and swap scores ->
worker peak RSS -> onnxruntime profile of rewardrt INT8 and the INT8 GEMM peak -> cold starts in
fresh processes -> sizes -> results.json, results.md, plots.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rewardrt.bench import artifacts, report, results, runner, system
from rewardrt.bench.config import BenchConfig, BenchPlan
from rewardrt.bench.engines import ENGINES, HOST_INT8, REFERENCE

log = logging.getLogger(__name__)
SCHEMA = 1
SWAP_ENGINES = (REFERENCE, "torch-dynq", "ort-int8", "rewardrt-int8", HOST_INT8)
PROFILED = HOST_INT8   # the engine whose per-op profile and integer throughput are reported
PROFILE_BATCH = 32


def _steps(plan: BenchPlan, threads: tuple[int, ...]) -> int:
    engines = len(ENGINES)
    prepare = 5 + 1 + 1  # checkpoint and four kinds of artifacts, workloads, workers loaded
    measure = len(threads) * (engines + plan.rounds * engines)
    return prepare + measure + engines + len(threads) + 1 + plan.cold_repeats * engines + 1


def _engine_table(prepared: artifacts.Prepared, loads: dict, stats: dict, exports: dict) -> dict:
    engines: dict[str, dict] = {}
    for engine in (e for e in ENGINES if e.name in prepared.specs):  # optional peers may be skipped
        files = prepared.model_files[engine.name]
        size = system.installed_size(engine.needs)
        engines[engine.name] = {
            "label": engine.label, "how": engine.how, "needs": list(engine.needs),
            "model_files": files, "model_bytes": sum(Path(f).stat().st_size for f in files),
            "installed_bytes": size["bytes"], "installed_distributions": size["distributions"],
            "rss_after_load": loads[engine.name]["rss"],
            "peak_rss": stats[engine.name]["peak_rss"], "export": exports.get(engine.name, {}),
        }
    for key, fraction in (("model_bytes", "model_fraction"), ("installed_bytes", "installed_fraction"),
                          ("peak_rss", "peak_rss_fraction")):
        for engine, value in results.fraction_of_reference({e: v[key] for e, v in engines.items()}).items():
            engines[engine][fraction] = value
    return engines


def _artifact_facts(path: str) -> dict:
    from rewardrt.runtime import RewardModel

    spec = RewardModel(path, threads=1).spec
    return {"precision": spec.precision, "plan_counts": dict(spec.quantization.plan_counts) if spec.quantization else None,
            "export_fidelity": {k: getattr(spec.fidelity, k, None)
                                for k in ("n", "mean_abs_diff", "max_abs_diff", "spearman")}}


def _plain_json(value):
    """NaN (e.g. a Spearman on constant scores) becomes null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    return value


def run(cfg: BenchConfig) -> dict:
    """Measure, write the results folder, return the results dictionary."""
    from tqdm import tqdm

    from rewardrt.bench.workloads import TokenCounter, build, read_dev

    t0 = time.time()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    plan = cfg.plan
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    bar = tqdm(total=_steps(plan, cfg.threads), desc="bench", unit="step", disable=not cfg.progress,
               file=sys.stderr, dynamic_ncols=True)

    def tick(label: str) -> None:
        bar.set_postfix_str(label, refresh=False)
        bar.update(1)

    try:
        conditions = system.conditions(cfg.threads)
        prepared = artifacts.prepare(cfg.checkpoint, out, plan, cfg.pairs, tick)
        log.info("bench model: %s", prepared.checkpoint.note)
        counter = TokenCounter(Path(prepared.specs[REFERENCE].model) / "tokenizer.json")
        workloads = build(read_dev(cfg.pairs), counter, plan)
        tick("workloads")
        workers = runner.start_workers(prepared.specs, cfg.threads[0], workloads, logs)
        tick("workers loaded")
        try:
            records = runner.measure(workers, plan, workloads, cfg.threads, tick)
            scored = runner.score_sets(workers, {"fidelity": list(workers), "swap": SWAP_ENGINES}, tick)
            stats = {name: w.call("stats") for name, w in workers.items()}
            loads = {name: w.load_info for name, w in workers.items()}
            # after the peak-RSS reading: the profiler's sessions and the big GEMM add memory
            profiles = {}
            for t in cfg.threads:
                profiles[str(t)] = workers[PROFILED].call(
                    "profile", set="fidelity", threads=t, single_calls=plan.profile_calls,
                    batch=PROFILE_BATCH, batch_calls=plan.profile_batch_calls)
                tick(f"profile {t} thread(s)")
            peak = workers[PROFILED].call("int8_peak", threads=list(cfg.threads), calls=plan.peak_calls)
            tick("int8 peak")
        finally:
            for w in workers.values():
                w.close()
        cold = runner.cold_starts(prepared.specs, plan.cold_repeats, max(cfg.threads), tick)

        res: dict = {
            "schema": SCHEMA, "mode": plan.mode, "started": started,
            "conditions": conditions, "plan": asdict(plan),
            "checkpoint": {**asdict(prepared.checkpoint), "path": str(prepared.checkpoint.path)},
            "workloads": workloads.info,
            "engines": _engine_table(prepared, loads, stats, prepared.exports),
            "skipped_engines": dict(prepared.skipped),
            "latency": results.latency(records),
            "latency_dev": results.latency(records, "latency_dev"),
            "throughput": results.rates(records, "throughput", "batch"),
            "rl": results.rates(records, "rl", None),
            "cold_start": results.cold_start(cold),
            "fidelity": results.fidelity_rows(scored["fidelity"]),
            "swap": results.swap_rows(scored["swap"], workloads.info["swap"]["probes"]),
            "profile": {"engine": PROFILED, "by_threads": profiles},
            "int8_peak": peak,
            "int8_efficiency": results.int8_efficiency(profiles, peak, PROFILE_BATCH),
        }
        for name in ("rewardrt-fp32", "rewardrt-int8", HOST_INT8):
            res["engines"][name]["artifact"] = _artifact_facts(prepared.specs[name].model)
        res["ratios"] = results.summary_ratios(res)
        res["duration_s"] = time.time() - t0
        res["raw"] = {"records": records, "cold_start": cold, "fidelity_scores": scored["fidelity"]}
        (out / "results.json").write_text(json.dumps(_plain_json(res), indent=1) + "\n", encoding="utf-8")
        report.write(res, scored["fidelity"], out)
        tick("report")
    finally:
        bar.close()
    return res


def main(args: argparse.Namespace) -> int:
    """The CLI entry: check the arguments, run, print the ratio table and where the results are."""
    from rewardrt.export.errors import ExportError

    try:
        cfg = BenchConfig.from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        res = run(cfg)
    except (ExportError, runner.WorkerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report.summary_table(res)))
    print(f"{res['mode']} bench in {res['duration_s']:.0f} s -> {cfg.out / 'results.md'}, results.json, "
          f"{', '.join(report.PLOTS.values())}")
    if res["checkpoint"]["source"] != "--checkpoint":
        print(f"model: {res['checkpoint']['note']}")
    return 0

