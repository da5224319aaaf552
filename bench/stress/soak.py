"""Soak test: many scores in one process, watching memory, file descriptors and determinism.

    python -m rewardrt.bench.stress.soak --n 100000 [--model PATH] [--threads 2]

Scores ``--n`` pairs with one RewardModel in calls of 1 to ``--max-batch`` pairs (an RL-like mix of
single pairs and batches, fresh texts every call), after a warm-up of ``--warmup`` scores. Prints
one summary line: scores, pairs/s, RSS after warm-up and at the end (growth %), the largest RSS
seen, open file descriptors after warm-up and at the end, and whether a fixed probe set scored the same
bits at the end as after warm-up. Exit status 0 when RSS grew less than ``--max-growth`` percent,
no descriptor leaked, every score was finite in [0, 1] and the probe scores were bit-identical.
Needs ``rewardrt[bench]`` (psutil); the runtime itself never imports psutil.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rewardrt.bench.stress.loadtest import WORDS

MB = 1024 * 1024


@dataclass
class SoakResult:
    scores: int
    seconds: float
    calls: int
    rss_warm: int  # bytes, right after warm-up
    rss_end: int
    rss_max: int
    fds_start: int
    fds_end: int
    bad_scores: int  # not finite or outside [0, 1]
    probe_identical: bool
    max_growth: float

    @property
    def growth(self) -> float:
        return 100.0 * (self.rss_end - self.rss_warm) / self.rss_warm

    @property
    def ok(self) -> bool:
        return (self.growth < self.max_growth and self.fds_end <= self.fds_start and self.bad_scores == 0
                and self.probe_identical)

    def summary(self) -> str:
        rate = self.scores / self.seconds if self.seconds else 0.0
        return (f"soak: {self.scores} scores in {self.seconds:.0f} s ({rate:.0f} pairs/s, {self.calls} calls), "
                f"RSS after warm-up {self.rss_warm / MB:.1f} MB, end {self.rss_end / MB:.1f} MB "
                f"({self.growth:+.1f}%, limit {self.max_growth:g}%), max {self.rss_max / MB:.1f} MB, "
                f"fds {self.fds_start} -> {self.fds_end}, bad scores {self.bad_scores}, "
                f"probe bit-identical {'yes' if self.probe_identical else 'NO'}: {'OK' if self.ok else 'FAIL'}")


def _pair(rng: random.Random, serial: int) -> tuple[str, str]:
    reference = " ".join(rng.choices(WORDS, k=rng.randint(2, 40)))
    response = " ".join(rng.choices(WORDS, k=rng.randint(1, 40))) + f" {serial}"  # fresh text each time
    return response, reference


def run_soak(model: str | Path | None = None, *, n: int = 100_000, warmup: int = 2_000, max_batch: int = 64,
             threads: int | None = None, seed: int = 0, max_growth: float = 10.0,
             progress: Callable[[str], None] | None = None) -> SoakResult:
    """Run the soak (see the module docstring); ``progress`` gets a line every 10,000 scores."""
    import psutil

    from rewardrt.runtime.api import RewardModel

    if n < 1 or warmup < 0 or max_batch < 1:
        raise ValueError("n and max_batch must be >= 1 and warmup >= 0")
    proc = psutil.Process()
    rm = RewardModel(model, threads=threads)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    probe = [_pair(random.Random(1), i) for i in range(32)]

    def score_until(total: int, counts: list[int]) -> None:
        while counts[0] < total:
            size = min(total - counts[0], 1 if rng.random() < 0.3 else rng.randint(2, max_batch))
            pairs = [_pair(rng, counts[0] + i) for i in range(size)]
            for s in rm.batch_score([p[0] for p in pairs], [p[1] for p in pairs]):
                if not (math.isfinite(s) and 0.0 <= s <= 1.0):
                    counts[2] += 1
            if progress is not None and (counts[0] + size) // 10_000 > counts[0] // 10_000:
                progress(f"{counts[0] + size} scores, {time.perf_counter() - t0:.0f} s, "
                         f"RSS {proc.memory_info().rss / MB:.1f} MB, fds {proc.num_fds()}")
            counts[0] += size
            counts[1] += 1
            if counts[1] % 50 == 0:
                counts[3] = max(counts[3], proc.memory_info().rss)

    counts = [0, 0, 0, 0]  # scores, calls, bad scores, max RSS
    score_until(warmup, counts)
    probe_warm = rm.batch_score([p[0] for p in probe], [p[1] for p in probe])
    rss_warm = proc.memory_info().rss
    fds_start = proc.num_fds()
    start = time.perf_counter()
    scored_before = counts[0]
    score_until(warmup + n, counts)
    seconds = time.perf_counter() - start
    probe_end = rm.batch_score([p[0] for p in probe], [p[1] for p in probe])
    rss_end = proc.memory_info().rss
    fds_end = proc.num_fds()
    return SoakResult(scores=counts[0] - scored_before, seconds=seconds, calls=counts[1], rss_warm=rss_warm,
                      rss_end=rss_end, rss_max=max(counts[3], rss_end), fds_start=fds_start,
                      fds_end=fds_end, bad_scores=counts[2], probe_identical=probe_warm == probe_end,
                      max_growth=max_growth)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.stress.soak", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a .onnx artifact (default: the embedded model)")
    p.add_argument("--n", type=int, default=100_000, help="scores after warm-up (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2_000, help="scores before the baseline (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=64, help="pairs per call, 1..N (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--max-growth", type=float, default=10.0, help="RSS growth limit in %% (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    result = run_soak(args.model, n=args.n, warmup=args.warmup, max_batch=args.max_batch, threads=args.threads,
                      seed=args.seed, max_growth=args.max_growth,
                      progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(result.summary(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
