"""kopf handlers: Queue → defaults in Redis and a measured status; Worker → one Deployment,
autoscaled when asked.

Handlers are thin: the work is in ``queues`` (a Queue's status), ``workers`` (a Worker's
Deployment and autoscaler), ``deployment`` (the objects, pure) and ``redis_gateway`` (everything
the operator reads or writes in Redis, through the runtime's APIs). Here a
``ReconcileError`` becomes a condition, an Event and kopf's retry policy. Nothing crash-loops: a
bad spec waits for an edit; a missing reference or an unreachable Redis is retried after a
delay. Long-running loops are async daemons that watch kopf's stop flag; their blocking calls
run in threads. A Worker's Deployment is kept in line by events (its own create/update, and
every change of the Deployment), with no periodic daemon, so deleting a Worker without
autoscaling needs no finalizer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from shoal_operator import conditions as cond
from shoal_operator import deployment as deploy
from shoal_operator import metrics
from shoal_operator.errors import ReconcileError, SpecError
from shoal_operator.kube import GROUP, VERSION
from shoal_operator.metrics_server import MetricsServer
from shoal_operator.queues import QueueMonitor, remove_queue_schedules
from shoal_operator.redis_gateway import RedisGateway
from shoal_operator.settings import OperatorSettings
from shoal_operator.tracing import start_tracing, stop_tracing
from shoal_operator.workers import Autoscaling, reconcile_worker, resync, worker_status

# --- operator start-up ----------------------------------------------------------------------


@kopf.on.startup()
def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Clients and caches go in ``memo``, shared by every handler; kopf's own bookkeeping goes
    in annotations, so the CRDs' status schema stays exactly what users see."""
    memo.settings = OperatorSettings.from_env()
    memo.tracing = start_tracing()  # the decision spans go to OTLP when OTEL_* asks
    memo.redis = RedisGateway()
    try:
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        kube_config.load_kube_config()  # type: ignore[no-untyped-call]
    api = metrics.TimedApiClient()  # every call the handlers make is timed
    memo.core = client.CoreV1Api(api)
    memo.apps = client.AppsV1Api(api)
    memo.custom = client.CustomObjectsApi(api)
    settings.persistence.finalizer = "shoal.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="shoal.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="shoal.dev")
    settings.posting.level = logging.WARNING  # Events for problems, not for every handler run
    logger.info("shoal operator: %s", memo.settings)


@kopf.on.startup()
async def serve_metrics(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """``/metrics`` and ``/readyz`` on ``SHOAL_OPERATOR_METRICS_PORT``, ready from now on
    while the API answers. A port already taken is logged, not fatal: the operator's work
    matters more than its figures (its readiness probe then fails, which shows it)."""
    metrics.leading(True)  # whoever runs the handlers leads (or runs alone)
    port = memo.settings.operator_metrics_port
    server = memo.get("metrics_server")  # shoal-operator's election serves it from standby on
    if not port and server is None:
        return
    if server is None:
        server = MetricsServer(port)
        try:
            await server.start()
        except OSError as exc:
            logger.error(
                "cannot serve /metrics and /readyz on port %d (%s); set "
                "SHOAL_OPERATOR_METRICS_PORT to a free port",
                port,
                exc,
            )
            return
    namespaces = memo.settings.namespaces

    def api_answers() -> None:
        if namespaces:
            memo.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespaces[0], "workers", limit=1
            )
        else:
            memo.custom.list_cluster_custom_object(GROUP, VERSION, "workers", limit=1)

    server.started(api_answers)
    memo.metrics_server = server
    logger.info("operator metrics on :%d/metrics, readiness on /readyz", port)


@kopf.on.cleanup()
async def close_connections(memo: kopf.Memo, **_: Any) -> None:
    """The operator stops: stop serving metrics, close its Redis connections, remove the TLS
    files it wrote, flush the spans not exported yet."""
    server = memo.get("metrics_server")
    if server is not None:
        await server.stop()
    await asyncio.to_thread(memo.redis.close)
    stop_tracing(memo.get("tracing"))


