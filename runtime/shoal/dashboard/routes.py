"""The dashboard's routes: HTML pages, the JSON API under ``/api/`` they use, and the dead
letters' writes (replay, purge), which are POST only and need the token. Flow and task control
(pause, resume, purge a queue; a message's page; cancel) is in :mod:`.control_routes`.

Every Redis read runs in a thread (the client blocks); every page is rendered with
autoescaping, so a poison message's text is shown, never run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import jinja2
from aiohttp import web

from shoal.app import App
from shoal.dashboard import notices, snapshot
from shoal.dashboard.access import FIELD, HEADER, Access
from shoal.dashboard.history import History
from shoal.dashboard.links import add_trace_urls
from shoal.errors import ShoalError
from shoal.protocol import REDIS_ERRORS
from shoal.redis_url import mask_url
from shoal.version import __version__

T = TypeVar("T")


@dataclass
class State:
    """What every handler shares: the App (its Redis client), the history the sampler fills,
    who may write, the trace link template, and the templates."""

    app: App
    history: History
    access: Access
    trace_template: str | None
    templates: jinja2.Environment
    interval_s: float


STATE = web.AppKey("state", State)
routes = web.RouteTableDef()


def state_of(request: web.Request) -> State:
    return request.app[STATE]


async def read(request: web.Request, fn: Callable[..., T], *args: Any) -> T:
    """``fn(app, *args)`` in a thread; Redis errors become a 503 that says what is wrong."""
    st = state_of(request)
    try:
        return await asyncio.to_thread(fn, st.app, *args)
    except (ShoalError, *REDIS_ERRORS) as exc:
        url = mask_url(st.app.settings.redis_url)
        raise web.HTTPServiceUnavailable(
            text=f"Redis at {url} did not answer: {exc}. Check SHOAL_REDIS_URL / --redis-url.",
        ) from exc


def page(request: web.Request, template: str, **context: Any) -> web.Response:
    st = state_of(request)
    html = st.templates.get_template(template).render(
        active=template.split(".", maxsplit=1)[0].split("_", maxsplit=1)[0],
        writes=st.access.writes,
        version=__version__,
        redis=mask_url(st.app.settings.redis_url),
        interval_s=st.interval_s,
        trace_links=st.trace_template is not None,
        **context,
    )
    return web.Response(text=html, content_type="text/html")


def segment(text: str) -> str:
    """``text`` as one path segment: queue names and ids may hold any character, ``/`` too
    (aiohttp matches the raw path, so ``%2F`` stays inside its segment)."""
    return quote(text, safe="")


def api(request: web.Request, data: Any) -> web.Response:
    return web.json_response(add_trace_urls(data, state_of(request).trace_template))


# --- pages ----------------------------------------------------------------------------------


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/queues")


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness and readiness: the server answers (Redis may be away; the pages say so)."""
    return web.Response(text="ok\n")


@routes.get("/queues")
async def queues_page(request: web.Request) -> web.Response:
    return page(request, "queues.html", notice=notices.verified(request.query))


@routes.get("/workers")
async def workers_page(request: web.Request) -> web.Response:
    return page(request, "workers.html")


@routes.get("/dlq")
async def dlq_index_page(request: web.Request) -> web.Response:
    counts = await read(request, snapshot.dead_letter_counts)
    return page(request, "dlq_index.html", counts=counts)


@routes.get("/dlq/{queue}")
async def dlq_queue_page(request: web.Request) -> web.Response:
    queue = request.match_info["queue"]
    data = add_trace_urls(
        await read(request, snapshot.dead_letters, queue), state_of(request).trace_template
    )
    return page(request, "dlq_queue.html", dlq=data, notice=notices.verified(request.query))


@routes.get("/dlq/{queue}/{id}")
async def dlq_entry_page(request: web.Request) -> web.Response:
    queue, message_id = request.match_info["queue"], request.match_info["id"]
    entry = await read(request, snapshot.dead_letter, queue, message_id)
    if entry is None:
        raise web.HTTPNotFound(
            text=f"No dead letter {message_id} in queue {queue!r} (replayed or purged?)."
        )
    entry = add_trace_urls(entry, state_of(request).trace_template)
    return page(request, "dlq_entry.html", queue=queue, entry=entry)


@routes.get("/dlq/{queue}/confirm/{action}")
async def confirm_page(request: web.Request) -> web.Response:
    """The confirmation step before a replay or purge: says what will happen, asks for the
    token, and POSTs only when confirmed."""
    queue, action = request.match_info["queue"], request.match_info["action"]
    if action not in ("replay", "purge"):
        raise web.HTTPNotFound(text=f"No action {action!r}: replay or purge.")
    ids = request.query.getall("id", [])
    if not ids and action == "replay":
        raise web.HTTPBadRequest(text="Name the dead letters to replay (?id=…).")
    return page(request, "confirm.html", queue=queue, action=action, ids=ids, field=FIELD)


