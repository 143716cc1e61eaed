"""A Kubernetes API server in memory, good enough to run the real kopf operator against.

kmock's `KubernetesEmulator` serves discovery and the verbs from a dict but lacks the API
machinery kopf relies on (no resourceVersion: kopf's finalizer patch fails forever). `Emulator`
keeps kmock's store, discovery and DSL, and takes over every write and read:

- writes follow the real server's rules (`apimachinery.written`): resourceVersion from one global
  counter, uid, creationTimestamp, generation, generateName, status subresources kept apart,
  409 on a stale resourceVersion, 422 on a failed JSON-patch `test`; PUT replaces;
- DELETE honours finalizers, then deletes dependents by `ownerReferences` (an instant GC);
- LIST carries kind, apiVersion and resourceVersion; WATCH resumes after a resourceVersion,
  ends after `timeoutSeconds` and drops no event; both apply equality-based label selectors
  and the `metadata.name`/`metadata.namespace` field selectors;
- `GET .../pods/{name}/log` answers with `pod_logs[(namespace, name)]`, honouring `tailLines`.
A test's reaction (`emulator['patch', 'v1/pods'] << 500`) still comes first, and then stands for a
write that failed: nothing is stored. The store methods (`find_object`, `create_object`, ...) are
synchronous and run on the emulator's loop; conftest's `Cluster` calls them from test threads.
"""
from __future__ import annotations

import asyncio
import bisect
import copy
import functools
import gzip
import importlib.resources
from typing import Any

import attrs
import kmock

from apimachinery import api_error, created, now, patched, selector_matches, written

