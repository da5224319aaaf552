"""Capacity of ``rewardrt.runtime.integrations.ray`` on this machine: pairs/s per core through Ray Data vs in process.

    python -m rewardrt.bench.probes.ray_capacity [--pairs 3000] [--cpus N] [--model PATH] [--json out.json]

Scores the same pairs (unique reference/response combinations of the dev set, so deduplication
does not flatter anyone) three ways: in process with 1 onnxruntime thread, in process with
``--cpus`` threads, and with Ray Data on a local Ray instance of ``--cpus`` CPUs (one 1-thread actor
per CPU). The Ray figure is the steady-state rate between the first and the last scored batch to
reach the driver, so actor start-up (process, imports, model load) is reported separately rather
than averaged in. Per core = rate / cores used. The N-node figures printed at the end are a paper
estimate (nodes x cores x per-core rate, assuming the same per-core rate and nothing else
bottlenecked), not a measurement.

Needs ``rewardrt[ray]``; takes a few minutes at the default size. Ray workers run at the driver's
own priority here (``RAY_worker_niceness=0``; Ray's default lowers them by 15), so that on a shared
machine both sides compete for the CPU on the same terms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def _pairs(n: int, pairs_file: str | None) -> tuple[list[str], list[str]]:
    from rewardrt.bench.workloads import read_dev

    rows = read_dev(pairs_file)
    a = [r["a"] for r in rows]
    b = [r["b"] for r in rows]
    # row i pairs a[i % m] with b[(i + i // m + 1) % m]: unique pairs for n < m * m
    m = len(rows)
    return [a[i % m] for i in range(n)], [b[(i + i // m + 1) % m] for i in range(n)]


def _in_process(model_path: str | None, references: list[str], responses: list[str], threads: int) -> float:
    from rewardrt import RewardModel

    model = RewardModel(model_path, threads=threads)
    model.batch_score(responses[:64], references[:64])  # warm-up: first-call allocations
    started = time.perf_counter()
    model.batch_score(responses, references)
    return len(responses) / (time.perf_counter() - started)


def _on_ray(model_path: str | None, references: list[str], responses: list[str], cpus: int) -> dict:
    import ray

    import rewardrt.runtime.integrations.ray as rr

    rr.init_local(cpus)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        items = [{"id": i, "reference": ref, "response": resp}
                 for i, (ref, resp) in enumerate(zip(references, responses))]
        ds = ray.data.from_items(items, override_num_blocks=4 * cpus)
        scored = rr.score_dataset(ds, model_path, actors=cpus, cpus_per_actor=1, batch_size=128)
        started = time.perf_counter()
        first_at, first_rows, rows = None, 0, 0
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            rows += len(batch["id"])
            if first_at is None:
                first_at, first_rows = time.perf_counter(), rows
        ended = time.perf_counter()
    finally:
        ray.shutdown()
    if rows != len(items):
        raise RuntimeError(f"Ray returned {rows} rows for {len(items)} pairs")
    return {
        "rows": rows,
        "wall_s": ended - started,
        "first_batch_s": first_at - started,  # actor start-up + the first batch
        "steady_pairs_per_s": (rows - first_rows) / (ended - first_at),
        "end_to_end_pairs_per_s": rows / (ended - started),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rewardrt.bench.probes.ray_capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3000, help="pairs scored by each engine (default: %(default)s)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                        help="cores for the Ray instance and the multi-thread run (default: all, %(default)s)")
    parser.add_argument("--model", default=None, help="a .onnx artifact (default: the embedded model)")
    parser.add_argument("--pairs-file", dest="pairs_file", default=None, metavar="FILE.jsonl",
                        help="reference/response JSONL to draw pairs from (default: as rewardrt bench)")
    parser.add_argument("--nodes", default="1,10,100", help="node counts for the paper estimate (default: %(default)s)")
    parser.add_argument("--cores-per-node", type=int, default=32, help="for the paper estimate (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.pairs < 100 or args.cpus < 1:
        parser.error("--pairs must be >= 100 and --cpus >= 1")
    os.environ.setdefault("RAY_worker_niceness", "0")

    from rewardrt import RewardModel

    model_path = args.model
    model_name = str(RewardModel(model_path).path)
    references, responses = _pairs(args.pairs, args.pairs_file)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    on_ray = _on_ray(model_path, references, responses, args.cpus)
    print(f"(Ray done: {on_ray})", file=sys.stderr, flush=True)
    one = _in_process(model_path, references, responses, 1)
    print(f"(in process, 1 thread: {one:.1f} pairs/s)", file=sys.stderr, flush=True)
    many = _in_process(model_path, references, responses, args.cpus)
    per_core = on_ray["steady_pairs_per_s"] / args.cpus
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result = {
        "model": model_name, "pairs": args.pairs, "cpus": args.cpus, "machine": platform.processor() or platform.machine(),
        "load_average_1min_at_start": load, "load_average_1min_at_end": load_end,
        "in_process_1_thread_pairs_per_s": one,
        f"in_process_{args.cpus}_threads_pairs_per_s": many,
        "ray": on_ray,
        "ray_per_core_pairs_per_s": per_core,
        "ray_per_core_over_in_process_1_thread": per_core / one,
        "paper_estimate": {f"{n} nodes x {args.cores_per_node} cores": per_core * n * args.cores_per_node
                           for n in (int(x) for x in args.nodes.split(","))},
    }
    print(f"model {model_name}; {args.pairs} pairs; {args.cpus} CPUs; 1-min load average {load:.1f} at start, "
          f"{load_end:.1f} at end")
    print(f"in process, 1 thread:            {one:8.1f} pairs/s")
    print(f"in process, {args.cpus} threads:           {many:8.1f} pairs/s")
    print(f"Ray Data, {args.cpus} actors x 1 thread: {on_ray['steady_pairs_per_s']:8.1f} pairs/s steady "
          f"({on_ray['end_to_end_pairs_per_s']:.1f} end to end over {on_ray['wall_s']:.1f} s, "
          f"first batch after {on_ray['first_batch_s']:.1f} s)")
    print(f"Ray per core:                    {per_core:8.1f} pairs/s "
          f"({100 * per_core / one:.0f}% of in-process 1 thread)")
    for label, rate in result["paper_estimate"].items():
        print(f"paper estimate, {label}: {rate:,.0f} pairs/s ({rate * 3600 / 1e6:,.1f} M pairs/hour)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
