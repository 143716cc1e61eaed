"""manifests/examples: each InferenceService is admitted by the CRD (schema and CEL), parses
as the operator reads it, builds valid children, and asks the runtime only for flags it has;
each Secret is a valid v1 Secret holding a placeholder, never a token."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infernetes.operator.builders import build_children
from infernetes.operator.config import OperatorConfig
from infernetes.operator.resource import InferenceService
from infernetes.operator.spec import GROUP, KIND, VERSION, parse_spec
from infernetes.runtime.cli_args import (
    add_compatibility_args, add_engine_args, check_compatibility_args, engine_config_from_args)
from infernetes.runtime.config import ConfigError
from infernetes.runtime.server.launch import add_server_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from crd_validation import validate  # noqa: E402
from manifest_validation import KUBERNETES_VERSION, assert_valid_manifest  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))
# Examples that need a runtime feature this version refuses at start: the flag, which the
# example's header must own up to. Remove an entry when the feature lands.
NEEDS_UNRELEASED: dict[str, str] = {}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def inference_services() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in FILES for doc in documents(path)
            if doc["kind"] == KIND]


SERVICES = inference_services()


def parse_serve(args: list[str]) -> argparse.Namespace:
    """With the parser `infernetes serve` has (runtime/cli.py builds it the same way)."""
    parser = argparse.ArgumentParser(prog="infernetes serve", exit_on_error=False)
    parser.add_argument("model", nargs="?")
    add_server_args(parser)
    add_engine_args(parser)
    add_compatibility_args(parser)
    parsed, unknown = parser.parse_known_args(args)
    assert unknown == [], f"flags the runtime does not know: {unknown}"
    return parsed


def test_the_examples_users_ask_for_first_are_there() -> None:
    assert {p.name for p in FILES} >= {
        "smollm2-cpu.yaml", "mistral-7b-instruct.yaml", "llama-3.1-8b-lora.yaml",
        "qwen2.5-72b-tp4.yaml", "deepseek-r1-distill-qwen-32b.yaml",
        "gated-model-with-token.yaml"}
    for path in FILES:
        assert path.read_text().startswith("# "), f"{path.name}: no comment header"
        assert {doc["kind"] for doc in documents(path)} <= {KIND, "Secret"}, path.name


@pytest.mark.parametrize("name,isvc", SERVICES, ids=[name for name, _ in SERVICES])
def test_inference_service_is_admitted_and_builds_valid_children(name, isvc) -> None:
    assert isvc["apiVersion"] == f"{GROUP}/{VERSION}"
    assert validate(isvc) == [], name
    parse_spec(isvc["spec"])
    obj = {**isvc, "metadata": {"namespace": "ml", "uid": "u", **isvc["metadata"]}}
    children = build_children(InferenceService.from_object(obj), OperatorConfig(), 10**10,
                              download_complete=True)
    assert {c["kind"] for c in children} >= {"Deployment", "Service"}
    for child in children:
        assert_valid_manifest(child)


@pytest.mark.parametrize("name,isvc", SERVICES, ids=[name for name, _ in SERVICES])
def test_runtime_accepts_the_flags(name, isvc) -> None:
    extra_args = isvc["spec"].get("engine", {}).get("extraArgs", [])
    check_compatibility_args(parse_serve(extra_args))
    obj = {**isvc, "metadata": {"namespace": "ml", **isvc["metadata"]}}
    [deployment] = [c for c in build_children(InferenceService.from_object(obj),
                                              OperatorConfig(), None, True)
                    if c["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "serve"
    parsed = parse_serve(container["args"][1:])
    flag = NEEDS_UNRELEASED.get(name)
    if flag is None:
        check_compatibility_args(parsed)
        return
    with pytest.raises(ConfigError, match=flag):
        check_compatibility_args(parsed)
    header = (EXAMPLES / name).read_text().split("\napiVersion:")[0]
    assert flag in header, f"{name}: the header must say the runtime refuses {flag}"


def test_reasoning_example_uses_a_parser_the_runtime_has() -> None:
    [isvc] = documents(EXAMPLES / "deepseek-r1-distill-qwen-32b.yaml")
    assert parse_serve(isvc["spec"]["engine"]["extraArgs"]).reasoning_parser == "deepseek_r1"


@pytest.mark.parametrize("file_name, tp", [("qwen2.5-72b-tp4.yaml", 4),
                                           ("deepseek-r1-distill-qwen-32b.yaml", 2)])
def test_tensor_parallel_examples_reach_the_runtime_with_shared_memory(file_name, tp) -> None:
    [isvc] = [d for d in documents(EXAMPLES / file_name) if d["kind"] == KIND]
    obj = {**isvc, "metadata": {"namespace": "ml", **isvc["metadata"]}}
    [deployment] = [c for c in build_children(InferenceService.from_object(obj),
                                              OperatorConfig(), None, True)
                    if c["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    parsed = parse_serve(container["args"][1:])
    config = engine_config_from_args(parsed, parsed.model)  # the runtime's own checks
    assert config.tensor_parallel_size == tp
    assert container["resources"]["limits"]["nvidia.com/gpu"] in (tp, str(tp))
    # The ranks' NCCL buffers live in /dev/shm: a memory-backed volume, not the node's 64 MiB.
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volume = next(v for v in pod["volumes"] if v["name"] == shm["name"])
    assert volume["emptyDir"]["medium"] == "Memory"


def test_lora_example_serves_its_adapters() -> None:
    [isvc] = documents(EXAMPLES / "llama-3.1-8b-lora.yaml")
    obj = {**isvc, "metadata": {"namespace": "ml", **isvc["metadata"]}}
    [deployment] = [c for c in build_children(InferenceService.from_object(obj),
                                              OperatorConfig(), None, True)
                    if c["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    parsed = parse_serve(pod["containers"][0]["args"][1:])
    assert parsed.enable_lora and parsed.max_loras == 2
    assert parsed.lora_modules == ["sql=/adapters/sql", "support=/adapters/support"]
    assert [init["args"][:2] for init in pod["initContainers"]] == [
        ["download", adapter["source"]] for adapter in isvc["spec"]["adapters"]]
    for init in pod["initContainers"]:  # the adapters are as gated as the model
        assert "HF_TOKEN" in {var["name"] for var in init["env"]}


def test_secrets_are_valid_placeholders_the_services_refer_to() -> None:
    secrets = [(path, doc) for path in FILES for doc in documents(path)
               if doc["kind"] == "Secret"]
    assert secrets
    for path, secret in secrets:
        kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
        for value in secret.get("stringData", {}).values():
            assert "REPLACE" in value and not re.search(r"hf_[A-Za-z0-9]{20,}", value)
        assert "data" not in secret, "a placeholder belongs in stringData, readable"
        refs = [doc["spec"]["model"].get("tokenSecretRef") for doc in documents(path)
                if doc["kind"] == KIND]
        assert {"name": secret["metadata"]["name"], "key": "token"} in refs
        assert "kubectl create secret" in path.read_text()
