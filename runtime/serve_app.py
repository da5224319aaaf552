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
from rewardrt.runtime.serve_batcher import MicroBatcher, QueueFullError, ShuttingDownError
from rewardrt.runtime.serve_metrics import MetricsMiddleware, ServeMetrics
from rewardrt.runtime.serve_protocol import (Limits, Rerank, RequestError, parse_get_reward, parse_json,
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


def build_app(model: RewardModel, config: ServeConfig) -> Starlette:
    limits = Limits(max_items=config.max_items, max_chars=config.max_chars)
    model_name = model.path.name
    batcher: MicroBatcher
    drain = Drain()
    metrics = ServeMetrics(ROUTES, queue_depth=lambda: batcher.pending, in_flight=lambda: drain.in_flight)
    batcher = MicroBatcher(model, max_batch_tokens=config.max_batch_tokens, max_wait_ms=config.max_wait_ms,
                           max_queue=config.max_queue, on_batch=metrics.observe_batch)

    async def run(responses: list[str], references: list[str], output: str = "score") -> list[float]:
        return await asyncio.wrap_future(batcher.submit(responses, references, output))

    async def body(request: Request) -> Any:
        return await _read_json(request, config.max_body_bytes, config.body_timeout)

    @_json_errors
    async def score(request: Request) -> Response:
        responses, references = parse_score(await body(request), limits)
        return JSONResponse({"scores": await run(responses, references)})

    @_json_errors
    async def rank(request: Request) -> Response:
        responses, references = parse_score(await body(request), limits)
        scores = await run(responses, references)
        return JSONResponse({"ranked": [{"index": i, "response": responses[i], "score": scores[i]}
                                        for i in _by_score(scores)]})

    @_json_errors
    async def get_reward(request: Request) -> Response:
        responses, references = parse_get_reward(await body(request), limits, config.strip_tokens)
        scores = await run(responses, references)
        return JSONResponse({"rewards": scores, "scores": scores, "extra_logs": {}})

    @_json_errors
    async def rerank(request: Request) -> Response:
        req = parse_rerank(await body(request), limits)
        references = [req.query] * len(req.texts)
        if not req.truncate:
            over = [i for i, cut in enumerate(model.truncated(req.texts, references)) if cut]
            if over:
                raise too_long("texts" if req.shape == "tei" else "documents", over, model.max_length)
        scores = await run(req.texts, references, "raw_score" if req.raw_scores else "score")
        order = _by_score(scores)
        return JSONResponse(_tei_rerank(req, scores, order) if req.shape == "tei"
                            else _cohere_rerank(req, scores, order, model_name))

    async def health(request: Request) -> Response:
        if batcher.closed:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def info(request: Request) -> Response:
        from rewardrt import __version__

        return JSONResponse({
            "rewardrt_version": __version__,
            "model": {"path": str(model.path), "max_length": model.max_length, "spec": asdict(model.spec)},
            "server": asdict(config),
            "routes": sorted(ROUTES),
        })

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def openapi(request: Request) -> Response:
        from rewardrt import __version__
        from rewardrt.runtime.serve_openapi import schema

        return JSONResponse(schema(__version__))

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        kind = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return _error(status, kind, f"{request.method} {request.url.path}: {detail}")

    @asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        logger.info("serving %r (max_batch_tokens=%d, max_wait_ms=%g, max_queue=%d)", model,
                    config.max_batch_tokens, config.max_wait_ms, config.max_queue)
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; drain whatever is still queued
            await asyncio.to_thread(batcher.close, config.graceful_timeout)
            logger.info("batcher drained and stopped")

    routes = [
        Route("/score", score, methods=["POST"]),
        Route("/rank", rank, methods=["POST"]),
        Route("/get_reward", get_reward, methods=["POST"]),
        Route("/rerank", rerank, methods=["POST"]),
        Route("/v1/rerank", rerank, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.add_middleware(DrainMiddleware, drain=drain)  # inside the metrics: refusals are counted too
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.drain = drain
    app.state.model = model
    app.state.config = config
    app.state.batcher = batcher
    app.state.metrics = metrics
    return app
