"""The model and the engine a pool runs: which weights, which vLLM, its flags and environment.

Split from ``common`` (which keeps the pools' shared shapes: parallelism, KV transfer,
autoscaling, placement); ``common`` re-exports these names for existing importers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from disagg.api.base import ApiModel, FreeForm, cel, validations
from disagg.api.formats import (
    INT32_MAX,
    ConfigKey,
    DNSSubdomain,
    MountPath,
    Word,
    cel_string,
)
from disagg.api.overrides import ExtraArgs, env_names_rule
from disagg.api.versions import (
    DEFAULT_VLLM_IMAGE,
    SUPPORTED_VLLM_PATTERN,
    SUPPORTED_VLLM_RANGE_TEXT,
    VLLM_IMAGE_TAG,
    is_supported_vllm_version,
    resolve_vllm_version,
    vllm_version_of_image,
)

#: A vLLM image whose tag names a supported release (the CEL twin of ``VLLM_IMAGE_TAG``).
_SUPPORTED_VLLM_IMAGE = (
    r"^(.*/)?vllm[^/:@]*:v?" + SUPPORTED_VLLM_PATTERN.strip("^$") + r"([^0-9].*)?$"
)


_VERSION_MESSAGE = (
    f"engine.vllmVersion must be a vLLM release the operator renders for: "
    f"{SUPPORTED_VLLM_RANGE_TEXT}"
)
_IMAGE_MESSAGE = (
    f"engine.image's tag names a vLLM release outside {SUPPORTED_VLLM_RANGE_TEXT}; use a "
    f"supported image or set engine.vllmVersion to the release the image runs"
)


class SecretKeyRef(ApiModel):
    """A key of a Secret in the object's namespace."""

    name: DNSSubdomain
    """Name of the Secret."""
    key: ConfigKey
    """Key inside the Secret."""


class ModelVolume(ApiModel):
    """Weights on a PersistentVolumeClaim instead of a download from a model hub."""

    claim_name: DNSSubdomain
    """The PersistentVolumeClaim holding the weights (mounted read-only)."""
    mount_path: MountPath = "/models"
    """Where the claim is mounted in the worker; ``model.name`` is then a path under it.  An
    absolute, normalised path of its own: not ``/dev/shm`` (the worker's shared memory) nor
    any other directory the worker or its image needs (``/dev``, ``/proc``, ``/etc``, ``/tmp``,
    ...)."""


class ModelSpec(ApiModel):
    """The model every worker serves.  Names are single words: no whitespace, and no leading
    ``-`` (vLLM would read it as a flag)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                f"!self.name.matches({cel_string(r'(^|/)[.][.]?(/|$)')})",
                "model.name must not contain '.' or '..' path segments (with a volume it is a "
                "path under the mount)",
                ".name",
            ),
        )
    )

    name: Word
    """Hugging Face repository id (``meta-llama/Llama-3.1-8B-Instruct``) or a path in the worker."""
    served_name: Word | None = None
    """The model name clients send (``--served-model-name``); defaults to ``name``."""
    revision: Word | None = None
    """A branch, tag or commit of the Hugging Face repository (``--revision``)."""
    architecture: Word | None = None
    """Planner preset for KV arithmetic in status (``llama-3.1-8b``, ``llama-3.1-70b``, ...);
    guessed from ``name`` when omitted."""
    volume: ModelVolume | None = None
    """Read the weights from a PersistentVolumeClaim."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret key holding a Hugging Face token, exposed to vLLM as ``HF_TOKEN``."""


