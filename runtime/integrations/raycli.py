"""``rewardrt score --ray``: the Ray room's options on the ``score`` verb and their run (Ray itself is
imported only when the options are used, so ``rewardrt --help`` works without ``rewardrt[ray]``)."""

from __future__ import annotations

import argparse
import sys

from rewardrt.runtime.clibase import CliError, positive, report_skipped


def add_options(p: argparse.ArgumentParser) -> None:
    """The ``--ray``/``--actors``/``--cpus-per-actor`` group on ``p`` (the ``score`` parser)."""
    g = p.add_argument_group("on a Ray cluster (needs rewardrt[ray])")
    g.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="score --input (JSONL, or .parquet) with Ray Data: 'auto' (the running cluster, "
                        "e.g. after `ray start --head`), a cluster address, or 'local' (start one here); "
                        "--output may also end in .parquet for Parquet input")
    g.add_argument("--actors", type=positive, default=None,
                   help="scoring actors (default: autoscale up to what the cluster's free CPUs allow)")
    g.add_argument("--cpus-per-actor", type=positive, default=1,
                   help="CPUs reserved per actor, also its threads unless --threads (default: %(default)s)")
    p.set_defaults(run_on_ray=run)


def run(args: argparse.Namespace) -> int:
    from rewardrt.runtime.integrations.ray import (
        BadLineError,
        RayScoringError,
        connect,
        score_file,
    )

    if args.input == "-":
        raise CliError("--ray reads files: give --input PATH (JSONL or .parquet), not stdin")
    name = repr(args.input)
    try:
        with connect(args.ray, log_to_driver=args.output != "-"):
            done = score_file(args.input, args.output, args.model, actors=args.actors,
                              cpus_per_actor=args.cpus_per_actor, threads=args.threads,
                              on_error=args.on_error)
    except BadLineError as bad:
        raise CliError(f"{name} line {bad.number}: {bad.message}; stopped after writing {bad.written} "
                       "lines (--on-error skip skips such lines)", code=1) from None
    except (RayScoringError, FileNotFoundError, ValueError, ConnectionError) as exc:
        raise CliError(str(exc)) from None
    report_skipped(done.errors)
    print(f"wrote {done.rows} lines in {done.seconds:.1f} s ({done.rows / max(done.seconds, 1e-9):.0f} pairs/s "
          f"on Ray, {done.cluster_cpus:g} CPUs)", file=sys.stderr)
    return 0
