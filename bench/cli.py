"""``rewardrt bench`` (implemented in rewardrt.bench.suite) and ``rewardrt crosscheck``
(rewardrt.bench.crosscheck), registered here."""

from __future__ import annotations

import argparse

from rewardrt.runtime.clibase import positive, thread_counts


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmark against the PyTorch reference (needs [bench])",
        description="Every engine in its own process, measured in alternating rounds; writes "
        "results.json, results.md and PNG plots with ratios to the PyTorch reference.",
    )
    p.add_argument("--quick", action="store_true", help="smoke run, under 2 minutes")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the default model, materialized)")
    p.add_argument("--out", default="bench-results", help="results folder (default: %(default)s)")
    p.add_argument("--threads", type=thread_counts, default=(1, 2),
                   help="comma-separated thread counts to measure at (default: 1,2)")
    p.add_argument("--rounds", type=positive, default=None,
                   help="alternating rounds per thread count (default: 1 quick, 4 full)")
    p.add_argument("--pairs", default=None, metavar="FILE.jsonl",
                   help="pairs to calibrate the exports and build the workloads from: JSONL rows with "
                        "'reference' and 'response' (default: the bundled pair set)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    from rewardrt.bench import crosscheck

    crosscheck.add_parser(sub)


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    # transformers' per-load progress bars would break the bench's own bar
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from rewardrt.bench.suite import main

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return main(args)
