"""The InferenceService API: typed models of its spec and status.

These models are the single source of the CRD (`crd.py` turns their JSON schema into the
CustomResourceDefinition in `crds/`), and the operator reads every object through them. Field
names are the API's camelCase; Python attributes are snake_case. Cross-field rules are CEL
(`x-kubernetes-validations`), checked by the API server at admission.
"""
from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "infernetes.io"
VERSION = "v1alpha1"
KIND = "InferenceService"
PLURAL = "inferenceservices"
SINGULAR = "inferenceservice"
SHORT_NAMES = ["isvc"]

# hf://ORG/NAME[@REVISION] or pvc://CLAIM/PATH (the path may be empty: the claim's root).
SOURCE_PATTERN = (r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?"
                  r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?)$")
# A Kubernetes quantity (e.g. 32Gi, 500M, 1.5Ti).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
SERVED_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$"
# The runtime's --max-loras cap: each adapter one step may use is a slot of GPU memory in every
# layer (sized by the max rank), used or not; requests for further adapters wait a step.
MAX_ADAPTERS_PER_STEP = 8


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL validation rule, as the CRD's x-kubernetes-validations takes it."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """camelCase on the wire; unknown fields rejected (the CRD schema is structural)."""
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class SecretKeyRef(ApiModel):
    name: Annotated[str, Field(description="Name of a Secret in the InferenceService's "
                                           "namespace.", pattern=DNS_LABEL_PATTERN,
                               max_length=253)]
    key: Annotated[str, Field(description="Key within the Secret.", pattern=SECRET_KEY_PATTERN,
                              max_length=253)] = "token"


class ModelSpec(ApiModel):
    source: Annotated[str, Field(
        description="Where the weights come from: hf://ORG/NAME[@REVISION] (Hugging Face Hub; "
                    "REVISION is a branch, tag or commit, default main) or pvc://CLAIM/PATH "
                    "(a folder on an existing PersistentVolumeClaim in the same namespace).",
        pattern=SOURCE_PATTERN, max_length=512)]
    served_name: Annotated[str | None, Field(
        description="The model name clients pass in requests. Default: metadata.name.",
        pattern=SERVED_NAME_PATTERN, max_length=256)] = None
    token_secret_ref: Annotated[SecretKeyRef | None, Field(
        description="Secret key holding a Hugging Face token, for gated or private models.")
    ] = None


class AdapterSpec(ApiModel):
    name: Annotated[str, Field(description="The adapter's model name: a request with "
                                           "\"model\": NAME is served by the base model with "
                                           "this adapter.",
                               pattern=SERVED_NAME_PATTERN, max_length=256)]
    source: Annotated[str, Field(
        description="Where the adapter comes from: a PEFT LoRA folder (adapter_config.json, "
                    "adapter_model.safetensors or .bin) trained on spec.model. "
                    "hf://ORG/NAME[@REVISION]: "
                    "every runtime pod downloads it (an init container; with "
                    "spec.model.tokenSecretRef's token) before the runtime starts. "
                    "pvc://CLAIM/PATH: read in place from that claim, mounted read-only.",
        pattern=SOURCE_PATTERN, max_length=512)]


class TolerationOperator(str, enum.Enum):
    Exists = "Exists"
    Equal = "Equal"


class TaintEffect(str, enum.Enum):
    NoSchedule = "NoSchedule"
    PreferNoSchedule = "PreferNoSchedule"
    NoExecute = "NoExecute"


class Toleration(ApiModel):
    key: str | None = None
    operator: TolerationOperator | None = None
    value: str | None = None
    effect: TaintEffect | None = None
    toleration_seconds: int | None = None


