"""``shoal-operator``: run the kopf operator on the namespaces of its settings.

With ``SHOAL_OPERATOR_LEADER_ELECTION`` (the chart's default, 2 replicas) the process first
stands by for the Lease (:mod:`shoal_operator.leader`) and runs kopf only while it leads. A
standby serves ``/metrics`` (``shoal_operator_leader 0``), ``/readyz`` (ready while it reaches
the API: a healthy standby is what a PodDisruptionBudget should count) and ``/healthz`` (alive
while its election loop runs); kopf takes ``/healthz`` over when it starts. kopf stays
``standalone``: its peering would pause a replica only by peer priorities and timestamps the
peers write (other nodes' clocks), where a Lease is decided by each observer's own clock."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import NoReturn

import kopf
from aiohttp import web
from kubernetes import client
from kubernetes import config as kube_config

from shoal_operator import (
    handlers,  # noqa: F401 - registers the handlers
    metrics,
)
from shoal_operator.leader import Campaign, Elector, KubeLeaseStore, LeaseTiming, lead
from shoal_operator.metrics_server import MetricsServer
from shoal_operator.settings import OperatorSettings

log = logging.getLogger("shoal_operator.main")


def main() -> None:
    try:
        settings = OperatorSettings.from_env()
    except ValueError as exc:
        sys.exit(f"shoal-operator: {exc}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    kopf.configure(verbose=False)
    asyncio.run(run(settings))


async def run(settings: OperatorSettings) -> None:
    if not settings.leader_election:
        await _operator(settings, None, None)
        return
    await _elected(settings)


async def _operator(
    settings: OperatorSettings, stopping: asyncio.Event | None, server: MetricsServer | None
) -> None:
    await kopf.operator(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
        stop_flag=stopping,
        memo=None if server is None else kopf.Memo(metrics_server=server),
    )


async def _elected(settings: OperatorSettings) -> None:
    try:
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        kube_config.load_kube_config()  # type: ignore[no-untyped-call]
    timing = LeaseTiming(
        settings.lease_duration_s, settings.renew_deadline_s, settings.retry_period_s
    )
    store = KubeLeaseStore(
        client.CoordinationV1Api(client.ApiClient()),
        settings.lease_name,
        settings.lease_namespace,
        timing.request_timeout_s,
    )
    campaign = Campaign(Elector(store, settings.identity, timing))
    server = await _standby_metrics(settings, store)
    health = StandbyHealth(campaign.elector, timing)
    await health.start(settings.liveness_port)

    async def on_role(leading: bool) -> None:
        metrics.leading(leading)
        if leading:  # the Lease is renewed meanwhile: this cannot outlast leadership
            await health.stop()  # kopf's liveness endpoint takes the port

    async def operate(stopping: asyncio.Event) -> None:
        await _operator(settings, stopping, server)

    try:
        await lead(campaign, operate, on_role=on_role, on_lost=_exit_at_once)
    finally:
        await health.stop()
        if server is not None:
            await server.stop()


async def _standby_metrics(
    settings: OperatorSettings, store: KubeLeaseStore
) -> MetricsServer | None:
    """``/metrics`` and ``/readyz`` from standby on; ready while the Lease can be read (the
    handlers' startup replaces the check with their own once this replica leads)."""
    if not settings.operator_metrics_port:
        return None
    server = MetricsServer(settings.operator_metrics_port)
    try:
        await server.start()
    except OSError as exc:
        log.error(
            "cannot serve /metrics and /readyz on port %d (%s); set SHOAL_OPERATOR_METRICS_PORT "
            "to a free port",
            settings.operator_metrics_port,
            exc,
        )
        return None

    def lease_readable() -> None:
        store.get()  # raises when the API does not answer

    server.started(lease_readable)
    return server


STANDBY_SHUTDOWN_S = 1.0
"""How long the standby's ``/healthz`` waits for a request in flight when this replica starts
leading (its renewals run meanwhile: this only delays kopf's start)."""


class StandbyHealth:
    """``/healthz`` on the liveness port while standing by: alive while the election loop
    attempts (an attempt ended within a lease duration), so a wedged standby is restarted."""

    def __init__(self, elector: Elector, timing: LeaseTiming) -> None:
        self.elector, self.timing = elector, timing
        self._runner: web.AppRunner | None = None

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        # Stopping frees the port at once; a probe still in flight gets a second, not
        # aiohttp's default minute, before kopf (which waits for it) takes the port over
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=STANDBY_SHUTDOWN_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, "0.0.0.0", port).start()
        except OSError as exc:
            await runner.cleanup()
            log.error(
                "cannot serve /healthz on port %d (%s); set SHOAL_OPERATOR_LIVENESS_PORT to a "
                "free port",
                port,
                exc,
            )
            return
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        attempted = self.elector.attempted_at
        late = self.timing.lease_duration_s + 2 * self.timing.request_timeout_s
        if attempted is not None and time.monotonic() - attempted > late:
            return web.Response(status=500, text="standby: the election loop is stuck\n")
        return web.Response(text="standby\n")


def _exit_at_once() -> NoReturn:
    """Leadership lost: end now. A graceful stop could outlast the lease while a handler's
    thread still writes; Kubernetes restarts the container, which comes back as a standby."""
    logging.shutdown()
    os._exit(1)


if __name__ == "__main__":
    main()
