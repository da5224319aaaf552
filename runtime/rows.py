"""Reading JSONL rows of text pairs, each checked, every error naming the file, line and field."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path


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