class ResourcesSpec(ApiModel):
    gpus: Annotated[int, Field(description="NVIDIA GPUs per replica (nvidia.com/gpu); 0 runs "
                                           "on CPU.", ge=0, le=16)] = 1
    memory: Annotated[str | None, Field(description="Memory request and limit per replica, "
                                                    "e.g. 32Gi.", pattern=QUANTITY_PATTERN)] = None
    cpu: Annotated[str | None, Field(description="CPU request per replica, e.g. 4 or 500m.",
                                     pattern=r"^[0-9]+(\.[0-9]+)?m?$")] = None
    node_selector: Annotated[dict[str, str], Field(
        description="Node labels the replicas must run on.")] = {}
    tolerations: Annotated[list[Toleration], Field(
        description="Taints the replicas tolerate (GPU nodes are often tainted).",
        max_length=32)] = []


class ParallelismSpec(ApiModel):
    tensor: Annotated[int | None, Field(description="Tensor-parallel size: GPUs one replica "
                                                    "splits the model over. Default: "
                                                    "resources.gpus (1 on CPU).",
                                        ge=1, le=16)] = None


class Dtype(str, enum.Enum):
    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class EngineSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.extraArgs) || self.extraArgs.all(a, !(a in ['--host', '--port']) && "
            "!a.startsWith('--host=') && !a.startsWith('--port='))",
            "extraArgs cannot set --host or --port: the pod's probes and Service use port 8000",
            ".extraArgs")]})

    max_model_len: Annotated[int | None, Field(description="Context length (prompt + output) in "
                                                           "tokens. Default: the model's.",
                                               ge=16, le=10_000_000)] = None
    gpu_memory_utilization: Annotated[float, Field(description="Share of each GPU's memory the "
                                                               "runtime may use.",
                                                   gt=0.0, le=1.0)] = 0.9
    max_num_seqs: Annotated[int, Field(description="Most sequences in one batch.",
                                       ge=1, le=65536)] = 256
    enable_prefix_caching: Annotated[bool, Field(description="Reuse the KV cache of shared "
                                                             "prompt prefixes.")] = True
    dtype: Annotated[Dtype, Field(description="Weights and activations dtype.")] = Dtype.auto
    max_lora_rank: Annotated[int | None, Field(
        description="Largest rank among spec.adapters: an adapter of a higher rank fails to "
                    "load, and the runtime does not start. GPU memory for adapters grows with "
                    "it. Default: 16.", ge=1, le=512)] = None
    extra_args: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(
        description="More `infernetes serve` flags, appended as given.", max_length=64)] = []


class AutoscalingMetric(str, enum.Enum):
    inflight = "inflight"


class AutoscalingSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.minReplicas <= self.maxReplicas",
            "minReplicas must be less than or equal to maxReplicas",
            ".minReplicas")]})

    min_replicas: Annotated[int, Field(description="Fewest replicas.", ge=0, le=1000)] = 1
    max_replicas: Annotated[int, Field(description="Most replicas.", ge=1, le=1000)]
    metric: Annotated[AutoscalingMetric, Field(description="What load is measured by: "
                                                           "requests in flight per replica.")
                      ] = AutoscalingMetric.inflight
    target: Annotated[int, Field(description="Target value of the metric per replica.",
                                 ge=1, le=100_000)] = 16
    scale_down_delay_seconds: Annotated[int, Field(description="How long load must stay low "
                                                               "before replicas are removed.",
                                                   ge=0, le=86_400)] = 300


class AccessMode(str, enum.Enum):
    ReadWriteOnce = "ReadWriteOnce"
    ReadWriteMany = "ReadWriteMany"
    ReadWriteOncePod = "ReadWriteOncePod"


class CacheSpec(ApiModel):
    storage_class_name: Annotated[str | None, Field(description="StorageClass of the model "
                                                                "cache. Default: the cluster's.",
                                                    max_length=253)] = None
    size: Annotated[str, Field(description="Size of the model cache volume.",
                               pattern=QUANTITY_PATTERN)] = "100Gi"
    access_mode: Annotated[AccessMode, Field(
        description="ReadWriteOnce works on every cluster but keeps replicas on one node; "
                    "replicas spread over nodes need ReadWriteMany storage.")
    ] = AccessMode.ReadWriteOnce


class InferenceServiceSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.parallelism) || !has(self.parallelism.tensor) || "
            "(self.resources.gpus == 0 ? self.parallelism.tensor == 1 : "
            "self.resources.gpus % self.parallelism.tensor == 0)",
            "parallelism.tensor must divide resources.gpus (and be 1 on CPU)",
            ".parallelism.tensor"),
        cel("!has(self.adapters) || self.adapters.all(a, self.adapters.exists_one(b, "
            "b.name == a.name))", "adapter names must be unique", ".adapters"),
        cel("!has(self.adapters) || !has(self.model.servedName) || "
            "self.adapters.all(a, a.name != self.model.servedName)",
            "an adapter cannot have the model's servedName", ".adapters"),
    ]})

    model: Annotated[ModelSpec, Field(description="The model to serve.")]
    adapters: Annotated[list[AdapterSpec], Field(
        description="LoRA adapters served on top of the model, each under its own name, mixed "
                    f"in one batch (up to {MAX_ADAPTERS_PER_STEP} adapters in one step). "
                    "Changing the list rolls the pods; the old ones serve until the new ones "
                    "are ready.",
        max_length=64)] = []
    resources: Annotated[ResourcesSpec, Field(description="What each replica gets.")
                         ] = ResourcesSpec()
    parallelism: Annotated[ParallelismSpec, Field(description="How one replica splits the "
                                                              "model.")] = ParallelismSpec()
    engine: Annotated[EngineSpec, Field(description="Runtime settings.")] = EngineSpec()
    replicas: Annotated[int, Field(description="Replicas to run (the scale subresource sets "
                                               "it; kept within autoscaling's bounds).",
                                   ge=0, le=1000)] = 1
    autoscaling: Annotated[AutoscalingSpec | None, Field(
        description="Bounds and target for scaling on load.")] = None
    cache: Annotated[CacheSpec, Field(description="The volume the model is downloaded to.")
                     ] = CacheSpec()
    api_key_secret_ref: Annotated[SecretKeyRef | None, Field(
        description="Secret key holding the API key clients must send (Bearer).")] = None
    image: Annotated[str | None, Field(description="Runtime image. Default: the operator's.",
                                       max_length=512)] = None

    @property
    def tensor_parallel_size(self) -> int:
        return self.parallelism.tensor or max(self.resources.gpus, 1)


class Phase(str, enum.Enum):
    Pending = "Pending"
    Downloading = "Downloading"
    Loading = "Loading"
    Ready = "Ready"
    Failed = "Failed"


class ConditionStatus(str, enum.Enum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(ApiModel):
    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class DownloadStatus(ApiModel):
    bytes: int = 0
    total_bytes: int | None = None
    bytes_per_second: float | None = None
    eta_seconds: float | None = None


class InferenceServiceStatus(ApiModel):
    phase: Phase = Phase.Pending
    message: str = ""
    conditions: list[Condition] = []
    download: DownloadStatus | None = None
    model_bytes: Annotated[int | None, Field(description="Size of the downloaded model.")
                           ] = None
    url: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    desired_replicas: int = 0
    ready: Annotated[str, Field(description="Ready replicas out of desired, for kubectl.")
                     ] = "0/0"
    selector: Annotated[str | None, Field(description="Label selector of the replicas' pods "
                                                      "(scale subresource).")] = None
    observed_generation: int | None = None


def parse_spec(spec: dict[str, Any]) -> InferenceServiceSpec:
    """The spec of an object the API server admitted (defaults filled where it did not)."""
    return InferenceServiceSpec.model_validate(spec)


def api_dict(model: BaseModel) -> dict[str, Any]:
    """`model` as the API writes it: camelCase, enums as strings, unset optionals left out."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
