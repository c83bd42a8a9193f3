"""A Kubernetes API emulator over real HTTP for operator tests, built on kmock.

:class:`KubeEmulator` subclasses :class:`kmock.KubernetesEmulator` (kmock's in-memory API server)
and replaces its object-modifying logic with the parts of the real apiserver's behaviour that kopf
and the operator depend on. kmock's discovery endpoints, request log (``list(emulator)``),
object history (``emulator.objects``) and reaction DSL (``emulator['patch /apis/...'] << 500``)
stay available.

What the emulator does that kmock 0.8 alone does not:

* fills the server-owned metadata: ``uid``, ``creationTimestamp``, ``generation`` (+1 on every
  change outside ``metadata``/``status``) and ``resourceVersion`` (one cluster-wide counter,
  +1 on every write; a no-op patch changes nothing and sends no watch event);
* PATCH in the four content types: ``merge-patch+json``, ``json-patch+json`` (a failed ``test``
  op answers 422 as the apiserver does, which kopf's finalizer patches rely on),
  ``strategic-merge-patch+json`` (the ``kubernetes`` client's default for dict bodies;
  approximated as a merge patch whose lists of named dicts merge by ``name``), and PUT (replace);
  an optimistic-concurrency ``metadata.resourceVersion`` in a patch/PUT body answers 409 if stale;
* the ``status`` subresource (writes to the object ignore ``status``; writes to ``/status`` change
  only ``status``; POST drops ``status``) and the ``scale`` subresource (an ``autoscaling/v1``
  ``Scale`` view of ``spec.replicas``/``status.replicas``/``status.selector``);
* deletion with finalizers (``deletionTimestamp`` first, the object goes when the last finalizer
  is removed; no new finalizers on a terminating object), and a minimal garbage collector:
  when an object is gone, its dependents (``metadata.ownerReferences[].uid``) are deleted too
  unless another owner still exists or the DELETE asked for ``propagationPolicy: Orphan``;
  deleting a namespace deletes the objects in it;
* LIST/WATCH with ``labelSelector`` (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``,
  ``a notin (x,y)``) and ``fieldSelector`` (``path=value``, ``path!=value``, e.g.
  ``metadata.name=x``); WATCH honours ``resourceVersion`` (replays later events, so nothing is
  lost between a LIST and its WATCH) and ``timeoutSeconds``;
* ``coordination.k8s.io/v1`` Leases (leader election): create (409 ``AlreadyExists`` when taken),
  get, and PUT with a stale ``metadata.resourceVersion`` answering 409 ``Conflict``, as the
  apiserver's optimistic concurrency does (a PUT without one replaces unconditionally);
* POSTs into a namespace that does not exist answer 404 (``default`` and ``kube-system`` exist).

Deliberately missing: server-side apply, validation against CRD schemas, admission, defaulting,
foreground deletion (all deletion is background), real controllers (Deployments never get Pods).

:class:`EmulatorServer` runs the emulator on a free ``127.0.0.1`` port in a thread of its own
(its own event loop), and :class:`KubeClient` is a small synchronous HTTP client for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import itertools
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import kmock
import kopf
from kmock._internal import parsing as _kmock_parsing
from kopf.testing import KopfRunner

JSON = dict[str, Any]
T = TypeVar("T")
PatchType = Literal["merge", "json", "strategic"]

# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    """One API resource as discovery describes it, e.g. ``apps/v1 deployments``."""

    group: str  # "" for the core API
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    shortnames: tuple[str, ...] = ()
    # Where the ``scale`` subresource reads and writes (CRD ``scale`` paths, dotted).
    spec_replicas_path: str = "spec.replicas"
    status_replicas_path: str = "status.replicas"
    label_selector_path: str = "status.selector"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> kmock.resource:
        return kmock.resource(group=self.group, version=self.version, plural=self.plural)

    def url(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The API path: ``/apis/apps/v1/namespaces/ns/deployments/name/scale``."""
        parts = ["/api", self.version] if not self.group else ["/apis", self.group, self.version]
        if self.namespaced and namespace is not None:
            parts += ["namespaces", namespace]
        parts.append(self.plural)
        if name is not None:
            parts.append(name)
            if subresource is not None:
                parts.append(subresource)
        return "/".join(parts)

    def __str__(self) -> str:
        return f"{self.api_version}/{self.plural}"


