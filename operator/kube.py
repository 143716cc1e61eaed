"""The only module that talks to the Kubernetes API server: a small async REST client.

It uses the credentials kopf logs in with (`kopf.login_with_service_account` in a pod, else the
kubeconfig), JSON merge patches (RFC 7386) for every update (the operator owns whole fields,
lists included, so a merge patch says exactly what it means), and the `/status` subresource for
status. Errors are `ApiError` with the HTTP status and the server's message.
"""
from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from infernetes.operator.spec import GROUP, PLURAL, VERSION

# kind -> (apiVersion, plural) of what the operator reads and writes.
RESOURCES: dict[str, tuple[str, str]] = {
    "InferenceService": (f"{GROUP}/{VERSION}", PLURAL),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "Service": ("v1", "services"),
    "Pod": ("v1", "pods"),
    "Event": ("v1", "events"),
    "Secret": ("v1", "secrets"),
    "Job": ("batch/v1", "jobs"),
    "Deployment": ("apps/v1", "deployments"),
}

_MERGE_PATCH = "application/merge-patch+json"
_SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Credentials:
    server: str
    token: str | None = None
    # In a pod: the projected service-account token, re-read on each request (it rotates).
    token_path: str | None = None
    ca_path: str | None = None
    ca_data: str | None = None  # PEM
    certificate_path: str | None = None
    private_key_path: str | None = None
    insecure: bool = False

    def bearer_token(self) -> str | None:
        if self.token_path:
            return Path(self.token_path).read_text().strip()
        return self.token


def connect_credentials(settings: Any) -> Credentials:
    """The pod's service account when running in a cluster, else the kubeconfig
    ($KUBECONFIG or ~/.kube/config, current context), read through kopf (`settings`: kopf's
    OperatorSettings, which its login functions take)."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
        "KUBERNETES_SERVICE_PORT", "443")
    if host and (_SERVICE_ACCOUNT / "token").is_file():
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        return Credentials(server, token_path=str(_SERVICE_ACCOUNT / "token"),
                           ca_path=str(_SERVICE_ACCOUNT / "ca.crt"))
    import kopf
    info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise RuntimeError("no Kubernetes credentials: not in a pod, and no kubeconfig")
    return credentials_from_kopf(info)


def credentials_from_kopf(info: Any) -> Credentials:
    """From a `kopf.ConnectionInfo`; inline certificate and key data go to private files
    (the TLS library reads client certificates from files only)."""
    return Credentials(
        server=info.server.rstrip("/"), token=info.token,
        ca_path=str(info.ca_path) if info.ca_path else None,
        ca_data=_pem(info.ca_data) if info.ca_data else None,
        certificate_path=str(info.certificate_path) if info.certificate_path
        else _private_file(info.certificate_data),
        private_key_path=str(info.private_key_path) if info.private_key_path
        else _private_file(info.private_key_data),
        insecure=bool(info.insecure))


def _pem(data: str | bytes) -> str:
    """kubeconfig's *-data fields are base64 of PEM."""
    raw = data.encode() if isinstance(data, str) else data
    return raw.decode() if raw.lstrip().startswith(b"-----") else base64.b64decode(raw).decode()


def _private_file(data: str | bytes | None) -> str | None:
    if not data:
        return None
    handle, path = tempfile.mkstemp(prefix="infernetes-kube-")  # mode 0600
    with os.fdopen(handle, "w") as file:
        file.write(_pem(data))
    return path


def resource_path(kind: str, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    api_version, plural = RESOURCES[kind]
    path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace is not None:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{quote(name)}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


class KubeClient:
    def __init__(self, credentials: Credentials):
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- objects ----------------------------------------------------------------------------

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", resource_path(kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None = None,
                   labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Objects of `kind` (in `namespace`, or everywhere when None) carrying `labels`."""
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))} \
            if labels else None
        body = await self._request("GET", resource_path(kind, namespace), query=query)
        items = body.get("items", [])
        api_version = RESOURCES[kind][0]
        for item in items:  # list items come without their kind
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
        # Filtered here too: a server that ignored the selector must not widen what we own.
        return [i for i in items if _has_labels(i, labels or {})]

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        namespace = obj["metadata"].get("namespace")
        return await self._request("POST", resource_path(obj["kind"], namespace), body=obj)

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any],
                    subresource: str | None = None) -> dict[str, Any]:
        return await self._request("PATCH", resource_path(kind, namespace, name, subresource),
                                   body=patch, content_type=_MERGE_PATCH)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Deletes with background propagation (dependents are garbage-collected); a missing
        object is no error."""
        try:
            await self._request("DELETE", resource_path(kind, namespace, name),
                                body={"kind": "DeleteOptions", "apiVersion": "v1",
                                      "propagationPolicy": "Background"})
        except ApiError as e:
            if e.status != 404:
                raise

    async def pod_log(self, namespace: str, name: str, container: str,
                      tail_lines: int = 20) -> str:
        query = {"container": container, "tailLines": str(tail_lines)}
        return await self._request("GET", resource_path("Pod", namespace, name, "log"),
                                   query=query, text=True)

    # -- transport --------------------------------------------------------------------------

    async def _request(self, method: str, path: str, *, body: Any = None,
                       query: dict[str, str] | None = None,
                       content_type: str = "application/json", text: bool = False) -> Any:
        session = self._open()
        url = self.credentials.server + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = self.credentials.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with session.request(method, url, json=body, headers=headers) as response:
            if response.status >= 400:
                raise ApiError(response.status, await _error_message(response))
            return await response.text() if text else await response.json(content_type=None)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl_context()),
                timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    def _ssl_context(self) -> ssl.SSLContext | bool:
        creds = self.credentials
        if not creds.server.startswith("https"):
            return False
        if creds.insecure:
            return False
        context = ssl.create_default_context(cafile=creds.ca_path, cadata=creds.ca_data)
        if creds.certificate_path and creds.private_key_path:
            context.load_cert_chain(creds.certificate_path, creds.private_key_path)
        return context


async def _error_message(response: aiohttp.ClientResponse) -> str:
    text = await response.text()
    try:
        return json.loads(text).get("message") or text
    except (ValueError, AttributeError):
        return text


def _has_labels(obj: dict[str, Any], labels: dict[str, str]) -> bool:
    actual = obj.get("metadata", {}).get("labels") or {}
    return all(actual.get(k) == v for k, v in labels.items())
