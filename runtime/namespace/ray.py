"""Scale-out on Ray (needs ``rewardrt[ray]``): batch scoring with Ray Data, and a Ray Serve deployment.

Batch scoring: every Ray Data actor loads the model once and scores the ``reference``/``response``
columns of the batches it is given, adding a ``score`` column::

    import ray, rewardrt.ray
    ds = ray.data.read_parquet("s3://bucket/pairs/")          # columns reference, response, ...
    scored = rewardrt.ray.score_dataset(ds)                    # one actor per CPU, 1 thread each
    scored.write_parquet("s3://bucket/scored/")

Serving: ``build_app`` returns a Ray Serve application answering ``POST /score`` with the same JSON
as ``rewardrt serve`` (bodies checked by :mod:`rewardrt.runtime.serve_protocol`), batched across
concurrent requests with ``@serve.batch``::

    from ray import serve
    serve.run(rewardrt.ray.build_app(replicas=4, threads=2), route_prefix="/")

Scores are those of :meth:`rewardrt.RewardModel.batch_score` on the same artifact, up to the
float32 rounding that a different batch composition may move (~1e-7).

This module is the only one that imports Ray; ``import rewardrt`` never does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

try:
    import ray
except ModuleNotFoundError as exc:  # keep ``name`` so the CLI's extras hint applies
    raise ModuleNotFoundError("rewardrt.ray needs Ray; pip install 'rewardrt[ray]'", name=exc.name) from None

from rewardrt.runtime.api import DEFAULT_BATCH_SIZE, RewardModel

if TYPE_CHECKING:
    import ray.data
    from ray.serve import Application
    from starlette.requests import Request
    from starlette.responses import Response

logger = logging.getLogger(__name__)

__all__ = ["RayScorer", "score_dataset", "score_file", "connect", "ScoreDeployment", "build_app",
           "assigned_cpus", "ScoredFile", "BadLineError", "RayScoringError"]

COLUMNS = ("reference", "response")
SCORE_COLUMN = "score"


def _model_path(model: str | Path | RewardModel | None) -> str | None:
    """What travels to the workers: a path (or None for the embedded default), never a session."""
    if model is None:
        return None
    if isinstance(model, RewardModel):
        return str(model.path)
    if isinstance(model, (str, Path)):
        return str(model)
    raise TypeError(f"model must be a path, a RewardModel or None, got {type(model).__name__}")


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def assigned_cpus() -> int:
    """CPUs Ray assigned to the current actor or task (rounded down, at least 1); 1 outside Ray."""
    if not ray.is_initialized():  # get_runtime_context() would start a local Ray instance
        return 1
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    except Exception:  # noqa: BLE001 - not connected to Ray, or an API without assigned resources
        return 1
    return max(1, math.floor(cpus))


# --- Ray Data ------------------------------------------------------------------------------------

class RayScorer:
    """A callable class for ``Dataset.map_batches``: one onnxruntime session per actor.

    ``model``: an artifact path readable on every node (None: the embedded default model, which is
    installed with rewardrt). ``threads``: intra-op threads (None: the CPUs Ray assigned to the actor,
    so ``num_cpus=2`` per actor gives 2 threads). Batches may be ``batch_format="numpy"`` (dict of
    arrays) or ``"pandas"``; they come back with every column kept and a float64 ``score`` column
    holding exactly the floats ``RewardModel.batch_score`` returns.
    """

    def __init__(self, model: str | Path | None = None, *, threads: int | None = None,
                 max_length: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.threads = threads if threads is not None else assigned_cpus()
        self.model = RewardModel(model, threads=self.threads, max_length=max_length)
        self.batch_size = batch_size

    def __call__(self, batch: Any) -> Any:
        import numpy as np

        columns = list(batch.columns) if hasattr(batch, "columns") else list(batch)
        missing = [name for name in COLUMNS if name not in columns]
        if missing:
            raise ValueError(f"the batch has no {missing[0]!r} column (columns: {columns}); "
                             f"rewardrt scores the columns {list(COLUMNS)}")
        references = self._texts(batch, "reference")
        responses = self._texts(batch, "response")
        scores = np.asarray(self.model.batch_score(responses, references, self.batch_size), dtype=np.float64)
        if hasattr(batch, "assign"):  # pandas: a new frame, the caller's is left untouched
            return batch.assign(**{SCORE_COLUMN: scores})
        return {**batch, SCORE_COLUMN: scores}

    @staticmethod
    def _texts(batch: Any, name: str) -> list[str]:
        values = batch[name]
        values = values.tolist() if hasattr(values, "tolist") else list(values)
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise TypeError(f"column {name!r} must hold strings; row {i} of this batch is "
                                f"{type(value).__name__}: {value!r:.80}")
        return values


def score_dataset(ds: ray.data.Dataset, model: str | Path | RewardModel | None = None, *,
                  actors: int | tuple[int, int] | None = None, cpus_per_actor: int = 1,
                  threads: int | None = None, batch_size: int = 256,
                  batch_format: str = "numpy", scorer: type[RayScorer] = RayScorer,
                  **map_batches_kwargs: Any) -> ray.data.Dataset:
    """``ds`` with a ``score`` column, scored by a pool of :class:`RayScorer` actors (lazy, like any
    Ray Data transform: nothing runs until the result is consumed or written).

    ``actors``: pool size; an int for a fixed pool, ``(min, max)`` to autoscale, None to autoscale
    from 1 up to what the cluster's free CPUs allow. ``cpus_per_actor``: CPUs reserved per actor,
    also its onnxruntime thread count unless ``threads`` is given; several 1-CPU actors keep every
    core busy on independent batches, more CPUs per actor mean fewer model copies in memory and
    lower latency per batch. ``batch_size``: rows handed to an actor per call; rows inside it are
    length-sorted into forward passes of at most 64 rows. A lost actor is restarted and its
    unfinished batches are retried (Ray Data's defaults; pass ``max_restarts=0`` to disable).
    ``scorer``: a :class:`RayScorer` subclass, e.g. to add columns. Other keyword arguments go to
    ``Dataset.map_batches``. When the actors take every CPU of the cluster, give the read that
    feeds them ``ray_remote_args={"num_cpus": 0}`` (as :func:`score_file` does), or the read tasks
    find no CPU left and the job waits forever.
    """
    from ray.data import ActorPoolStrategy

    _positive_int("cpus_per_actor", cpus_per_actor)
    _positive_int("batch_size", batch_size)
    if threads is not None:
        _positive_int("threads", threads)
    if batch_format not in ("numpy", "pandas"):
        raise ValueError(f"batch_format must be 'numpy' or 'pandas', got {batch_format!r}")
    if not (isinstance(scorer, type) and issubclass(scorer, RayScorer)):
        raise TypeError(f"scorer must be RayScorer or a subclass, got {scorer!r}")
    if actors is None:
        compute = ActorPoolStrategy(min_size=1, max_size=None)
    elif isinstance(actors, tuple) and len(actors) == 2:
        low, high = (_positive_int("actors", a) for a in actors)
        if low > high:
            raise ValueError(f"actors (min, max) needs min <= max, got {actors!r}")
        compute = ActorPoolStrategy(min_size=low, max_size=high)
    else:
        compute = ActorPoolStrategy(size=_positive_int("actors", actors))
    return ds.map_batches(
        scorer,
        fn_constructor_kwargs={"model": _model_path(model), "threads": threads},  # None: the actor's CPUs
        compute=compute,
        num_cpus=cpus_per_actor,
        batch_size=batch_size,
        batch_format=batch_format,
        **map_batches_kwargs,
    )


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

    from rewardrt.runtime.cli import parse_pair

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


# --- Ray Serve -----------------------------------------------------------------------------------

class ScoreDeployment:
    """One Serve replica: a RewardModel and ``POST /score`` (``GET /health``), same JSON as ``rewardrt serve``.

    Each pair of a request is queued on its own through ``@serve.batch``, so pairs from concurrent
    requests share forward passes of up to ``max_batch_size`` pairs; scoring runs in a worker thread
    (onnxruntime releases the GIL), so the replica keeps accepting requests meanwhile.
    """

    def __init__(self, model: str | None, threads: int, max_batch_size: int, batch_wait_timeout_s: float,
                 limits: Mapping[str, int]) -> None:
        from ray import serve

        from rewardrt.runtime.serve_protocol import Limits

        self.model = RewardModel(model, threads=threads)
        self.limits = Limits(max_items=limits["max_items"], max_chars=limits["max_chars"])
        self.max_body_bytes = limits["max_body_bytes"]
        # decorated per replica, so the batch settings come from build_app, not from a class body
        self._score_pair = serve.batch(max_batch_size=max_batch_size,
                                       batch_wait_timeout_s=batch_wait_timeout_s)(self._score_batch)

    async def _score_batch(self, pairs: list[tuple[str, str]]) -> list[float]:
        responses = [response for response, _ in pairs]
        references = [reference for _, reference in pairs]
        return await asyncio.to_thread(self.model.batch_score, responses, references, len(pairs))

    async def __call__(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        from rewardrt.runtime.serve_protocol import RequestError, parse_json, parse_score, too_large

        path = request.url.path.rstrip("/") or "/"
        if path == "/health" and request.method == "GET":
            return JSONResponse({"status": "ok"})
        if path != "/score":
            return JSONResponse({"error": f"{request.method} {request.url.path}: Not Found",
                                 "error_type": "not_found"}, status_code=404)
        if request.method != "POST":
            return JSONResponse({"error": f"{request.method} {request.url.path}: Method Not Allowed",
                                 "error_type": "method_not_allowed"}, status_code=405)
        try:
            raw = await request.body()
            if len(raw) > self.max_body_bytes:
                raise too_large("the request body in bytes", len(raw), self.max_body_bytes, "max_body_bytes")
            responses, references = parse_score(parse_json(raw), self.limits)
            scores = await asyncio.gather(*(self._score_pair((resp, ref))
                                            for resp, ref in zip(responses, references)))
        except RequestError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        except Exception as exc:  # noqa: BLE001 - answered as JSON, like rewardrt serve
            logger.exception("POST /score failed")
            return JSONResponse({"error": f"scoring failed: {type(exc).__name__}: {exc}",
                                 "error_type": "internal"}, status_code=500)
        return JSONResponse({"scores": list(scores)})


def build_app(model: str | Path | RewardModel | None = None, *, replicas: int = 1, threads: int = 1,
              max_batch_size: int = DEFAULT_BATCH_SIZE, batch_wait_timeout_s: float = 0.002,
              max_ongoing_requests: int = 64, name: str = "rewardrt") -> Application:
    """A Ray Serve application of the scorer: ``serve.run(build_app(...), route_prefix="/")``.

    ``replicas``: Serve replicas (each reserves ``threads`` CPUs and runs that many onnxruntime
    threads). ``max_batch_size``: pairs per forward pass across concurrent requests;
    ``batch_wait_timeout_s``: how long the first queued pair waits for companions.
    ``max_ongoing_requests``: requests a replica accepts at once (Serve queues the rest), which
    bounds how many requests can share a batch. Request limits are ``rewardrt serve``'s defaults.
    """
    from ray import serve

    from rewardrt.runtime.serve import ServeConfig

    path = _model_path(model)
    _positive_int("replicas", replicas)
    _positive_int("threads", threads)
    _positive_int("max_batch_size", max_batch_size)
    _positive_int("max_ongoing_requests", max_ongoing_requests)
    if isinstance(batch_wait_timeout_s, bool) or not isinstance(batch_wait_timeout_s, (int, float)) \
            or batch_wait_timeout_s < 0:
        raise ValueError(f"batch_wait_timeout_s must be a number >= 0, got {batch_wait_timeout_s!r}")
    defaults = ServeConfig()
    limits = {"max_items": defaults.max_items, "max_chars": defaults.max_chars,
              "max_body_bytes": defaults.max_body_bytes}
    deployment = serve.deployment(
        ScoreDeployment, name=name, num_replicas=replicas, max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": threads},
    )
    return deployment.bind(path, threads, max_batch_size, float(batch_wait_timeout_s), limits)
