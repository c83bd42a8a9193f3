"""Operator tests: the real kopf operator against a Kubernetes API emulator over real HTTP.

Fixtures:

* ``kube`` (function scope): a fresh :class:`kube_emulator.KubeEmulator` on a free 127.0.0.1
  port, a kubeconfig for it in ``tmp_path`` (``KUBECONFIG`` set, the ``kubernetes`` client's
  default location and default ``Configuration`` pointed at it for the test), returned as a
  :class:`kube_emulator.Kube`: a synchronous HTTP client (``create/get/patch/delete/list``) with
  ``.server``, ``.emulator``, ``.kubeconfig``, ``.url``, ``.wait_watched(...)``.
* ``operator_runner``: ``with operator_runner("shoal_operator") as runner:`` runs kopf
  (``kopf run --standalone --all-namespaces -m shoal_operator``) in
  :class:`kopf.testing.KopfRunner`'s thread against ``kube``; file paths are accepted too.
  On exit the operator is stopped and must have exited cleanly (its crash re-raises here).
* ``wait_for``: :func:`helpers.wait_for`, polling with a deadline (tests never sleep to wait).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
from kopf.testing import KopfRunner
from kube_emulator import (
    DEPLOYMENTS,
    QUEUES,
    WORKERS,
    EmulatorServer,
    Kube,
    OperatorRunnerFactory,
    ResourceRef,
    fast_settings,
    write_kubeconfig,
)

from helpers import wait_for as _wait_for


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kube]:
    with EmulatorServer() as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        # Never the in-cluster config, even if these tests run inside a pod.
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
        # The client read KUBECONFIG when it was imported: point its default there too, and
        # make its default Configuration this emulator's for the test (restored afterwards).
        monkeypatch.setattr(
            kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig)
        )
        monkeypatch.setattr(kubernetes.client.Configuration, "_default", None)
        kubernetes.config.load_kube_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        yield Kube(server, kubeconfig)


@pytest.fixture
def operator_runner(kube: Kube) -> OperatorRunnerFactory:
    @contextlib.contextmanager
    def run(
        *targets: str | Path,
        namespaces: Iterable[str] = (),
        settings: kopf.OperatorSettings | None = None,
        watched: Iterable[ResourceRef] = (),
        extra_args: Iterable[str] = (),
        timeout: float = 15.0,
    ) -> Iterator[KopfRunner]:
        """Run kopf with ``targets``: module names (``-m``) or ``.py`` files, not both.

        Modules are imported once per session, so their handlers live in kopf's global default
        registry (as in production). Files are executed afresh on every run, into a registry
        of their own, so throwaway operators in different tests never see each other.
        ``namespaces`` empty means ``--all-namespaces``. ``watched``: wait until the operator
        has a WATCH open on these resources before the block starts.
        """
        paths = [str(t) for t in targets if isinstance(t, Path) or str(t).endswith(".py")]
        modules = [str(t) for t in targets if str(t) not in paths]
        if not targets or (paths and modules):
            raise ValueError("pass module names or .py files (not both)")
        args = ["run", "--standalone"]
        args += [f"--namespace={ns}" for ns in namespaces] or ["--all-namespaces"]
        for module in modules:
            args += ["-m", module]
        args += [*extra_args, *paths]
        registry: kopf.OperatorRegistry | None = None
        if paths:
            # A bare registry has no login handlers (only kopf's own default one has them).
            registry = kopf.OperatorRegistry()
            kopf.on.login(registry=registry)(kopf.login_via_client)
        previous_registry = kopf.get_default_registry()
        runner = KopfRunner(
            args, registry=registry, settings=settings or fast_settings(), timeout=timeout
        )
        try:
            with runner:
                for resource in watched:
                    kube.wait_watched(resource, timeout=timeout)
                yield runner
        finally:
            kopf.set_default_registry(previous_registry)
        assert runner.exit_code == 0, runner.output

    return run


@pytest.fixture
def running(operator_runner: OperatorRunnerFactory) -> Iterator[None]:
    """The operator, watching Queues, Workers and Deployments, for the whole test."""
    with operator_runner("shoal_operator", watched=[QUEUES, WORKERS, DEPLOYMENTS]):
        yield


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``wait_for(predicate, timeout=10.0, message="...")``: the truthy result, or a failure."""
    return _wait_for
