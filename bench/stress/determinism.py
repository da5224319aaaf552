"""Bit-identity of scores over random batch compositions, orders, batch sizes and thread counts.

    python -m rewardrt.bench.stress.determinism [--model PATH] [--threads 1,2] [--pairs 300] [--trials 25]

For each thread count: scores ``--pairs`` dev pairs (plus three long ones near the 512-token limit)
one at a time with ``score``, then ``--trials`` random subsets in random order with random batch
sizes (1 to 256) with ``batch_score``, and counts scores that are not bit-identical to the one-at-a-
time ones. Then compares the thread counts with each other, and prints how much padding the
scorer's width ladder adds over the real tokens of the dev set. Exit status 0 when nothing differed.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pairs(count: int, seed: int) -> tuple[list[str], list[str]]:
    """(references, responses): dev pairs plus three long responses to a short reference."""
    from rewardrt.bench.workloads import read_dev

    rows = read_dev()
    rows = random.Random(seed).sample(rows, min(count, len(rows)))
    references = [r["b"] for r in rows] + ["short"] * 3
    responses = [r["a"] for r in rows] + [" ".join(["long"] * k) for k in (100, 300, 600)]
    return references, responses


def check(model: str | Path | None, threads: int, references: list[str], responses: list[str],
          trials: int, seed: int) -> tuple[np.ndarray, int, int]:
    """(one-at-a-time scores, scores compared, scores that differed) for one thread count."""
    from rewardrt.runtime.api import RewardModel

    rm = RewardModel(model, threads=threads)
    alone = np.array([rm.score(a, b) for a, b in zip(responses, references)])
    differ = int((np.array(rm.batch_score(responses, references)) != alone).sum())
    compared = len(alone)
    rng = random.Random(seed)
    for _ in range(trials):
        picked = rng.sample(range(len(responses)), rng.randint(1, len(responses)))
        batch_size = rng.choice([1, 2, 3, 7, 16, 64, 256])
        got = np.array(rm.batch_score([responses[i] for i in picked], [references[i] for i in picked],
                                      batch_size=batch_size))
        differ += int((got != alone[picked]).sum())
        compared += len(picked)
    return alone, compared, differ


def padding_overhead(model: str | Path | None, batch_size: int = 64) -> tuple[int, int, int]:
    """(dev pairs, real tokens, tokens the runtime runs) when the dev pairs are scored in one call
    with ``batch_size``, each batch padded as the scorer pads it (``Scorer.batches``)."""
    from rewardrt.bench.workloads import read_dev
    from rewardrt.runtime.api import RewardModel

    rm = RewardModel(model, threads=1)
    scorer = rm._scorer
    rows = read_dev()
    ids, _ = scorer.encoder([r["a"] for r in rows], [r["b"] for r in rows])
    lengths = np.array([len(x) for x in ids])
    padded = sum(len(rows) * width for width, rows in scorer.batches(lengths, batch_size))
    return len(ids), int(lengths.sum()), int(padded)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.stress.determinism", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a .onnx artifact (default: the embedded model)")
    p.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts (default: %(default)s)")
    p.add_argument("--pairs", type=int, default=300, help="dev pairs (default: %(default)s)")
    p.add_argument("--trials", type=int, default=25, help="random calls per thread count (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    references, responses = _pairs(args.pairs, args.seed)
    name = args.model or "default model"
    results = {}
    failed = False
    for threads in [int(t) for t in args.threads.split(",")]:
        alone, compared, differ = check(args.model, threads, references, responses, args.trials, args.seed)
        results[threads] = alone
        failed |= differ > 0
        print(f"determinism: {name}, threads={threads}: {len(alone)} pairs, {args.trials} random subsets/orders/"
              f"batch sizes: {differ} of {compared} scores not bit-identical to one-at-a-time scoring", flush=True)
    counts = sorted(results)
    for a, b in zip(counts, counts[1:]):
        differ = int((results[a] != results[b]).sum())
        failed |= differ > 0
        print(f"determinism: {name}, threads={a} vs threads={b}: {differ} of {len(results[a])} scores differ")
    pairs, real, padded = padding_overhead(args.model)
    print(f"padding: {pairs} dev pairs in one call of batch size 64, {real} real tokens, {padded} run "
          f"(+{100 * (padded / real - 1):.1f}%)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
