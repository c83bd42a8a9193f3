"""kopf handlers: Queue → defaults in Redis and a measured status; Worker → one Deployment.

Handlers are thin: they load what a resource references, call the pure builders in
``deployment`` and the Redis reader in ``metrics``, and turn ``ReconcileError`` into a
condition, an Event and kopf's retry policy. Nothing here crash-loops: a bad spec waits for an
edit, a missing reference or an unreachable Redis is retried after a delay.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import kopf
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from shoal import BrokerError
from shoal.autoscale import Snapshot, State, policy_from_spec
from shoal.fleet import FleetMeter, in_flight_by_instance
from shoal_operator import autoscaler
from shoal_operator import conditions as cond
from shoal_operator import deployment as deploy
from shoal_operator.errors import MissingReference, ReconcileError, RedisUnreachable, SpecError
from shoal_operator.metrics import Connection, QueueMeter
from shoal_operator.redis_target import RedisTarget
from shoal_operator.settings import OperatorSettings

GROUP, VERSION = "shoal.dev", "v1alpha1"
RETRY_DELAY_S = 15
"""How long kopf waits before retrying a Worker or Queue whose reference is missing: slow
enough never to hammer the API, fast enough that fixing the reference feels immediate."""


# --- operator start-up ----------------------------------------------------------------------


@kopf.on.startup()
def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Clients and caches go in ``memo``, shared by every handler; kopf's own bookkeeping goes
    in annotations, so the CRDs' status schema stays exactly what users see."""
    memo.settings = OperatorSettings.from_env()
    memo.meter = QueueMeter()
    try:
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        kube_config.load_kube_config()  # type: ignore[no-untyped-call]
    memo.core = client.CoreV1Api()
    memo.apps = client.AppsV1Api()
    memo.custom = client.CustomObjectsApi()
    settings.persistence.finalizer = "shoal.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="shoal.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="shoal.dev")
    settings.posting.level = logging.WARNING  # Events for problems, not for every handler run
    logger.info("shoal operator: %s", memo.settings)


def _fail(error: ReconcileError, body: kopf.Body, patch: kopf.Patch, type_: str) -> None:
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
    raise kopf.TemporaryError(error.message, delay=RETRY_DELAY_S)


# --- Queue ----------------------------------------------------------------------------------


def queue_connection(
    memo: kopf.Memo, namespace: str, name: str, spec: dict[str, Any]
) -> Connection:
    target = RedisTarget.from_queue(name, spec)
    url, password = target.resolve(memo.core, namespace)
    return Connection(url, password, target.key_prefix)


