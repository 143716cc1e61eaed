"""The alert and recording rules: valid for promtool, unit-tested (each alert fires and stays
quiet in manifests/prometheus/tests/alerts-test.yaml), shaped as operators expect, and reading
only metrics the runtime and operator export."""
from __future__ import annotations

import re
import subprocess

import yaml

from dashboard_queries import (
    ALERTS, RECORDING, RULE_TESTS, exported_sample_names, metric_names, rules)

RECORDING_NAME = re.compile(r"^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$")  # level:metric:operations


def _promtool(binaries, *args: str) -> str:
    result = subprocess.run([str(binaries.promtool), *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_both_rule_files(prometheus_binaries):
    out = _promtool(prometheus_binaries, "check", "rules", str(ALERTS), str(RECORDING))
    assert out.count("SUCCESS") == 2


def test_promtool_unit_tests_pass(prometheus_binaries):
    assert "SUCCESS" in _promtool(prometheus_binaries, "test", "rules", str(RULE_TESTS))


def test_every_alert_is_tested_firing_and_quiet():
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    for rule in rules(ALERTS):
        name = rule["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name} never fires in a test"
        assert any(not case.get("exp_alerts") for case in mine), f"{name} never stays quiet"


def test_alerts_carry_for_severity_and_text():
    names = [rule["alert"] for rule in rules(ALERTS)]
    assert len(names) == len(set(names))
    for rule in rules(ALERTS):
        assert re.fullmatch(r"Infernetes[A-Z]\w+", rule["alert"]), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{rule['alert']}: no `for`"
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_recording_rule_names_follow_level_metric_operations():
    names = [rule["record"] for rule in rules(RECORDING)]
    assert len(names) == len(set(names))
    for name in names:
        assert RECORDING_NAME.match(name), name
        level, metric, _ = name.split(":")
        assert metric.startswith("infernetes_") and not metric.endswith(("_total", "_bucket"))


def test_rules_read_only_exported_metrics():
    exported = exported_sample_names()
    for rule in rules(ALERTS) + rules(RECORDING):
        unknown = metric_names(rule["expr"]) - exported
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {sorted(unknown)}"