class EnvVarSource(ApiModel):
    """Where a variable's value comes from (core/v1 EnvVarSource): exactly one source, each
    passed through verbatim and validated with the Deployment."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0) + "
                "(has(self.fieldRef) ? 1 : 0) + (has(self.resourceFieldRef) ? 1 : 0) + "
                "(has(self.fileKeyRef) ? 1 : 0) == 1",
                "valueFrom must hold exactly one of secretKeyRef, configMapKeyRef, fieldRef, "
                "resourceFieldRef, fileKeyRef",
            ),
        )
    )

    secret_key_ref: FreeForm | None = None
    """A key of a Secret (``name``, ``key``, ``optional``)."""
    config_map_key_ref: FreeForm | None = None
    """A key of a ConfigMap (``name``, ``key``, ``optional``)."""
    field_ref: FreeForm | None = None
    """A field of the pod (``fieldPath``, e.g. ``status.podIP``)."""
    resource_field_ref: FreeForm | None = None
    """A resource of the container (``resource``, e.g. ``limits.memory``)."""
    file_key_ref: FreeForm | None = None
    """A key of an env file in a volume (Kubernetes 1.34+, alpha)."""


class EnvVar(ApiModel):
    """An environment variable: a literal value or a ``valueFrom`` source."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.valueFrom) || !has(self.value) || self.value == ''",
                "set either value or valueFrom, not both",
                ".valueFrom",
            ),
        )
    )

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Variable name."""
    value: str | None = Field(default=None, max_length=32768)
    """Literal value."""
    value_from: EnvVarSource | None = None
    """A core/v1 EnvVarSource: exactly one of secretKeyRef, configMapKeyRef, fieldRef,
    resourceFieldRef, fileKeyRef."""


class EngineSpec(ApiModel):
    """The vLLM engine: image, version, entrypoint and the flags that matter for P/D."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.vllmVersion) || "
                f"self.vllmVersion.matches({cel_string(SUPPORTED_VLLM_PATTERN)})",
                _VERSION_MESSAGE,
                ".vllmVersion",
            ),
            cel(
                f"has(self.vllmVersion) || !has(self.image) || "
                f"!self.image.matches({cel_string(VLLM_IMAGE_TAG)}) || "
                f"self.image.matches({cel_string(_SUPPORTED_VLLM_IMAGE)})",
                _IMAGE_MESSAGE,
                ".image",
            ),
        )
    )

    image: Word = DEFAULT_VLLM_IMAGE
    """Worker image: vLLM's OpenAI server, or the disagg simulator (it takes the same flags)."""
    vllm_version: str | None = Field(default=None, max_length=32)
    """The vLLM release the workers run (``0.26.0``): the command line, KV-transfer config and
    environment are rendered for it.  Defaults to the release a vLLM image's tag names (tag
    ``v0.26.0`` of an image whose name starts with ``vllm``), else to the version this operator
    pins.  Supported: 0.26.0 to 0.33.x."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Image pull policy; Kubernetes' default when omitted."""
    entrypoint: Literal["serve", "apiServer"] = "serve"
    """``serve`` runs ``vllm serve <model>``; ``apiServer`` runs
    ``python3 -m vllm.entrypoints.openai.api_server --model <model>`` (older images)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """HTTP port of the OpenAI server (``--port``)."""
    block_size: Literal[1, 8, 16, 32, 64, 128] = 16
    """KV-cache block size in tokens (``--block-size``); the gateway hashes prefixes by it."""
    max_model_len: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """Maximum context length (``--max-model-len``); the model's own when omitted."""
    max_num_seqs: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """Maximum concurrent sequences per engine (``--max-num-seqs``)."""
    max_num_batched_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """Token budget of one engine step (``--max-num-batched-tokens``): longer prompts are
    prefilled in chunks of it, so a smaller budget shortens the stall a long prompt causes to
    running streams and lengthens that prompt's own prefill.  vLLM's default when omitted."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """Fraction of GPU memory vLLM may use (``--gpu-memory-utilization``)."""
    prefix_caching: bool | None = None
    """Reuse the KV of prompt prefixes already computed (vLLM's automatic prefix caching;
    ``--enable-prefix-caching`` or its negative in the release's spelling).  vLLM's default (on)
    when omitted."""
    enforce_eager: bool | None = None
    """``true`` runs without CUDA graphs (``--enforce-eager``): starts faster and uses less
    memory, decodes slower at small batches.  vLLM's default (graphs on) when omitted."""
    extra_args: ExtraArgs = Field(default_factory=list)
    """More vLLM flags, appended verbatim after the rendered ones.  Flags the operator renders
    from fields (``--port``, ``--tensor-parallel-size``, ``--block-size``, ...) are refused in
    every spelling: set the field instead."""
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, json_schema_extra=env_names_rule()
    )
    """More environment variables for the worker container.  Names are unique, and those the
    operator sets (``VLLM_NIXL_SIDE_CHANNEL_*``, ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``, the RDMA
    variables, ``HF_TOKEN`` with ``model.tokenSecretRef``) are refused."""

    @field_validator("vllm_version")
    @classmethod
    def _supported_version(cls, value: str | None) -> str | None:
        if value is not None and not is_supported_vllm_version(value):
            raise ValueError(f"{_VERSION_MESSAGE} (got {value!r})")
        return value

    @model_validator(mode="after")
    def _supported_image(self) -> EngineSpec:
        tagged = vllm_version_of_image(self.image)
        if self.vllm_version is None and tagged and not is_supported_vllm_version(tagged):
            raise ValueError(f"{_IMAGE_MESSAGE} (image {self.image!r} is vLLM {tagged})")
        return self

    @property
    def resolved_vllm_version(self) -> str:
        """The release the rendering is for (see ``vllm_version``)."""
        return resolve_vllm_version(self.vllm_version, self.image)
