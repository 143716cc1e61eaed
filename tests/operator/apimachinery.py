"""The Kubernetes API server's rules for writing objects, as pure functions on object dicts.

`emulator.Emulator` stores and serves objects; these functions decide what a write turns an
object into: which fields the server owns, when `generation` grows, what a status subresource
keeps apart, and which writes are refused (409, 422).
"""
from __future__ import annotations

import copy
import datetime
import random
import string
import uuid
from typing import Any

import jsonpatch
import jsonpointer
import kmock

# Fields only the server writes: a client's values for them are ignored.
SERVER_FIELDS = ("uid", "creationTimestamp", "generation", "resourceVersion", "deletionTimestamp")
TYPE_FIELDS = ("apiVersion", "kind")


def api_error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    """An error kmock answers with as a Kubernetes `Status` of that code."""
    return kmock.KubernetesError(status=status, reason=reason, message=message)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; `target` is consumed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def patched(old: dict, patch: dict | list, *, replace: bool = False) -> dict:
    """`old` after a merge patch (dict) or a JSON patch (list), or replaced by `patch`; a patch
    that cannot apply (a failed `test` op, a missing path) is a 422, as on a real server."""
    try:
        if replace:
            new = copy.deepcopy(patch)
        elif isinstance(patch, list):
            new = jsonpatch.apply_patch(old, patch)  # a copy
        else:
            new = merge_patch(copy.deepcopy(old), patch)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
        raise api_error(422, "Invalid", f"the patch cannot be applied: {error}") from None
    if not isinstance(new, dict) or not isinstance(new.get("metadata") or {}, dict):
        raise api_error(422, "Invalid", "the result is not a Kubernetes object")
    return new


def created(body: Any, *, api_version: str, kind: str, namespace: str | None,
            drop_status: bool) -> dict:
    """A new object from a create request's body: the server's fields stamped (but for
    `resourceVersion`), `generateName` filled, `status` dropped if `drop_status`."""
    if not isinstance(body, dict):
        raise api_error(400, "BadRequest", "the body is not a JSON object")
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k not in SERVER_FIELDS}
    if not meta.get("name"):
        if not meta.get("generateName"):
            raise api_error(422, "Invalid", "metadata.name or metadata.generateName is required")
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        meta["name"] = meta["generateName"] + suffix
    meta.pop("namespace", None)
    meta.update({"namespace": namespace} if namespace else {})
    meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
    rest = {k: copy.deepcopy(v) for k, v in body.items() if k not in (*TYPE_FIELDS, "metadata")}
    if drop_status:
        rest.pop("status", None)
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, **rest}


def written(old: dict, requested: dict, *, subresource: str | None, status_subresource: bool,
            keep_status: bool) -> dict:
    """The object after a write that asks for `requested` (the whole object) over `old`.

    - A `resourceVersion` in `requested` other than the current one is a 409 (a stale write).
    - The server's fields, name, namespace, kind and apiVersion stay as they were.
    - A write to `/status` changes only the status; `keep_status` (a client's write where status
      is a subresource) changes all but the status.
    - `generation` grows by one when anything but metadata changes, the status excepted where
      it is a subresource.
    Returns `old` itself (equal, not a copy) when nothing changes.
    """
    sent_version = (requested.get("metadata") or {}).get("resourceVersion")
    if sent_version not in (None, old["metadata"]["resourceVersion"]):
        raise api_error(409, "Conflict", f"resourceVersion {sent_version} is not the latest")
    if subresource == "status":
        requested = {**old, "status": requested.get("status")}
    elif subresource is not None:
        raise api_error(404, "NotFound", f"the emulator cannot write {subresource!r}")
    elif keep_status:
        requested = {**requested, "status": old.get("status")}
    meta = {k: copy.deepcopy(v) for k, v in (requested.get("metadata") or {}).items()
            if k not in SERVER_FIELDS}
    meta.update({k: v for k, v in old["metadata"].items()
                 if k in SERVER_FIELDS or k in ("name", "namespace")})
    rest = {k: copy.deepcopy(v) for k, v in requested.items()
            if k not in (*TYPE_FIELDS, "metadata") and v is not None}
    new = {"apiVersion": old["apiVersion"], "kind": old["kind"], "metadata": meta, **rest}
    if new == old:
        return old
    ignored = {*TYPE_FIELDS, "metadata", *(["status"] if status_subresource else [])}
    if any(new.get(key) != old.get(key) for key in (new.keys() | old.keys()) - ignored):
        meta["generation"] = old["metadata"]["generation"] + 1
    return new


def selector_matches(selector: str, values: dict[str, str]) -> bool:
    """Equality-based label or field selectors (`a=b,c!=d,e,!f`); set-based ones
    (`a in (b, c)`) are not parsed."""
    for term in filter(None, (term.strip() for term in selector.split(","))):
        if "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            ok = values.get(key) != value
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            ok = values.get(key) == value
        else:
            ok = (term[1:].strip() not in values) if term.startswith("!") else term in values
        if not ok:
            return False
    return True
