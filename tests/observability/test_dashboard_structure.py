"""The Grafana dashboards as files: what Grafana needs to import them with any Prometheus data
source, variables that filter every query, and metric names that exist."""
from __future__ import annotations

import itertools
import re

import pytest

from dashboard_queries import (
    ALL, DASHBOARDS, exported_families, exported_sample_names, load_dashboard, metric_names,
    panels, selectors, substitute, targets)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UIDS = {"runtime": "infernetes-runtime", "operator": "infernetes-operator"}
FILTERS = {"runtime": ("model_name", "pod"), "operator": ("namespace", "name")}
# Per-InferenceService operator families; the reconcile loop's have no such labels.
PER_SERVICE = re.compile(r"infernetes_operator_(inferenceservice_|download_)")


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_identity_and_variables(name):
    board = load_dashboard(name)
    assert board["uid"] == UIDS[name]
    assert board["title"].startswith("Infernetes / ")
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for filter_name in FILTERS[name]:
        variable = variables[filter_name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        assert variable["includeAll"] and variable["allValue"] == ".*"
        assert variable["definition"] == variable["query"]["query"]
        assert re.fullmatch(rf"label_values\(.+, {filter_name}\)", variable["definition"])


def test_dashboard_uids_are_unique():
    uids = [load_dashboard(name)["uid"] for name in DASHBOARDS]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_queries_the_datasource_variable(name):
    board = load_dashboard(name)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel.get("description"), panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_panels_fit_the_grid_without_overlapping(name):
    boxes = []
    for panel in load_dashboard(name)["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        boxes.append((panel["title"], pos))
    for (a, p), (b, q) in itertools.combinations(boxes, 2):
        apart = (p["x"] + p["w"] <= q["x"] or q["x"] + q["w"] <= p["x"]
                 or p["y"] + p["h"] <= q["y"] or q["y"] + q["h"] <= p["y"])
        assert apart, f"{a!r} overlaps {b!r}"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_query_uses_known_variables_and_grafana_rate_windows(name):
    for target in targets(name):
        substitute(target.expr, ALL)  # raises on an unknown variable
        windows = set(re.findall(r"\[([^\]]+)\]", target.expr))
        assert windows <= {"$__rate_interval"}, f"{target}: fixed window {windows}"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_selector_filters_on_the_dashboard_variables(name):
    for target in targets(name):
        for metric, matchers in selectors(target.expr):
            if name == "operator" and not PER_SERVICE.match(metric):
                continue
            for label in FILTERS[name]:
                assert f'{label}=~"${label}"' in matchers, f"{target}: {metric} {matchers}"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboards_read_only_exported_metrics(name):
    exported = exported_sample_names()
    board = load_dashboard(name)
    exprs = [t.expr for t in targets(name)] + [
        v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    for expr in exprs:
        unknown = metric_names(expr) - exported
        assert not unknown, f"{expr}: {sorted(unknown)}"


@pytest.mark.parametrize("name, prefix", [("runtime", "infernetes_"),
                                          ("operator", "infernetes_operator_")])
def test_every_exported_family_has_a_panel(name, prefix):
    """A metric nobody looks at is a dashboard gap."""
    used = set().union(*(metric_names(t.expr) for t in targets(name)))
    missing = sorted(family for family, samples in exported_families().items()
                     if family.startswith(prefix) and not samples & used
                     and (name == "operator" or not family.startswith("infernetes_operator_")))
    assert not missing
