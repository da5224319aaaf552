"""The Starlette app behind ``rewardrt serve``: routes, JSON errors, lifespan and metrics.

Built by :func:`rewardrt.runtime.serve.create_app`; imported only there, because Starlette and
prometheus-client come with ``rewardrt[serve]``, not with the base install.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rewardrt.runtime.api import RewardModel
from rewardrt.runtime.serve.batcher import MicroBatcher, QueueFullError, ShuttingDownError
from rewardrt.runtime.serve.metrics import MetricsMiddleware, ServeMetrics
from rewardrt.runtime.protocol import (Limits, Rerank, RequestError, parse_get_reward, parse_json,
                                             parse_rerank, parse_score, too_large, too_long)

if TYPE_CHECKING:
    from rewardrt.runtime.serve import ServeConfig

logger = logging.getLogger(__name__)

ROUTES = {"/score", "/rank", "/get_reward", "/rerank", "/v1/rerank", "/health", "/info", "/metrics",
          "/openapi.json"}
Endpoint = Callable[[Request], Awaitable[Response]]


class Drain:
    """Shutdown state shared by the app and the server that runs it (``rewardrt.runtime.serve``).

    While ``draining``, :class:`DrainMiddleware` answers every new request with a JSON 503 (and
    ``/health`` with ``{"status": "draining"}``) and the requests already in flight run to their end.
    Plain attributes only: the server sets ``draining`` from a signal handler.
    """

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0  # HTTP requests inside the app


class DrainMiddleware:
    """Pure ASGI: counts the requests in flight; refuses new ones while draining."""

    def __init__(self, app, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            if scope["path"] == "/health":
                body: dict[str, Any] = {"status": "draining"}
            else:
                body = {"error": "the server is shutting down and takes no new requests; retry on "
                                 "another replica", "error_type": "unavailable"}
            response = JSONResponse(body, status_code=503, headers={"Connection": "close", "Retry-After": "1"})
            await response(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


def _error(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


def _json_errors(fn: Endpoint) -> Endpoint:
    """Every refusal or failure of an endpoint becomes a JSON error response, never a crash."""

    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except RequestError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        except ClientDisconnect:  # the client left mid-body: nobody reads an answer, nothing failed
            logger.info("%s %s: the client disconnected before sending its whole body",
                        request.method, request.url.path)
            return Response(status_code=400)
        except QueueFullError as exc:
            return _error(503, "overloaded", str(exc), headers={"Retry-After": "1"})
        except ShuttingDownError as exc:
            return _error(503, "unavailable", str(exc))
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, answered as JSON
            logger.exception("%s %s failed", request.method, request.url.path)
            return _error(500, "internal", f"scoring failed: {type(exc).__name__}: {exc}")

    endpoint.__name__ = fn.__name__
    return endpoint


async def _read_json(request: Request, max_bytes: int, timeout: float) -> Any:
    """The request's JSON body, refused with 413 past ``max_bytes`` (before reading when declared)
    and with 408 when it has not fully arrived after ``timeout`` seconds (slow clients)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, "invalid_request", f"Content-Length {declared!r} is not a byte count")
        if int(declared) > max_bytes:
            raise too_large("the request body in bytes", int(declared), max_bytes, "max_body_bytes")

    async def read() -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large("the request body in bytes", size, max_bytes, "max_body_bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        raw = await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise RequestError(408, "timeout", f"the request body did not arrive within {timeout:g} s; "
                                           "send it in one go (--body-timeout)", limit="body_timeout") from None
    return parse_json(raw)


def _by_score(scores: list[float]) -> list[int]:
    """Indices, highest score first; ties keep input order (as ``RewardModel.rank``)."""
    return sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)


