"""The operator's pure builders: spec -> PVC, Job, Deployment, Service. No cluster."""
from __future__ import annotations

import argparse
import math
from typing import Any

import pytest

from infernetes.operator import naming
from infernetes.operator.builders import (
    build_cache_pvc, build_children, build_deployment, build_download_job, build_service,
    desired_replicas, needs_download, serve_args, spec_hash, startup_budget_seconds)
from infernetes.operator.builders.adapters import adapter_dir
from infernetes.operator.config import OperatorConfig
from infernetes.operator.resource import InferenceService
from infernetes.runtime.cli_args import (
    add_compatibility_args, add_engine_args, engine_config_from_args)
from infernetes.runtime.download.failures import EXIT_CODES, DownloadFailure
from infernetes.runtime.server.adapters import parse_lora_module
from infernetes.runtime.server.launch import add_server_args
from manifest_validation import assert_valid_manifest

CONFIG = OperatorConfig()
GiB = 2**30
HF = "hf://Qwen/Qwen2.5-7B-Instruct@main"
SPECS: dict[str, dict[str, Any]] = {
    "minimal-gpu": {"model": {"source": HF}},
    "cpu": {"model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "resources": {"gpus": 0}},
    "tp4": {"model": {"source": HF, "servedName": "qwen2.5-7b",
                      "tokenSecretRef": {"name": "hf-token", "key": "token"}},
            "resources": {"gpus": 4, "memory": "64Gi", "cpu": "8",
                          "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                           "effect": "NoSchedule"}]},
            "engine": {"maxModelLen": 8192, "maxNumSeqs": 64, "dtype": "bfloat16",
                       "enablePrefixCaching": False,
                       "extraArgs": ["--max-num-batched-tokens", "4096"]},
            "apiKeySecretRef": {"name": "llm-key", "key": "key"},
            "cache": {"storageClassName": "fast-rwx", "size": "200Gi",
                      "accessMode": "ReadWriteMany"}},
    "pvc": {"model": {"source": "pvc://models/llama/3b"}},
    "autoscaling": {"model": {"source": HF}, "replicas": 10,
                    "autoscaling": {"minReplicas": 2, "maxReplicas": 4}},
    # Every way to place an adapter: downloaded (one named like a Hub repo), on the model's
    # claim, two on another claim.
    "adapters": {"model": {"source": "pvc://models/llama/3b",
                           "tokenSecretRef": {"name": "hf-token", "key": "token"}},
                 "adapters": [{"name": "sql", "source": "hf://org/sql-lora@v2"},
                              {"name": "chat", "source": "pvc://models/adapters/chat"},
                              {"name": "org/support", "source": "hf://org/support-lora"},
                              {"name": "a", "source": "pvc://loras/a"},
                              {"name": "b", "source": "pvc://loras/team/b"}],
                 "engine": {"maxLoraRank": 64}},
}


def isvc_of(spec: dict[str, Any], name: str = "qwen") -> InferenceService:
    return InferenceService.from_object({"metadata": {"name": name, "namespace": "ml",
                                                      "uid": "0b1e-uid", "generation": 3},
                                         "spec": spec})


def with_spec(base: str, **changes: Any) -> InferenceService:
    return isvc_of({**SPECS[base], **changes})


def runtime_container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def assert_mounts_resolve(pod: dict[str, Any]) -> None:
    """What the API server checks and kubernetes-validate does not: every mount names a volume
    of the pod, and no container mounts two things at one path."""
    volumes = [volume["name"] for volume in pod["volumes"]]
    assert len(volumes) == len(set(volumes)), volumes
    for container in pod["containers"] + pod.get("initContainers", []):
        paths = [mount["mountPath"] for mount in container["volumeMounts"]]
        assert len(paths) == len(set(paths)), paths
        assert {mount["name"] for mount in container["volumeMounts"]} <= set(volumes)


def parse_serve(args: list[str]) -> argparse.Namespace:
    """Parses with the parser `infernetes serve` has (runtime/cli.py builds it the same way)."""
    assert args[0] == "serve"
    parser = argparse.ArgumentParser(prog="infernetes serve", exit_on_error=False)
    parser.add_argument("model", nargs="?")
    add_server_args(parser)
    add_engine_args(parser)
    add_compatibility_args(parser)
    parsed, unknown = parser.parse_known_args(args[1:])
    assert unknown == [], f"flags the runtime does not know: {unknown}"
    return parsed


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_every_built_object_validates_against_kubernetes_1_33(spec_name: str) -> None:
    children = build_children(isvc_of(SPECS[spec_name]), CONFIG, 15 * 10**9,
                              download_complete=True)
    assert children, spec_name
    for obj in children:
        assert_valid_manifest(obj)
        if obj["kind"] in ("Deployment", "Job"):
            assert_mounts_resolve(obj["spec"]["template"]["spec"])


class TestBuildChildren:
    def test_hf_source_gets_cache_job_service_then_deployment(self) -> None:
        isvc = isvc_of(SPECS["minimal-gpu"])
        before = [obj["kind"] for obj in build_children(isvc, CONFIG, None, False)]
        after = [obj["kind"] for obj in build_children(isvc, CONFIG, None, True)]
        assert before == ["PersistentVolumeClaim", "Job", "Service"]
        assert after == before + ["Deployment"]

    def test_pvc_source_needs_no_download(self) -> None:
        isvc = isvc_of(SPECS["pvc"])
        assert not needs_download(isvc.spec) and needs_download(isvc_of(SPECS["cpu"]).spec)
        kinds = [obj["kind"] for obj in build_children(isvc, CONFIG, None, False)]
        assert kinds == ["Service", "Deployment"]
        with pytest.raises(ValueError, match="spec.model.source"):
            build_download_job(isvc, CONFIG)

    def test_owner_references_on_all_but_the_cache(self) -> None:
        isvc = isvc_of(SPECS["minimal-gpu"])
        for obj in build_children(isvc, CONFIG, None, True):
            owned = obj["metadata"].get("ownerReferences")
            if obj["kind"] == "PersistentVolumeClaim":
                assert owned is None
            else:
                assert owned == [isvc.owner_reference()] and owned[0]["uid"] == "0b1e-uid"


class TestCachePvc:
    def test_keyed_by_source_and_shared_across_services(self) -> None:
        pvc = build_cache_pvc(isvc_of(SPECS["minimal-gpu"], name="a"), CONFIG)
        other = build_cache_pvc(isvc_of(SPECS["minimal-gpu"], name="b"), CONFIG)
        assert pvc == other
        assert pvc["metadata"]["name"] == naming.cache_claim_name(HF)
        assert pvc["metadata"]["labels"][naming.LABEL_SOURCE_HASH] == naming.source_hash(HF)
        assert pvc["metadata"]["annotations"] == {naming.ANNOTATION_SOURCE: HF}
        assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"],
                               "resources": {"requests": {"storage": "100Gi"}}}

    def test_size_access_mode_and_storage_class(self) -> None:
        spec = build_cache_pvc(isvc_of(SPECS["tp4"]), CONFIG)["spec"]
        assert spec == {"accessModes": ["ReadWriteMany"], "storageClassName": "fast-rwx",
                        "resources": {"requests": {"storage": "200Gi"}}}

    def test_no_cache_for_pvc_sources(self) -> None:
        with pytest.raises(ValueError, match="spec.model.source"):
            build_cache_pvc(isvc_of(SPECS["pvc"]), CONFIG)


class TestDownloadJob:
    def test_runs_infernetes_download_into_the_cache(self) -> None:
        job = build_download_job(isvc_of(SPECS["minimal-gpu"]), OperatorConfig(
            runtime_image="reg/rt:1", download_backoff_limit=4))
        assert job["metadata"]["name"] == naming.download_job_name("qwen", HF)
        pod = job["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["image"] == "reg/rt:1"
        assert container["command"] + container["args"] == [
            "infernetes", "download", HF, "/cache/model", "--progress-interval", "5"]
        assert {"name": "cache", "mountPath": "/cache"} in container["volumeMounts"]
        assert pod["volumes"][0]["persistentVolumeClaim"] == {
            "claimName": naming.cache_claim_name(HF)}
        assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 4
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert container["resources"]["limits"] == {"memory": "2Gi"}
        assert "HF_TOKEN" not in {var["name"] for var in container["env"]}

    def test_fails_at_once_on_permanent_reasons_only(self) -> None:
        rules = build_download_job(isvc_of(SPECS["minimal-gpu"]), CONFIG
                                   )["spec"]["podFailurePolicy"]["rules"]
        fail_job = [rule for rule in rules if rule["action"] == "FailJob"]
        assert fail_job[0]["onExitCodes"]["values"] == sorted(
            code for reason, code in EXIT_CODES.items()
            if reason is not DownloadFailure.NetworkError)
        assert EXIT_CODES[DownloadFailure.NetworkError] not in fail_job[0]["onExitCodes"]["values"]
        assert {"action": "Ignore", "onPodConditions": [
            {"type": "DisruptionTarget", "status": "True"}]} in rules

    def test_token_image_and_writable_cache(self) -> None:
        job = build_download_job(with_spec("tp4", image="my/image:2"), CONFIG)
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == "my/image:2"
        assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "hf-token", "key": "token"}}} in container["env"]
        assert pod["securityContext"]["fsGroup"] == 1000
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert labels.items() >= naming.common_labels("qwen", naming.COMPONENT_DOWNLOAD).items()


