"""`infernetes operator` as a process: flags checked, the operator reconciles against the
emulator, serves /healthz and its Prometheus metrics, and stops cleanly on SIGTERM."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crd_validation import apply_defaults, crd_schema
from infernetes.operator import naming
from infernetes.runtime.cli import main
from k8s_harness import wait_for

SOURCE = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


@pytest.mark.parametrize("argv, message", [
    (["operator"], "give --namespace NAMESPACE (repeatable) or --all-namespaces"),
    (["operator", "-A", "--resync-seconds", "0"], "--resync-seconds must be positive"),
])
def test_bad_flags_are_named(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_operator_process_reconciles_and_reports(k8s, tmp_path):
    metrics_port, liveness_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "infernetes.runtime.cli", "operator", "--all-namespaces",
         "--metrics-port", str(metrics_port), "--liveness-port", str(liveness_port),
         "--resync-seconds", "0.5", "--runtime-image", "example.com/runtime:cli"],
        env={**os.environ, "KUBECONFIG": k8s.kubeconfig_path},
        stdout=open(tmp_path / "operator.log", "w"), stderr=subprocess.STDOUT)
    try:
        obj = {"apiVersion": "infernetes.io/v1alpha1", "kind": "InferenceService",
               "metadata": {"name": "cli", "namespace": "default"},
               "spec": {"model": {"source": SOURCE}}}
        k8s.create(apply_defaults(obj, crd_schema()))
        job = wait_for(lambda: k8s.get("jobs", "default", naming.download_job_name("cli",
                                                                                  SOURCE)),
                       timeout=30)
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == \
            "example.com/runtime:cli"
        assert wait_for(lambda: fetch(f"http://127.0.0.1:{liveness_port}/healthz")[0] == 200,
                        timeout=20)
        def scrape() -> dict:
            text = fetch(f"http://127.0.0.1:{metrics_port}/metrics")[1]
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples}
        # The Job exists once a pass applied it; the pass is counted when it ends.
        samples = wait_for(lambda: (s := scrape()).get(
            ("infernetes_operator_reconciles_total", (("result", "ok"),)), 0) >= 1 and s)
        assert samples[("infernetes_operator_inferenceservice_phase",
                        (("name", "cli"), ("namespace", "default"), ("phase", "Pending")))] == 1
        assert ("infernetes_operator_reconcile_duration_seconds_count", ()) in samples
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
    assert code == 0, (tmp_path / "operator.log").read_text()[-3000:]
