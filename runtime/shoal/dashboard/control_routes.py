"""Routes for flow and task control: a message's page (``/task/QUEUE/ID``) and its API, and the
writes: pause, resume, purge a queue, cancel a message.

Each write is POST only and needs the token, as the dead letters' replay and purge do: from a
page it goes through a confirmation form that asks for the token; from the API the token comes
in the ``X-Shoal-Token`` header (or a ``token`` field). Queue names and ids sit in the path as
single segments (``/`` encoded), so any characters route.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shoal.dashboard import control, notices, snapshot
from shoal.dashboard.access import FIELD, HEADER
from shoal.dashboard.links import add_trace_urls
from shoal.dashboard.routes import api, check_write, page, read, segment, state_of

control_routes = web.RouteTableDef()


async def token_of(request: web.Request) -> str | None:
    """The token a write carries: the header, else a ``token`` field of a JSON or form body."""
    given = request.headers.get(HEADER)
    if given:
        return given
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="The body is not JSON.") from None
        value = body.get(FIELD) if isinstance(body, dict) else None
    else:
        value = (await request.post()).get(FIELD)
    return value if isinstance(value, str) and value else None


def _task_path(queue: str, message_id: str) -> str:
    return f"/task/{segment(queue)}/{segment(message_id)}"


def _action(request: web.Request) -> str:
    action = request.match_info["action"]
    if action not in control.QUEUE_ACTIONS:
        raise web.HTTPNotFound(text=f"No queue action {action!r}: pause, resume or purge.")
    return action


# --- the task page --------------------------------------------------------------------------


@control_routes.get("/task")
async def task_lookup(request: web.Request) -> web.Response:
    """The lookup form; submitted (``?queue=&id=``), the message's own page."""
    queue, message_id = request.query.get("queue", ""), request.query.get("id", "").strip()
    if queue and message_id:
        raise web.HTTPFound(_task_path(queue, message_id))
    names = await read(request, snapshot.queue_names)
    return page(request, "task_lookup.html", queues=names, queue=queue, message_id=message_id)


@control_routes.get("/task/{queue}/{id}")
async def task_page(request: web.Request) -> web.Response:
    queue, message_id = request.match_info["queue"], request.match_info["id"]
    status = add_trace_urls(
        await read(request, control.task, queue, message_id), state_of(request).trace_template
    )
    return page(
        request,
        "task.html",
        task=status,
        path=_task_path(queue, message_id),
        api_path=f"/api{_task_path(queue, message_id)}",
        notice=notices.verified(request.query),
    )


@control_routes.get("/task/{queue}/{id}/confirm")
async def task_confirm(request: web.Request) -> web.Response:
    queue, message_id = request.match_info["queue"], request.match_info["id"]
    status = await read(request, control.task, queue, message_id)
    return page(
        request,
        "task_confirm.html",
        task=status,
        back=_task_path(queue, message_id),
        field=FIELD,
    )


@control_routes.get("/api/task/{queue}/{id}")
async def api_task(request: web.Request) -> web.Response:
    queue, message_id = request.match_info["queue"], request.match_info["id"]
    return api(request, await read(request, control.task, queue, message_id))


async def _cancel(request: web.Request) -> dict[str, Any]:
    check_write(request, await token_of(request))
    queue, message_id = request.match_info["queue"], request.match_info["id"]
    return await read(request, control.cancel, queue, message_id)


@control_routes.post("/api/task/{queue}/{id}/cancel")
async def api_cancel(request: web.Request) -> web.Response:
    """200 with what the message was; 409 when there was nothing to cancel (``gone``)."""
    done = await _cancel(request)
    if done["was"] == "gone":
        said = "not waiting, delayed or running: nothing to cancel"
        return web.json_response({**done, "error": said}, status=409)
    return web.json_response(done)


@control_routes.post("/task/{queue}/{id}/cancel")
async def form_cancel(request: web.Request) -> web.Response:
    done = await _cancel(request)
    said = {
        "running": "Cancel asked: its worker stops it within a heartbeat.",
        "gone": "Nothing to cancel: it is not waiting, delayed or running.",
    }.get(done["was"], f"Cancelled ({done['was']}): it will not run.")
    path = _task_path(done["queue"], done["id"])
    raise web.HTTPSeeOther(f"{path}?" + notices.query(said))


# --- queue control --------------------------------------------------------------------------


@control_routes.get("/queues/{queue}/confirm/{action}")
async def queue_confirm(request: web.Request) -> web.Response:
    """Says what the action does (a purge: how many messages it deletes), asks for the token."""
    action = _action(request)
    counts = await read(request, control.queue_counts, request.match_info["queue"])
    return page(request, "queues_confirm.html", action=action, q=counts, field=FIELD)


async def _queue_write(request: web.Request) -> dict[str, Any]:
    action = _action(request)
    check_write(request, await token_of(request))
    return await read(request, control.queue_action, request.match_info["queue"], action)


@control_routes.post("/api/queues/{queue}/{action}")
async def api_queue_action(request: web.Request) -> web.Response:
    return web.json_response(await _queue_write(request))


@control_routes.post("/queues/{queue}/{action}")
async def form_queue_action(request: web.Request) -> web.Response:
    done = await _queue_write(request)
    queue = done["queue"]
    if "purged" in done:
        said = f"Purged {done['purged']} message(s) of {queue}."
    elif done["paused"]:
        said = f"Paused {queue}." if done["changed"] else f"{queue} was paused already."
    else:
        said = f"Resumed {queue}." if done["changed"] else f"{queue} was not paused."
    raise web.HTTPSeeOther("/queues?" + notices.query(said))
