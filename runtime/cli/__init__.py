"""The scoring verbs (torch-free): ``score``, ``rank``, ``info``.

``score`` and ``rank`` take one item on the command line, or stream a JSONL file (``--input``/
``--output``, ``-`` for stdin/stdout; see :mod:`.jsonl`). ``serve`` is registered by the serve room
(runtime/serve/cli.py) and ``score --ray`` by the Ray room (integrations/raycli.py); the ``rewardrt``
command (runtime/namespace/cli.py) puts the verbs together.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict

from rewardrt.runtime import clibase
from rewardrt.runtime.cli.jsonl import stream, write_one, write_ranked, write_scores
from rewardrt.runtime.clibase import CliError, model_args
from rewardrt.runtime.rows import check_list, check_pair


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Registers ``score``, ``rank`` and ``info``; returns their parsers (other rooms add options)."""
    parsers = {}
    parsers["score"] = p = sub.add_parser("score", help="score one pair, or a JSONL file of pairs (streaming)")
    model_args(p)
    p.add_argument("--reference", help="reference answer (with --response)")
    p.add_argument("--response", help="response to score (with --reference)")
    _stream_args(p, '{"reference": str, "response": str, ...}', "score")
    p.set_defaults(func=run_score)

    parsers["rank"] = p = sub.add_parser("rank", help="rank responses against one reference, or a JSONL file of such lists")
    model_args(p)
    p.add_argument("--reference", help="reference answer (with the responses as arguments)")
    p.add_argument("responses", nargs="*", help="responses to rank")
    _stream_args(p, '{"reference": str, "responses": [str], ...}', "ranked")
    p.set_defaults(func=run_rank)

    parsers["info"] = p = sub.add_parser("info", help="print what a model artifact says about itself")
    p.add_argument("model", nargs="?", default=None, help="a .onnx artifact (default: the embedded model)")
    p.set_defaults(func=run_info)
    return parsers


def _stream_args(p: argparse.ArgumentParser, line: str, added: str) -> None:
    p.add_argument("--input", help=f"JSONL, one {line} per line; - for stdin")
    p.add_argument("--output", default="-",
                   help=f"JSONL out: each input line plus {added!r} (default: - = stdout). For one item given "
                        "on the command line: its JSON line is written there; on stdout the plain text")
    p.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="malformed input line: stop with its line number (default), or skip it and report at the end")


def _cli_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``rewardrt.cli.main`` reports :class:`CliError`; this adds a quiet exit on a closed pipe."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except BrokenPipeError:  # e.g. `rewardrt score --input big.jsonl | head`
            _silence_stdout()
            return 0

    run.__name__ = fn.__name__
    return run


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


# --- subcommands ---------------------------------------------------------------------------------

@_cli_errors
def run_score(args: argparse.Namespace) -> int:
    single = args.reference is not None or args.response is not None
    if single == (args.input is not None):
        raise CliError("give either --reference and --response, or --input FILE")
    if single:
        if args.reference is None or args.response is None:
            raise CliError("--reference and --response go together")
        model = clibase.load_model(args.model, args.threads)
        score = model.score(args.response, args.reference)
        if args.output == "-":
            print(f"{score:.6f}")
        else:
            write_one(args.output, {"reference": args.reference, "response": args.response, "score": score})
        return 0
    if getattr(args, "ray", None) is not None:
        return args.run_on_ray(args)  # set by the Ray room's options (integrations/raycli.py)
    if getattr(args, "actors", None) is not None or getattr(args, "cpus_per_actor", 1) != 1:
        raise CliError("--actors and --cpus-per-actor go with --ray")
    return stream(args, check_pair, lambda row: 1, write_scores)


@_cli_errors
def run_rank(args: argparse.Namespace) -> int:
    single = args.reference is not None or bool(args.responses)
    if single == (args.input is not None):
        raise CliError("give either --reference and responses to rank, or --input FILE")
    if single:
        if args.reference is None or not args.responses:
            raise CliError("--reference and the responses to rank go together")
        model = clibase.load_model(args.model, args.threads)
        ranked = model.rank(args.responses, args.reference)
        if args.output == "-":
            for item in ranked:
                print(f"{item.score:.6f}\t{item.index}\t{item.response}")
        else:
            write_one(args.output, {"reference": args.reference, "responses": args.responses,
                                     "ranked": [asdict(item) for item in ranked]})
        return 0
    return stream(args, check_list, lambda row: max(1, len(row["responses"])), write_ranked)


@_cli_errors
def run_info(args: argparse.Namespace) -> int:
    from rewardrt.runtime.cpu import cpu_features
    from rewardrt.runtime.integrity import weights_file

    model = clibase.load_model(args.model)
    weights = weights_file(model.path)
    print(json.dumps({"path": str(model.path), "weights_file": str(weights) if weights else None,
                      **asdict(model.spec), "cpu": cpu_features()}, indent=2))
    return 0
