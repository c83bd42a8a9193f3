"""The dashboard's web application: builds it (routes, templates, static files, the history
sampler) and serves it. ``shoal dashboard`` calls :func:`serve`; tests call :func:`build`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jinja2
from aiohttp import web

from shoal.app import App
from shoal.dashboard.access import Access
from shoal.dashboard.control_routes import control_routes
from shoal.dashboard.history import DEFAULT_INTERVAL_S, History, sample_forever
from shoal.dashboard.routes import STATE, State, routes, segment
from shoal.protocol import QueueStats

HERE = Path(__file__).parent
log = logging.getLogger("shoal.dashboard")

SECURITY_HEADERS = {
    # everything is served from here: no CDN, no inline script, no framing by other sites
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["age"] = _age
    env.filters["segment"] = segment  # not urlencode: it leaves "/" as is
    return env


def _when(epoch_s: float | None) -> str:
    if not epoch_s:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_s))


def _age(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


async def _secure(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def build(
    app: App,
    access: Access,
    trace_template: str | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    history: History | None = None,
) -> web.Application:
    """The aiohttp application; the sampler runs while it does."""
    web_app = web.Application()
    web_app.on_response_prepare.append(_secure)
    state = State(app, history or History(), access, trace_template, templates(), interval_s)
    web_app[STATE] = state
    web_app.add_routes(routes)
    web_app.add_routes(control_routes)
    web_app.router.add_static("/static/", HERE / "static")

    async def measure() -> list[QueueStats]:
        def blocking() -> list[QueueStats]:
            names = app.broker.queues()
            return app.broker.measure_many(names) if names else []

        return await asyncio.to_thread(blocking)

    async def sampler(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(sample_forever(measure, state.history, interval_s))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    web_app.cleanup_ctx.append(sampler)
    return web_app


def serve(web_app: web.Application, host: str, port: int) -> None:
    """Serve until Ctrl-C or SIGTERM."""
    log.info("dashboard on http://%s:%s/", host, port)
    web.run_app(web_app, host=host, port=port, print=None, access_log=None)
