"""Real sentence pairs for calibration (INT8 plan search) and validation (the fidelity gate).

They come from the labelled pair files of the project's shared data folder (``pairs-train.jsonl``
for calibration, ``pairs-dev.jsonl`` for validation, so the gate never grades on what the search
tuned on), plus long pairs built by joining dev sentences, so the gate also covers inputs near the
512-token truncation limit.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from rewardrt.export.errors import ExportError

ENV_DATA = "REWARDRT_DATA"
TRAIN_FILE = "pairs-train.jsonl"
DEV_FILE = "pairs-dev.jsonl"
LONG_PAIRS = 48


@dataclass(frozen=True)
class Pairs:
    references: list[str]
    responses: list[str]

    def __len__(self) -> int:
        return len(self.references)


def find_data_dir(explicit: str | Path | None = None) -> Path:
    """``explicit``, else $REWARDRT_DATA, else a ``shared/data`` folder next to or above the
    working directory or this source tree."""
    if explicit is not None:
        candidates = [Path(explicit)]
    else:
        candidates = [Path(os.environ[ENV_DATA])] if os.environ.get(ENV_DATA) else []
        for start in (Path.cwd(), Path(__file__).resolve().parent):
            for parent in (start, *start.parents):
                candidates += [parent / "shared" / "data", parent / ".." / "shared" / "data"]
    for c in candidates:
        if (c / DEV_FILE).is_file() and (c / TRAIN_FILE).is_file():
            return c.resolve()
    where = str(candidates[0]) if explicit is not None else f"${ENV_DATA}, ./shared/data or ../shared/data"
    raise ExportError(
        f"no pair data found at {where}: export needs {TRAIN_FILE} and {DEV_FILE} (JSONL with "
        f"fields 'a' and 'b') to calibrate and verify; pass --data-dir or set {ENV_DATA}"
    )


def _read(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append({"a": str(row["a"]), "b": str(row["b"])})
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ExportError(f"{path}:{number}: not a pair with fields 'a' and 'b' ({exc})") from exc
    if not rows:
        raise ExportError(f"{path} holds no pairs")
    return rows


def calibration_pairs(data_dir: Path, n: int, seed: int = 0) -> Pairs:
    """``n`` train pairs plus n/16 long ones: long inputs quantize differently, so the plan search
    must see them too."""
    rows = _read(data_dir / TRAIN_FILE)
    random.Random(seed).shuffle(rows)
    return _with_long(rows[:n], rows, max(2, n // 16), random.Random(seed + 1))


def validation_pairs(data_dir: Path, n: int | None = None, n_long: int = LONG_PAIRS, seed: int = 1) -> Pairs:
    """Dev pairs (all, or ``n`` of them) plus ``n_long`` long pairs."""
    rows = _read(data_dir / DEV_FILE)
    rng = random.Random(seed)
    if n is not None and n < len(rows):
        rows = rng.sample(rows, n)
    return _with_long(rows, rows, n_long, rng)


def _with_long(rows: list[dict], pool: list[dict], n_long: int, rng: random.Random) -> Pairs:
    """``rows`` as pairs, then ``n_long`` pairs of a short text against 150-700 words joined from
    ``pool`` (alternating which side is long), reaching the 512-token truncation."""
    refs = [r["a"] for r in rows]
    resps = [r["b"] for r in rows]
    sentences = [r["b"] for r in pool]
    for i in range(n_long):
        words = rng.randint(150, 700)
        text, count = [], 0
        while count < words:
            s = rng.choice(sentences)
            text.append(s)
            count += len(s.split())
        long_text = " ".join(text)
        short = pool[i % len(pool)]["a"]
        refs.append(short if i % 2 == 0 else long_text)
        resps.append(long_text if i % 2 == 0 else short)
    return Pairs(refs, resps)
