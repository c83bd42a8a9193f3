"""The App: settings, the task registry, middleware, and the lazily opened Redis connection."""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar, overload

import orjson

from shoal import queue_defaults
from shoal.dlq import DeadLetters
from shoal.errors import ConfigurationError, EnqueueError, TaskModuleError
from shoal.middleware import Middleware, default_middleware
from shoal.middleware.hooks import Hooks
from shoal.priority import checked as checked_priority
from shoal.protocol import Broker, QueueStats
from shoal.rate_limit import parse_rate
from shoal.redis_url import mask_url
from shoal.schedules import Missed, Schedule
from shoal.schedules import make as make_schedule
from shoal.settings import Seconds, Settings, to_seconds
from shoal.signing import Signer
from shoal.task import Producer, Task

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("shoal")

CORE_OPTIONS = frozenset({"queue", "name", "store_result", "timeout", "rate_limit", "priority"})
"""Task options the App itself owns; middleware declare the rest."""


class App:
    """A Shoal application: ``app = App()`` then ``@app.task``.

    The Redis URL comes from the ``redis_url`` argument, else ``SHOAL_REDIS_URL``, else
    ``redis://localhost:6379/0``; ``repr(app)`` says which. Other keyword arguments override
    :class:`~shoal.settings.Settings` fields (``App(lease_s=5)``)."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
        middleware: Sequence[Middleware] | None = None,
        **overrides: Any,
    ) -> None:
        base = settings if settings is not None else Settings.from_env()
        if redis_url is not None:
            overrides["redis_url"] = redis_url
            overrides["redis_url_source"] = "argument"
        settings = base.with_overrides(**overrides) if overrides else base
        self.middleware: list[Middleware] = list(
            default_middleware() if middleware is None else middleware
        )
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        """Periodic schedules declared in code (``@app.periodic``, ``app.schedule``), by name."""
        signer = Signer(settings.signing_keys)
        self.producer = Producer(settings, signer, Hooks(self.middleware), self.tasks)
        """The send pipeline this App's tasks, workflows and DLQ use."""
        self._refresh_hooks()

    @property
    def settings(self) -> Settings:
        """The App's settings. Replaced ones apply to what is sent next; the Redis connection
        follows after :meth:`close`, and the signer stays the one built from the first
        ``signing_keys`` (assign :attr:`signer` to change it)."""
        return self.producer.settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self.producer.settings = settings

    @property
    def signer(self) -> Signer:
        """Seals what this App sends and opens what its workers receive (one for both)."""
        return self.producer.signer

    @signer.setter
    def signer(self, signer: Signer) -> None:
        self.producer.signer = signer

    @property
    def hooks(self) -> Hooks:
        """The hooks of this App's middleware (rebuilt when middleware is added)."""
        return self.producer.hooks

    def __repr__(self) -> str:
        s = self.settings
        source = s.redis_url_source
        return f"<App redis={mask_url(s.redis_url)} (from {source}) tasks={len(self.tasks)}>"

    # --- middleware -------------------------------------------------------------------------

    def add_middleware(self, middleware: Middleware) -> None:
        """Append a middleware (before any worker starts)."""
        self.middleware.append(middleware)
        self._refresh_hooks()

    def _refresh_hooks(self) -> None:
        self.producer.hooks = Hooks(self.middleware)
        self.task_options = CORE_OPTIONS.union(*(m.task_options for m in self.middleware))

    # --- tasks ------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        queue: str | None = None,
        name: str | None = None,
        store_result: bool = False,
        timeout: Seconds | None = None,
        **options: Any,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(  # type: ignore[misc]  # mypy cannot match ParamSpec overloads with **options
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        queue: str | None = None,
        name: str | None = None,
        store_result: bool = False,
        timeout: Seconds | None = None,
        **options: Any,
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a sync or ``async def`` function as a task.

        ``queue`` (default ``SHOAL_DEFAULT_QUEUE``), ``timeout`` (seconds), ``store_result`` (keep
        the return value for ``handle.result()``), ``rate_limit`` (``"20/s"``, ``"100/m"``,
        ``"5/h"``: starts of this task across every worker), ``priority`` (0-9, lower runs first;
        default 5); middleware options such as ``max_retries``.
        An unknown option fails here, naming it."""
        unknown = sorted(set(options) - self.task_options)
        if unknown:
            raise ConfigurationError(
                f"unknown task option(s) {', '.join(unknown)}; accepted: "
                f"{', '.join(sorted(self.task_options))}. Add the middleware that owns it."
            )

        def register(func: Callable[P, R]) -> Task[P, R]:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            if task_name in self.tasks:
                raise ConfigurationError(f"task {task_name!r} is declared twice; pass name=")
            for mw in self.middleware:
                mw.validate_options(task_name, options)
            task_options = dict(options)
            if timeout is not None:
                task_options["timeout"] = to_seconds(timeout)
                if task_options["timeout"] <= 0:
                    raise ConfigurationError(f"task {task_name!r}: timeout must be > 0 seconds")
            if "priority" in task_options:
                try:
                    checked_priority(task_options["priority"], f"task {task_name!r}")
                except EnqueueError as exc:
                    raise ConfigurationError(str(exc)) from None
            if "rate_limit" in task_options:  # canonical, so every worker keeps the same clock
                rate = parse_rate(task_options["rate_limit"], f"task {task_name!r}")
                task_options["rate_limit"] = str(rate)
            task: Task[P, R] = Task(
                self.producer,
                func,
                name=task_name,
                queue=queue or self.settings.default_queue,
                store_result=store_result,
                options=task_options,
            )
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def remote(self, name: str, *, queue: str | None = None) -> Task[..., Any]:
        """A task defined in code this process does not import, to enqueue it by name
        (``app.remote("billing.charge", queue="billing").enqueue(42)``)."""
        if name in self.tasks:
            return self.tasks[name]
        return self.producer.remote(name, queue or self.settings.default_queue)

    # --- schedules --------------------------------------------------------------------------

    def periodic(
        self,
        cron: str,
        *,
        queue: str | None = None,
        name: str | None = None,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timezone: str = "UTC",
        missed: Missed = "skip",
        suspend: bool = False,
        **task_options: Any,
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function as a task and run it on a cron schedule:
        ``@app.periodic("*/5 * * * *", queue="reports", timezone="Europe/Berlin")``.

        Each tick runs once across every worker consuming the queue. ``missed``: what to do with
        ticks missed while no worker ran: ``"skip"`` them, or ``"run_once"``. An existing Task
        may be decorated too; other keyword arguments are task options (``max_retries=``)."""

        def register(fn: Callable[P, R]) -> Task[P, R]:
            if isinstance(fn, Task):
                if queue is not None or name is not None or task_options:
                    raise ConfigurationError(
                        f"task {fn.name!r} is already declared: set queue, name and options "
                        "in @app.task, or use app.schedule(task, cron=..., name=...)"
                    )
                task: Task[P, R] = fn
            else:
                task = self.task(queue=queue, name=name, **task_options)(fn)
            self.schedule(
                task,
                cron=cron,
                args=args,
                kwargs=kwargs,
                timezone=timezone,
                missed=missed,
                suspend=suspend,
            )
            return task

        return register

    def schedule(
        self,
        task: Task[..., Any],
        *,
        cron: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        missed: Missed = "skip",
        suspend: bool = False,
    ) -> Schedule:
        """Run ``task`` on a cron schedule, on the task's queue (see :meth:`periodic`).
        ``name`` defaults to the task's name; give one to schedule a task twice."""
        schedule = make_schedule(
            name=name or task.name,
            cron=cron,
            task=task.name,
            queue=task.queue,
            args=args,
            kwargs=kwargs,
            timezone=timezone,
            missed=missed,
            suspend=suspend,
        )
        if schedule.name in self.schedules:
            raise ConfigurationError(
                f"schedule {schedule.name!r} is declared twice; pass name= to tell them apart"
            )
        self.schedules[schedule.name] = schedule
        return schedule

    # --- Redis ------------------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The blocking Redis client, opened on first use."""
        return self.producer.broker

    def measure(self, queue: str) -> QueueStats:
        """A queue's figures (waiting, in flight, delayed, dead, oldest age, counters), O(1)."""
        return self.broker.measure(queue)

    def configure_queue(self, queue: str, **defaults: Any) -> None:
        """Store defaults for every task of ``queue`` in Redis, where all its workers read them
        (within a heartbeat): ``max_retries``, ``min_backoff``, ``max_backoff``, ``timeout``,
        ``dlq_max_entries``, ``dlq_max_age``. Task and message options still win."""
        self.broker.set_queue_defaults(queue, queue_defaults.validate(queue, defaults))

    def queue_defaults(self, queue: str) -> dict[str, Any]:
        """The defaults stored for ``queue`` (empty when none)."""
        return self.broker.queue_defaults(queue)

    def dlq(self, queue: str) -> DeadLetters:
        """The dead-letter queue of ``queue``: list, get, replay, purge."""
        return DeadLetters(self.producer, queue)

    def pause(self, queue: str) -> bool:
        """Pause ``queue`` on every worker: it accepts enqueues and runs nothing until
        :meth:`resume` (what runs now finishes). The autoscaler does not scale it up. Returns
        False when it was paused already. Survives worker and operator restarts (it is in
        Redis)."""
        note = orjson.dumps({"at": time.time(), "by": f"{socket.gethostname()}:{os.getpid()}"})
        return self.broker.pause(queue, note)

    def resume(self, queue: str) -> bool:
        """Resume a paused ``queue``: idle workers start on it at once. False when it ran."""
        return self.broker.resume(queue)

    def purge(self, queue: str) -> int:
        """Delete every message ``queue`` holds waiting or delayed (retries included); what
        runs now and the dead letters stay. Returns how many were deleted. Cannot be undone."""
        return self.broker.clear(queue)

    def queues(self) -> list[str]:
        """Queues declared by this app's tasks and schedules."""
        declared = {t.queue for t in self.tasks.values()}
        return sorted(declared | {s.queue for s in self.schedules.values()})

    def close(self) -> None:
        self.producer.close()


def load_app(spec: str) -> App:
    """Import ``MODULE[:ATTR]`` and return its App (ATTR defaults to ``app``).

    Raises ConfigurationError when the module is not found or holds no App, and TaskModuleError
    (carrying the module's own exception) when its code raised while it was imported."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ConfigurationError(f"{spec!r} names no module: pass MODULE[:APP], e.g. tasks:app")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise TaskModuleError(module_name, exc) from exc  # it was found: its import failed
        raise ConfigurationError(
            f"cannot import task module {module_name!r}: {exc}. Run shoal from the directory "
            "that holds it, or add that directory to PYTHONPATH."
        ) from exc
    except Exception as exc:
        raise TaskModuleError(module_name, exc) from exc
    attr = attr or "app"
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigurationError(
            f"{module_name}:{attr} is {type(app).__name__}, not a shoal.App; pass MODULE:APP"
        )
    return app
