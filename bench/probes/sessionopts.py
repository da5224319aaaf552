"""Session settings and the load path, measured on one artifact: graph optimization level,
intra-op spinning, the CPU memory arena and the memory pattern, and loading a graph optimized and
saved ahead of time with optimization off.

Each variant runs in fresh processes (one per round, variants interleaved, order rotating), which
record: spawn -> first score (cold start), batch-1 latency on ordinary dev pairs (20-80 tokens),
the time of calls of 64 dev pairs, and the process's peak RSS (VmHWM) at the end. Medians over
rounds and per-round ratios to the runtime's defaults are printed.

``python -m rewardrt.bench.probes.sessionopts [--model M.onnx] [--threads 1,2] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name -> changes to rewardrt.runtime.session.session_options(threads)
VARIANTS: dict[str, dict] = {
    "default (ENABLE_ALL)": {},
    "ENABLE_EXTENDED": {"level": "ORT_ENABLE_EXTENDED"},
    "ENABLE_BASIC": {"level": "ORT_ENABLE_BASIC"},
    "pre-optimized, DISABLE_ALL": {"level": "ORT_DISABLE_ALL", "preoptimized": True},
    "no spinning": {"config": {"session.intra_op.allow_spinning": "0"}},
    "no CPU arena": {"arena": False},
    "no memory pattern": {"mem_pattern": False},
    "no arena, no memory pattern": {"arena": False, "mem_pattern": False},
    # initializers outside the arena (fewer bytes held after load) and no weight pre-packing
    "initializers without arena": {"config": {"session.use_device_allocator_for_initializers": "1"}},
    "no pre-packing": {"config": {"session.disable_prepacking": "1"}},
}


def _options(change: dict, threads: int):
    import onnxruntime as ort

    from rewardrt.runtime.session import session_options

    opts = session_options(threads)
    if "level" in change:
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, change["level"])
    for key, value in change.get("config", {}).items():
        opts.add_session_config_entry(key, value)
    if "arena" in change:
        opts.enable_cpu_mem_arena = change["arena"]
    if "mem_pattern" in change:
        opts.enable_mem_pattern = change["mem_pattern"]
    return opts


def child(spec: dict) -> dict:
    """In a fresh process: load with the variant's options through RewardModel, score."""
    import rewardrt.runtime.api as api
    from rewardrt.runtime.session import make_session

    from rewardrt.bench.worker import peak_rss_bytes

    opts = _options(spec["change"], spec["threads"])
    api.make_session = lambda path, threads=None: make_session(path, options=opts)
    model = api.RewardModel(spec["model"], threads=spec["threads"])
    model.score(spec["singles"][0][1], spec["singles"][0][0])
    first = time.time()
    lat = []
    for _ in range(spec["repeat"]):
        for ref, resp in spec["singles"]:
            t0 = time.perf_counter()
            model.score(resp, ref)
            lat.append(time.perf_counter() - t0)
    refs, resps = spec["batch"]
    t0 = time.perf_counter()
    for _ in range(spec["batch_repeat"]):
        model.batch_score(resps, refs, batch_size=64)
    batch_s = (time.perf_counter() - t0) / spec["batch_repeat"]
    return {"first_score_at": first, "latency_ms": statistics.median(lat) * 1e3, "batch64_ms": batch_s * 1e3,
            "peak_rss_mb": peak_rss_bytes() / 1e6}


def _preoptimize(model: str, threads: int, out: Path) -> str:
    from rewardrt.runtime.integrity import seal
    from rewardrt.runtime.session import make_session, session_options

    opts = session_options(threads)
    opts.optimized_model_filepath = str(out)
    make_session(model, options=opts)
    seal(out)  # onnxruntime wrote it with the source's digest: the runtime would refuse it
    return str(out)


