"""The operator's own Prometheus metrics (`infernetes_operator_` prefix), served on
`--metrics-port`: reconcile counts, errors and duration, and per-InferenceService state for the
operator dashboard (phase, desired vs ready replicas, download progress)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infernetes.operator.spec import InferenceServiceStatus, Phase


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        key = ["namespace", "name"]
        self.reconciles = Counter("infernetes_operator_reconciles", "Reconcile passes.",
                                  ["result"], registry=self.registry)
        self.reconcile_errors = Counter("infernetes_operator_reconcile_errors",
                                        "Reconcile passes that failed, by error kind.",
                                        ["error"], registry=self.registry)
        self.reconcile_duration = Histogram(
            "infernetes_operator_reconcile_duration_seconds", "Time of one reconcile pass.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        self.actions = Counter("infernetes_operator_actions", "Changes applied to children.",
                               ["action", "kind"], registry=self.registry)
        self.phase = Gauge("infernetes_operator_inferenceservice_phase",
                           "1 for the InferenceService's current phase, 0 for the others.",
                           key + ["phase"], registry=self.registry)
        self.desired_replicas = Gauge("infernetes_operator_inferenceservice_desired_replicas",
                                      "Replicas the InferenceService asks for.", key,
                                      registry=self.registry)
        self.ready_replicas = Gauge("infernetes_operator_inferenceservice_ready_replicas",
                                    "Replicas ready to serve.", key, registry=self.registry)
        self.download_bytes = Gauge("infernetes_operator_download_bytes",
                                    "Bytes of the model in the cache so far.", key,
                                    registry=self.registry)
        self.download_total_bytes = Gauge("infernetes_operator_download_total_bytes",
                                          "Size of the model being downloaded.", key,
                                          registry=self.registry)
        self.download_failures = Counter("infernetes_operator_download_failures",
                                         "Downloads that failed, by reason.", key + ["reason"],
                                         registry=self.registry)

    def observe(self, namespace: str, name: str, status: InferenceServiceStatus) -> None:
        for phase in Phase:
            self.phase.labels(namespace, name, phase.value).set(
                1 if status.phase == phase else 0)
        self.desired_replicas.labels(namespace, name).set(status.desired_replicas)
        self.ready_replicas.labels(namespace, name).set(status.ready_replicas)
        if status.download is not None:
            self.download_bytes.labels(namespace, name).set(status.download.bytes)
            if status.download.total_bytes is not None:
                self.download_total_bytes.labels(namespace, name).set(
                    status.download.total_bytes)

    def forget(self, namespace: str, name: str) -> None:
        """An InferenceService is gone: its series go too."""
        for phase in Phase:
            _remove(self.phase, namespace, name, phase.value)
        for gauge in (self.desired_replicas, self.ready_replicas, self.download_bytes,
                      self.download_total_bytes):
            _remove(gauge, namespace, name)


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
