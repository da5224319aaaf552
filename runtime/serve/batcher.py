"""Dynamic micro-batching for ``rewardrt serve``: many concurrent requests, one model call per batch
(which the scorer cuts into forward passes of bounded size).

Requests put *jobs* (a list of pairs plus a future) on a bounded queue; one worker thread takes jobs
until a token budget is met or the oldest job has waited ``max_wait_ms``, scores all their pairs with
a single ``batch_score`` call and resolves each job's future with its own slice. A pair's score does
not depend on its batch neighbours (see ``rewardrt.runtime.scorer``), so results are bit-identical
to in-process ``batch_score`` on the same pairs.

The thread is deliberate: scoring is CPU-bound and onnxruntime releases the GIL, so the event loop
stays free to accept and parse requests while a batch runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

from rewardrt.runtime.api import RewardModel
from rewardrt.runtime.tokenizer import SPECIAL_TOKENS  # [CLS] reference [SEP] response [SEP]

logger = logging.getLogger(__name__)

OUTPUTS = ("score", "raw_score")
CHARS_PER_TOKEN = 4  # rough WordPiece ratio for English; only sizes batches, never changes scores


class QueueFullError(RuntimeError):
    """The queue already holds ``max_queue`` pairs; the client should retry later (HTTP 503)."""


class ShuttingDownError(RuntimeError):
    """The batcher was closed and takes no new work (HTTP 503)."""


@dataclass
class _Job:
    references: list[str]
    responses: list[str]
    output: str
    tokens: int
    enqueued: float
    future: Future


class MicroBatcher:
    """Collects pairs from concurrent callers into batches scored by one worker thread.

    ``max_batch_tokens``: estimated tokens per batch (characters / 4, capped at the model's
    max_length per pair); a larger budget means bigger batches and more throughput under load, at
    the cost of latency for the first request of each batch. A single job over budget runs alone.
    ``max_wait_ms``: how long the oldest queued job may wait for companions; 0 batches only what is
    already queued when the worker is free (lowest latency at low load).
    ``max_queue``: pairs waiting at most; ``submit`` raises :class:`QueueFullError` beyond it.
    ``on_batch``: called after each model call with (pairs, seconds), e.g. for metrics.
    """

    def __init__(self, model: RewardModel, *, max_batch_tokens: int = 8192, max_wait_ms: float = 2.0,
                 max_queue: int = 4096,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._max_pair_tokens = model.max_length
        self._jobs: deque[_Job] = deque()
        self._pending = 0  # pairs in self._jobs
        self._cond = threading.Condition()
        self._closing = False
        self._running: list[_Job] = []  # the jobs of the model call in progress
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Pairs queued and not yet taken by the worker."""
        return self._pending

    @property
    def closed(self) -> bool:
        return self._closing

    def start(self) -> None:
        """Start the worker thread (idempotent; ``submit`` also starts it)."""
        with self._cond:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="rewardrt-batcher", daemon=True)
                self._thread.start()

    def submit(self, references: Sequence[str], responses: Sequence[str],
               output: str = "score") -> Future:
        """Queue pairs (one reference per response); the future resolves to their scores (list of
        float) in input order."""
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if len(responses) != len(references):
            raise ValueError(f"got {len(responses)} responses for {len(references)} references; "
                             "give one reference per response")
        future: Future = Future()
        if not responses:
            future.set_result([])
            return future
        tokens = sum(self._estimate(ref, resp) for ref, resp in zip(references, responses))
        job = _Job(list(references), list(responses), output, tokens, time.monotonic(), future)
        self.start()
        with self._cond:
            if self._closing:
                raise ShuttingDownError("the server is shutting down and takes no new work")
            if self._pending + len(job.responses) > self.max_queue:
                raise QueueFullError(
                    f"the scoring queue is full ({self._pending} pairs waiting, at most "
                    f"{self.max_queue}); retry shortly"
                )
            self._jobs.append(job)
            self._pending += len(job.responses)
            self._cond.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, finish every queued job, then stop the worker.

        Past ``timeout`` seconds the jobs still queued fail with :class:`ShuttingDownError` and only
        the model call in progress is waited for: a process must not exit inside onnxruntime's run
        (it aborts), and that call cannot be interrupted.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            failed = self.abandon(f"the server shut down before this request was scored ({timeout:g} s "
                                  "after the shutdown began)")
            logger.warning("batcher still busy after %.1f s: %d jobs answered 503; waiting for the model "
                           "call in progress to end", timeout or 0.0, failed)
            thread.join()

    def abandon(self, reason: str) -> int:
        """Stop taking work and fail every job not yet answered, queued or in the model call in
        progress, with :class:`ShuttingDownError` (``reason``); returns how many. The call in
        progress still runs to its end, its scores unused. For a shutdown whose grace period is over."""
        with self._cond:
            self._closing = True
            jobs = list(self._jobs) + list(self._running)
            self._jobs.clear()
            self._pending = 0
            self._cond.notify_all()
        failed = 0
        for job in jobs:
            try:
                job.future.set_exception(ShuttingDownError(reason))
                failed += 1
            except InvalidStateError:  # answered in the meantime
                pass
        return failed

    def _estimate(self, reference: str, response: str) -> int:
        return min(self._max_pair_tokens, (len(reference) + len(response)) // CHARS_PER_TOKEN + SPECIAL_TOKENS)

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            with self._cond:
                self._running = live
            for output in OUTPUTS:
                group = [job for job in live if job.output == output]
                if group:
                    self._score(group, output)
            with self._cond:
                self._running = []

    def _take(self) -> list[_Job] | None:
        """The next batch: the oldest job, plus followers while under budget and before its deadline."""
        with self._cond:
            while not self._jobs and not self._closing:
                self._cond.wait()
            if not self._jobs:
                return None  # closing and drained
            first = self._jobs.popleft()
            batch, tokens = [first], first.tokens
            deadline = first.enqueued + self.max_wait
            while tokens < self.max_batch_tokens:
                if self._jobs:
                    if tokens + self._jobs[0].tokens > self.max_batch_tokens:
                        break
                    job = self._jobs.popleft()
                    batch.append(job)
                    tokens += job.tokens
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    break
                self._cond.wait(remaining)
            self._pending -= sum(len(job.responses) for job in batch)
            return batch

    def _score(self, jobs: list[_Job], output: str) -> None:
        references = [r for job in jobs for r in job.references]
        responses = [r for job in jobs for r in job.responses]
        call = self.model.batch_score if output == "score" else self.model.raw_scores
        started = time.perf_counter()
        try:
            scores = call(responses, references, batch_size=len(responses))  # the public API's order
        except Exception as exc:  # noqa: BLE001 - isolate the failing job, keep serving the others
            if len(jobs) == 1:
                logger.exception("scoring a batch of %d pairs failed", len(responses))
                _settle(jobs[0].future, exception=exc)
                return
            logger.warning("a batch of %d jobs failed (%s); scoring them one by one", len(jobs), exc)
            for job in jobs:
                self._score([job], output)
            return
        if self._on_batch is not None:
            try:
                self._on_batch(len(responses), time.perf_counter() - started)
            except Exception:  # noqa: BLE001 - a metrics hook must never stop the worker
                logger.exception("on_batch hook failed")
        start = 0
        for job in jobs:
            stop = start + len(job.responses)
            _settle(job.future, result=scores[start:stop])
            start = stop


def _settle(future: Future, result: object = None, exception: BaseException | None = None) -> None:
    """Answer a job unless :meth:`MicroBatcher.abandon` already did."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
