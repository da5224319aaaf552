"""Files on Ray: what ``rewardrt score --ray`` runs (JSONL or Parquet in, the same format out)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import ray
from rewardrt.runtime.api import RewardModel

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

COLUMNS = ("reference", "response")
SCORE_COLUMN = "score"


from rewardrt.runtime.integrations.ray.data import _positive_int, score_dataset

# --- files: what `rewardrt score --ray` runs ------------------------------------------------------

class RayScoringError(RuntimeError):
    """The Ray job failed; the message is the first line of the worker's own error."""


class BadLineError(ValueError):
    """A malformed JSONL line with ``on_error="stop"``; ``written`` lines before it are in the output."""

    def __init__(self, number: int, message: str, written: int) -> None:
        super().__init__(f"line {number}: {message}")
        self.number = number
        self.message = message
        self.written = written


@dataclass(frozen=True)
class ScoredFile:
    rows: int  # lines (rows) written, each with its score
    seconds: float  # from the job's start to the last row written
    cluster_cpus: float  # CPUs the cluster reported when the job started
    errors: list[str] = field(default_factory=list)  # "line N: reason" of each skipped JSONL line


def init_local(num_cpus: int, *, attempts: int = 6, **kwargs: Any) -> None:
    """Start a one-machine Ray on loopback (no dashboard, driver logs off), retrying Ray's start-up
    timeout: on an overloaded machine the raylet can miss Ray's fixed 30 s wait. For tests and
    benchmarks; a cluster is joined with :func:`connect`."""
    options = dict(num_cpus=_positive_int("num_cpus", num_cpus), include_dashboard=False,
                   log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1")
    options.update(kwargs)
    for attempt in range(attempts):
        try:
            ray.init(**options)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == attempts - 1 or "timed out during startup" not in str(exc):
                raise


@contextmanager
def connect(address: str, *, log_to_driver: bool = True) -> Iterator[None]:
    """Connected to Ray for the duration: ``address`` is 'auto' (the running cluster), a cluster
    address, or 'local' (a one-machine instance started here). A process already connected (e.g. a
    Ray job's driver) keeps its connection, and it is left open afterwards."""
    if ray.is_initialized():
        yield
        return
    if not isinstance(address, str) or not address:
        raise ValueError(f"the Ray address must be 'auto', 'local' or host:port, got {address!r}")
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False, log_to_driver=log_to_driver)
        else:
            ray.init(address=address, log_to_driver=log_to_driver)
    except ConnectionError as exc:
        raise ConnectionError(f"cannot reach a Ray cluster at {address!r} ({str(exc).splitlines()[0]}); start "
                              "one with `ray start --head`, or use --ray local") from None
    try:
        yield
    finally:
        ray.shutdown()


def _uri(path: str) -> str:
    """A local path read and written by the driver's node (``local://``); URIs (s3://, gs://...) as given."""
    if "://" in path:
        return path
    local = Path(path)
    if not local.exists():
        raise FileNotFoundError(f"cannot open {path!r}: No such file or directory")
    return "local://" + str(local.resolve())


def _jsonl_pairs(batch: dict[str, Any]) -> dict[str, Any]:
    """Whole JSONL files (``read_binary_files`` rows) -> one row per non-blank line, with its number."""
    import numpy as np
    from rewardrt.runtime.rows import parse_pair

    numbers: list[int] = []
    raws: list[str] = []
    references: list[str] = []
    responses: list[str] = []
    errors: list[str] = []
    for blob in batch["bytes"]:
        for number, raw in enumerate(bytes(blob).splitlines(), 1):
            if not raw.strip():
                continue
            numbers.append(number)
            try:
                row = parse_pair(raw)
            except ValueError as exc:
                raws.append("")
                references.append("")  # scored (as one cheap deduplicated text) and then dropped
                responses.append("")
                errors.append(str(exc))
            else:
                raws.append(raw.decode("utf-8-sig"))
                references.append(row["reference"])
                responses.append(row["response"])
                errors.append("")
    return {"line": np.asarray(numbers, dtype=np.int64), "raw": np.asarray(raws, dtype=object),
            "reference": np.asarray(references, dtype=object), "response": np.asarray(responses, dtype=object),
            "error": np.asarray(errors, dtype=object)}


def _jsonl_out(batch: dict[str, Any]) -> dict[str, Any]:
    """Each input line plus its score, serialised as ``rewardrt score`` writes it."""
    import numpy as np

    out = [json.dumps({**json.loads(raw), "score": float(score)}, ensure_ascii=False) if not error else ""
           for raw, score, error in zip(batch["raw"], batch["score"], batch["error"])]
    return {"line": batch["line"], "error": batch["error"], "out": np.asarray(out, dtype=object)}