@kopf.on.create(GROUP, VERSION, "queues")
@kopf.on.update(GROUP, VERSION, "queues", field="spec")
@kopf.on.resume(GROUP, VERSION, "queues")
def queue_configure(
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Write the Queue's defaults where its workers read them."""
    assert namespace is not None  # Queues, Workers and Deployments are namespaced
    try:
        conn = queue_connection(memo, namespace, name, dict(spec))
        defaults = memo.meter.configure(conn, name, dict(spec))
    except RedisUnreachable as exc:
        _fail(exc, body, patch, "RedisReachable")
    except ReconcileError as exc:
        _fail(exc, body, patch, "Ready")
    generation = body["metadata"].get("generation")
    conditions = body.get("status", {}).get("conditions")
    conditions = cond.set_condition(
        conditions, "RedisReachable", True, "Connected", "Redis answered", generation
    )
    conditions = cond.set_condition(
        conditions,
        "Ready",
        True,
        "Configured",
        f"defaults written: {defaults or 'none'}",
        generation,
    )
    patch.status["conditions"] = conditions
    patch.status["observedGeneration"] = generation


@kopf.daemon(GROUP, VERSION, "queues", cancellation_timeout=5)
def queue_monitor(
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Measure the queue every ``poll_s`` (O(1) in Redis) into its status; on Redis trouble,
    say so in a condition and an Event once per transition, and keep the last figures."""
    assert namespace is not None  # Queues, Workers and Deployments are namespaced
    settings: OperatorSettings = memo.settings
    reachable: bool | None = None
    while not stopped:
        status: dict[str, Any] = {}
        conditions = body.get("status", {}).get("conditions")
        try:
            conn = queue_connection(memo, namespace, name, dict(spec))
            reading = memo.meter.measure(conn, namespace, name)
        except ReconcileError as exc:
            if reachable is not False:
                kopf.warn(body, reason=exc.reason, message=exc.message)
            reachable = False
            status["conditions"] = cond.set_condition(
                conditions, "RedisReachable", False, exc.reason, exc.message
            )
        else:
            if reachable is False:
                kopf.info(body, reason="RedisReachable", message="Redis answers again")
            reachable = True
            s = reading.stats
            status = {
                "waiting": s.waiting,
                "inFlight": s.in_flight,
                "delayed": s.delayed,
                "dead": s.dead,
                "completed": s.completed,
                "oldestWaitingSeconds": round(s.oldest_age_s, 3),
                "oldestWaiting": _age(s.oldest_age_s) if s.waiting else "-",
                "throughputPerSecond": round(reading.throughput, 2),
                "throughput": f"{reading.throughput:.1f}/s",
                "lastMeasured": cond.now_iso(),
                "conditions": cond.set_condition(
                    conditions, "RedisReachable", True, "Connected", "Redis answered"
                ),
            }
        _patch_status(memo, namespace, "queues", name, status, logger)
        stopped.wait(settings.poll_s)
    memo.meter.forget(namespace, name)


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def _patch_status(
    memo: kopf.Memo,
    namespace: str,
    plural: str,
    name: str,
    status: dict[str, Any],
    logger: kopf.Logger,
) -> None:
    try:
        memo.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, {"status": status}
        )
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile: nothing to report on
            logger.warning(
                "cannot update status of %s %s/%s: %s", plural, namespace, name, exc.reason
            )


# --- Worker ---------------------------------------------------------------------------------


def _queue_refs(memo: kopf.Memo, namespace: str, names: list[str]) -> list[deploy.QueueRef]:
    refs = []
    for queue in names:
        try:
            obj = memo.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "queues", queue
            )
        except ApiException as exc:
            if exc.status == 404:
                raise MissingReference(
                    "QueueNotFound",
                    f"Queue {namespace}/{queue} does not exist; create it "
                    "(kubectl apply -f queue.yaml)",
                ) from None
            raise
        qspec = obj.get("spec", {})
        try:
            target = RedisTarget.from_queue(queue, qspec)
        except SpecError as exc:
            raise MissingReference("QueueInvalid", exc.message) from None
        timeout = (qspec.get("defaults") or {}).get("timeoutSeconds")
        refs.append(deploy.QueueRef(queue, target, timeout))
    if len({r.target for r in refs}) > 1:
        raise SpecError(
            "QueuesOnDifferentRedis",
            f"queues {', '.join(names)} do not share one Redis and key prefix; a "
            "Worker consumes queues of one Redis: split it into several Workers",
        )
    for secret in refs[0].target.secrets():  # pods would not start without them
        refs[0].target._read(memo.core, namespace, secret)
    return refs


def _replicas(spec: dict[str, Any], live: dict[str, Any] | None) -> int:
    """Fixed size when autoscaling is off; else the autoscaler's (never overwritten here)."""
    autoscaling = spec.get("autoscaling") or {}
    if not autoscaling.get("enabled"):
        return int(spec.get("replicas", 1))
    if live is not None:
        return int(live.get("spec", {}).get("replicas") or 0)
    return int(autoscaling.get("minReplicas", 0))


def reconcile_worker(
    name: str, namespace: str, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger
) -> dict[str, Any]:
    """Make the Worker's Deployment match its spec; return the Worker's status figures."""
    spec = dict(body.get("spec", {}))
    queues = _queue_refs(memo, namespace, list(spec.get("queues", [])))
    live = _read_deployment(memo, namespace, name)
    desired = deploy.build(name, namespace, spec, queues, memo.settings, _replicas(spec, live))
    if live is None:
        kopf.adopt(desired, owner=body)
        live = memo.apps.create_namespaced_deployment(namespace, desired).to_dict()
        kopf.info(body, reason="DeploymentCreated", message=f"created Deployment {name}")
    else:
        owners = {o.get("uid") for o in live["metadata"].get("owner_references") or ()}
        if body["metadata"].get("uid") not in owners:
            raise SpecError(
                "DeploymentConflict",
                f"Deployment {namespace}/{name} exists and is not owned by this "
                "Worker; rename the Worker or delete that Deployment",
            )
        differences = deploy.drift(desired["spec"], _camel(live)["spec"])
        if differences:
            logger.info("Deployment %s differs at %s; patching", name, ", ".join(differences[:5]))
            memo.apps.patch_namespaced_deployment(
                name,
                namespace,
                [
                    {"op": "replace", "path": "/spec", "value": desired["spec"]},
                    {
                        "op": "replace",
                        "path": "/metadata/labels",
                        "value": desired["metadata"]["labels"],
                    },
                ],
            )
            live = _read_deployment(memo, namespace, name) or live
    status = (live or {}).get("status") or {}
    return {
        "replicas": status.get("replicas") or 0,
        "readyReplicas": status.get("ready_replicas") or status.get("readyReplicas") or 0,
        "desiredReplicas": desired["spec"]["replicas"],
        "selector": deploy.selector(name),
        "deployment": name,
    }


def _read_deployment(memo: kopf.Memo, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = memo.apps.read_namespaced_deployment(name, namespace).to_dict()
        return result
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _camel(obj: Any) -> Any:
    """The kubernetes client's snake_case dicts back in API (camelCase) spelling."""
    if isinstance(obj, dict):
        return {_camel_key(k): _camel(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _worker_status(body: kopf.Body, figures: dict[str, Any]) -> dict[str, Any]:
    generation = body["metadata"].get("generation")
    conditions = body.get("status", {}).get("conditions")
    ready = figures["readyReplicas"] >= figures["desiredReplicas"]
    message = f"{figures['readyReplicas']}/{figures['desiredReplicas']} replicas ready"
    conditions = cond.set_condition(
        conditions, "Ready", ready, "Available" if ready else "Progressing", message, generation
    )
    return {**figures, "conditions": conditions, "observedGeneration": generation}


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
    assert namespace is not None  # Queues, Workers and Deployments are namespaced
    try:
        figures = reconcile_worker(name, namespace, body, memo, logger)
    except ReconcileError as exc:
        _fail(exc, body, patch, "Ready")
    patch.status.update(_worker_status(body, figures))


@kopf.daemon(GROUP, VERSION, "workers", cancellation_timeout=5, initial_delay=1)
def worker_resync(
    name: str,
    namespace: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Every ``resync_s``, correct drift and refresh the status, even if no event was seen."""
    assert namespace is not None  # Queues, Workers and Deployments are namespaced
    while not stopped.wait(memo.settings.resync_s):
        _resync(name, namespace, body, memo, logger)


def _resync(
    name: str, namespace: str, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger
) -> None:
    try:
        figures = reconcile_worker(name, namespace, body, memo, logger)
    except ReconcileError as exc:
        logger.info("Worker %s/%s not reconciled: %s", namespace, name, exc.message)
        return
    _patch_status(memo, namespace, "workers", name, _worker_status(body, figures), logger)


_deployment_lock = threading.Lock()


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
    assert namespace is not None  # Queues, Workers and Deployments are namespaced
    worker = body.get("metadata", {}).get("labels", {}).get(deploy.WORKER_LABEL)
    if not worker or type == "DELETED":
        return
    try:
        owner = memo.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "workers", worker
        )
    except ApiException as exc:
        if exc.status == 404:
            return  # the Worker is gone; garbage collection removes the Deployment
        raise
    with _deployment_lock:
        _resync(worker, namespace, kopf.Body(owner), memo, logger)


# --- autoscaling ------------------------------------------------------------------------------


def _autoscaling_on(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("autoscaling") or {}).get("enabled"))


@kopf.daemon(GROUP, VERSION, "workers", when=_autoscaling_on, cancellation_timeout=5)
def worker_autoscaler(
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
    fleet = FleetMeter()
    state: State | None = None
    reported: tuple[int, str] | None = None
    while not stopped:
        policy = policy_from_spec(dict(spec.get("autoscaling") or {}))
        live = _read_deployment(memo, namespace, name)
        if live is None:  # worker_reconcile has not created it yet
            stopped.wait(policy.poll_s)
            continue
        replicas = int(live["spec"].get("replicas") or 0)
        ready = int((live.get("status") or {}).get("ready_replicas") or 0)
        conn: Connection | None = None
        try:
            refs = _queue_refs(memo, namespace, list(spec.get("queues", [])))
            url, password = refs[0].target.resolve(memo.core, namespace)
            conn = Connection(url, password, refs[0].target.key_prefix)
            broker = memo.meter.app(conn).broker
            snap = fleet.snapshot(broker, [r.name for r in refs], replicas, ready)
        except (ReconcileError, BrokerError) as exc:
            conn = None
            logger.warning("autoscaler: cannot measure (%s); holding %d replicas", exc, replicas)
            snap = Snapshot(time.monotonic(), 0, 0, replicas, ready, fresh=False)
        decision = autoscaler.traced_decision(name, policy, snap, state)
        state = decision.state
        if decision.replicas != replicas:
            if decision.replicas < replicas:
                _mark_idle_pods(memo, namespace, name, conn, logger)
            _scale(memo, namespace, name, decision.replicas)
            kopf.info(
                body,
                reason="Scaled",
                message=f"{replicas} → {decision.replicas}: {decision.reason}",
            )
            logger.info(
                "scaled %s from %d to %d: %s", name, replicas, decision.replicas, decision.reason
            )
        if reported != (decision.replicas, decision.reason):
            status = {"desiredReplicas": decision.replicas, "lastScaleReason": decision.reason}
            if decision.replicas != replicas:
                status["lastScaleTime"] = cond.now_iso()
            _patch_status(memo, namespace, "workers", name, status, logger)
            reported = (decision.replicas, decision.reason)
        stopped.wait(policy.poll_s)


def _scale(memo: kopf.Memo, namespace: str, name: str, replicas: int) -> None:
    memo.apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})


def _mark_idle_pods(
    memo: kopf.Memo, namespace: str, name: str, conn: Connection | None, logger: kopf.Logger
) -> None:
    """Before a scale-in, give each pod a deletion cost equal to its tasks in flight, so the
    ReplicaSet removes idle pods and busy ones keep working."""
    if conn is None:
        return
    pods = memo.core.list_namespaced_pod(namespace, label_selector=deploy.selector(name)).items
    names = [p.metadata.name for p in pods]
    costs = autoscaler.deletion_costs(names, in_flight_by_instance(memo.meter.app(conn).broker))
    for pod in pods:
        cost = costs[pod.metadata.name]
        current = (pod.metadata.annotations or {}).get(autoscaler.DELETION_COST)
        if current != str(cost):
            memo.core.patch_namespaced_pod(
                pod.metadata.name,
                namespace,
                {"metadata": {"annotations": {autoscaler.DELETION_COST: str(cost)}}},
            )
    logger.debug("deletion costs set on %d pods of %s", len(pods), name)