def _fail(
    error: ReconcileError, body: kopf.Body, patch: kopf.Patch, type_: str, retry_delay_s: float
) -> None:
    """Record a ReconcileError as a False condition and an Event, then hand it to kopf."""
    generation = body.get("metadata", {}).get("generation")
    current = patch.status.get("conditions") or body.get("status", {}).get("conditions")
    conditions = cond.set_condition(current, type_, False, error.reason, error.message, generation)
    if type_ != "Ready":
        conditions = cond.set_condition(
            conditions, "Ready", False, error.reason, error.message, generation
        )
    patch.status["conditions"] = conditions
    kopf.warn(body, reason=error.reason, message=error.message)
    if isinstance(error, SpecError):
        raise kopf.PermanentError(error.message)
    raise kopf.TemporaryError(error.message, delay=retry_delay_s)


# --- Queue ----------------------------------------------------------------------------------


@kopf.daemon(GROUP, VERSION, "queues", cancellation_timeout=5)
async def queue_monitor(
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """The one writer of a Queue's status: a tick every ``poll_s``. Async, so kopf can always
    cancel it; each tick's blocking calls (Redis, the API) run in a thread."""
    assert namespace is not None  # Queues are namespaced
    monitor = QueueMonitor(name, namespace, memo, logger)
    try:
        while not stopped:
            await asyncio.to_thread(monitor.tick, body, spec)
            await stopped.wait(memo.settings.poll_s)
    finally:
        reason = stopped.reason or kopf.DaemonStoppingReason.DONE
        if reason & kopf.DaemonStoppingReason.RESOURCE_DELETED:  # its schedules go with it
            # Shielded: kopf may cancel this daemon again, and a cancelled to_thread call that
            # has not started yet never runs at all.
            await asyncio.shield(asyncio.to_thread(monitor.deleted, spec))
        memo.redis.forget(namespace, name)


@kopf.on.delete(GROUP, VERSION, "queues")
async def queue_deleted(
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Remove a deleted Queue's schedules from Redis, also when it was deleted while the
    operator was down (no daemon ran to see it). Never fails: deletion is not held up."""
    assert namespace is not None
    await asyncio.to_thread(remove_queue_schedules, memo, namespace, name, spec, logger)


# --- Worker ---------------------------------------------------------------------------------


@kopf.on.create(GROUP, VERSION, "workers")
@kopf.on.update(GROUP, VERSION, "workers", field="spec")
@kopf.on.resume(GROUP, VERSION, "workers")
def worker_reconcile(
    name: str,
    namespace: str | None,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Create or update the Worker's Deployment."""
    assert namespace is not None  # Workers are namespaced
    try:
        with metrics.reconciling("Worker"):
            figures = reconcile_worker(name, namespace, body, memo, logger)
    except ReconcileError as exc:
        _fail(exc, body, patch, "Ready", memo.settings.retry_delay_s)
    assert figures is not None  # create=True: the Deployment exists now
    patch.status.update(worker_status(body, figures))


@kopf.on.event(
    "apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": deploy.MANAGED_BY}
)
def deployment_changed(
    name: str,
    namespace: str | None,
    type: str,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """A Worker's Deployment changed (rollout progress, or someone edited it): refresh the
    Worker's status and undo edits that drift from the Worker's spec."""
    assert namespace is not None  # Deployments are namespaced
    worker = body.get("metadata", {}).get("labels", {}).get(deploy.WORKER_LABEL)
    if not worker:
        return
    if type == "DELETED":  # its Worker was deleted (or it was): so are its metrics
        metrics.worker_gone(namespace, worker)
        return
    try:
        owner = memo.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "workers", worker
        )
    except ApiException as exc:
        if exc.status == 404:
            return  # the Worker is gone; garbage collection removes the Deployment
        raise
    resync(worker, namespace, kopf.Body(owner), memo, logger)


# --- autoscaling ------------------------------------------------------------------------------


def _autoscaling_on(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("autoscaling") or {}).get("enabled"))


@kopf.daemon(GROUP, VERSION, "workers", when=_autoscaling_on, cancellation_timeout=5)
async def worker_autoscaler(
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Every poll: measure the Worker's queues, decide, scale the Deployment, explain."""
    assert namespace is not None  # Workers are namespaced
    scaler = Autoscaling(name, namespace, memo, logger)
    try:
        while not stopped:
            poll_s = await asyncio.to_thread(scaler.tick, body, spec)
            await stopped.wait(poll_s)
    finally:  # autoscaling turned off, or the Worker deleted: no decisions to show
        metrics.worker_gone(namespace, name)
