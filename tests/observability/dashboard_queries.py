"""The dashboards' and rule files' PromQL, as tests need it: every panel target, the
expression with Grafana's variables replaced, the metric names it reads, and the sample names
a /metrics page exposes."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "manifests" / "grafana"
PROMETHEUS = REPO / "manifests" / "prometheus"
DASHBOARDS = {"runtime": GRAFANA / "infernetes-runtime.json",
              "operator": GRAFANA / "infernetes-operator.json"}
ALERTS = PROMETHEUS / "infernetes-alerts.yaml"
RECORDING = PROMETHEUS / "infernetes-recording.yaml"
RULE_TESTS = PROMETHEUS / "tests" / "alerts-test.yaml"

# What Grafana puts in for the variables when "All" is picked; $__rate_interval spans the
# whole test run, so traffic seen by any scrape is inside every rate() window.
ALL = {"model_name": ".*", "pod": ".*", "namespace": ".*", "name": ".*",
       "__rate_interval": "1m"}

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
# A metric name in PromQL: not part of a longer name and not a recording rule (those have
# colons); infernetes_ names only, so functions, label names and keywords never match.
_METRIC = re.compile(r"(?<![\w:])(infernetes_\w+)(?![\w:])")
_SELECTOR = re.compile(r"(?<![\w:])(infernetes_\w+)\s*(\{[^}]*\})?")


@dataclass(frozen=True)
class Target:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def load_dashboard(name: str) -> dict:
    return json.loads(DASHBOARDS[name].read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included; rows themselves are left out."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def targets(name: str) -> list[Target]:
    return [Target(name, panel["title"], target["refId"], target["expr"])
            for panel in panels(load_dashboard(name)) for target in panel["targets"]]


def substitute(expr: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return variables[name]
    return _VARIABLE.sub(replace, expr)


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, its {matchers} or "") for each series selector."""
    return [(m.group(1), m.group(2) or "") for m in _SELECTOR.finditer(expr)]


def families(exposition: str) -> dict[str, set[str]]:
    """Family name -> every sample name a /metrics page can carry for it, by type: a counter
    `x` is sampled as `x_total`, a histogram as `x_bucket`/`x_sum`/`x_count`. Families with no
    children yet (labelled, never touched) count too, from their TYPE line."""
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}
    found = {}
    for family in text_string_to_metric_families(exposition):
        names = {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        found[family.name] = names | {sample.name for sample in family.samples}
    # The text format writes the _created samples of unlabelled counters and histograms as a
    # gauge family of their own: they belong to their parent.
    for name in [n for n in found if n.endswith("_created") and n[:-8] in found]:
        found[name[:-8]] |= found.pop(name)
    return found


def exported_families() -> dict[str, set[str]]:
    """The families of the runtime's /metrics page (the bytes Metrics.render() serves) and of
    the operator's (its registry, as start_http_server serves it)."""
    from prometheus_client import generate_latest

    from infernetes.operator.metrics import OperatorMetrics
    from infernetes.runtime.server.metrics import Metrics
    runtime = Metrics("any-model").render().decode()
    operator = generate_latest(OperatorMetrics().registry).decode()
    return families(runtime) | families(operator)


def exported_sample_names() -> set[str]:
    return set().union(*exported_families().values())


def rules(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]