@routes.get("/schedules")
async def schedules_page(request: web.Request) -> web.Response:
    return page(request, "schedules.html", rows=await read(request, snapshot.schedules))


@routes.get("/workflows")
async def workflows_page(request: web.Request) -> web.Response:
    return page(request, "workflows.html", rows=await read(request, snapshot.workflows))


# --- the JSON API ---------------------------------------------------------------------------


@routes.get("/api/config")
async def api_config(request: web.Request) -> web.Response:
    st = state_of(request)
    return web.json_response(
        {
            "version": __version__,
            "writes": st.access.writes,
            "trace_url_template": st.trace_template,
            "sample_interval_s": st.interval_s,
            "redis": mask_url(st.app.settings.redis_url),
        }
    )


@routes.get("/api/queues")
async def api_queues(request: web.Request) -> web.Response:
    return api(request, await read(request, snapshot.queues, state_of(request).history))


@routes.get("/api/workers")
async def api_workers(request: web.Request) -> web.Response:
    return api(request, await read(request, snapshot.workers))


@routes.get("/api/dlq")
async def api_dlq_index(request: web.Request) -> web.Response:
    return api(request, await read(request, snapshot.dead_letter_counts))


@routes.get("/api/dlq/{queue}")
async def api_dlq_queue(request: web.Request) -> web.Response:
    text = request.query.get("limit", "50")
    if not text.isdigit():
        raise web.HTTPBadRequest(text=f"limit must be a whole number from 1 to 500, got {text!r}")
    limit = min(500, max(1, int(text)))
    return api(
        request, await read(request, snapshot.dead_letters, request.match_info["queue"], limit)
    )


@routes.get("/api/dlq/{queue}/{id}")
async def api_dlq_entry(request: web.Request) -> web.Response:
    queue, message_id = request.match_info["queue"], request.match_info["id"]
    entry = await read(request, snapshot.dead_letter, queue, message_id)
    if entry is None:
        return web.json_response({"error": f"no dead letter {message_id} in {queue}"}, status=404)
    return api(request, entry)


@routes.get("/api/schedules")
async def api_schedules(request: web.Request) -> web.Response:
    return api(request, await read(request, snapshot.schedules))


@routes.get("/api/workflows")
async def api_workflows(request: web.Request) -> web.Response:
    return api(request, await read(request, snapshot.workflows))


# --- writes ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteRequest:
    token: str | None
    ids: list[str] | None
    """None: every dead letter of the queue (purge only)."""


async def _parse_write(request: web.Request) -> WriteRequest:
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="The body is not JSON.") from None
        body = body if isinstance(body, dict) else {}
        ids = body.get("ids")
        every = body.get("all") is True
        token = request.headers.get(HEADER) or body.get(FIELD)
    else:
        form = await request.post()
        ids = [str(v) for v in form.getall("id", [])]
        every = form.get("all") == "1"
        token = request.headers.get(HEADER) or str(form.get(FIELD) or "") or None
    if every:
        return WriteRequest(token if isinstance(token, str) else None, None)
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise web.HTTPBadRequest(text="Name the dead letters: ids (a list), or all (purge).")
    return WriteRequest(token if isinstance(token, str) else None, ids)


def check_write(request: web.Request, given: str | None) -> None:
    """Refuse (403, saying why) a write on a read-only dashboard or without the token."""
    access = state_of(request).access
    if not access.writes:
        raise web.HTTPForbidden(
            text="This dashboard is read-only: start it with SHOAL_DASHBOARD_TOKEN set "
            "(and --allow-writes) to replay, purge, pause, resume or cancel."
        )
    if not access.allows(given):
        raise web.HTTPForbidden(text="Wrong or missing token: nothing was changed.")


def _write(
    action: str,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        queue = request.match_info["queue"]
        wanted = await _parse_write(request)
        check_write(request, wanted.token)
        if action == "replay" and wanted.ids is None:
            raise web.HTTPBadRequest(text="Name the dead letters to replay.")
        if action == "replay":
            result = await read(request, snapshot.replay, queue, wanted.ids)
        else:
            result = await read(request, snapshot.purge, queue, wanted.ids)
        if request.path.startswith("/api/"):
            return web.json_response(result)
        raise web.HTTPSeeOther(f"/dlq/{segment(queue)}?" + notices.query(_said(action, result)))

    return handler


def _said(action: str, result: dict[str, Any]) -> str:
    if action == "purge":
        return f"Purged {result['purged']} dead letter(s)."
    skipped = "; ".join(f"{k}: {v}" for k, v in result["skipped"].items())
    return f"Replayed {len(result['replayed'])} message(s)." + (
        f" Skipped {skipped}" if skipped else ""
    )


for _action in ("replay", "purge"):
    routes.post(f"/api/dlq/{{queue}}/{_action}")(_write(_action))
    routes.post(f"/dlq/{{queue}}/{_action}")(_write(_action))