class TestServeArgs:
    def test_minimal_gpu_flags_parse_with_the_runtime_parser(self) -> None:
        args = serve_args(isvc_of(SPECS["minimal-gpu"]), CONFIG, "/models/model")
        parsed = parse_serve(args)
        assert (parsed.model, parsed.host, parsed.port) == ("/models/model", "0.0.0.0", 8000)
        assert parsed.served_model_name == "qwen" and parsed.device == "cuda"
        assert parsed.drain_timeout == CONFIG.drain_timeout_seconds
        assert parsed.tensor_parallel_size == 1 and parsed.max_model_len is None
        config = engine_config_from_args(parsed, parsed.model)  # the runtime's own checks
        assert config.scheduler.max_num_seqs == 256 and config.cache.enable_prefix_caching

    def test_cpu_runs_on_cpu(self) -> None:
        parsed = parse_serve(serve_args(isvc_of(SPECS["cpu"]), CONFIG, "/models/model"))
        assert parsed.device == "cpu" and parsed.tensor_parallel_size == 1

    def test_every_engine_field_reaches_the_runtime(self) -> None:
        args = serve_args(isvc_of(SPECS["tp4"]), CONFIG, "/models/model")
        parsed = parse_serve(args)
        assert parsed.served_model_name == "qwen2.5-7b" and parsed.dtype == "bfloat16"
        assert parsed.tensor_parallel_size == 4 and parsed.max_model_len == 8192
        assert parsed.max_num_seqs == 64 and parsed.enable_prefix_caching is False
        assert parsed.max_num_batched_tokens == 4096
        assert args[-2:] == ["--max-num-batched-tokens", "4096"]  # extraArgs come last

    def test_adapters_reach_the_runtime_as_lora_modules(self) -> None:
        parsed = parse_serve(serve_args(isvc_of(SPECS["adapters"]), CONFIG, "/models"))
        assert parsed.enable_lora and parsed.max_loras == 5 and parsed.max_lora_rank == 64
        assert parsed.lora_modules == [
            "sql=/adapters/sql", "chat=/adapter-claims/models/adapters/chat",
            f"org/support=/adapters/{adapter_dir('org/support')}",
            "a=/adapter-claims/loras/a", "b=/adapter-claims/loras/team/b"]
        modules = [parse_lora_module(text) for text in parsed.lora_modules]
        assert [m.name for m in modules] == ["sql", "chat", "org/support", "a", "b"]
        lora = engine_config_from_args(parsed, parsed.model).lora  # the runtime's own checks
        assert (lora.max_loras, lora.max_lora_rank, lora.max_cpu_loras) == (5, 64, None)

    def test_no_adapters_no_lora(self) -> None:
        parsed = parse_serve(serve_args(isvc_of(SPECS["minimal-gpu"]), CONFIG, "/models/m"))
        assert not parsed.enable_lora and parsed.lora_modules == []
        assert engine_config_from_args(parsed, parsed.model).lora is None
        no_adapters = with_spec("minimal-gpu", engine={"maxLoraRank": 64})
        assert "--max-lora-rank" not in serve_args(no_adapters, CONFIG, "/models/m")

    def test_slots_capped_every_adapter_kept_in_cpu_memory(self) -> None:
        adapters = [{"name": f"a{i}", "source": f"hf://org/a{i}"} for i in range(20)]
        parsed = parse_serve(serve_args(with_spec("minimal-gpu", adapters=adapters), CONFIG,
                                        "/models/m"))
        assert len(parsed.lora_modules) == 20 and parsed.max_lora_rank == 16  # the default
        lora = engine_config_from_args(parsed, parsed.model).lora
        assert (lora.max_loras, lora.max_cpu_loras) == (8, 20)

    def test_extra_args_override_the_adapter_flags(self) -> None:
        isvc = with_spec("adapters", engine={"extraArgs": ["--max-loras", "2"]})
        assert parse_serve(serve_args(isvc, CONFIG, "/models")).max_loras == 2

    @pytest.mark.parametrize("extra", [["--port", "9000"], ["--host=127.0.0.1"]])
    def test_extra_args_cannot_move_the_port(self, extra: list[str]) -> None:
        isvc = with_spec("minimal-gpu", engine={"extraArgs": extra})
        with pytest.raises(ValueError, match="spec.engine.extraArgs"):
            serve_args(isvc, CONFIG, "/models/model")


