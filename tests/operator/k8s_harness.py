"""What the operator's tests use: a running emulator (`Cluster`, also the `k8s` fixture), kopf in
a thread (`kopf_runner`), and `wait_for`.

The emulator runs on an event loop in a thread of its own, so tests stay synchronous, and kopf
in a third thread: on exit, kopf cancels the tasks of its loop that it did not create.
(Not in conftest.py: pytest imports every conftest.py without a package as the module
`conftest`, each replacing the one before, so `from conftest import ...` is not reliable.)
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import kopf
from kopf.testing import KopfRunner

from emulator import Emulator

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10) -> T:
    """Polls `predicate` every 0.05 s until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            name = getattr(predicate, "__name__", predicate)
            raise TimeoutError(f"{name}: false for {timeout} s")
        time.sleep(0.05)
    return result


class Cluster:
    """A running `Emulator` and what a test needs of it. Objects are plain dicts (copies);
    `plural` is a key of `emulator.RESOURCES` ("jobs") or "group/version/plural". Every write
    stamps a new resourceVersion and sends a watch event, so kopf sees it like any change."""

    def __init__(self, directory: Path):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="k8s-emulator",
                                        daemon=True)
        self._thread.start()
        try:
            self.emulator, self._runner, port = self._run(self._start())
        except BaseException:
            self._stop_loop()
            raise
        self.url = f"http://127.0.0.1:{port}"
        self.kubeconfig_path = str(directory / "kubeconfig")
        Path(self.kubeconfig_path).write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
            "contexts": [{"name": "emulator", "context": {
                "cluster": "emulator", "user": "emulator", "namespace": "default"}}],
        }))

    async def _start(self) -> tuple[Emulator, aiohttp.web.BaseRunner, int]:
        emulator = Emulator()
        await emulator.__aenter__()  # a kmock handler renders errors as responses only when entered
        # handler_cancellation: a watch whose client left ends now, not at the next event.
        runner = aiohttp.web.ServerRunner(aiohttp.web.Server(emulator, handler_cancellation=True),
                                          shutdown_timeout=1)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return emulator, runner, runner.addresses[0][1]

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self.emulator.__aexit__(None, None, None)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async def call() -> T:
            return fn(*args, **kwargs)
        return self._run(call())

    def close(self) -> None:
        try:
            self._run(self._stop())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def pod_logs(self) -> dict[tuple[str, str], str]:
        """(namespace, pod name) -> the text `GET .../pods/{name}/log` answers with."""
        return self.emulator.pod_logs

    @property
    def server_errors(self) -> list[Exception]:
        """Exceptions the emulator answered with a 5xx: bugs in the emulator or its use."""
        return [error for error in self.emulator.errors
                if getattr(error, "status", 500) >= 500]

    def get(self, plural: str, namespace: str | None, name: str) -> dict | None:
        return self._call(self.emulator.find_object, plural, namespace, name)

    def list(self, plural: str, namespace: str | None = None) -> list[dict]:
        return self._call(self.emulator.list_objects, plural, namespace)

    def create(self, obj: dict) -> dict:
        """Creates `obj` (status included: the test stands for a controller) from its
        apiVersion and kind."""
        resource = self._call(self.emulator.resource_of, obj["apiVersion"], obj["kind"])
        namespace = obj.get("metadata", {}).get("namespace")
        return self._call(self.emulator.create_object, resource, namespace, obj)

    def apply(self, obj: dict) -> dict:
        """Creates `obj`, or merge-patches it into the existing one, status included."""
        meta = obj["metadata"]
        resource = self._call(self.emulator.resource_of, obj["apiVersion"], obj["kind"])
        if self._call(self.emulator.find_object, resource, meta.get("namespace"), meta["name"]):
            return self._call(self.emulator.patch_object, resource, meta.get("namespace"),
                              meta["name"], obj, with_status=True)
        return self.create(obj)

    def patch(self, plural: str, namespace: str | None, name: str, patch: dict | list) -> dict:
        """A client's patch: merge (dict) or JSON (list); leaves a status subresource alone."""
        return self._call(self.emulator.patch_object, plural, namespace, name, patch)

    def patch_status(self, plural: str, namespace: str | None, name: str, status: dict) -> dict:
        """Merge-patches the status, as a controller would (a Job's completion, a Deployment's
        availability)."""
        return self._call(self.emulator.patch_object, plural, namespace, name,
                          {"status": status}, subresource="status")

    def delete(self, plural: str, namespace: str | None, name: str) -> dict:
        """Deletes as the API does: an object with finalizers only gets a deletionTimestamp."""
        return self._call(self.emulator.delete_object, plural, namespace, name)

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        """An HTTP request to the emulator -> (status, JSON body, or text where not JSON)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()


def fast_settings() -> kopf.OperatorSettings:
    """kopf's settings for tests: as shipped, but reconnecting sooner."""
    settings = kopf.OperatorSettings()
    settings.watching.reconnect_backoff = 0.05
    return settings


class OperatorRunner(KopfRunner):
    """A KopfRunner that puts logging back on exit: `kopf run` sets the root logger to DEBUG
    with a handler on the runner's captured output, and silences the `asyncio` logger."""

    def __enter__(self) -> OperatorRunner:
        root, aio = logging.getLogger(), logging.getLogger("asyncio")
        self._logging = (root.level, root.handlers[:], aio.propagate, aio.handlers[:])
        return super().__enter__()

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return super().__exit__(*exc_info)
        finally:
            root, aio = logging.getLogger(), logging.getLogger("asyncio")
            level, root.handlers[:], aio.propagate, aio.handlers[:] = self._logging
            root.setLevel(level)


def kopf_runner(*targets: str, settings: kopf.OperatorSettings | None = None) -> OperatorRunner:
    """`kopf run --standalone -A --verbose TARGETS` in a thread, as a context manager; after it,
    `runner.output` holds kopf's log. Needs the `k8s` fixture, whose kubeconfig kopf logs in with.

    TARGETS are files, or `-m module`. The handlers go to a fresh registry, so that each run has
    them once; for that, a `-m` module is imported anew (dropped from `sys.modules` first).
    Cluster-wide (`-A`), as the emulator cannot list namespaces."""
    for flag, target in zip(targets, targets[1:]):
        if flag in ("-m", "--module"):
            sys.modules.pop(target, None)
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login_to_emulator(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)  # reads $KUBECONFIG when called

    return OperatorRunner(["run", "--standalone", "-A", "--verbose", *targets],
                          registry=registry, settings=settings or fast_settings(), timeout=30)
