"""The operator's HTTP endpoint for Prometheus and Kubernetes: ``/metrics`` (the families of
:mod:`shoal_operator.metrics`) and ``/readyz``.

Served by aiohttp (kopf's own HTTP stack) in kopf's event loop, started by a startup handler,
so ``shoal-operator`` and ``kopf run -m shoal_operator`` both have it. Ready means: the startup
handlers ran (clients configured) and the Kubernetes API answers a read of Workers with the
operator's credentials; the answer is kept :data:`READY_CACHE_S` so probes cost little."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shoal_operator.metrics import REGISTRY

log = logging.getLogger("shoal_operator.metrics")

READY_CACHE_S = 5.0

ApiCheck = Callable[[], None]
"""A blocking read of the API: returns when it answered, raises when it did not."""


class MetricsServer:
    """``/metrics`` and ``/readyz`` on one port; not ready until :meth:`started` is called."""

    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        self.host, self.port = host, port
        self._check: ApiCheck | None = None
        self._ready_at: float | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on the port (OSError when it is taken)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner

    def started(self, check: ApiCheck) -> None:
        """The operator's handlers are configured: readiness now asks the API."""
        self._check = check

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._check is None:
            return web.Response(status=503, text="not ready: the operator is starting\n")
        now = time.monotonic()
        if self._ready_at is None or now - self._ready_at > READY_CACHE_S:
            try:
                await asyncio.to_thread(self._check)
            except Exception as exc:  # any failure: not ready, saying why
                self._ready_at = None
                log.warning("not ready: the Kubernetes API did not answer: %s", exc)
                return web.Response(
                    status=503, text=f"not ready: the Kubernetes API did not answer: {exc}\n"
                )
            self._ready_at = now
        return web.Response(text="ready\n")