def _tei_rerank(req: Rerank, scores: list[float], order: list[int]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for i in order:
        item: dict[str, Any] = {"index": i, "score": scores[i]}
        if req.return_text:
            item["text"] = req.texts[i]
        items.append(item)
    return items


def _cohere_rerank(req: Rerank, scores: list[float], order: list[int], model_name: str) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for i in order[:req.top_n]:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if req.return_text:
            item["document"] = {"text": req.texts[i]}
        results.append(item)
    return {"id": str(uuid.uuid4()), "model": req.model or model_name, "results": results}


class _Endpoints:
    """The routes of one app over one model, its batcher, drain state and metrics."""

    def __init__(self, model: RewardModel, config: ServeConfig) -> None:
        self.model = model
        self.config = config
        self.limits = Limits(max_items=config.max_items, max_chars=config.max_chars)
        self.drain = Drain()
        self.metrics = ServeMetrics(ROUTES, queue_depth=lambda: self.batcher.pending,
                                    in_flight=lambda: self.drain.in_flight)
        self.batcher = MicroBatcher(model, max_batch_tokens=config.max_batch_tokens, max_wait_ms=config.max_wait_ms,
                                    max_queue=config.max_queue, on_batch=self.metrics.observe_batch)

    async def _run(self, references: list[str], responses: list[str], output: str = "score") -> list[float]:
        return await asyncio.wrap_future(self.batcher.submit(references, responses, output))

    async def _body(self, request: Request) -> Any:
        return await _read_json(request, self.config.max_body_bytes, self.config.body_timeout)

    async def score(self, request: Request) -> Response:
        references, responses = parse_score(await self._body(request), self.limits)
        return JSONResponse({"scores": await self._run(references, responses)})

    async def rank(self, request: Request) -> Response:
        references, responses = parse_score(await self._body(request), self.limits)
        scores = await self._run(references, responses)
        return JSONResponse({"ranked": [{"index": i, "response": responses[i], "score": scores[i]}
                                        for i in _by_score(scores)]})

    async def get_reward(self, request: Request) -> Response:
        references, responses = parse_get_reward(await self._body(request), self.limits, self.config.strip_tokens)
        scores = await self._run(references, responses)
        return JSONResponse({"rewards": scores, "scores": scores, "extra_logs": {}})

    async def rerank(self, request: Request) -> Response:
        req = parse_rerank(await self._body(request), self.limits)
        references = [req.query] * len(req.texts)
        if not req.truncate:
            over = [i for i, cut in enumerate(self.model.truncated(req.texts, references)) if cut]
            if over:
                raise too_long("texts" if req.shape == "tei" else "documents", over, self.model.max_length)
        scores = await self._run(references, req.texts, "raw_score" if req.raw_scores else "score")
        order = _by_score(scores)
        return JSONResponse(_tei_rerank(req, scores, order) if req.shape == "tei"
                            else _cohere_rerank(req, scores, order, self.model.path.name))

    async def health(self, request: Request) -> Response:
        if self.batcher.closed:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def info(self, request: Request) -> Response:
        from rewardrt import __version__

        return JSONResponse({
            "rewardrt_version": __version__,
            "model": {"path": str(self.model.path), "max_length": self.model.max_length,
                      "spec": asdict(self.model.spec)},
            "server": asdict(self.config),
            "routes": sorted(ROUTES),
        })

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def openapi(self, request: Request) -> Response:
        from rewardrt import __version__
        from rewardrt.runtime.serve.openapi import schema

        return JSONResponse(schema(__version__))

    @asynccontextmanager
    async def lifespan(self, app: Starlette):
        self.batcher.start()
        logger.info("serving %r (max_batch_tokens=%d, max_wait_ms=%g, max_queue=%d)", self.model,
                    self.config.max_batch_tokens, self.config.max_wait_ms, self.config.max_queue)
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; drain whatever is still queued
            await asyncio.to_thread(self.batcher.close, self.config.graceful_timeout)
            logger.info("batcher drained and stopped")


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    kind = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error(status, kind, f"{request.method} {request.url.path}: {detail}")


def build_app(model: RewardModel, config: ServeConfig) -> Starlette:
    e = _Endpoints(model, config)
    post = {"/score": e.score, "/rank": e.rank, "/get_reward": e.get_reward, "/rerank": e.rerank,
            "/v1/rerank": e.rerank}
    get = {"/health": e.health, "/info": e.info, "/metrics": e.metrics_text, "/openapi.json": e.openapi}
    routes = [Route(path, _json_errors(fn), methods=["POST"]) for path, fn in post.items()]
    routes += [Route(path, fn, methods=["GET"]) for path, fn in get.items()]
    app = Starlette(routes=routes, lifespan=e.lifespan, exception_handlers={HTTPException: _http_error})
    app.add_middleware(DrainMiddleware, drain=e.drain)  # inside the metrics: refusals are counted too
    app.add_middleware(MetricsMiddleware, metrics=e.metrics)
    app.state.drain = e.drain
    app.state.model = model
    app.state.config = config
    app.state.batcher = e.batcher
    app.state.metrics = e.metrics
    return app
