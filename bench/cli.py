"""``rewardrt bench``: registered here, implemented in rewardrt.bench.suite."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark against the PyTorch reference (needs [bench])")
    p.add_argument("--quick", action="store_true", help="smoke run, under 2 minutes")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the default model, materialized)")
    p.add_argument("--out", default="bench-results", help="results folder (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rewardrt.bench.suite import main

    return main(args)
