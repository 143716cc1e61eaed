"""What to do to an InferenceService's children: desired objects vs observed ones -> actions.

Pure. `kube.py` executes the actions; every reconcile pass rebuilds `desired` and plans again,
so a plan only has to move the world one step closer (a Delete is re-created next pass).

Comparison rule: the desired object is a *subset* of the observed one. The API server fills
defaults (`imagePullPolicy`, `protocol: TCP`, `terminationMessagePath`, Job selector labels,
...), others add labels and annotations; none of that is a difference. Dicts match key by key,
lists element-wise when their lengths are equal, `None` or an empty dict/list in the desired
state means "no opinion". Resource quantities compare by value ("1024Mi" == "1Gi").
What this cannot see: a key we set once and no longer desire (we keep no record of it), but
for the pod-template fields a builder sets only sometimes (_OPTIONAL_POD_FIELDS), which the
patch of a Deployment removes when the desired template lacks them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Union

# Top-level keys that are identity or the API server's, never the operator's to patch.
_NOT_OWNED = ("apiVersion", "kind", "metadata", "status")
# spec fields the API server refuses to change: a difference there means delete and re-create.
_IMMUTABLE_SPEC = {
    "Job": ("selector", "template", "completions", "completionMode", "podFailurePolicy"),
    "Deployment": ("selector",),
}
# Set by the Deployment builder only when the spec asks for them. Read as "no opinion" when
# absent, they would outlive their cause: init containers of adapters no longer served, mounting
# a volume the pod no longer has (which the API server refuses), or pods still pinned to nodes.
_OPTIONAL_POD_FIELDS = ("initContainers", "nodeSelector", "tolerations")
_PVC = "PersistentVolumeClaim"
_APPLY_ORDER = {_PVC: 0, "Job": 1, "Deployment": 2, "Service": 3}
_QUANTITY_MAPS = ("requests", "limits")  # their values are quantities
_QUANTITY_KEYS = ("sizeLimit", "storage")
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))([eE][+-]?[0-9]+)?"
                       r"(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_MULTIPLIERS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
                "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), None: 1,
                "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


@dataclass(frozen=True)
class Create:
    obj: dict[str, Any]


@dataclass(frozen=True)
class Patch:
    kind: str
    api_version: str
    namespace: str
    name: str
    patch: dict[str, Any]  # a JSON merge patch (RFC 7386): lists in it replace lists whole


@dataclass(frozen=True)
class Delete:
    kind: str
    api_version: str
    namespace: str
    name: str
    reason: str


@dataclass(frozen=True)
class Skip:
    """A difference the plan leaves alone on purpose (an immutable field of the shared model
    cache, an object of the same name owned by someone else): to be reported, not retried."""
    kind: str
    api_version: str
    namespace: str
    name: str
    reason: str


Action = Union[Create, Patch, Delete, Skip]
Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


def plan(desired: list[dict[str, Any]], observed: list[dict[str, Any]],
         owner_uid: str) -> list[Action]:
    """Deletes first, then creates and patches in dependency order (PVC, Job, Deployment,
    Service, anything else), then skips. Observed objects being deleted are waited for.
    Only objects owned by `owner_uid` (an ownerReference) are deleted, and never a PVC."""
    observed_by_key = {_key(obj): obj for obj in observed}
    desired_keys = {_key(obj, required=True) for obj in desired}
    deletes: list[Action] = []
    applies: list[Action] = []
    skips: list[Action] = []
    for obj in observed:
        if (_key(obj) not in desired_keys and _owned_by(obj, owner_uid)
                and not _terminating(obj) and obj.get("kind") != _PVC):
            deletes.append(_delete(obj, "no longer desired by the InferenceService"))
    for want in sorted(desired, key=lambda obj: _APPLY_ORDER.get(obj["kind"], 99)):
        for action in _plan_one(want, observed_by_key.get(_key(want)), owner_uid):
            (skips if isinstance(action, Skip) else
             deletes if isinstance(action, Delete) else applies).append(action)
    return deletes + applies + skips


def _plan_one(want: dict[str, Any], have: dict[str, Any] | None,
              owner_uid: str) -> list[Action]:
    if have is None:
        return [Create(want)]
    if _terminating(have):
        return []  # re-created by the pass after it is gone
    if _owned_by(want, owner_uid) and not _owned_by(have, owner_uid):
        return [_skip(want, "exists and is not owned by this InferenceService")]
    if want["kind"] == _PVC:
        return _plan_pvc(want, have)
    spec, have_spec = want.get("spec") or {}, have.get("spec") or {}
    for field in _IMMUTABLE_SPEC.get(want["kind"], ()):
        if not matches(spec.get(field), have_spec.get(field), field):
            reason = f"spec.{field} changed and cannot be updated on a {want['kind']}"
            if not _owned_by(have, owner_uid):  # someone else's: theirs to delete
                return [_skip(want, f"{reason}; not owned by this InferenceService")]
            return [_delete(have, f"{reason}; re-created next pass")]
    patch = _object_patch(want, have)
    if want["kind"] == "Deployment":
        _remove_optional_pod_fields(want, have, patch)
    return [_patch(want, patch)] if patch else []


def _remove_optional_pod_fields(want: dict[str, Any], have: dict[str, Any],
                                patch: dict[str, Any]) -> None:
    """Adds to `patch` a null for each of _OPTIONAL_POD_FIELDS the live pod template has and
    the desired one does not."""
    pod = ((want.get("spec") or {}).get("template") or {}).get("spec") or {}
    have_pod = ((have.get("spec") or {}).get("template") or {}).get("spec") or {}
    removed = {key: None for key in _OPTIONAL_POD_FIELDS if have_pod.get(key) and not pod.get(key)}
    if removed:
        patch.setdefault("spec", {}).setdefault("template", {}).setdefault(
            "spec", {}).update(removed)


def _plan_pvc(want: dict[str, Any], have: dict[str, Any]) -> list[Action]:
    """A PVC is the model cache, shared by every InferenceService of its source: never deleted.
    Only its storage request may change, and only upwards (volume expansion)."""
    actions: list[Action] = []
    spec = {**(want.get("spec") or {})}
    have_spec = have.get("spec") or {}
    wanted_size = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    have_size = ((have_spec.get("resources") or {}).get("requests") or {}).get("storage")
    spec.pop("resources", None)  # storage is the only resource a PVC has
    fixed = [f"spec.{k}" for k, v in spec.items() if not matches(v, have_spec.get(k), k)]
    if fixed:
        actions.append(_skip(want, f"{', '.join(fixed)} differ and cannot be changed on a "
                                   f"PersistentVolumeClaim; keeping the existing model cache"))
    patch = _object_patch({"metadata": want.get("metadata") or {}}, have)
    if wanted_size is not None and not matches(wanted_size, have_size, "storage"):
        if _grows(wanted_size, have_size):
            patch["spec"] = {"resources": {"requests": {"storage": wanted_size}}}
        else:
            actions.append(_skip(want, f"spec.resources.requests.storage {wanted_size} is "
                                       f"less than {have_size}; a volume cannot shrink"))
    if patch:
        actions.insert(0, _patch(want, patch))
    return actions


def _object_patch(want: dict[str, Any], have: dict[str, Any]) -> dict[str, Any]:
    """The merge patch of the fields the operator owns: its labels and annotations (its keys
    only) and every top-level field but identity and status (spec, data, ...)."""
    meta, have_meta = want.get("metadata") or {}, have.get("metadata") or {}
    patch: dict[str, Any] = {}
    meta_patch = {k: merge_patch(meta[k], have_meta.get(k), k)
                  for k in ("labels", "annotations") if not matches(meta.get(k), have_meta.get(k))}
    if meta_patch:
        patch["metadata"] = meta_patch
    for k, value in want.items():
        if k not in _NOT_OWNED and not matches(value, have.get(k), k):
            patch[k] = value if not isinstance(value, dict) else merge_patch(value, have.get(k), k)
    return patch


def matches(desired: Any, observed: Any, key: str = "", parent: str = "") -> bool:
    """Whether `desired` is a subset of `observed` (see the module docstring). `key` is the
    field name of both, `parent` that of the dict holding them (for quantities)."""
    if desired is None:
        return True
    if isinstance(desired, dict):
        observed = {} if observed is None else observed
        return isinstance(observed, dict) and all(
            matches(value, observed.get(k), k, key) for k, value in desired.items())
    if isinstance(desired, list):
        return (not desired or isinstance(observed, list) and len(observed) == len(desired)
                and all(matches(d, o, key, parent) for d, o in zip(desired, observed)))
    if isinstance(desired, bool) or isinstance(observed, bool):
        return desired is observed
    if desired == observed:
        return True
    if parent in _QUANTITY_MAPS or key in _QUANTITY_KEYS:
        value, observed_value = parse_quantity(desired), parse_quantity(observed)
        return value is not None and value == observed_value
    return False


def merge_patch(desired: dict[str, Any], observed: Any, key: str = "") -> dict[str, Any]:
    """The smallest merge patch after which `desired` matches `observed`: differing scalars
    and lists (whole) from `desired`, dicts recursed into."""
    observed = observed if isinstance(observed, dict) else {}
    patch: dict[str, Any] = {}
    for k, value in desired.items():
        if matches(value, observed.get(k), k, key):
            continue
        patch[k] = merge_patch(value, observed.get(k), k) if isinstance(value, dict) else value
    return patch


def parse_quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity ("100Gi", "500m", "1e3", 4) as a number; None when it is none."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Decimal(str(value))
    found = _QUANTITY.match(value) if isinstance(value, str) else None
    if found is None:
        return None
    number, exponent, suffix = found.groups()
    try:
        return Decimal(number + (exponent or "")) * _MULTIPLIERS[suffix]
    except InvalidOperation:
        return None


def _grows(wanted: Any, have: Any) -> bool:
    wanted_value, have_value = parse_quantity(wanted), parse_quantity(have)
    return wanted_value is not None and (have_value is None or wanted_value > have_value)


def _key(obj: dict[str, Any], required: bool = False) -> Key:
    meta = obj.get("metadata") or {}
    key = (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""),
           meta.get("name", ""))
    if required and not all(key):
        raise ValueError(f"a desired object needs apiVersion, kind, metadata.namespace and "
                         f"metadata.name; got {key}")
    return key


def _owned_by(obj: dict[str, Any], owner_uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid for ref in refs)


def _terminating(obj: dict[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _patch(obj: dict[str, Any], patch: dict[str, Any]) -> Patch:
    api_version, kind, namespace, name = _key(obj)
    return Patch(kind, api_version, namespace, name, patch)


def _delete(obj: dict[str, Any], reason: str) -> Delete:
    api_version, kind, namespace, name = _key(obj)
    return Delete(kind, api_version, namespace, name, reason)


def _skip(obj: dict[str, Any], reason: str) -> Skip:
    api_version, kind, namespace, name = _key(obj)
    return Skip(kind, api_version, namespace, name, reason)