@contextmanager
def _output(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield getattr(sys.stdout, "buffer", sys.stdout)
        return
    try:
        handle = open(path, "wb")
    except OSError as exc:
        raise FileNotFoundError(f"cannot open {path!r}: {exc.strerror}") from None
    with handle:
        yield handle


def _worker_message(exc: BaseException) -> str:
    """The user-code error under Ray's wrapping (its type and first line), else Ray's own first line."""
    chain, seen = [], exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    own = [e for e in chain if not type(e).__module__.startswith("ray")]
    if own:
        lines = [line for line in str(own[-1]).strip().splitlines() if line.strip()]
        return f"{type(own[-1]).__name__}: {lines[0] if lines else ''}"
    # the remote traceback travels as text: its last "SomeError: message" line is the user's error
    import re

    text = "\n".join(str(e) for e in chain)
    raised = re.findall(r"(?m)^\s*((?:ValueError|TypeError|KeyError|FileNotFoundError|OSError|RuntimeError)"
                        r"(?:\(.*?\))?: .+)$", text)
    if raised:
        return raised[-1].strip()
    lines = [line for line in str(chain[-1]).strip().splitlines() if line.strip()]
    return f"{type(chain[-1]).__name__}: {lines[0] if lines else ''}"


def score_file(src: str, dst: str, model: str | Path | RewardModel | None = None, *,
               actors: int | None = None, cpus_per_actor: int = 1, threads: int | None = None,
               on_error: str = "stop", batch_size: int = 256) -> ScoredFile:
    """Score a JSONL file (one ``{"reference", "response", ...}`` object per line) or Parquet
    (file, folder or URI; columns ``reference``, ``response``, ...) on the connected Ray cluster.

    ``dst``: JSONL (each input line with a ``score`` added, in input order, as ``rewardrt score``
    writes it; ``-`` for stdout) or, for Parquet input, ``.parquet`` (input columns plus ``score``).
    The driver writes ``dst`` while the cluster scores; malformed JSONL lines stop the job
    (:class:`BadLineError`) or, with ``on_error="skip"``, are left out and listed in the result.
    Local paths are read on the driver's node; give s3://... or gs://... URIs for data the whole
    cluster should read.
    """
    import ray.data

    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
    parquet_in = src.endswith(".parquet") or ("://" not in src and Path(src).is_dir())
    parquet_out = dst.endswith(".parquet")
    if parquet_out and not parquet_in:
        raise ValueError(f"--output {dst!r} is Parquet but --input {src!r} is JSONL; JSONL lines keep "
                         "their own fields, so write them to a .jsonl output")
    uri = _uri(src)
    context = ray.data.DataContext.get_current()
    kept_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # output rows in input order, line numbers exact
    cpus = float(ray.cluster_resources().get("CPU", 0))
    started = time.perf_counter()
    errors: list[str] = []
    written = 0
    try:
        # Reads and formatting take no CPU reservation: a pool of actors on every CPU would
        # otherwise leave no CPU to schedule them on, and the job would wait forever.
        light = {"num_cpus": 0}
        if parquet_in:
            ds = score_dataset(ray.data.read_parquet(uri, ray_remote_args=light), model, actors=actors, cpus_per_actor=cpus_per_actor,
                               threads=threads, batch_size=batch_size)
        else:
            ds = ray.data.read_binary_files(uri, ray_remote_args=light).map_batches(_jsonl_pairs, batch_size=1,
                                                                                  num_cpus=0)
            ds = score_dataset(ds, model, actors=actors, cpus_per_actor=cpus_per_actor, threads=threads,
                               batch_size=batch_size).map_batches(_jsonl_out, num_cpus=0)
        with _output(dst) as out:
            if parquet_out:
                written = _write_parquet(ds, out)
            elif parquet_in:
                for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    for row in table.to_pylist():
                        out.write((json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
                    written += table.num_rows
                    out.flush()
            else:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    for number, error, line in zip(batch["line"], batch["error"], batch["out"]):
                        if error:
                            if on_error == "stop":
                                raise BadLineError(int(number), str(error), written)
                            errors.append(f"line {number}: {error}")
                            continue
                        out.write((line + "\n").encode("utf-8"))
                        written += 1
                    out.flush()
    except (BadLineError, FileNotFoundError, ValueError):
        raise
    except ray.exceptions.RayError as exc:
        raise RayScoringError(f"the Ray job failed after writing {written} rows: {_worker_message(exc)}") from exc
    finally:
        context.execution_options.preserve_order = kept_order
    return ScoredFile(written, time.perf_counter() - started, cpus, errors)


def _write_parquet(ds: ray.data.Dataset, out: BinaryIO) -> int:
    import pyarrow.parquet as pq

    writer = None
    rows = 0
    try:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


