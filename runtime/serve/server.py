"""The uvicorn server behind ``rewardrt serve``: uvicorn's own, with a drain before its shutdown.
Needs ``rewardrt[serve]``; imported only by :func:`rewardrt.runtime.serve.serve`."""

from __future__ import annotations

import logging
import time

import uvicorn

logger = logging.getLogger(__name__)

ABANDONED_GRACE = 2.0  # seconds for the JSON 503s of abandoned requests to be sent before exiting


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before its own shutdown: on the first signal the app refuses
    new requests (JSON 503) while the listening socket stays open, so clients and load balancers
    get an answer rather than a refused connection; once no request is in flight, or the grace
    period is over and the rest were answered 503, uvicorn's shutdown runs."""

    def __init__(self, config, app, grace: float) -> None:
        super().__init__(config)
        self.drain = app.state.drain
        self.batcher = app.state.batcher
        self.grace = grace
        self._signal: int | None = None
        self._deadline = 0.0
        self._abandoned_at: float | None = None

    def handle_exit(self, sig, frame) -> None:
        if self._signal is not None or not self.started:
            super().handle_exit(sig, frame)  # a second signal, or before startup: stop now
            return
        self._signal = sig
        self._deadline = time.monotonic() + self.grace
        self.drain.draining = True  # a plain attribute: safe to set from a signal handler

    async def on_tick(self, counter: int) -> bool:
        if self._signal is not None and not self.should_exit:
            now = time.monotonic()
            if self.drain.in_flight == 0:
                logger.info("drained: no request in flight")
                super().handle_exit(self._signal, None)
            elif self._abandoned_at is None and now >= self._deadline:
                failed = self.batcher.abandon(
                    f"the server shut down before this request was scored (grace period "
                    f"{self.grace:g} s, --graceful-timeout)")
                logger.warning("%d requests still in flight after the %g s grace period; %d answered "
                               "503", self.drain.in_flight, self.grace, failed)
                self._abandoned_at = now
            elif self._abandoned_at is not None and now - self._abandoned_at >= ABANDONED_GRACE:
                super().handle_exit(self._signal, None)
        return await super().on_tick(counter)
