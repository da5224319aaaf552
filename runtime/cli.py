"""Runtime-side subcommands (torch-free): ``score``, ``rank``, ``info``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import TextIO

CHUNK = 512  # lines scored per batch when streaming a file


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score one pair, or a JSONL file of pairs (streaming)")
    p.add_argument("--model", default=None, help="a .onnx artifact (default: the embedded model)")
    p.add_argument("--reference", help="reference answer (with --response)")
    p.add_argument("--response", help="response to score (with --reference)")
    p.add_argument("--input", help="JSONL with 'reference' and 'response' per line; - for stdin")
    p.add_argument("--output", default="-", help="JSONL out, each input line plus 'score' (default: stdout)")
    p.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="malformed input line: stop with its line number, or skip it and report at the end")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run_score)

    p = sub.add_parser("rank", help="rank responses against one reference")
    p.add_argument("--model", default=None)
    p.add_argument("--reference", required=True)
    p.add_argument("responses", nargs="+", help="responses to rank")
    p.set_defaults(func=run_rank)

    p = sub.add_parser("info", help="print what a model artifact says about itself")
    p.add_argument("model", nargs="?", default=None, help="a .onnx artifact (default: the embedded model)")
    p.set_defaults(func=run_info)


def _load(path: str | None, threads: int | None = None):
    from rewardrt.runtime.api import RewardModel

    return RewardModel(path, threads=threads)


def _lines(stream: TextIO, on_error: str, errors: list[str]) -> Iterator[dict]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            for key in ("reference", "response"):
                if not isinstance(row.get(key), str):
                    raise ValueError(f"field {key!r} must be a string")
        except ValueError as exc:
            message = f"line {number}: {exc}"
            if on_error == "stop":
                raise SystemExit(f"error: input {message}") from None
            errors.append(message)
            continue
        yield row


def run_score(args: argparse.Namespace) -> int:
    single = args.reference is not None or args.response is not None
    if single == (args.input is not None):
        print("error: give either --reference and --response, or --input FILE", file=sys.stderr)
        return 2
    if single and (args.reference is None or args.response is None):
        print("error: --reference and --response go together", file=sys.stderr)
        return 2
    model = _load(args.model, args.threads)
    if single:
        print(f"{model.score(args.response, args.reference):.6f}")
        return 0
    src = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
    dst = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    errors: list[str] = []
    done = 0
    try:
        chunk: list[dict] = []
        for row in _lines(src, args.on_error, errors):
            chunk.append(row)
            if len(chunk) >= CHUNK:
                done += _flush(model, chunk, dst)
                chunk = []
        done += _flush(model, chunk, dst)
    finally:
        if src is not sys.stdin:
            src.close()
        if dst is not sys.stdout:
            dst.close()
    if errors:
        print(f"skipped {len(errors)} malformed lines:", *errors[:20], sep="\n  ", file=sys.stderr)
    print(f"scored {done} pairs", file=sys.stderr)
    return 0


def _flush(model, rows: list[dict], dst: TextIO) -> int:
    if not rows:
        return 0
    scores = model.batch_score([r["response"] for r in rows], [r["reference"] for r in rows])
    for row, score in zip(rows, scores):
        dst.write(json.dumps({**row, "score": score}, ensure_ascii=False) + "\n")
    dst.flush()
    return len(rows)


def run_rank(args: argparse.Namespace) -> int:
    model = _load(args.model)
    for item in model.rank(args.responses, args.reference):
        print(f"{item.score:.4f}\t{item.index}\t{item.response}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    model = _load(args.model)
    print(json.dumps({"path": str(model.path), **asdict(model.spec)}, indent=2))
    return 0