# The resources the operator uses, by plural; a test names them by plural or "group/version/plural".
RESOURCES = {
    "inferenceservices": "infernetes.io/v1alpha1/inferenceservices",
    "persistentvolumeclaims": "v1/persistentvolumeclaims",
    "services": "v1/services",
    "pods": "v1/pods",
    "events": "v1/events",
    "secrets": "v1/secrets",
    "configmaps": "v1/configmaps",
    "jobs": "batch/v1/jobs",
    "deployments": "apps/v1/deployments",
}
INFERENCE_SERVICE = kmock.ResourceInfo(
    kind="InferenceService", singular="inferenceservice", namespaced=True, shortnames={"isvc"},
    subresources={"status", "scale"},
    verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"})


def as_resource(name: str | kmock.resource) -> kmock.resource:
    if isinstance(name, kmock.resource):
        return name
    return kmock.resource(RESOURCES.get(name, name))


@functools.cache
def builtin_resources() -> bytes:
    """kmock's bundled discovery documents of the built-in resources (a recent k3s)."""
    packed = importlib.resources.files("kmock._internal").joinpath("resources.json.gz")
    return gzip.decompress(packed.read_bytes())


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    # (namespace, pod name) -> the text its `log` subresource answers with.
    pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict)
    _last_version: int = attrs.field(default=0, init=False)
    # Every write in order, as (resourceVersion, resource, watch event): WATCH replays from it.
    _events: list[tuple[int, kmock.resource, dict]] = attrs.field(factory=list, init=False)
    # Set, and replaced by a fresh one, on each write: what watchers wait on.
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_data(builtin_resources())
        self.resources[RESOURCES["inferenceservices"]] = copy.deepcopy(INFERENCE_SERVICE)
        self.fallback[kmock.method.PUT] << self._serve_replace

    # HTTP: each handler maps a request onto the store.

    async def _handle(self, request: kmock.Request) -> Any:
        # Skip KubernetesEmulator._handle, which applies writes before any reaction is matched;
        # here the fallbacks below write, so a test's reaction can stand for a failed write.
        return await kmock.KubernetesScaffold._handle(self, request)

    async def _serve_create(self, request: kmock.Request) -> Any:
        body = self.create_object(request.resource, request.namespace, request.data,
                                  from_client=True)
        return kmock.Response(status=201, payload=body)

    async def _serve_update(self, request: kmock.Request) -> Any:
        return self.patch_object(request.resource, request.namespace, request.name, request.data,
                                 subresource=request.subresource)

    async def _serve_replace(self, request: kmock.Request) -> Any:
        if request.resource is None or request.name is None:
            raise kmock.KubernetesEndpointNotFoundError()
        return self.patch_object(request.resource, request.namespace, request.name, request.data,
                                 subresource=request.subresource, replace=True)

    async def _serve_delete(self, request: kmock.Request) -> Any:
        options = request.data if isinstance(request.data, dict) else {}
        policy = request.params.get("propagationPolicy", options.get("propagationPolicy"))
        return self.delete_object(request.resource, request.namespace, request.name,
                                  orphan=policy == "Orphan")

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        if request.subresource == "log" and request.resource == as_resource("pods"):
            return self._pod_log(request)
        obj = self.find_object(request.resource, request.namespace, request.name)
        if obj is None:
            raise kmock.KubernetesObjectNotFoundError()
        return obj

    async def _serve_list(self, request: kmock.Request) -> Any:
        info = self._info(request.resource)
        return {"apiVersion": self._api_version(request.resource), "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(self._last_version)},
                "items": [obj for obj in self.list_objects(request.resource)
                          if self._selects(request, obj)]}

    async def _serve_watch(self, request: kmock.Request) -> Any:
        self._info(request.resource)  # a 404 for an unknown resource, before the stream starts
        yield b""  # start the response now, even if no event comes
        since = request.params.get("resourceVersion", "")
        if since.isdigit() and since != "0":
            cursor = bisect.bisect_right(self._events, int(since), key=lambda event: event[0])
        else:  # from the current state, as the real server does for "" and "0"
            cursor = len(self._events)
            for obj in self.list_objects(request.resource):
                if self._selects(request, obj):
                    yield {"type": "ADDED", "object": obj}
        timeout = request.params.get("timeoutSeconds")
        deadline = None if timeout is None else asyncio.get_running_loop().time() + float(timeout)
        while True:
            while cursor < len(self._events):
                _, resource, event = self._events[cursor]
                cursor += 1
                if resource == request.resource and self._selects(request, event["object"]):
                    yield event
            changed = self._changed  # taken with no await since the last look at the log
            try:
                async with asyncio.timeout_at(deadline):
                    await changed.wait()
            except TimeoutError:
                return

    def _selects(self, request: kmock.Request, obj: dict) -> bool:
        meta = obj["metadata"]
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta.get("namespace", "")}
        return ((request.namespace is None or meta.get("namespace") == request.namespace)
                and (request.name is None or meta["name"] == request.name)
                and selector_matches(request.params.get("labelSelector", ""),
                                     meta.get("labels") or {})
                and selector_matches(request.params.get("fieldSelector", ""), fields))

    def _pod_log(self, request: kmock.Request) -> bytes:
        key = (request.namespace, request.name)
        if key not in self.pod_logs and self.find_object("pods", *key) is None:
            raise kmock.KubernetesObjectNotFoundError()
        lines = self.pod_logs.get(key, "").splitlines(keepends=True)
        if "tailLines" in request.params:
            lines = lines[max(0, len(lines) - int(request.params["tailLines"])):]
        return "".join(lines).encode()

    # The store: synchronous, to run on the emulator's event loop; it hands out copies.

    def find_object(self, resource: str | kmock.resource, namespace: str | None,
                    name: str) -> dict | None:
        key = self._key(as_resource(resource), namespace, name)
        return copy.deepcopy(self._objects[key].raw) if self._exists(key) else None

    def list_objects(self, resource: str | kmock.resource,
                     namespace: str | None = None) -> list[dict]:
        resource = as_resource(resource)
        self._info(resource)
        return [copy.deepcopy(obj.raw) for (res, ns, _), obj in self._objects.items()
                if res == resource and not obj.deleted and namespace in (None, ns)]

    def resource_of(self, api_version: str, kind: str) -> kmock.resource:
        for resource in self.resources:
            if self._api_version(resource) == api_version and self.resources[resource].kind == kind:
                return resource
        raise api_error(404, "NotFound", f"no resource serves {api_version} {kind}")

    def create_object(self, resource: str | kmock.resource, namespace: str | None, body: dict,
                      *, from_client: bool = False) -> dict:
        """`from_client`: a client's POST, which cannot set the status where it is a subresource
        (a test can: it stands for a controller)."""
        resource = as_resource(resource)
        info = self._info(resource)
        if info.namespaced:
            namespace = namespace or (body.get("metadata") or {}).get("namespace") or "default"
        obj = created(body, api_version=self._api_version(resource), kind=info.kind,
                      namespace=namespace if info.namespaced else None,
                      drop_status=from_client and "status" in info.subresources)
        key = self._key(resource, namespace, obj["metadata"]["name"])
        if self._exists(key):
            raise api_error(409, "AlreadyExists", f"{resource.plural} {key[2]!r} already exists")
        return self._commit(key, obj, "ADDED")

    def patch_object(self, resource: str | kmock.resource, namespace: str | None, name: str,
                     patch: dict | list, *, subresource: str | None = None,
                     replace: bool = False, with_status: bool = False) -> dict:
        """A merge patch (dict), JSON patch (list), or with `replace` the whole object.
        `with_status`: write the status too where it is a subresource (as a test standing for
        a controller can, and a client cannot)."""
        resource = as_resource(resource)
        status_subresource = "status" in self._info(resource).subresources
        key = self._key(resource, namespace, name)
        if not self._exists(key):
            raise kmock.KubernetesObjectNotFoundError()
        old = self._objects[key].raw
        new = written(old, patched(old, patch, replace=replace), subresource=subresource,
                      status_subresource=status_subresource,
                      keep_status=status_subresource and not with_status)
        if new is old:
            return copy.deepcopy(old)  # no new resourceVersion, no event
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._remove(key, new)
        return self._commit(key, new, "MODIFIED")

    def delete_object(self, resource: str | kmock.resource, namespace: str | None, name: str,
                      *, orphan: bool = False) -> dict:
        """Marks an object with finalizers as being deleted, or else removes it and then (unless
        `orphan`) its dependents: a garbage collector that acts at once."""
        key = self._key(as_resource(resource), namespace, name)
        if not self._exists(key):
            raise kmock.KubernetesObjectNotFoundError()
        obj = copy.deepcopy(self._objects[key].raw)
        meta = obj["metadata"]
        if not meta.get("finalizers"):
            return self._remove(key, obj, orphan=orphan)
        if meta.get("deletionTimestamp"):
            return obj
        meta.update(deletionTimestamp=now(), generation=meta["generation"] + 1)
        return self._commit(key, obj, "MODIFIED")

    def _remove(self, key: tuple, obj: dict, *, orphan: bool = False) -> dict:
        obj = self._commit(key, obj, "DELETED")
        self._objects[key].delete()  # kmock's soft deletion: the history stays for assertions
        if not orphan:
            live = {o.raw["metadata"]["uid"] for o in self._objects.values() if not o.deleted}
            for (resource, namespace, name), dependent in list(self._objects.items()):
                owners = [] if dependent.deleted else \
                    dependent.raw["metadata"].get("ownerReferences") or []
                if owners and not any(owner.get("uid") in live for owner in owners):
                    self.delete_object(resource, namespace, name)
        return obj

    def _commit(self, key: tuple, obj: dict, event_type: str) -> dict:
        self._last_version += 1
        obj["metadata"]["resourceVersion"] = str(self._last_version)
        if key in self._objects:
            self._objects[key].create(obj)  # a new version in kmock's history of the object
        else:
            self._objects[key] = obj
        event = {"type": event_type, "object": copy.deepcopy(obj)}
        self._events.append((self._last_version, key[0], event))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return copy.deepcopy(obj)

    def _info(self, resource: kmock.resource | None) -> kmock.ResourceInfo:
        if resource is None or resource not in self.resources:
            raise kmock.KubernetesResourceNotFoundError()
        return self.resources[resource]

    def _key(self, resource: kmock.resource, namespace: str | None, name: str) -> tuple:
        return resource, namespace if self._info(resource).namespaced else None, name

    def _exists(self, key: tuple) -> bool:
        return key in self._objects and not self._objects[key].deleted

    @staticmethod
    def _api_version(resource: kmock.resource) -> str:
        return f"{resource.group}/{resource.version}" if resource.group else resource.version