NAMESPACES = ResourceSpec(
    "",
    "v1",
    "namespaces",
    "Namespace",
    namespaced=False,
    subresources=("status",),
    shortnames=("ns",),
)
SECRETS = ResourceSpec("", "v1", "secrets", "Secret")
CONFIGMAPS = ResourceSpec("", "v1", "configmaps", "ConfigMap", shortnames=("cm",))
SERVICES = ResourceSpec(
    "", "v1", "services", "Service", subresources=("status",), shortnames=("svc",)
)
PODS = ResourceSpec("", "v1", "pods", "Pod", subresources=("status",), shortnames=("po",))
EVENTS = ResourceSpec("", "v1", "events", "Event", shortnames=("ev",))
EVENTS_V1 = ResourceSpec("events.k8s.io", "v1", "events", "Event", shortnames=("ev",))
DEPLOYMENTS = ResourceSpec(
    "apps",
    "v1",
    "deployments",
    "Deployment",
    subresources=("status", "scale"),
    shortnames=("deploy",),
)
CRDS = ResourceSpec(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    "CustomResourceDefinition",
    namespaced=False,
    subresources=("status",),
    shortnames=("crd", "crds"),
)
QUEUES = ResourceSpec("shoal.dev", "v1alpha1", "queues", "Queue", subresources=("status",))
WORKERS = ResourceSpec(
    "shoal.dev", "v1alpha1", "workers", "Worker", subresources=("status", "scale")
)
LEASES = ResourceSpec("coordination.k8s.io", "v1", "leases", "Lease")

DEFAULT_RESOURCES: tuple[ResourceSpec, ...] = (
    NAMESPACES,
    SECRETS,
    CONFIGMAPS,
    SERVICES,
    PODS,
    EVENTS,
    EVENTS_V1,
    DEPLOYMENTS,
    CRDS,
    QUEUES,
    WORKERS,
    LEASES,
)
DEFAULT_NAMESPACES: tuple[str, ...] = ("default", "kube-system")
VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")

ResourceRef = ResourceSpec | str  # a spec or "group/version/plural" / "v1/pods"


def parse_resource(
    ref: ResourceRef, known: Iterable[ResourceSpec] = DEFAULT_RESOURCES
) -> ResourceSpec:
    """Resolve ``"apps/v1/deployments"``, ``"v1/pods"`` or ``"deployments"`` to a spec."""
    if isinstance(ref, ResourceSpec):
        return ref
    parts = ref.strip("/").split("/")
    for spec in known:
        if parts in ([spec.plural], [*spec.api_version.split("/"), spec.plural]):
            return spec
    raise KeyError(f"Unknown resource {ref!r}: pass a ResourceSpec")


# ---------------------------------------------------------------------------------------------
# kmock 0.8 parses ``/api/v1/namespaces`` and ``/api/v1/namespaces/NAME[/SUB]`` as a namespace
# prefix: the LIST fails with ValueError (a 500) and a FETCH/PATCH/DELETE of a Namespace has no
# resource. kopf lists and watches namespaces when run with ``--namespace``. Fix the parser
# (private API; every other path goes to kmock's own parser unchanged).
# ---------------------------------------------------------------------------------------------

_NAMESPACE_PATH = re.compile(
    r"^/api/(?P<version>v1)/namespaces(?:/(?P<name>[^/]+)"
    r"(?:/(?P<sub>status|finalize))?)?/?$"
)
_original_parse_path: Callable[[str], Any] = getattr(
    _kmock_parsing.parse_path, "__wrapped__", _kmock_parsing.parse_path
)


def _parse_path(path: str) -> Any:
    match = _NAMESPACE_PATH.match(path)
    if match is None:
        return _original_parse_path(path)
    return _kmock_parsing.ParsedPath(
        group="",
        version=match["version"],
        plural="namespaces",
        name=match["name"],
        subresource=match["sub"],
    )


_parse_path.__wrapped__ = _original_parse_path  # type: ignore[attr-defined]
_kmock_parsing.parse_path = _parse_path


