"""Drives the worker processes: one per engine, measured in alternating rounds, and fresh
processes for cold starts. Raw timings only; statistics are made in rewardrt.bench.results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rewardrt.bench.config import BenchPlan, throughput_pairs
from rewardrt.bench.engines import EngineSpec
from rewardrt.bench.workloads import LATENCY_DEV, Workloads

WORKER = "rewardrt.bench.worker"


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return env


class WorkerError(RuntimeError):
    """A worker process failed; the message carries the end of its log."""


class Worker:
    """One engine in its own process, spoken to in JSON lines."""

    def __init__(self, spec: EngineSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self.load_info: dict = {}
        self._log = open(log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, encoding="utf-8", env=worker_env(), bufsize=1,
        )

    def send(self, op: str, **fields) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._failure(f"{op}: the process has exited") from None

    def receive(self, op: str = "") -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise self._failure(f"{op}: the process exited with code {self.proc.wait()}")
        reply = json.loads(line)
        if not reply.pop("ok", False):
            raise self._failure(f"{op}: {reply.get('error')}")
        return reply

    def call(self, op: str, **fields) -> dict:
        self.send(op, **fields)
        return self.receive(op)

    def _failure(self, what: str) -> WorkerError:
        self._log.flush()
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
        return WorkerError(f"worker for {self.spec.name} failed at {what} (log {self.log_path}):\n"
                           + "\n".join(tail))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_workers(specs: dict[str, EngineSpec], threads: int, workloads: Workloads, logs: Path) -> dict[str, Worker]:
    """Start every worker, load all engines side by side, then hand each the workload data."""
    workers: dict[str, Worker] = {}
    try:
        for name, spec in specs.items():
            workers[name] = Worker(spec, logs / f"worker-{name}.log")
        for w in workers.values():  # loads overlap; their timing is not a measurement
            w.send("load", spec=w.spec.to_dict(), threads=threads)
        loads = {name: w.receive("load") for name, w in workers.items()}
        for name, w in workers.items():
            w.call("data", sets=workloads.sets)
            w.load_info = loads[name]
    except BaseException:
        for w in workers.values():
            w.close()
        raise
    return workers


def rotated(names: Sequence[str], k: int) -> list[str]:
    k %= len(names)
    return list(names[k:]) + list(names[:k])


def measure(workers: dict[str, Worker], plan: BenchPlan, workloads: Workloads, threads: tuple[int, ...],
            tick: Callable[[str], None]) -> list[dict]:
    """Alternating rounds: for each thread count, each round runs every engine once through every
    workload, the engine order rotating between rounds. Returns one record per measurement."""
    records: list[dict] = []
    names = list(workers)
    latency_sets = [workloads.latency_set(n) for n in plan.lengths]
    for t in threads:
        for name in names:
            workers[name].call("threads", threads=t)
            workers[name].call("warmup", latency=latency_sets + [LATENCY_DEV], pairs="pairs", n=plan.warmup_pairs)
            tick(f"warm-up {t} thread(s)")
        for r in range(plan.rounds):
            for name in rotated(names, r):
                w = workers[name]
                for length, s in zip(plan.lengths, latency_sets):
                    times = w.call("latency", set=s)["times"]
                    records.append({"workload": "latency", "engine": name, "threads": t, "round": r,
                                    "tokens": length, "times": times})
                times = w.call("latency", set=LATENCY_DEV)["times"]
                records.append({"workload": "latency_dev", "engine": name, "threads": t, "round": r,
                                "tokens": "dev", "times": times})
                for b in plan.batches:
                    res = w.call("throughput", set="pairs", batch=b, n=throughput_pairs(plan, b))
                    records.append({"workload": "throughput", "engine": name, "threads": t, "round": r,
                                    "batch": b, "seconds": res["seconds"], "pairs": res["pairs"]})
                res = w.call("rl", set="rl")
                records.append({"workload": "rl", "engine": name, "threads": t, "round": r,
                                "seconds": res["seconds"], "pairs": res["pairs"]})
                tick(f"round {r + 1}/{plan.rounds}, {t} thread(s)")
    return records


def score_sets(workers: dict[str, Worker], sets: dict[str, Sequence[str]], tick: Callable[[str], None]) -> dict[str, dict[str, list[float]]]:
    """set -> engine -> scores, for the engines listed per set; one worker at a time, at the thread
    count it was last given (running them side by side at one thread each was slower)."""
    out: dict[str, dict[str, list[float]]] = {s: {} for s in sets}
    for name, w in workers.items():
        for s, engines in sets.items():
            if name in engines:
                out[s][name] = w.call("score", set=s)["scores"]
        tick(f"fidelity sets: {name}")
    return out


def cold_starts(specs: dict[str, EngineSpec], repeats: int, threads: int, tick: Callable[[str], None]) -> list[dict]:
    """Wall time of a fresh ``python -m rewardrt.bench.worker --cold``: interpreter start, imports,
    model load and one scored pair. Engines alternate between repeats."""
    records = []
    names = list(specs)
    for r in range(repeats):
        for name in rotated(names, r):
            cmd = [sys.executable, "-m", WORKER, "--cold", json.dumps(specs[name].to_dict()),
                   "--threads", str(threads)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env())
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
                raise WorkerError(f"cold start of {name} failed with code {proc.returncode}:\n{tail}")
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            records.append({"engine": name, "repeat": r, "seconds": wall, "inside_s": info["inside_s"],
                            "peak_rss": info["peak_rss"]})
            tick(f"cold start {name}")
    return records