class TestProbes:
    @pytest.mark.parametrize("model_bytes, gpus, budget", [
        (15 * 10**9, 1, 120 + 144),         # 7B bf16 at 100 MiB/s
        (15 * 10**9, 0, 120 + 358),         # the same on CPU at 40 MiB/s
        (270 * 2**20, 0, 120 + 7),          # SmolLM2-135M on CPU
        (0, 1, 120),
        (None, 1, 1800), (None, 0, 1800),   # unknown size
        (2 * 10**12, 8, 7200),              # capped at 2 h
    ])
    def test_startup_budget_formula(self, model_bytes: int | None, gpus: int,
                                    budget: int) -> None:
        assert startup_budget_seconds(model_bytes, gpus) == budget

    def test_startup_probe_allows_the_budget(self) -> None:
        thresholds = []
        for size in (GiB, 16 * GiB, 140 * GiB):
            probe = runtime_container(build_deployment(isvc_of(SPECS["minimal-gpu"]), CONFIG,
                                                       size))["startupProbe"]
            budget = startup_budget_seconds(size, 1)
            assert probe["periodSeconds"] * probe["failureThreshold"] >= budget
            assert probe["failureThreshold"] == math.ceil(budget / 10)
            thresholds.append(probe["failureThreshold"])
        assert thresholds == sorted(thresholds) and len(set(thresholds)) == 3

    def test_readiness_and_liveness_on_health(self) -> None:
        container = runtime_container(build_deployment(isvc_of(SPECS["cpu"]), CONFIG, None))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
        assert container["readinessProbe"]["periodSeconds"] == 5
        liveness = container["livenessProbe"]
        assert (liveness["periodSeconds"], liveness["timeoutSeconds"],
                liveness["failureThreshold"]) == (10, 5, 6)


