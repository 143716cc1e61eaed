"""The two images agree with what runs them, checked on the Dockerfiles' text (no Docker
engine here): the operator's builders (command, user, port, mounts, environment), the
default image names, the Helm chart, and the package's version."""
from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from infernetes import __version__
from infernetes.operator.builders import build_children
from infernetes.operator.builders.download_job import CACHE_MOUNT
from infernetes.operator.builders.pvc import MODEL_MOUNT
from infernetes.operator.builders.security import RUN_AS_GROUP, RUN_AS_USER
from infernetes.operator.builders.serve_args import RUNTIME_PORT
from infernetes.operator.config import (
    DEFAULT_OPERATOR_IMAGE, DEFAULT_RUNTIME_IMAGE, OperatorConfig)
from infernetes.operator.resource import InferenceService

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "runtime" / "Dockerfile"
OPERATOR = ROOT / "operator" / "Dockerfile"
CHART = ROOT / "charts" / "infernetes"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def final_stage(path: Path) -> list[Instruction]:
    """The instructions after the last FROM (what the image is), continuation lines joined
    and comment lines dropped, as Docker's parser does."""
    stages: list[list[Instruction]] = [[]]
    logical = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1]
            continue
        if logical.strip():
            keyword, _, value = logical.strip().partition(" ")
            if keyword.upper() == "FROM":
                stages.append([])
            stages[-1].append(Instruction(keyword.upper(), value.strip()))
        logical = ""
    return stages[-1]


def values(path: Path, keyword: str) -> list[str]:
    return [i.value for i in final_stage(path) if i.keyword == keyword]


def args_and_env(path: Path) -> dict[str, str]:
    """ARG defaults and ENV values of the final stage (KEY=VALUE forms)."""
    found = {}
    for instruction in final_stage(path):
        if instruction.keyword in ("ARG", "ENV"):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', instruction.value):
                found[key] = value.strip('"')
    return found


