"""JSONL in, JSONL out, in constant memory: ``rewardrt score``/``rank --input``. Each input line is
written back with its extra fields and a ``score`` (or ``ranked``) added, in chunks of about
:data:`CHUNK` pairs; a malformed line stops the run naming its line, or with ``--on-error skip`` is
skipped and reported at the end. Lines are parsed by the core's :mod:`rewardrt.runtime.rows`, as on Ray."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from rewardrt.runtime import clibase
from rewardrt.runtime.clibase import CliError, report_skipped
from rewardrt.runtime.rows import parse_line

CHUNK = 512  # pairs scored per model call when streaming


class _BadLine(Exception):
    def __init__(self, number: int, message: str) -> None:
        super().__init__(message)
        self.number = number
        self.message = message


@contextmanager
def _binary(path: str, mode: str) -> Iterator[BinaryIO]:
    if path == "-":
        std = sys.stdin if mode == "rb" else sys.stdout
        yield getattr(std, "buffer", std)  # a text stream without .buffer (tests) still works
        return
    try:
        handle = open(path, mode)
    except OSError as exc:
        raise CliError(f"cannot open {path!r}: {exc.strerror}") from None
    with handle:
        yield handle


def _rows(src: BinaryIO, check: Callable[[dict], None], on_error: str,
          errors: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank input line that passes ``check``."""
    for number, raw in enumerate(src, 1):
        if not raw.strip():
            continue
        try:
            row = parse_line(raw, check)
        except ValueError as exc:
            if on_error == "stop":
                raise _BadLine(number, str(exc)) from None
            errors.append(f"line {number}: {exc}")
        else:
            yield number, row


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(unit: str) -> Any:
    """A tqdm bar on stderr when stderr is a terminal and tqdm is installed; otherwise nothing."""
    if not sys.stderr.isatty():
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(unit=unit, file=sys.stderr, dynamic_ncols=True)


def stream(args: argparse.Namespace, check: Callable[[dict], None], size: Callable[[dict], int],
            write: Callable[[Any, list[dict], BinaryIO], None]) -> int:
    model = clibase.load_model(args.model, args.threads)
    errors: list[str] = []
    written = 0
    name = "stdin" if args.input == "-" else repr(args.input)
    with _binary(args.input, "rb") as src, _binary(args.output, "wb") as dst:
        bar = _progress("line")
        chunk: list[dict] = []
        pairs = 0

        def flush() -> None:
            nonlocal chunk, pairs, written
            if chunk:
                write(model, chunk, dst)
                dst.flush()
                written += len(chunk)
                bar.update(len(chunk))
            chunk, pairs = [], 0

        try:
            for _, row in _rows(src, check, args.on_error, errors):
                chunk.append(row)
                pairs += size(row)
                if pairs >= CHUNK:
                    flush()
            flush()
        except _BadLine as bad:
            flush()  # the valid lines before the bad one are still written
            raise CliError(f"{name} line {bad.number}: {bad.message}; stopped after writing {written} "
                           "lines (--on-error skip skips such lines)", code=1) from None
        finally:
            bar.close()
    report_skipped(errors)
    print(f"wrote {written} lines", file=sys.stderr)
    return 0


def write_scores(model: Any, rows: list[dict], dst: BinaryIO) -> None:
    scores = model.batch_score([r["response"] for r in rows], [r["reference"] for r in rows])
    for row, score in zip(rows, scores):
        dst.write(_jsonl({**row, "score": score}))


def write_ranked(model: Any, rows: list[dict], dst: BinaryIO) -> None:
    responses = [resp for r in rows for resp in r["responses"]]
    references = [r["reference"] for r in rows for _ in r["responses"]]
    scores = model.batch_score(responses, references)
    start = 0
    for row in rows:
        own = scores[start:start + len(row["responses"])]
        start += len(own)
        order = sorted(range(len(own)), key=lambda i: own[i], reverse=True)
        ranked = [{"index": i, "response": row["responses"][i], "score": own[i]} for i in order]
        dst.write(_jsonl({**row, "ranked": ranked}))


def _jsonl(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


def write_one(path: str, obj: dict) -> None:
    """One JSON line into ``path``, written whole or not at all (a temporary file renamed over it)."""
    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise CliError(f"--output {path!r}: folder {folder!r} does not exist")
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(_jsonl(obj))
        os.replace(tmp, target)
    except OSError as exc:
        raise CliError(f"cannot write --output {path!r}: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
