"""`infernetes operator`: run the kopf operator with our settings, metrics and liveness."""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace

logger = logging.getLogger(__name__)


def run_operator(args: argparse.Namespace) -> int:
    import kopf
    from prometheus_client import start_http_server

    import infernetes.operator.handlers  # noqa: F401  (registers the handlers)
    from infernetes.operator.config import OperatorConfig
    from infernetes.operator.metrics import OperatorMetrics

    if args.resync_seconds <= 0:
        raise ValueError(f"--resync-seconds must be positive, got {args.resync_seconds}")
    if not args.all_namespaces and not args.namespace:
        raise ValueError("give --namespace NAMESPACE (repeatable) or --all-namespaces")
    # Flags win; the settings without a flag come from INFERNETES_OPERATOR_* variables.
    config = replace(OperatorConfig.from_env(), runtime_image=args.runtime_image,
                     image_pull_policy=args.image_pull_policy,
                     drain_timeout_seconds=args.drain_timeout,
                     resync_seconds=args.resync_seconds)
    metrics = OperatorMetrics()
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=metrics.registry)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    logger.info("operator: watching %s; runtime image %s",
                "all namespaces" if args.all_namespaces else ", ".join(args.namespace),
                config.runtime_image)
    kopf.run(standalone=True, clusterwide=args.all_namespaces,
             namespaces=args.namespace, liveness_endpoint=liveness,
             memo=kopf.Memo(config=config, metrics=metrics,
                            namespaces=None if args.all_namespaces else args.namespace))
    return 0
