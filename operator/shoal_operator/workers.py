"""A Worker's Deployment: load its Queues, build the Deployment, create or correct it, and
scale it when autoscaling is on. The handlers call these; the objects come from ``deployment``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from shoal import BrokerError
from shoal.autoscale import Snapshot, State, policy_from_spec
from shoal.fleet import FleetMeter, in_flight_by_instance
from shoal.schedule_plan import upcoming_ticks
from shoal_operator import autoscaler, metrics
from shoal_operator import conditions as cond
from shoal_operator import deployment as deploy
from shoal_operator.errors import MissingReference, ReconcileError, SpecError
from shoal_operator.kube import GROUP, VERSION, camel, patch_status, read_deployment
from shoal_operator.redis_gateway import Connection
from shoal_operator.redis_target import RedisTarget
from shoal_operator.startup import StartupMeter
from shoal_operator.tick_sizes import TickSizes


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
    name: str,
    namespace: str,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    *,
    create: bool = True,
) -> dict[str, Any] | None:
    """Make the Worker's Deployment match its spec; return the Worker's status figures.

    ``create=False`` (a Deployment event) only corrects an existing Deployment, and returns
    None when there is none: the event may be the garbage collection of a Worker deleted
    meanwhile, whose Deployment must not be made again."""
    spec = dict(body.get("spec", {}))
    queues = _queue_refs(memo, namespace, list(spec.get("queues", [])))
    queues[0].target.resolve(memo.core, namespace)  # its Secrets exist, or pods would not start
    live = read_deployment(memo, namespace, name)
    if live is None and not create:
        return None
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
        differences = deploy.drift(desired["spec"], camel(live)["spec"])
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
            live = read_deployment(memo, namespace, name) or live
    status = (live or {}).get("status") or {}
    figures = {
        "replicas": status.get("replicas") or 0,
        "readyReplicas": status.get("ready_replicas") or status.get("readyReplicas") or 0,
        "desiredReplicas": desired["spec"]["replicas"],
        "selector": deploy.selector(name),
        "deployment": name,
    }
    metrics.replicas(namespace, name, figures["replicas"], figures["desiredReplicas"])
    return figures


def worker_status(body: kopf.Body, figures: dict[str, Any]) -> dict[str, Any]:
    generation = body["metadata"].get("generation")
    conditions = body.get("status", {}).get("conditions")
    ready = figures["readyReplicas"] >= figures["desiredReplicas"]
    message = f"{figures['readyReplicas']}/{figures['desiredReplicas']} replicas ready"
    conditions = cond.set_condition(
        conditions, "Ready", ready, "Available" if ready else "Progressing", message, generation
    )
    return {**figures, "conditions": conditions, "observedGeneration": generation}


def resync(
    name: str, namespace: str, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger
) -> None:
    if body["metadata"].get("deletionTimestamp"):
        return  # being deleted: its Deployment goes with it
    try:
        with metrics.reconciling("Worker"):
            figures = reconcile_worker(name, namespace, body, memo, logger, create=False)
    except ReconcileError as exc:
        logger.info("Worker %s/%s not reconciled: %s", namespace, name, exc.message)
        return
    if figures is None:
        return
    patch_status(memo, namespace, "workers", name, worker_status(body, figures), logger)


@dataclass
class Autoscaling:
    """One Worker's autoscaler: each tick measures its queues, reads their upcoming scheduled
    ticks (sized from the runs measured here) and its pods' measured start-up, asks the policy,
    and acts."""

    name: str
    namespace: str
    memo: kopf.Memo
    logger: kopf.Logger
    fleet: FleetMeter = field(default_factory=FleetMeter)
    startup: StartupMeter = field(default_factory=StartupMeter)
    sizes: TickSizes = field(default_factory=TickSizes)
    state: State | None = None
    reported: tuple[int, str, float | None] | None = None

    def tick(self, body: kopf.Body, spec: kopf.Spec) -> float:
        """One decision; returns the seconds until the next one (the policy's poll)."""
        name, namespace, memo = self.name, self.namespace, self.memo
        policy = policy_from_spec(dict(spec.get("autoscaling") or {}))
        live = read_deployment(memo, namespace, name)
        if live is None:  # worker_reconcile has not created it yet
            return policy.poll_s
        replicas = int(live["spec"].get("replicas") or 0)
        ready = int((live.get("status") or {}).get("ready_replicas") or 0)
        startup_s = self._measure_startup(ready)
        conn: Connection | None = None
        try:
            refs = _queue_refs(memo, namespace, list(spec.get("queues", [])))
            conn = memo.redis.connect(refs[0].target, memo.core, namespace)
            broker = memo.redis.app(conn).broker
            names = [r.name for r in refs]
            with metrics.measuring_redis():
                snap = self.fleet.snapshot(broker, names, replicas, ready)
            # The schedules of its queues (code and Queue ones): a fleet at zero wakes for them,
            # sized from what their last runs added to the queue (counted here).
            now_ms, records = broker.schedule_snapshot(names)
            ticks = upcoming_ticks(names, records, now_ms, policy.schedule_hold_s)
            ticks = self.sizes.observe(self.fleet.stats, ticks)
            snap = replace(
                snap,
                next_tick=ticks[0] if ticks else None,
                upcoming_ticks=ticks,
                startup_s=startup_s,
            )
        except (ReconcileError, BrokerError) as exc:
            self.logger.warning("autoscaler: cannot measure (%s); holding %d", exc, replicas)
            conn = None
            snap = Snapshot(
                time.monotonic(), 0, 0, replicas, ready, fresh=False, startup_s=startup_s
            )
        if self.state is None:
            # A fresh autoscaler (operator start, or a standby taking over) has seen none of
            # the scale-down window: it starts it at the replicas found, as the HPA does, so
            # what the last leader needed is held for the window, not dropped on first look.
            self.state = State(recommendations=((snap.now, replicas),))
        decision = autoscaler.traced_decision(name, policy, snap, self.state)
        self.state = decision.state
        pods = int((live.get("status") or {}).get("replicas") or 0)
        metrics.decided(namespace, name, replicas, decision.replicas, pods)
        if decision.replicas != replicas:
            if decision.replicas < replicas and conn is not None:
                self._mark_idle_pods(conn)
            memo.apps.patch_namespaced_deployment_scale(
                name, namespace, {"spec": {"replicas": decision.replicas}}
            )
            message = f"{replicas} → {decision.replicas}: {decision.reason}"
            kopf.info(body, reason="Scaled", message=message)
            self.logger.info("scaled %s %s", name, message)
        startup = None if startup_s is None else round(startup_s, 1)
        if self.reported != (decision.replicas, decision.reason, startup):
            status: dict[str, Any] = {
                "desiredReplicas": decision.replicas,
                "lastScaleReason": decision.reason,
            }
            if startup is not None:
                status["startupSeconds"] = startup
            if decision.replicas != replicas:
                status["lastScaleTime"] = cond.now_iso()
            patch_status(memo, namespace, "workers", name, status, self.logger)
            self.reported = (decision.replicas, decision.reason, startup)
        return policy.poll_s

    def _measure_startup(self, ready: int) -> float | None:
        """The recent median pod start-up (created → ready); the pods are listed only when
        the ready count changed. A failed listing keeps what was measured before."""
        now_s = time.monotonic()
        if self.startup.wants_listing(ready, now_s):
            try:
                pods = self.memo.core.list_namespaced_pod(
                    self.namespace, label_selector=deploy.selector(self.name)
                ).items
            except ApiException as exc:
                self.logger.warning(
                    "autoscaler: cannot list the pods of Worker %s to measure their start-up "
                    "(%s); using the last measurement. Check the operator may list pods "
                    "(its RBAC)",
                    self.name,
                    exc.reason,
                )
            else:
                self.startup.observe(pods, ready, now_s)
        return self.startup.median_s

    def _mark_idle_pods(self, conn: Connection) -> None:
        """Before a scale-in, give each pod a deletion cost equal to its tasks in flight, so
        the ReplicaSet removes idle pods and busy ones keep working."""
        memo = self.memo
        selector = deploy.selector(self.name)
        pods = memo.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        names = [p.metadata.name for p in pods]
        costs = autoscaler.deletion_costs(names, in_flight_by_instance(memo.redis.app(conn).broker))
        for pod in pods:
            cost = str(costs[pod.metadata.name])
            if (pod.metadata.annotations or {}).get(autoscaler.DELETION_COST) != cost:
                memo.core.patch_namespaced_pod(
                    pod.metadata.name,
                    self.namespace,
                    {"metadata": {"annotations": {autoscaler.DELETION_COST: cost}}},
                )