class TestDeployment:
    def test_pods_serve_the_cached_model_read_only(self) -> None:
        deployment = build_deployment(isvc_of(SPECS["minimal-gpu"]), CONFIG, None)
        pod = deployment["spec"]["template"]["spec"]
        container = runtime_container(deployment)
        assert container["command"] == ["infernetes"]
        assert parse_serve(container["args"]).model == "/models/model"
        assert {"name": "model", "mountPath": "/models", "readOnly": True} in \
            container["volumeMounts"]
        assert pod["volumes"][0]["persistentVolumeClaim"] == {
            "claimName": naming.cache_claim_name(HF), "readOnly": True}
        assert container["resources"] == {"requests": {"nvidia.com/gpu": "1"},
                                          "limits": {"nvidia.com/gpu": "1"}}
        assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]

    def test_pvc_source_mounts_the_claim_path(self) -> None:
        deployment = build_deployment(isvc_of(SPECS["pvc"]), CONFIG, None)
        container = runtime_container(deployment)
        assert {"name": "model", "mountPath": "/models", "readOnly": True,
                "subPath": "llama/3b"} in container["volumeMounts"]
        assert deployment["spec"]["template"]["spec"]["volumes"][0][
            "persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
        assert parse_serve(container["args"]).model == "/models"
        with pytest.raises(ValueError, match="spec.model.source"):
            build_deployment(with_spec("pvc", model={"source": "pvc://models/a/../b"}),
                             CONFIG, None)

    def test_resources_placement_and_secrets(self) -> None:
        deployment = build_deployment(isvc_of(SPECS["tp4"]), CONFIG, None)
        pod = deployment["spec"]["template"]["spec"]
        container = runtime_container(deployment)
        assert container["resources"] == {
            "requests": {"nvidia.com/gpu": "4", "memory": "64Gi", "cpu": "8"},
            "limits": {"nvidia.com/gpu": "4", "memory": "64Gi"}}
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                       "effect": "NoSchedule"}]
        assert {"name": "INFERNETES_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": "llm-key", "key": "key"}}} in container["env"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in \
            pod["volumes"]

    def test_cpu_pods_ask_for_no_gpu(self) -> None:
        container = runtime_container(build_deployment(isvc_of(SPECS["cpu"]), CONFIG, None))
        assert "resources" not in container

    def test_restricted_pods_that_drain(self) -> None:
        deployment = build_deployment(isvc_of(SPECS["minimal-gpu"]),
                                      OperatorConfig(drain_timeout_seconds=45), None)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == 60
        assert pod["securityContext"]["runAsUser"] == 1000
        assert runtime_container(deployment)["securityContext"] == {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1,
                                                                   "maxUnavailable": 0}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"

    def test_labels_selector_and_extra_pod_labels(self) -> None:
        config = OperatorConfig(extra_pod_labels={"team": "ml",
                                                  naming.LABEL_COMPONENT: "overridden"})
        deployment = build_deployment(isvc_of(SPECS["minimal-gpu"]), config, None)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"] == naming.runtime_selector("qwen")
        assert labels == {**naming.common_labels("qwen", naming.COMPONENT_RUNTIME),
                          "team": "ml"}

    @pytest.mark.parametrize("replicas, bounds, expected", [
        (3, None, 3), (10, (2, 4), 4), (0, (2, 4), 2), (3, (0, 4), 3), (0, (0, 4), 0)])
    def test_desired_replicas_kept_within_autoscaling_bounds(
            self, replicas: int, bounds: tuple[int, int] | None, expected: int) -> None:
        spec: dict[str, Any] = {"model": {"source": HF}, "replicas": replicas}
        if bounds is not None:
            spec["autoscaling"] = {"minReplicas": bounds[0], "maxReplicas": bounds[1]}
        isvc = isvc_of(spec)
        assert desired_replicas(isvc.spec) == expected
        assert build_deployment(isvc, CONFIG, None)["spec"]["replicas"] == expected


class TestAdapters:
    @staticmethod
    def pod_of(isvc: InferenceService) -> dict[str, Any]:
        return build_deployment(isvc, CONFIG, None)["spec"]["template"]["spec"]

    def test_hf_adapters_are_downloaded_by_init_containers_like_the_model(self) -> None:
        pod = self.pod_of(isvc_of(SPECS["adapters"]))
        sql, support = pod["initContainers"]
        assert (sql["name"], support["name"]) == ("adapter-0", "adapter-2")  # spec.adapters[i]
        assert sql["command"] + sql["args"] == [
            "infernetes", "download", "hf://org/sql-lora@v2", "/adapters/sql",
            "--progress-interval", "5"]
        assert support["args"][2] == f"/adapters/{adapter_dir('org/support')}"
        # The model download Job's container, but for what it fetches and where to.
        [model_download] = build_download_job(with_spec("tp4"), CONFIG)["spec"]["template"][
            "spec"]["containers"]
        for key in ("image", "imagePullPolicy", "env", "resources", "securityContext",
                    "terminationMessagePolicy"):
            assert sql[key] == model_download[key], key
        assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "hf-token", "key": "token"}}} in sql["env"]
        assert sql["volumeMounts"] == [{"name": "adapters", "mountPath": "/adapters"},
                                       {"name": "tmp", "mountPath": "/tmp"}]
        assert {"name": "adapters", "emptyDir": {}} in pod["volumes"]
        assert {"name": "adapters", "mountPath": "/adapters", "readOnly": True} in \
            pod["containers"][0]["volumeMounts"]
        assert_mounts_resolve(pod)

    def test_pvc_adapters_mount_each_claim_once_read_only(self) -> None:
        pod = self.pod_of(isvc_of(SPECS["adapters"]))
        claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims == {"model": {"claimName": "models", "readOnly": True},
                          "adapter-claim-0": {"claimName": "loras", "readOnly": True}}
        mounts = pod["containers"][0]["volumeMounts"]
        # The model's claim once more, whole (the model itself is a subPath of it).
        assert {"name": "model", "mountPath": "/adapter-claims/models",
                "readOnly": True} in mounts
        assert {"name": "adapter-claim-0", "mountPath": "/adapter-claims/loras",
                "readOnly": True} in mounts
        assert [m["name"] for m in mounts].count("adapter-claim-0") == 1

    def test_pvc_adapters_alone_need_no_init_containers(self) -> None:
        pod = self.pod_of(with_spec("pvc", adapters=[{"name": "a", "source": "pvc://loras/a"}]))
        assert "initContainers" not in pod
        assert "adapters" not in {volume["name"] for volume in pod["volumes"]}
        assert_mounts_resolve(pod)

    def test_no_adapters_no_trace_in_the_pod(self) -> None:
        pod = self.pod_of(isvc_of(SPECS["minimal-gpu"]))
        assert "initContainers" not in pod
        assert [v["name"] for v in pod["volumes"]] == ["model", "dshm", "tmp"]

    def test_unusable_pvc_path_names_the_adapter(self) -> None:
        isvc = with_spec("adapters", adapters=[{"name": "a", "source": "hf://org/a"},
                                               {"name": "b", "source": "pvc://loras/../x"}])
        with pytest.raises(ValueError, match=r"spec\.adapters\[1\]\.source"):
            build_deployment(isvc, CONFIG, None)

    @pytest.mark.parametrize("name, folder", [
        ("sql", "sql"), ("v1.2_x:y-z", "v1.2_x:y-z"),
        ("org/a", f"org-a-{adapter_dir('org/a')[-8:]}")])
    def test_adapter_folders_are_one_path_segment(self, name: str, folder: str) -> None:
        assert adapter_dir(name) == folder and "/" not in folder
        assert adapter_dir("org/a") != adapter_dir("org-a")


