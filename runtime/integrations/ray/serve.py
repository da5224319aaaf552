"""Ray Serve: ``POST /score`` with the same JSON as ``rewardrt serve``, batched across requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rewardrt.runtime.api import DEFAULT_BATCH_SIZE, RewardModel

if TYPE_CHECKING:
    from ray.serve import Application
    from starlette.requests import Request
    from starlette.responses import Response

logger = logging.getLogger(__name__)

COLUMNS = ("reference", "response")
SCORE_COLUMN = "score"


from rewardrt.runtime.integrations.ray.data import _model_path, _positive_int

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
        from rewardrt.runtime.protocol import Limits

        self.model = RewardModel(model, threads=threads)
        self.limits = Limits(max_items=limits["max_items"], max_chars=limits["max_chars"])
        self.max_body_bytes = limits["max_body_bytes"]
        # decorated per replica, so the batch settings come from build_app, not from a class body
        self._score_pair = serve.batch(max_batch_size=max_batch_size,
                                       batch_wait_timeout_s=batch_wait_timeout_s)(self._score_batch)

    async def _score_batch(self, pairs: list[tuple[str, str]]) -> list[float]:
        references = [reference for reference, _ in pairs]
        responses = [response for _, response in pairs]
        return await asyncio.to_thread(self.model.batch_score, responses, references, len(pairs))

    async def __call__(self, request: Request) -> Response:
        from rewardrt.runtime.protocol import (
            RequestError,
            parse_json,
            parse_score,
            too_large,
        )
        from starlette.responses import JSONResponse

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
            references, responses = parse_score(parse_json(raw), self.limits)
            scores = await asyncio.gather(*(self._score_pair((ref, resp))
                                            for ref, resp in zip(references, responses)))
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
    from rewardrt.runtime.protocol import MAX_BODY_BYTES, MAX_CHARS, MAX_ITEMS

    path = _model_path(model)
    _positive_int("replicas", replicas)
    _positive_int("threads", threads)
    _positive_int("max_batch_size", max_batch_size)
    _positive_int("max_ongoing_requests", max_ongoing_requests)
    if isinstance(batch_wait_timeout_s, bool) or not isinstance(batch_wait_timeout_s, (int, float)) \
            or batch_wait_timeout_s < 0:
        raise ValueError(f"batch_wait_timeout_s must be a number >= 0, got {batch_wait_timeout_s!r}")
    limits = {"max_items": MAX_ITEMS, "max_chars": MAX_CHARS, "max_body_bytes": MAX_BODY_BYTES}
    deployment = serve.deployment(
        ScoreDeployment, name=name, num_replicas=replicas, max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": threads},
    )
    return deployment.bind(path, threads, max_batch_size, float(batch_wait_timeout_s), limits)
