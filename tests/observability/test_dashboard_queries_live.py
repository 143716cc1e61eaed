"""Every dashboard query, alert and recording rule evaluated by a real Prometheus that scraped a
live runtime under streaming traffic and the operator's metrics endpoint (observed_stack.py)."""
from __future__ import annotations

import httpx
import pytest

from dashboard_queries import (
    ALERTS, ALL, DASHBOARDS, RECORDING, families, load_dashboard, metric_names, rules,
    substitute, targets)
from observed_stack import SERVED_MODEL_NAME
from prometheus_server import PrometheusError, finite

# Panels whose counters may not move in the test (they exist, so their rate is 0, not absent).
MAY_STAY_ZERO = {"Queue-full rejections", "Preemptions"}


def test_traffic_ran_and_both_targets_are_up(observed):
    assert set(observed.statuses) <= {200, 503} and observed.statuses.count(200) >= 20
    up = {s["metric"]["job"]: s["value"][1] for s in observed.prometheus.query("up")}
    assert up == {"infernetes-runtime": "1", "infernetes-operator": "1"}


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_query_returns_data(observed, name):
    """With every variable at All: no error, at least one series with a finite value, and
    traffic visible in the runtime's rates and percentiles."""
    problems = []
    for target in targets(name):
        try:
            result = observed.prometheus.query(substitute(target.expr, ALL))
        except PrometheusError as e:
            problems.append(f"{target}: {e}")
            continue
        numbers = finite(result)
        if not numbers:
            problems.append(f"{target}: no finite value in {result}")
        elif ("rate(" in target.expr and target.panel not in MAY_STAY_ZERO
              and not any(v > 0 for v in numbers)):
            problems.append(f"{target}: traffic ran but all values are 0: {result}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name, selected, absent", [
    ("runtime", {"model_name": SERVED_MODEL_NAME}, {"model_name": "no-such-model"}),
    ("operator", {"namespace": "ml", "name": "qwen|llama|broken"},
     {"namespace": "no-such-namespace"}),
])
def test_variables_filter_every_query(observed, name, selected, absent):
    """Picking a value keeps the data; picking one that does not exist empties every query
    that the variable applies to (a query that ignores it would still show data)."""
    for target in targets(name):
        variables = set(selected) | set(absent)
        if not any(f"${v}" in target.expr for v in variables):
            continue  # the operator's reconcile-loop panels are not per InferenceService
        picked = observed.prometheus.query(substitute(target.expr, {**ALL, **selected}))
        assert finite(picked), f"{target} with {selected}"
        gone = observed.prometheus.query(substitute(target.expr, {**ALL, **absent}))
        assert gone == [], f"{target} with {absent}: {gone}"


@pytest.mark.parametrize("name, expected", [
    ("runtime", {"model_name": [SERVED_MODEL_NAME], "pod": []}),  # no pod label outside k8s
    ("operator", {"namespace": ["ml"], "name": ["broken", "llama", "qwen"]}),
])
def test_template_variables_list_their_values(observed, name, expected):
    """label_values(METRIC{...}, LABEL), asked the way Grafana asks it."""
    for variable in load_dashboard(name)["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = substitute(variable["definition"], ALL)
        selector, label = query.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        found = observed.prometheus.api(f"label/{label}/values", **{"match[]": selector})
        assert sorted(found) == expected[variable["name"]], variable["name"]


def test_dashboards_read_metrics_the_live_endpoints_serve(observed):
    served = set()
    for url in (observed.runtime.url, observed.operator_url):
        served |= set().union(*families(httpx.get(f"{url}/metrics").text).values())
    for name in DASHBOARDS:
        for target in targets(name):
            assert metric_names(target.expr) <= served, str(target)


def test_every_rule_loaded_and_healthy(observed):
    loaded = {rule["name"]: rule for group in observed.prometheus.api("rules")["groups"]
              for rule in group["rules"]}
    expected = {r["alert"] for r in rules(ALERTS)} | {r["record"] for r in rules(RECORDING)}
    assert set(loaded) == expected
    broken = {name: rule.get("lastError") for name, rule in loaded.items()
              if rule["health"] != "ok"}
    assert not broken


def test_every_rule_expression_evaluates(observed):
    for rule in rules(ALERTS) + rules(RECORDING):
        observed.prometheus.query(rule["expr"])  # raises PrometheusError on an error


def test_every_recording_rule_records_series(observed):
    empty = [rule["record"] for rule in rules(RECORDING)
             if not observed.prometheus.query(rule["record"])]
    assert not empty


def test_operator_alerts_go_pending_on_real_operator_metrics(observed):
    """The observed InferenceService `broken` is Failed with download failures, `llama` is
    downloading, `qwen` is ready, and reconciles fail now and then. Pending after seconds,
    since every alert waits minutes (`for`) before firing."""
    active = {(a["labels"]["alertname"], a["labels"].get("name") or a["labels"].get("error"))
              for a in observed.prometheus.api("alerts")["alerts"]}
    assert {("InfernetesInferenceServiceFailed", "broken"),
            ("InfernetesModelDownloadFailing", "broken"),
            ("InfernetesReplicasNotReady", "broken"),
            ("InfernetesOperatorReconcileErrors", "ApiError")} <= active
    assert ("InfernetesReplicasNotReady", "llama") not in active  # downloading
    assert not {name for name, _ in active} & {
        "InfernetesRequestQueueBuildingUp", "InfernetesKVCacheNearlyFull",
        "InfernetesTimeToFirstTokenHigh"}
