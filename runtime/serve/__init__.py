"""``rewardrt serve``: HTTP scoring with dynamic micro-batching (needs ``rewardrt[serve]``).

Routes (all JSON):
    POST /score       {"reference": str, "responses": [str]} or {"references": [str], "responses": [str]}
                      -> {"scores": [float]}
    POST /rank        same body -> {"ranked": [{"index", "response", "score"}]}, highest first
    POST /get_reward  OpenRLHF remote reward: {"query": [str], "prompts": [str], "labels": [str]}
                      -> {"rewards": [float], "scores": [float], "extra_logs": {}}; the response is
                      each query minus its prompt prefix and chat-template tokens, the label its reference
    POST /rerank, /v1/rerank
                      TEI: {"query", "texts", "raw_scores"?, "return_text"?, "truncate"?}
                      -> [{"index", "score"(, "text")}]; Cohere/Infinity: {"query", "documents",
                      "top_n"?, "return_documents"?} -> {"results": [{"index", "relevance_score"}]};
                      highest first, the query is the reference
    GET  /health, /info (model metadata), /metrics (Prometheus text), /openapi.json

On SIGTERM or SIGINT the server drains: new requests (and /health) get a JSON 503, the requests in
flight finish within ``graceful_timeout`` seconds, those still running then get a JSON 503, and the
process exits 0. A second signal stops at once.

Concurrent requests are scored together by one worker thread (see :mod:`.batcher`); scores are
bit-identical to in-process ``RewardModel.batch_score`` on the same pairs. Starlette,
uvicorn and prometheus-client are imported only when an app is built, so this module imports with
the base install.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from rewardrt.runtime.chat import CHAT_TOKENS, check_strip_tokens
from rewardrt.runtime.protocol import MAX_BODY_BYTES, MAX_CHARS, MAX_ITEMS
from rewardrt.runtime.api import RewardModel

if TYPE_CHECKING:
    from starlette.applications import Starlette

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ServeConfig:
    """Batching, backpressure and request limits of one server (each is a ``rewardrt serve`` flag)."""

    max_batch_tokens: int = 8192  # estimated tokens per model call; bigger = more throughput under load
    max_wait_ms: float = 2.0  # how long the oldest queued request waits for companions
    max_queue: int = 4096  # pairs waiting at most; beyond it requests get 503 + Retry-After
    max_body_bytes: int = MAX_BODY_BYTES  # request body size (413 beyond)
    max_items: int = MAX_ITEMS  # texts per list in one request (413 beyond)
    max_chars: int = MAX_CHARS  # characters per text (413 beyond); the model truncates tokens anyway
    graceful_timeout: float = 30.0  # seconds to finish in-flight work on SIGTERM/SIGINT
    body_timeout: float = 30.0  # seconds for a client to send its whole body (408 beyond; slow clients)
    max_connections: int = 1024  # open connections at most; uvicorn answers 503 beyond (`serve` only)
    # chat-template tokens removed from /get_reward's responses (OpenRLHF decodes with them kept)
    strip_tokens: tuple[str, ...] = field(default=CHAT_TOKENS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "strip_tokens", check_strip_tokens(self.strip_tokens, "strip_tokens"))
        for f in fields(self):
            if f.name == "strip_tokens":
                continue
            value = getattr(self, f.name)
            number = (int, float) if f.type == "float" else (int,)
            if isinstance(value, bool) or not isinstance(value, number):
                raise TypeError(f"{f.name} must be {'a number' if f.type == 'float' else 'an int'}, "
                                f"got {type(value).__name__}")
            lowest = 0 if f.name == "max_wait_ms" else 1
            if value < lowest:
                raise ValueError(f"{f.name} must be >= {lowest}, got {value!r}")


def create_app(model: RewardModel, config: ServeConfig | None = None) -> Starlette:
    """The ASGI app for ``model``; use it with any ASGI server, or in tests with Starlette's TestClient.

    The batcher's worker starts with the app's lifespan (or on the first request) and is drained
    and stopped at lifespan shutdown.
    """
    if not isinstance(model, RewardModel):
        raise TypeError(f"model must be a RewardModel, got {type(model).__name__}")
    if config is None:
        config = ServeConfig()
    if not isinstance(config, ServeConfig):
        raise TypeError(f"config must be a ServeConfig, got {type(config).__name__}")
    from rewardrt.runtime.serve.app import build_app

    return build_app(model, config)


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model: RewardModel | str | Path | None = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          config: ServeConfig | None = None, threads: int | None = None, log_level: str = "info",
          access_log: bool = False) -> int:
    """Run the server until SIGINT or SIGTERM; returns 0 after a graceful shutdown (the drain in
    the module docstring)."""
    import uvicorn

    config = config or ServeConfig()
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
    if not isinstance(model, RewardModel):
        model = RewardModel(model, threads=threads)
    if not is_loopback(host):
        logger.warning("listening on %s: the scorer is reachable from the network and has no "
                       "authentication; use 127.0.0.1 unless a proxy guards it", host)
    from rewardrt.runtime.serve.server import ABANDONED_GRACE, DrainingServer

    app = create_app(model, config)
    server = DrainingServer(uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=access_log, lifespan="on",
        timeout_graceful_shutdown=ABANDONED_GRACE, limit_concurrency=config.max_connections,
    ), app, config.graceful_timeout)
    with _sigterm_exits_cleanly():
        server.run()
    return 0 if server.started else 1


@contextmanager
def _sigterm_exits_cleanly() -> Iterator[None]:
    """uvicorn re-raises the signal that stopped it once it has shut down; under the default SIGTERM
    action that would kill the process after a clean shutdown. A no-op handler lets it exit 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
