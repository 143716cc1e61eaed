"""`infernetes crd` and `infernetes operator`: the operator's commands in the one CLI."""
from __future__ import annotations

import argparse
import sys

from infernetes.operator.config import DEFAULT_RUNTIME_IMAGE


def add_operator_commands(commands) -> None:
    commands.add_parser("crd", help="print the InferenceService CustomResourceDefinition",
                        description="Print the InferenceService CRD (YAML), generated from "
                                    "the operator's typed spec: `infernetes crd | kubectl "
                                    "apply -f -`.")
    operator = commands.add_parser(
        "operator", help="run the Kubernetes operator",
        description="Watch InferenceService resources and reconcile each into a model cache, "
                    "a download Job, a Deployment of the runtime and a Service.")
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NAMESPACE",
                       help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="watch every namespace (needs cluster-wide RBAC)")
    operator.add_argument("--runtime-image", default=DEFAULT_RUNTIME_IMAGE,
                          help="image of the runtime pods and download Jobs")
    operator.add_argument("--image-pull-policy", default="IfNotPresent",
                          choices=["Always", "IfNotPresent", "Never"])
    operator.add_argument("--resync-seconds", type=float, default=30.0,
                          help="reconcile every InferenceService at least this often")
    operator.add_argument("--drain-timeout", type=int, default=30,
                          help="seconds runtime pods get to finish requests on shutdown")
    operator.add_argument("--liveness-port", type=int, default=8081,
                          help="port of the liveness endpoint /healthz (0: off)")
    operator.add_argument("--metrics-port", type=int, default=8080,
                          help="port of the operator's Prometheus /metrics (0: off)")


def run_operator_command(args: argparse.Namespace) -> int:
    if args.command == "crd":
        from infernetes.operator.crd import crd_yaml
        sys.stdout.write(crd_yaml())
        return 0
    from infernetes.operator.main import run_operator
    return run_operator(args)