def _pairs(model: str, n_single: int, n_batch: int, pairs_file: str | None) -> tuple[list, tuple]:
    from rewardrt.bench.workloads import read_dev
    from rewardrt.runtime import RewardModel

    rows = read_dev(pairs_file)
    m = RewardModel(model, threads=1)
    ids, _ = m._scorer.encoder([r["a"] for r in rows], [r["b"] for r in rows])
    ordinary = [(r["a"], r["b"]) for r, x in zip(rows, ids) if 20 <= len(x) <= 80]
    batch = [(r["a"], r["b"]) for r in rows[:n_batch]]
    return ordinary[:n_single], ([a for a, _ in batch], [b for _, b in batch])


def run(model: str, threads: tuple[int, ...], rounds: int, pairs_file: str | None = None) -> dict:
    singles, batch = _pairs(model, 20, 64, pairs_file)
    records: list[dict] = []
    names = list(VARIANTS)
    with tempfile.TemporaryDirectory(prefix="rewardrt-sessionopts-") as tmp:
        pre = {t: _preoptimize(model, t, Path(tmp) / f"optimized-{t}t.onnx") for t in threads}
        for t in threads:
            for r in range(rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    change = VARIANTS[name]
                    spec = {"model": pre[t] if change.get("preoptimized") else model, "threads": t,
                            "change": change, "singles": singles, "repeat": 5, "batch": batch,
                            "batch_repeat": 2}
                    start = time.time()
                    proc = subprocess.run([sys.executable, "-m", "rewardrt.bench.probes.sessionopts", "--child"],
                                          input=json.dumps(spec), capture_output=True, text=True,
                                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
                    if proc.returncode != 0:
                        raise RuntimeError(f"{name} failed:\n{proc.stderr[-2000:]}")
                    res = json.loads(proc.stdout.strip().splitlines()[-1])
                    res["cold_start_s"] = res.pop("first_score_at") - start
                    records.append({"variant": name, "threads": t, "round": r, **res})
                    print(json.dumps(records[-1]), file=sys.stderr, flush=True)  # progress, and partial data
    return {"model": model, "rounds": rounds, "records": records, "summary": summarize(records)}


def summarize(records: list[dict]) -> list[dict]:
    """Medians per variant and thread count, and the median per-round ratio to the default."""
    out = []
    keys = ("cold_start_s", "latency_ms", "batch64_ms", "peak_rss_mb")
    default = next(iter(VARIANTS))
    for t in sorted({r["threads"] for r in records}):
        base = {r["round"]: r for r in records if r["threads"] == t and r["variant"] == default}
        for name in VARIANTS:
            mine = [r for r in records if r["threads"] == t and r["variant"] == name]
            row = {"variant": name, "threads": t}
            for k in keys:
                row[k] = statistics.median(r[k] for r in mine)
                row[f"{k}_ratio"] = statistics.median(r[k] / base[r["round"]][k] for r in mine)
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.probes.sessionopts", description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="artifact (default: the embedded default model)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pairs", dest="pairs_file", default=None, metavar="FILE.jsonl")
    p.add_argument("--json", default=None, help="also write the records and summary here")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(sys.stdin.read()))))
        return 0
    if args.model is None:  # what RewardModel() loads on this machine
        from rewardrt.runtime.api import select_default_model

        args.model = str(select_default_model())
    res = run(args.model, tuple(int(t) for t in args.threads.split(",")), args.rounds, args.pairs_file)
    print(f"{'variant':30} {'t':>2} {'cold s':>7} {'(ratio)':>7} {'b1 ms':>7} {'(ratio)':>7} "
          f"{'b64 ms':>8} {'(ratio)':>7} {'RSS MB':>7} {'(ratio)':>7}")
    for r in res["summary"]:
        print(f"{r['variant']:30} {r['threads']:>2} {r['cold_start_s']:7.3f} {r['cold_start_s_ratio']:7.2f} "
              f"{r['latency_ms']:7.2f} {r['latency_ms_ratio']:7.2f} {r['batch64_ms']:8.1f} "
              f"{r['batch64_ms_ratio']:7.2f} {r['peak_rss_mb']:7.0f} {r['peak_rss_mb_ratio']:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