def runtime_pods() -> tuple[dict, dict]:
    """The runtime container of the Deployment and the download Job's container."""
    isvc = InferenceService.from_object({
        "metadata": {"name": "qwen", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": {"model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct"}}})
    children = {c["kind"]: c for c in build_children(isvc, OperatorConfig(), 10**9, True)}
    return children["Deployment"]["spec"]["template"], children["Job"]["spec"]["template"]


@pytest.mark.parametrize("dockerfile", [RUNTIME, OPERATOR], ids=["runtime", "operator"])
def test_entrypoint_user_and_version(dockerfile: Path) -> None:
    assert [json.loads(v) for v in values(dockerfile, "ENTRYPOINT")] == [["infernetes"]]
    # Numeric, so a pod's runAsNonRoot can verify it without reading /etc/passwd.
    assert values(dockerfile, "USER") == [f"{RUN_AS_USER}:{RUN_AS_GROUP}"]
    assert args_and_env(dockerfile)["VERSION"] == __version__
    assert args_and_env(dockerfile)["HOME"] == "/tmp"  # the only writable place in the pods


def test_runtime_image_runs_what_the_builders_ask_for() -> None:
    deployment_pod, job_pod = runtime_pods()
    [runtime] = deployment_pod["spec"]["containers"]
    [download] = job_pod["spec"]["containers"]
    entrypoint = json.loads(values(RUNTIME, "ENTRYPOINT")[0])
    assert runtime["command"] == download["command"] == entrypoint
    assert json.loads(values(RUNTIME, "CMD")[0]) == ["serve"] == runtime["args"][:1]
    assert download["args"][0] == "download"
    for pod in (deployment_pod, job_pod):
        assert pod["spec"]["securityContext"]["runAsUser"] == RUN_AS_USER
        assert pod["spec"]["securityContext"]["runAsGroup"] == RUN_AS_GROUP
    assert values(RUNTIME, "EXPOSE") == [str(RUNTIME_PORT)]
    assert [p["containerPort"] for p in runtime["ports"]] == [RUNTIME_PORT]
    env = args_and_env(RUNTIME)
    for container in (runtime, download):
        for var in container["env"]:
            if var["name"] in ("HOME", "INFERNETES_CACHE"):
                assert env[var["name"]] == var["value"], var["name"]


def test_runtime_image_has_the_mount_points_owned_by_the_pods_user() -> None:
    run = " ".join(values(RUNTIME, "RUN"))
    assert (MODEL_MOUNT, CACHE_MOUNT) == ("/models", "/cache")
    assert re.search(r"mkdir -p [^&]*/models", run) and re.search(r"mkdir -p [^&]*/cache", run)
    assert re.search(rf"chown {RUN_AS_USER}:{RUN_AS_GROUP} [^&]*/models", run)


def test_runtime_image_has_the_torch_ci_tests() -> None:
    pinned = (ROOT / "constraints" / "cpu.txt").read_text().split("==")[1].strip()
    assert args_and_env(RUNTIME)["TORCH_VERSION"] == pinned


def test_default_image_names_carry_the_package_version() -> None:
    assert DEFAULT_RUNTIME_IMAGE == f"ghcr.io/infernetes/runtime:{__version__}"
    assert DEFAULT_OPERATOR_IMAGE == f"ghcr.io/infernetes/operator:{__version__}"
    assert OperatorConfig().runtime_image == DEFAULT_RUNTIME_IMAGE


@pytest.mark.skipif(not (CHART / "values.yaml").exists(), reason="no Helm chart")
def test_the_charts_default_images_are_the_released_ones() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == __version__

    def image(spec: dict) -> str:
        return f"{spec['repository']}:{spec.get('tag') or chart['appVersion']}"

    assert image(chart_values["image"]) == DEFAULT_OPERATOR_IMAGE
    assert image(chart_values["runtime"]["image"]) == DEFAULT_RUNTIME_IMAGE


def test_the_operators_entry_points_import_no_torch() -> None:
    code = ("import infernetes.runtime.cli, infernetes.operator.main, "
            "infernetes.operator.handlers; import sys; assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def _operator_imports() -> set[str]:
    """Top-level third-party modules the operator's code imports (at any depth)."""
    names = set()
    for path in (ROOT / "operator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names
            and n not in ("__future__", "infernetes")}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_operator_image_installs_everything_the_operator_imports() -> None:
    run = " ".join(values(OPERATOR, "RUN"))
    requirements = " ".join(re.findall(r'pip install ((?:"[^"]+"\s*)+)', run))
    listed = {_normalized(re.match(r'"([A-Za-z0-9_.-]+)', r).group(1))
              for r in requirements.split()}
    distributions = importlib.metadata.packages_distributions()
    needed = {_normalized(distributions[module][0]) for module in _operator_imports()}
    assert needed <= listed, f"operator/Dockerfile does not install {needed - listed}"
    assert not {"torch", "transformers"} & listed
    assert "--no-deps" in run  # the package itself, without the runtime's dependencies


def _in_build_context(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parent
    folders decides; `!` lets it in."""
    parts = path.split("/")
    candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    included = True
    for negated, pattern in rules:
        if any(pattern.fullmatch(c) for c in candidates):
            included = negated
    return included


def _dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, line = line.startswith("!"), line.lstrip("!").strip("/")
        regex = re.escape(line).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rules.append((negated, re.compile(regex)))
    return rules


def test_the_build_context_holds_the_package_and_nothing_else() -> None:
    rules = _dockerignore_rules()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    package = [f for f in tracked if f.split("/")[0] in ("runtime", "kernels", "operator")
               and f.endswith(".py")]
    assert package
    for path in ["pyproject.toml", "setup.py", "__init__.py", "README.md", *package]:
        assert _in_build_context(path, rules), path
    for path in [".git/config", "tests/conftest.py", "runtime/__pycache__/cli.cpython-311.pyc",
                 "infernetes.egg-info/PKG-INFO", ".venv/bin/python", "charts/x/values.yaml",
                 "manifests/install.yaml", "benchmarks/results/a.json", ".hypothesis/x",
                 ".env", "operator/__pycache__/spec.cpython-311.pyc"]:
        assert not _in_build_context(path, rules), path