# ---------------------------------------------------------------------------------------------
# Helpers: patches, selectors, dotted paths
# ---------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any, *, strategic: bool = False) -> Any:
    """RFC 7386 merge patch (``None`` deletes); ``strategic`` merges lists of named dicts."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: JSON = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue  # strategic-merge directives ($patch, $setElementOrder/...): ignored
        if value is None:
            result.pop(key, None)
        elif strategic and _is_named_list(value) and _is_named_list(result.get(key)):
            merged = {item["name"]: item for item in result[key]}
            for item in value:
                merged[item["name"]] = merge_patch(merged.get(item["name"]), item, strategic=True)
            result[key] = list(merged.values())
        else:
            result[key] = merge_patch(result.get(key), value, strategic=strategic)
    return result


def _is_named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, Mapping) and "name" in i for i in value)


def get_path(obj: Mapping[str, Any], dotted: str) -> Any:
    value: Any = obj
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def set_path(obj: JSON, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        obj = obj.setdefault(part, {})
    obj[last] = value


_SELECTOR_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<value>\([^)]*\)|[^,()\s]*))?\s*$"
)


def _split_terms(selector: str) -> list[str]:
    terms: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(selector):
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(selector[start:index])
            start = index + 1
    terms.append(selector[start:])
    return [term for term in terms if term.strip()]


def selector_matcher(
    selector: str | None, lookup: Callable[[JSON, str], Any]
) -> Callable[[JSON], bool]:
    """Compile a label/field selector into a predicate; raises ValueError if malformed."""
    if not selector:
        return lambda obj: True
    checks: list[Callable[[JSON], bool]] = []
    for term in _split_terms(selector):
        match = _SELECTOR_TERM.match(term)
        if match is None:
            raise ValueError(f"unable to parse requirement: {term!r}")
        key, op = match["key"], (match["op"] or "").strip()
        raw_value = match["value"] or ""
        values = {v.strip() for v in raw_value.strip("()").split(",") if v.strip()}

        def check(
            obj: JSON,
            key: str = key,
            op: str = op,
            neg: bool = bool(match["neg"]),
            value: str = raw_value,
            values: set[str] = values,
        ) -> bool:
            actual = lookup(obj, key)
            actual = None if actual is None else str(actual)
            if not op:
                return (actual is None) if neg else (actual is not None)
            if op in ("=", "=="):
                return actual == value
            if op == "!=":
                return actual != value
            if op == "in":
                return actual in values
            return actual not in values  # notin

        checks.append(check)
    return lambda obj: all(check(obj) for check in checks)


def _label(obj: JSON, key: str) -> Any:
    return (obj.get("metadata", {}).get("labels") or {}).get(key)


def _field(obj: JSON, key: str) -> Any:
    return get_path(obj, key)


# ---------------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------------


@attrs.define(kw_only=True, eq=False)  # hashed by identity: kept in a set
class _Watcher:
    resource: kmock.resource
    namespace: str | None
    matches: Callable[[JSON], bool]
    queue: asyncio.Queue[JSON | None] = attrs.field(factory=asyncio.Queue)


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with apiserver semantics kopf relies on (see module doc)."""

    specs: tuple[ResourceSpec, ...] = DEFAULT_RESOURCES
    initial_namespaces: tuple[str, ...] = DEFAULT_NAMESPACES

    _rv: Iterator[int] = attrs.field(factory=lambda: itertools.count(1000), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    _specs_by_key: dict[kmock.resource, ResourceSpec] = attrs.field(factory=dict, init=False)
    _log: list[tuple[int, kmock.resource, JSON]] = attrs.field(factory=list, init=False)
    _watchers: set[_Watcher] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # PUT (replace) is not a kmock action: serve it explicitly, below the user's reactions.
        self.fallback[kmock.method.PUT] << self._serve_replace
        for spec in self.specs:
            self.add_resource(spec)
        for namespace in self.initial_namespaces:
            self._create(NAMESPACES, None, {"metadata": {"name": namespace}})

    # --- public API ---------------------------------------------------------------------------

    def add_resource(self, spec: ResourceSpec) -> None:
        """Serve one more resource (in discovery, and for all the verbs)."""
        self._specs_by_key[spec.key] = spec
        self.resources[spec.key] = kmock.ResourceInfo(
            kind=spec.kind,
            namespaced=spec.namespaced,
            verbs=set(VERBS),
            singular=spec.kind.lower(),
            shortnames=set(spec.shortnames),
            subresources=set(spec.subresources),
        )

    def open_watches(self, spec: ResourceSpec) -> int:
        """How many WATCH streams are open on this resource now."""
        return sum(watcher.resource == spec.key for watcher in self._watchers)

    def stop_watches(self) -> None:
        """End every open WATCH stream (the server calls it before shutting down)."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)

    # --- request handling ---------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Skip KubernetesEmulator._handle: it mutates the objects before the reactions, without
        # server-owned fields. Our mutations happen in the fallback reactions below, so a user's
        # reaction (e.g. ``emulator['patch ...'] << 500``) intercepts a request entirely.
        return await kmock.RawHandler._handle(self, request)

    def _spec(self, request: kmock.Request) -> ResourceSpec:
        assert request.resource is not None
        spec = self._specs_by_key.get(request.resource)
        if spec is None:
            raise kmock.KubernetesResourceNotFoundError()
        if request.subresource is not None and request.subresource not in spec.subresources:
            raise kmock.KubernetesNotFoundError(
                message=f"the server could not find the requested resource ({spec}/"
                f"{request.subresource})"
            )
        return spec

    def _body(self, request: kmock.Request) -> Any:
        try:
            return json.loads(request.body) if request.body else None
        except ValueError as exc:
            raise _bad_request(f"invalid JSON body: {exc}") from exc

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec(request)
        body = self._body(request)
        if not isinstance(body, dict):
            raise _bad_request("the body must be a JSON object")
        if request.subresource is not None:
            raise _status(405, "MethodNotAllowed", "POST to a subresource is not supported")
        return self._create(spec, request.namespace, body)

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec(request)
        assert request.name is not None
        obj = self._get(spec, request.namespace, request.name)
        if request.subresource == "scale":
            return _to_scale(spec, obj)
        return obj

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec(request)
        assert request.name is not None
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        body = self._body(request)
        current = self._get(spec, request.namespace, request.name)

        def apply(view: JSON) -> JSON:
            if content_type == "application/json-patch+json":
                if not isinstance(body, list):
                    raise _bad_request("a JSON patch must be a list of operations")
                try:
                    return jsonpatch.apply_patch(view, body, in_place=False)  # type: ignore[no-any-return]
                except jsonpatch.JsonPatchTestFailed as exc:
                    raise _status(
                        422,
                        "Invalid",
                        f"the server rejected our request due to an error in our request: {exc}",
                    ) from exc
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise _status(422, "Invalid", str(exc)) from exc
            if content_type in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                if not isinstance(body, dict):
                    raise _bad_request("a merge patch must be a JSON object")
                _check_precondition(view, body)
                strategic = content_type == "application/strategic-merge-patch+json"
                return merge_patch(view, body, strategic=strategic)  # type: ignore[no-any-return]
            raise _status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {content_type!r}",
            )

        return self._write(
            spec, request.namespace, request.name, current, apply, request.subresource
        )

    async def _serve_replace(self, request: kmock.Request) -> kmock.Payload:
        if request.resource is None or request.name is None:
            raise kmock.KubernetesEndpointNotFoundError()
        spec = self._spec(request)
        body = self._body(request)
        if not isinstance(body, dict):
            raise _bad_request("the body must be a JSON object")
        current = self._get(spec, request.namespace, request.name)

        def apply(view: JSON) -> JSON:
            _check_precondition(view, body)
            new = copy.deepcopy(body)
            new["metadata"] = {**view.get("metadata", {}), **new.get("metadata", {})}
            return new

        return self._write(
            spec, request.namespace, request.name, current, apply, request.subresource
        )

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec(request)
        assert request.name is not None
        options = self._body(request) or {}
        propagation = options.get("propagationPolicy") or request.params.get("propagationPolicy")
        return self._delete(spec, request.namespace, request.name, orphan=propagation == "Orphan")

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        spec = self._spec(request)
        matches = self._matcher(request)
        items = [obj for obj in self._live(spec, request.namespace) if matches(obj)]
        return {
            "apiVersion": spec.api_version,
            "kind": f"{spec.kind}List",
            "metadata": {"resourceVersion": str(self._last_rv)},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        spec = self._spec(request)
        matches = self._matcher(request)
        namespace = request.namespace
        since = request.params.get("resourceVersion", "")
        timeout = float(request.params.get("timeoutSeconds") or 0) or None

        def wanted(obj: JSON) -> bool:
            in_ns = namespace is None or obj.get("metadata", {}).get("namespace") == namespace
            return in_ns and matches(obj)

        # Snapshot and subscription happen without an await in between: no event is missed.
        watcher = _Watcher(resource=spec.key, namespace=namespace, matches=wanted)
        if since.isdigit() and int(since) > 0:
            backlog = [
                event
                for rv, key, event in self._log
                if key == spec.key and rv > int(since) and wanted(event["object"])
            ]
        else:
            backlog = [
                {"type": "ADDED", "object": obj}
                for obj in self._live(spec, namespace)
                if matches(obj)
            ]
        self._watchers.add(watcher)
        try:
            yield b""  # send the headers now: the client sees the stream open
            for event in backlog:
                yield event
            async with asyncio.timeout(timeout):
                while (live := await watcher.queue.get()) is not None:
                    yield live
        except TimeoutError:
            return
        finally:
            self._watchers.discard(watcher)

    def _matcher(self, request: kmock.Request) -> Callable[[JSON], bool]:
        try:
            labels = selector_matcher(request.params.get("labelSelector"), _label)
            fields = selector_matcher(request.params.get("fieldSelector"), _field)
        except ValueError as exc:
            raise _bad_request(str(exc)) from exc
        return lambda obj: labels(obj) and fields(obj)

    # --- storage (synchronous: atomic within the server's event loop) -------------------------

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def _publish(self, spec: ResourceSpec, kind: str, obj: JSON) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self._log.append((self._last_rv, spec.key, event))
        for watcher in self._watchers:
            if watcher.resource == spec.key and watcher.matches(obj):
                watcher.queue.put_nowait(event)

    def _live(self, spec: ResourceSpec, namespace: str | None) -> list[JSON]:
        return [
            copy.deepcopy(obj.raw)
            for (key, ns, _), obj in self.objects.items()
            if key == spec.key and not obj.deleted and (namespace is None or ns == namespace)
        ]

    def _find(self, spec: ResourceSpec, namespace: str | None, name: str) -> JSON | None:
        key = (spec.key, namespace if spec.namespaced else None, name)
        if key in self.objects and not self.objects[key].deleted:
            return copy.deepcopy(self.objects[key].raw)
        return None

    def _get(self, spec: ResourceSpec, namespace: str | None, name: str) -> JSON:
        obj = self._find(spec, namespace, name)
        if obj is None:
            raise _status(
                404,
                "NotFound",
                f'{spec.plural}.{spec.group or "core"} "{name}" not found',
                {"name": name, "kind": spec.plural},
            )
        return obj

    def _store(self, spec: ResourceSpec, obj: JSON) -> None:
        meta = obj["metadata"]
        key = (spec.key, meta.get("namespace"), meta["name"])
        if key in self.objects:
            self.objects[key].history.append(copy.deepcopy(obj))
        else:
            self.objects[key] = copy.deepcopy(obj)

    def _create(self, spec: ResourceSpec, namespace: str | None, body: JSON) -> JSON:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if spec.namespaced:
            if namespace and meta.get("namespace") not in (None, namespace):
                raise _bad_request("the namespace of the object does not match the URL")
            namespace = namespace or meta.get("namespace") or "default"
            if self._find(NAMESPACES, None, namespace) is None:
                raise _status(
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces"},
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _status(422, "Invalid", "metadata.name: Required value")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if self._find(spec, meta.get("namespace"), meta["name"]) is not None:
            raise _status(
                409,
                "AlreadyExists",
                f'{spec.plural} "{meta["name"]}" already exists',
                {"name": meta["name"], "kind": spec.plural},
            )
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(field, None)
        if "status" in spec.subresources:
            obj.pop("status", None)
        if spec is NAMESPACES:
            obj["status"] = {"phase": "Active"}
        obj["apiVersion"], obj["kind"] = spec.api_version, spec.kind
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            generation=1,
            resourceVersion=self._next_rv(),
        )
        self._store(spec, obj)
        self._publish(spec, "ADDED", obj)
        return obj

    def _write(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        current: JSON,
        apply: Callable[[JSON], JSON],
        subresource: str | None,
    ) -> JSON:
        if subresource == "scale":
            scale = apply(_to_scale(spec, current))
            new = copy.deepcopy(current)
            set_path(new, spec.spec_replicas_path, get_path(scale, "spec.replicas"))
        else:
            new = apply(copy.deepcopy(current))
            if subresource == "status":  # only the status changes via /status
                new = {**current, "status": new.get("status")}
                if new["status"] is None:
                    del new["status"]
            elif "status" in spec.subresources:  # and never via the main resource
                new.pop("status", None)
                if "status" in current:
                    new["status"] = current["status"]
        old_meta, meta = current["metadata"], new.setdefault("metadata", {})
        # Server-owned fields cannot be changed by clients.
        for field in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
            "resourceVersion",
            "namespace",
            "name",
        ):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        new["apiVersion"], new["kind"] = spec.api_version, spec.kind
        if new == current:
            return current  # a no-op write: no new resourceVersion, no watch event
        if old_meta.get("deletionTimestamp") and set(meta.get("finalizers") or []) - set(
            old_meta.get("finalizers") or []
        ):
            raise _status(
                422,
                "Invalid",
                "metadata.finalizers: Forbidden: no new finalizers "
                "can be added if the object is being deleted",
            )
        if _spec_part(new) != _spec_part(current):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        meta["resourceVersion"] = self._next_rv()
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(spec, new)
        self._store(spec, new)
        self._publish(spec, "MODIFIED", new)
        if subresource == "scale":
            return _to_scale(spec, new)
        return new

    def _delete(
        self, spec: ResourceSpec, namespace: str | None, name: str, *, orphan: bool = False
    ) -> JSON:
        obj = self._get(spec, namespace, name)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return obj  # already terminating: waiting for its finalizers
        if meta.get("finalizers"):
            meta["deletionTimestamp"] = _now()
            meta["deletionGracePeriodSeconds"] = 0
            meta["resourceVersion"] = self._next_rv()
            self._store(spec, obj)
            self._publish(spec, "MODIFIED", obj)
            return obj
        meta["resourceVersion"] = self._next_rv()
        return self._remove(spec, obj, orphan=orphan)

    def _remove(self, spec: ResourceSpec, obj: JSON, *, orphan: bool = False) -> JSON:
        """The object is gone for real: store the tombstone, notify, collect the garbage."""
        meta = obj["metadata"]
        self._store(spec, obj)
        self.objects[spec.key, meta.get("namespace"), meta["name"]].delete()
        self._publish(spec, "DELETED", obj)
        if spec is NAMESPACES:
            for other in self.specs:
                if other.namespaced:
                    for child in self._live(other, meta["name"]):
                        if self._find(other, meta["name"], child["metadata"]["name"]):
                            self._delete(other, meta["name"], child["metadata"]["name"])
        if not orphan:
            self._collect_dependents(
                meta["uid"], None if not spec.namespaced else meta["namespace"]
            )
        return obj

    def _collect_dependents(self, owner_uid: str, namespace: str | None) -> None:
        live_uids = {
            obj["metadata"]["uid"] for spec in self.specs for obj in self._live(spec, None)
        }
        for spec in self.specs:
            for obj in self._live(spec, namespace):
                owners = {ref.get("uid") for ref in obj["metadata"].get("ownerReferences") or []}
                orphaned = owner_uid in owners and not (owners - {owner_uid}) & live_uids
                namespace, name = obj["metadata"].get("namespace"), obj["metadata"]["name"]
                # It may be gone already: deleting one dependent can cascade to another.
                if orphaned and self._find(spec, namespace, name) is not None:
                    self._delete(spec, namespace, name)


def _spec_part(obj: JSON) -> JSON:
    return {
        key: value
        for key, value in obj.items()
        if key not in ("metadata", "status", "apiVersion", "kind")
    }


def _check_precondition(current: JSON, body: Mapping[str, Any]) -> None:
    wanted = (body.get("metadata") or {}).get("resourceVersion")
    if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
        raise _status(
            409,
            "Conflict",
            "Operation cannot be fulfilled: the object has been "
            "modified; please apply your changes to the latest version and try again",
        )


def _to_scale(spec: ResourceSpec, obj: JSON) -> JSON:
    meta = obj["metadata"]
    status: JSON = {"replicas": get_path(obj, spec.status_replicas_path) or 0}
    selector = get_path(obj, spec.label_selector_path)
    if selector is not None:
        status["selector"] = selector
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            key: meta[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in meta
        },
        "spec": {"replicas": get_path(obj, spec.spec_replicas_path) or 0},
        "status": status,
    }


def _status(
    code: int, reason: str, message: str, details: JSON | None = None
) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details or {})


def _bad_request(message: str) -> kmock.KubernetesError:
    return _status(400, "BadRequest", message)


# ---------------------------------------------------------------------------------------------
# Running it: a thread with its own loop, a real TCP port
# ---------------------------------------------------------------------------------------------


class EmulatorServer:
    """Run a :class:`KubeEmulator` on ``http://127.0.0.1:<free port>`` in a background thread.

    Use as a context manager; ``url``, ``port``, ``emulator`` and ``client`` are set inside it.
    """

    def __init__(self, emulator: KubeEmulator | None = None) -> None:
        self.emulator = emulator if emulator is not None else KubeEmulator()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kube-emulator", daemon=True
        )
        self._runner: aiohttp.web.ServerRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> KubeClient:
        return KubeClient(self.url, specs=self.emulator.specs)

    def requests(self) -> list[kmock.Request]:
        """Every request served so far, in order (kmock's request log)."""
        return self.call(lambda: list(self.emulator))

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` in the server's loop (the only safe way to touch ``emulator`` state)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def __enter__(self) -> EmulatorServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    async def _start(self) -> None:
        await self.emulator.__aenter__()
        # kmock.Server would also patch aiohttp's DNS resolution process-wide: not needed here.
        # handler_cancellation: a client's disconnect ends its WATCH handler (and subscription);
        # no access log: it would land in the operator's output among kopf's own lines.
        server = aiohttp.web.Server(self.emulator, handler_cancellation=True, access_log=None)
        self._runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        self.emulator.stop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.emulator.__aexit__(None, None, None)
        # A closed transport lets go of its socket in a later loop iteration: give those a
        # turn before the loop stops, or the socket is only found (unclosed) by the GC.
        for _ in range(3):
            await asyncio.sleep(0)


# ---------------------------------------------------------------------------------------------
# A synchronous client for tests
# ---------------------------------------------------------------------------------------------


class KubeAPIError(Exception):
    """A non-2xx answer from the API; ``status`` is the HTTP code, ``body`` the Status object."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


class KubeClient:
    """Create/get/patch/delete/list objects over real HTTP (stdlib ``urllib``, no proxies)."""

    def __init__(
        self, url: str, *, specs: Iterable[ResourceSpec] = DEFAULT_RESOURCES, timeout: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self.specs = tuple(specs)
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            url,
            data=data,
            method=method,
            headers={"Content-Type": content_type, "Accept": "application/json"},
        )
        try:
            with self._opener.open(req, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise KubeAPIError(exc.code, payload) from None

    def _spec(self, resource: ResourceRef) -> ResourceSpec:
        return parse_resource(resource, self.specs)

    def create(
        self, resource: ResourceRef, body: Mapping[str, Any], namespace: str | None = None
    ) -> JSON:
        spec = self._spec(resource)
        ns = namespace or (body.get("metadata") or {}).get("namespace") or "default"
        result: JSON = self.request("POST", spec.url(ns if spec.namespaced else None), dict(body))
        return result

    def get(
        self,
        resource: ResourceRef,
        name: str,
        namespace: str | None = "default",
        subresource: str | None = None,
    ) -> JSON:
        result: JSON = self.request("GET", self._spec(resource).url(namespace, name, subresource))
        return result

    def get_or_none(
        self, resource: ResourceRef, name: str, namespace: str | None = "default"
    ) -> JSON | None:
        try:
            return self.get(resource, name, namespace)
        except KubeAPIError as exc:
            if exc.status == 404:
                return None
            raise

    def exists(self, resource: ResourceRef, name: str, namespace: str | None = "default") -> bool:
        return self.get_or_none(resource, name, namespace) is not None

    def list(
        self,
        resource: ResourceRef,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[JSON]:
        """List objects; ``namespace=None`` lists all namespaces."""
        params = {
            key: value
            for key, value in (("labelSelector", label_selector), ("fieldSelector", field_selector))
            if value
        }
        result = self.request("GET", self._spec(resource).url(namespace), params=params)
        items: list[JSON] = result["items"]
        return items

    def patch(
        self,
        resource: ResourceRef,
        name: str,
        patch: Any,
        namespace: str | None = "default",
        *,
        subresource: str | None = None,
        patch_type: PatchType = "merge",
    ) -> JSON:
        content_type = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
        }[patch_type]
        result: JSON = self.request(
            "PATCH",
            self._spec(resource).url(namespace, name, subresource),
            patch,
            content_type=content_type,
        )
        return result

    def delete(
        self,
        resource: ResourceRef,
        name: str,
        namespace: str | None = "default",
        *,
        propagation_policy: str | None = None,
    ) -> JSON:
        body = {"propagationPolicy": propagation_policy} if propagation_policy else None
        result: JSON = self.request("DELETE", self._spec(resource).url(namespace, name), body)
        return result

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> JSON:
        return self.create(NAMESPACES, {"metadata": {"name": name, "labels": dict(labels or {})}})


class Kube(KubeClient):
    """The ``kube`` fixture: a client of a running emulator, plus the emulator itself."""

    def __init__(self, server: EmulatorServer, kubeconfig: Path) -> None:
        super().__init__(server.url, specs=server.emulator.specs)
        self.server = server
        self.emulator = server.emulator
        self.kubeconfig = kubeconfig

    def open_watches(self, resource: ResourceRef) -> int:
        spec = self._spec(resource)
        return self.server.call(lambda: self.emulator.open_watches(spec))

    def wait_watched(self, resource: ResourceRef, timeout: float = 10.0) -> None:
        """Wait until some client (the operator) has a WATCH open on ``resource``."""
        deadline = time.monotonic() + timeout
        while not self.open_watches(resource):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nobody watches {resource} after {timeout}s")
            time.sleep(0.01)

    def requests(self) -> list[kmock.Request]:
        return self.server.requests()


class OperatorRunnerFactory(Protocol):
    """The ``operator_runner`` fixture (see tests/operator/conftest.py)."""

    def __call__(
        self,
        *targets: str | Path,
        namespaces: Iterable[str] = (),
        settings: kopf.OperatorSettings | None = None,
        watched: Iterable[ResourceRef] = (),
        extra_args: Iterable[str] = (),
        timeout: float = 15.0,
    ) -> contextlib.AbstractContextManager[KopfRunner]: ...


def fast_settings() -> kopf.OperatorSettings:
    """kopf settings for tests: nothing about the operator's behaviour, only shorter waits."""
    settings = kopf.OperatorSettings()
    settings.queueing.exit_timeout = 0.5  # on stop, wait this long for per-object workers
    settings.process.ultimate_exiting_timeout = 10.0  # a hung stop fails instead of 10 min
    settings.networking.request_timeout = 10.0
    settings.networking.error_backoffs = [0.1, 0.2, 0.5]  # retries of API errors
    return settings


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig (JSON is valid YAML) for ``url`` with no credentials."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                "users": [{"name": "tester", "user": {}}],
                "contexts": [
                    {
                        "name": "emulator",
                        "context": {
                            "cluster": "emulator",
                            "user": "tester",
                            "namespace": namespace,
                        },
                    }
                ],
                "current-context": "emulator",
            }
        )
    )
    return path


@contextlib.contextmanager
def running_emulator(emulator: KubeEmulator | None = None) -> Iterator[EmulatorServer]:
    """``with running_emulator() as server: server.client.create(...)``."""
    with EmulatorServer(emulator) as server:
        yield server
