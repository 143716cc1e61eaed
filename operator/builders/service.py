"""The Service in front of the runtime replicas: port 80 -> the pods' `http` port (8000)."""
from __future__ import annotations

from typing import Any

from infernetes.operator import naming
from infernetes.operator.builders.probes import PORT_NAME
from infernetes.operator.config import OperatorConfig
from infernetes.operator.resource import InferenceService

SERVICE_PORT = 80  # InferenceService.url has no port


def build_service(isvc: InferenceService, config: OperatorConfig) -> dict[str, Any]:
    """spec.clusterIP is immutable and filled in by the API server: leave it out of any
    comparison with the live object."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": naming.service_name(isvc.name), "namespace": isvc.namespace,
                     "labels": naming.common_labels(isvc.name, naming.COMPONENT_RUNTIME),
                     "ownerReferences": [isvc.owner_reference()]},
        "spec": {
            "type": "ClusterIP",
            "selector": naming.runtime_selector(isvc.name),
            "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME,
                       "protocol": "TCP"}],
        },
    }
