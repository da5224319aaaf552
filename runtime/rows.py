"""JSONL rows of text pairs, each checked: whole files (training, eval and calibration data; every error
names the file, line and field) and single lines of scoring input (``rewardrt score``/``rank``, Ray)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from rewardrt.runtime.api import check_text


def read_rows(path: str | Path, fields: Sequence[str], non_empty: Sequence[str] = (),
              error: type[Exception] = ValueError,
              check: Callable[[dict], str | None] | None = None) -> list[dict]:
    """The JSON objects of ``path``, one a line (blank lines skipped). Each must hold every name
    in ``fields`` as a string, those in ``non_empty`` not blank, and pass ``check`` (which returns
    what is wrong, or None); otherwise ``error`` with ``FILE:LINE: field 'x' ...``. An empty file
    is an error too."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise error(f"{where}: expected a JSON object with fields {', '.join(map(repr, fields))}")
            for key in fields:
                if key not in row:
                    raise error(f"{where}: field {key!r} is missing")
                if not isinstance(row[key], str):
                    raise error(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
            for key in non_empty:
                if not row[key].strip():
                    raise error(f"{where}: field {key!r} (the reference) is empty")
            problem = check(row) if check is not None else None
            if problem:
                raise error(f"{where}: {problem}")
            rows.append(row)
    if not rows:
        raise error(f"{path} holds no pairs")
    return rows


def parse_line(raw: bytes | str, check: Callable[[dict], None]) -> dict:
    """One JSONL line as an object that passes ``check``; ValueError saying why not otherwise
    (``rewardrt score``/``rank`` and ``score --ray`` alike, so every path refuses the same lines the same way)."""
    try:
        row = json.loads(raw.decode("utf-8-sig") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    try:
        check(row)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return row


def parse_pair(raw: bytes | str) -> dict:
    """A ``rewardrt score`` input line: an object with string ``reference`` and ``response``."""
    return parse_line(raw, check_pair)


def need_str(row: dict, key: str) -> None:
    if key not in row:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(row[key], str):
        raise TypeError(f"field {key!r} must be a string, got {type(row[key]).__name__}")
    check_text(f"field {key!r}", row[key])  # a JSON "\\ud800" escape decodes to a lone surrogate


def check_pair(row: dict) -> None:
    need_str(row, "reference")
    need_str(row, "response")


def check_list(row: dict) -> None:
    need_str(row, "reference")
    values = row.get("responses")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TypeError("field 'responses' must be a list of strings")
    for i, value in enumerate(values):
        check_text(f"field 'responses'[{i}]", value)