class TestSpecHash:
    @staticmethod
    def hash_of(isvc: InferenceService, config: OperatorConfig = CONFIG,
                model_bytes: int | None = None) -> str:
        deployment = build_deployment(isvc, config, model_bytes)
        pod_hash = deployment["spec"]["template"]["metadata"]["annotations"][
            naming.ANNOTATION_SPEC_HASH]
        assert deployment["metadata"]["annotations"][naming.ANNOTATION_SPEC_HASH] == pod_hash
        return pod_hash

    def test_hash_of_the_template_without_itself(self) -> None:
        deployment = build_deployment(isvc_of(SPECS["tp4"]), CONFIG, None)
        template = deployment["spec"]["template"]
        recorded = template["metadata"]["annotations"].pop(naming.ANNOTATION_SPEC_HASH)
        assert recorded == spec_hash(template) and len(recorded) == 16
        assert recorded == self.hash_of(isvc_of(SPECS["tp4"]))  # stable across calls

    def test_unchanged_by_replicas_and_autoscaling(self) -> None:
        base = self.hash_of(isvc_of(SPECS["minimal-gpu"]))
        assert self.hash_of(with_spec("minimal-gpu", replicas=7)) == base
        assert self.hash_of(with_spec("autoscaling")) == base

    @pytest.mark.parametrize("change", [
        {"engine": {"maxNumSeqs": 128}}, {"image": "my/image:2"},
        {"resources": {"gpus": 2}}, {"model": {"source": HF, "servedName": "other"}},
        {"apiKeySecretRef": {"name": "k", "key": "key"}}])
    def test_changed_by_what_reaches_the_pod(self, change: dict[str, Any]) -> None:
        assert self.hash_of(with_spec("minimal-gpu", **change)) != \
            self.hash_of(isvc_of(SPECS["minimal-gpu"]))

    def test_changed_by_every_change_of_the_adapters(self) -> None:
        sql = {"name": "sql", "source": "hf://org/sql-lora"}
        lists = [[], [sql], [{**sql, "source": "hf://org/sql-lora@v2"}], [{**sql, "name": "q"}],
                 [sql, {"name": "b", "source": "pvc://x/b"}],
                 [{"name": "b", "source": "pvc://x/b"}, sql]]
        hashes = {self.hash_of(with_spec("minimal-gpu", adapters=a)) for a in lists}
        assert len(hashes) == len(lists)
        assert self.hash_of(with_spec("adapters", engine={"maxLoraRank": 32})) != \
            self.hash_of(isvc_of(SPECS["adapters"]))

    def test_changed_by_operator_config_and_model_size(self) -> None:
        isvc = isvc_of(SPECS["minimal-gpu"])
        base = self.hash_of(isvc)
        assert self.hash_of(isvc, OperatorConfig(runtime_image="reg/rt:2")) != base
        assert self.hash_of(isvc, OperatorConfig(shm_size="16Gi")) != base
        assert self.hash_of(isvc, model_bytes=100 * GiB) != base


class TestService:
    def test_port_80_to_the_runtime_pods(self) -> None:
        isvc = isvc_of(SPECS["minimal-gpu"])
        service = build_service(isvc, CONFIG)
        deployment = build_deployment(isvc, CONFIG, None)
        assert service["metadata"]["name"] == "qwen" and service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http",
                                             "protocol": "TCP"}]
        assert service["spec"]["selector"] == naming.runtime_selector("qwen")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert "http" in {port["name"] for port in runtime_container(deployment)["ports"]}
        assert isvc.url == f"http://{service['metadata']['name']}.ml.svc.cluster.local/v1"
