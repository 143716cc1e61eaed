"""Kubernetes RBAC in a few lines, to run the operator against the emulator with exactly the
permissions the chart grants: a request path and method -> request attributes (verb, API group,
resource, subresource, namespace), and whether Roles/ClusterRoles allow it.

Follows the API server's request-info rules: GET on a collection is `list`, or `watch` with
`?watch=true`; discovery (`/api`, `/apis`, `/version`, ...) needs no RBAC (system:discovery);
a Role allows requests in its own namespace only, a ClusterRole everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str  # "pods/log" for a subresource
    namespace: str | None  # None: cluster-scoped, or across all namespaces


def request_attributes(method: str, path: str,
                       query: Mapping[str, str]) -> Attributes | None:
    """None for a non-resource request (discovery, /version)."""
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name, subresource = rest[0], (rest[1:2] or [None])[0], (rest[2:3] or [None])[0]
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}[method]
    full = f"{resource}/{subresource}" if subresource else resource
    return Attributes(verb, group, full, namespace)


def rule_allows(rule: dict[str, Any], attributes: Attributes) -> bool:
    return (attributes.group in rule["apiGroups"] or "*" in rule["apiGroups"]) and \
        (attributes.resource in rule["resources"] or "*" in rule["resources"]) and \
        (attributes.verb in rule["verbs"] or "*" in rule["verbs"])


def allows(role_rules: Mapping[str, list[dict[str, Any]]],
           cluster_rules: list[dict[str, Any]], attributes: Attributes) -> bool:
    """`role_rules`: namespace -> the rules of the Roles bound there."""
    rules = list(cluster_rules)
    if attributes.namespace is not None:
        rules += role_rules.get(attributes.namespace, [])
    return any(rule_allows(rule, attributes) for rule in rules)
