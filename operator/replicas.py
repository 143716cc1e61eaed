"""How many replicas an InferenceService should run: one rule, shared by the Deployment
builder, the status and the autoscaler, so they never disagree."""
from __future__ import annotations

from infernetes.operator.spec import InferenceServiceSpec


def desired_replicas(spec: InferenceServiceSpec) -> int:
    """spec.replicas, kept within [autoscaling.minReplicas, autoscaling.maxReplicas] when
    autoscaling is set (the scale subresource or a user may write any value to spec.replicas)."""
    if spec.autoscaling is None:
        return spec.replicas
    bounds = spec.autoscaling
    return min(max(spec.replicas, bounds.min_replicas), bounds.max_replicas)
