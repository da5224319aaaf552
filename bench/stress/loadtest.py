"""Load test of ``rewardrt serve``: concurrent clients on loopback for a bounded time, then a check
that every score the server returned equals in-process ``batch_score`` on the same pair.

    python -m rewardrt.bench.stress.loadtest --model PATH [--seconds 30 --clients 16]

Starts the server as a subprocess on a free 127.0.0.1 port, runs ``--clients`` threads that POST
/score with 1-8 pairs each until ``--seconds`` pass or ``--max-requests`` are sent, stops the server
with SIGTERM (it must exit 0), then prints one summary line. Exit status 0 means no errors, every
score equal to in-process batch_score (bit-identical counted; within ``--tolerance``, default 0:
bit-identical, required), clean server exit. Needs ``rewardrt[serve]``; traffic never leaves the machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"  # loopback only, by design: this tool never targets another address
WORDS = ("the", "capital", "of", "france", "is", "paris", "lyon", "river", "seine", "city", "answer",
         "not", "a", "number", "seven", "twelve", "two", "plus", "equals", "four", "water", "boils",
         "at", "hundred", "degrees", "celsius", "sea", "level", "photosynthesis", "plants", "light",
         "energy", "sugar", "oxygen", "einstein", "relativity", "theory", "physics", "quantum", "moon",
         "earth", "orbit", "days", "year", "leap", "february", "shakespeare", "wrote", "hamlet", "play")


@dataclass
class LoadTestResult:
    clients: int
    seconds: float  # wall time of the client phase
    requests: int = 0
    pairs: int = 0
    errors: int = 0
    checked: int = 0  # scores compared with in-process batch_score
    identical: int = 0  # of those, bit-identical
    max_diff: float = 0.0  # largest |server - in-process|
    tolerance: float = 0.0
    server_exit: int | None = None
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds, successful requests
    error_samples: list[str] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000.0 * ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    @property
    def ok(self) -> bool:
        return (self.requests > 0 and self.errors == 0 and self.checked == self.pairs
                and self.max_diff <= self.tolerance and self.server_exit == 0)

    def summary(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        pair_rate = self.pairs / self.seconds if self.seconds else 0.0
        return (f"loadtest: {self.clients} clients x {self.seconds:.1f} s: {self.requests} requests "
                f"({self.pairs} pairs), {self.errors} errors, p50 {self.percentile_ms(0.5):.1f} ms, "
                f"p99 {self.percentile_ms(0.99):.1f} ms, {rate:.1f} req/s ({pair_rate:.0f} pairs/s), "
                f"scores vs in-process batch_score: {self.identical}/{self.checked} bit-identical, "
                f"max |diff| {self.max_diff:.1e} (tolerance {self.tolerance:.0e}), server exit {self.server_exit}")


def make_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """Deterministic (response, reference) pairs of 2-40 words, some responses copying the reference."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        reference = " ".join(rng.choices(WORDS, k=rng.randint(2, 40)))
        response = reference if rng.random() < 0.1 else " ".join(rng.choices(WORDS, k=rng.randint(2, 40)))
        pairs.append((response, reference))
    return pairs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(model: str | Path, port: int, log: Path, extra: Sequence[str] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rewardrt", "serve", "--model", str(model), "--host", HOST,
           "--port", str(port), "--log-level", "warning", *extra]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_ready(proc: subprocess.Popen, port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready:\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s")


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM, then wait; killed (and reported as -9) only if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9
    return proc.returncode


class _Client(threading.Thread):
    def __init__(self, port: int, pairs: list[tuple[str, str]], seed: int, deadline: float,
                 budget: _Budget, max_per_request: int) -> None:
        super().__init__(daemon=True)
        self.port, self.pairs, self.deadline, self.budget = port, pairs, deadline, budget
        self.rng = random.Random(seed)
        self.max_per_request = max_per_request
        self.latencies: list[float] = []
        self.answers: list[tuple[list[int], list[float]]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        while time.monotonic() < self.deadline and self.budget.take():
            idx = [self.rng.randrange(len(self.pairs)) for _ in range(self.rng.randint(1, self.max_per_request))]
            body = json.dumps({"responses": [self.pairs[i][0] for i in idx],
                               "references": [self.pairs[i][1] for i in idx]})
            started = time.perf_counter()
            try:
                conn.request("POST", "/score", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                elapsed = time.perf_counter() - started
                if response.status != 200:
                    self.errors.append(f"HTTP {response.status}: {data[:200]!r}")
                    continue
                scores = json.loads(data)["scores"]
                if len(scores) != len(idx):
                    self.errors.append(f"{len(scores)} scores for {len(idx)} pairs")
                    continue
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
                continue
            self.latencies.append(elapsed)
            self.answers.append((idx, scores))
        conn.close()


class _Budget:
    """A shared cap on the number of requests, so a run is bounded in count as well as in time."""

    def __init__(self, total: int) -> None:
        self._left = total
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


def run_loadtest(model: str | Path, *, seconds: float = 30.0, clients: int = 16, max_requests: int = 200_000,
                 max_pairs_per_request: int = 8, pool: int = 512, seed: int = 0,
                 server_args: Sequence[str] = (), startup_timeout: float = 60.0,
                 tolerance: float = 0.0) -> LoadTestResult:
    """Run the load test and return its figures (see the module docstring).

    ``tolerance``: largest accepted |server - in-process| per score; 0 (the default) requires
    bit-identity, which the scorer guarantees whatever the batch a pair shares on the server.
    """
    if seconds <= 0 or clients < 1 or max_requests < 1 or max_pairs_per_request < 1 or pool < 1:
        raise ValueError("seconds must be > 0 and clients, max_requests, max_pairs_per_request and pool >= 1")
    model = Path(model)
    if not model.is_file():
        raise FileNotFoundError(f"model {str(model)!r} does not exist; pass a .onnx written by `rewardrt export`")
    pairs = make_pairs(pool, seed)
    port = free_port()
    result = LoadTestResult(clients=clients, seconds=0.0, tolerance=tolerance)
    with tempfile.TemporaryDirectory(prefix="rewardrt-loadtest-") as tmp:
        log = Path(tmp) / "server.log"
        proc = start_server(model, port, log, server_args)
        try:
            wait_ready(proc, port, startup_timeout, log)
            budget = _Budget(max_requests)
            started = time.monotonic()
            threads = [_Client(port, pairs, seed * 1000 + i, started + seconds, budget, max_pairs_per_request)
                       for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 120)
            result.seconds = time.monotonic() - started
        finally:
            result.server_exit = stop_server(proc)
        if result.server_exit != 0:
            result.error_samples.append(f"server log tail:\n{log.read_text(errors='replace')[-2000:]}")
    for t in threads:
        result.latencies.extend(t.latencies)
        result.requests += len(t.latencies) + len(t.errors)
        result.errors += len(t.errors)
        result.error_samples.extend(t.errors[:3])
        result.pairs += sum(len(idx) for idx, _ in t.answers)
    # the reference figures, computed after the server has stopped so the two never share the CPU
    from rewardrt.runtime.api import RewardModel

    expected = RewardModel(model).batch_score([p[0] for p in pairs], [p[1] for p in pairs])
    for t in threads:
        for idx, scores in t.answers:
            for i, s in zip(idx, scores):
                result.checked += 1
                result.identical += s == expected[i]
                result.max_diff = max(result.max_diff, abs(s - expected[i]))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.stress.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a .onnx artifact to serve")
    p.add_argument("--seconds", type=float, default=30.0, help="client phase length (default: %(default)s)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default: %(default)s)")
    p.add_argument("--max-requests", type=int, default=200_000, help="request cap (default: %(default)s)")
    p.add_argument("--max-pairs", type=int, default=8, help="pairs per request, 1..N (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="largest accepted |server - in-process| per score (default: %(default)s)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `rewardrt serve` (repeatable), e.g. --server-arg=--max-wait-ms=1")
    args = p.parse_args(argv)
    try:
        result = run_loadtest(args.model, seconds=args.seconds, clients=args.clients,
                              max_requests=args.max_requests, max_pairs_per_request=args.max_pairs,
                              seed=args.seed, server_args=args.server_arg, tolerance=args.tolerance)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for sample in result.error_samples[:5]:
        print(f"  {sample}", file=sys.stderr)
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
