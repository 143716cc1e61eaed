"""An InferenceService as the operator works with it: identity, typed spec, last status."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infernetes.operator.spec import GROUP, KIND, VERSION, InferenceServiceSpec, parse_spec


@dataclass(frozen=True)
class InferenceService:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: InferenceServiceSpec
    status: dict[str, Any] = field(default_factory=dict)  # as last written, raw

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> InferenceService:
        """Raises pydantic.ValidationError when the spec does not fit the schema (an object
        written before the CRD was installed, or by a client that skipped validation)."""
        meta = obj["metadata"]
        return cls(meta["name"], meta["namespace"], meta.get("uid", ""),
                   meta.get("generation", 1), parse_spec(obj.get("spec") or {}),
                   obj.get("status") or {})

    @property
    def served_name(self) -> str:
        return self.spec.model.served_name or self.name

    @property
    def url(self) -> str:
        """The in-cluster OpenAI base URL (the Service listens on port 80)."""
        return f"http://{self.name}.{self.namespace}.svc.cluster.local/v1"

    def owner_reference(self) -> dict[str, Any]:
        """Makes a child go with this InferenceService (garbage collection)."""
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": self.name,
                "uid": self.uid, "controller": True, "blockOwnerDeletion": True}
