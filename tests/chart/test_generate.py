"""charts/generate.py and what it derives: the chart's copies of the CRD, dashboards and rule
files, values.schema.json and manifests/install.yaml, all fresh; the copies as the templates
ship them (for any number of dashboards and rule files); install.yaml as `kubectl apply`
takes it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chart_render import CHART, REPO, find, generate, one, render, validate_object

INSTALL = REPO / "manifests" / "install.yaml"
# What `kubectl apply` (client-side) can store in its last-applied annotation.
ANNOTATIONS_LIMIT = 256 * 1024
DASHBOARD = {"title": "Placeholder", "uid": "placeholder", "panels": [
    {"type": "timeseries", "title": "p95 <TTFT> & more",
     "targets": [{"expr": 'histogram_quantile(0.95, sum by (le) (rate(x_bucket{a="{{b}}"}[5m])))'}]}]}
RULES = {"groups": [{"name": "infernetes.placeholder", "rules": [
    {"alert": "Placeholder", "expr": "up == 0", "for": "5m",
     "annotations": {"summary": "{{ $labels.pod }} is down"}}]}]}
MORE_RULES = {"groups": [{"name": "infernetes.more", "rules": [
    {"record": "job:x:rate5m", "expr": "sum(rate(x[5m]))"}]}]}
PROMTOOL_TEST = {"rule_files": ["rules.yaml"], "tests": []}


def run_generator(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(repo / "charts" / "generate.py"), *args],
                          capture_output=True, text=True)


def test_generated_files_are_fresh():
    result = run_generator(REPO, "--check")
    assert result.returncode == 0, result.stderr


@pytest.fixture
def scratch_repo(tmp_path: Path) -> Path:
    """The chart, its tooling and the CRD in a scratch repository, with placeholder dashboards
    and rule files (the real ones live in manifests/, owned by others)."""
    shutil.copytree(REPO / "charts", tmp_path / "charts",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "crds", tmp_path / "crds")
    grafana, prometheus = tmp_path / "manifests" / "grafana", tmp_path / "manifests" / "prometheus"
    grafana.mkdir(parents=True)
    prometheus.mkdir()
    (grafana / "infernetes_Overview.json").write_text(json.dumps(DASHBOARD, indent=2) + "\n")
    (grafana / "runtime.json").write_text(json.dumps({**DASHBOARD, "uid": "rt"}))
    (prometheus / "alerts.yaml").write_text(yaml.safe_dump(RULES))
    (prometheus / "recording.yaml").write_text(yaml.safe_dump(MORE_RULES))
    (prometheus / "alerts_test.yaml").write_text(yaml.safe_dump(PROMTOOL_TEST))
    (prometheus / "prometheus.yml").write_text("scrape_configs: []\n")  # not *.yaml
    return tmp_path


def test_generator_copies_sources_and_check_notices_changes(scratch_repo: Path):
    chart = scratch_repo / "charts" / "infernetes"
    assert run_generator(scratch_repo, "--check").returncode == 1  # the new sources
    assert run_generator(scratch_repo).returncode == 0
    assert run_generator(scratch_repo, "--check").returncode == 0
    assert sorted(p.name for p in (chart / "files" / "dashboards").iterdir()) == [
        "infernetes_Overview.json", "runtime.json"]
    # The promtool test is no rule file, so it is not copied.
    assert sorted(p.name for p in (chart / "files" / "rules").iterdir()) == [
        "alerts.yaml", "recording.yaml"]
    (scratch_repo / "manifests" / "grafana" / "runtime.json").unlink()
    (scratch_repo / "crds" / "inferenceservices.infernetes.io.yaml").write_text("# changed\n")
    result = run_generator(scratch_repo, "--check")
    assert result.returncode == 1
    for stale in ("charts/infernetes/files/dashboards/runtime.json",
                  "charts/infernetes/crds/inferenceservices.infernetes.io.yaml",
                  "manifests/install.yaml"):
        assert f"stale: {stale}" in result.stderr, result.stderr
    assert run_generator(scratch_repo).returncode == 0
    assert not (chart / "files" / "dashboards" / "runtime.json").exists()


def test_templates_ship_dashboards_and_rules_as_they_are(scratch_repo: Path):
    assert run_generator(scratch_repo).returncode == 0
    chart = scratch_repo / "charts" / "infernetes"
    objects = render({"monitoring": {"prometheusRule": {"enabled": True}},
                      "grafana": {"dashboards": {"folder": "LLM"}}}, chart=chart)
    for obj in objects:
        validate_object(obj)
    assert one(objects, "PrometheusRule")["spec"]["groups"] == RULES["groups"] + MORE_RULES[
        "groups"]
    maps = {m["metadata"]["name"]: m for m in find(objects, "ConfigMap")}
    assert sorted(maps) == ["infernetes-dashboard-infernetes-overview",
                            "infernetes-dashboard-runtime"]
    overview = maps["infernetes-dashboard-infernetes-overview"]
    assert overview["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert overview["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    assert json.loads(overview["data"]["infernetes_Overview.json"]) == DASHBOARD


def test_chart_ships_every_dashboard_and_rule_file_of_the_repository():
    """Whatever manifests/grafana and manifests/prometheus hold now (maybe nothing)."""
    objects = render({"monitoring": {"prometheusRule": {"enabled": True}}})
    dashboards = sorted((REPO / "manifests" / "grafana").glob("*.json"))
    maps = {name: json.loads(text) for m in find(objects, "ConfigMap")
            for name, text in m["data"].items()}
    assert maps == {path.name: json.loads(path.read_text()) for path in dashboards}
    rule_files = [path for path in sorted((REPO / "manifests" / "prometheus").glob("*.yaml"))
                  if generate.is_rule_file(path.read_text())]
    groups = [g for path in rule_files for g in yaml.safe_load(path.read_text())["groups"]]
    rules = find(objects, "PrometheusRule")
    assert (rules[0]["spec"]["groups"] if rules else []) == groups
    assert not find(render({"grafana": {"dashboards": {"enabled": False}}}), "ConfigMap")


def install_objects() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(INSTALL.read_text()) if doc]


def test_install_manifest_is_a_fresh_render_of_the_defaults():
    expected = generate.expected_files()[generate.INSTALL_MANIFEST]
    assert INSTALL.read_text() == expected, "run `python charts/generate.py`"
    objects = install_objects()
    rendered = render(include_crds=True)
    assert objects[1:] == rendered


def test_install_manifest_applies_as_is():
    objects = install_objects()
    namespace = objects[0]
    assert (namespace["kind"], namespace["metadata"]["name"]) == ("Namespace", "infernetes-system")
    assert objects[1]["kind"] == "CustomResourceDefinition"  # before anything that uses it
    assert objects[1] == yaml.safe_load(
        (REPO / "crds" / "inferenceservices.infernetes.io.yaml").read_text())
    for obj in objects:
        validate_object(obj)
        assert len(json.dumps(obj)) < ANNOTATIONS_LIMIT, f"{obj['kind']} too big to apply"
        if obj["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole",
                               "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "infernetes-system", obj["metadata"]
    kinds = [obj["kind"] for obj in objects]
    assert kinds.count("Deployment") == 1 and "Role" in kinds and "ClusterRole" not in kinds


def test_chart_crd_is_the_generated_one():
    from infernetes.operator.crd import crd_yaml
    chart_crd = (CHART / "crds" / "inferenceservices.infernetes.io.yaml").read_text()
    assert chart_crd == (REPO / "crds" / "inferenceservices.infernetes.io.yaml").read_text()
    assert yaml.safe_load(chart_crd) == yaml.safe_load(crd_yaml())
