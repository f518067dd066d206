"""Settings from the environment (Azure app settings, Lambda environment, local.settings.json).

Validated once, on first use, never at import: ``get_settings()`` builds and caches them.
Any invalid value raises ``ConfigError`` whose message names the setting (and for
``INFER_BACKENDS`` the entry and field), e.g.
``INFER_BACKENDS[1] (kind sagemaker): field 'endpoint_name': Field required``.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError
from shared.lifecycle import Singleton

DEFAULT_BACKEND_URL = "http://127.0.0.1:8081/v1"
DEFAULT_MODEL = "local-model"

AuthKind = Literal["none", "key", "managed_identity", "aws_iam"]


class _BackendBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    priority: int = 0
    weight: float = Field(default=1.0, gt=0)
    max_concurrency: int = Field(default=64, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    auth: AuthKind = "none"
    api_key_setting: str | None = None
    client_id: str | None = None
    #: What the scheduled probe sends (shared/probe.py); None: the kind's default.
    probe: Literal["stream", "chat", "ready", "off"] | None = None

    def serves(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    def api_key(self) -> str:
        """The key, read from the env var this backend names (never from settings)."""
        if not self.api_key_setting:
            raise ConfigError(
                f"INFER_BACKENDS entry {self.name!r}: auth 'key' needs 'api_key_setting', "
                "the NAME of the setting that holds the key",
                param="api_key_setting",
            )
        value = os.environ.get(self.api_key_setting)
        if not value:
            raise ConfigError(
                f"INFER_BACKENDS entry {self.name!r}: setting {self.api_key_setting!r} "
                "named by 'api_key_setting' is not set",
                param="api_key_setting",
            )
        return value


class OpenAIBackendConfig(_BackendBase):
    kind: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://")
    served_model: str | None = None


class AzureOpenAIBackendConfig(_BackendBase):
    kind: Literal["azure_openai"]
    auth: AuthKind = "managed_identity"
    endpoint: str = Field(pattern=r"^https?://")
    deployment: str | None = None
    api_version: str | None = None
    api_style: Literal["deployments", "v1"] = "deployments"


class AzureMLBackendConfig(_BackendBase):
    kind: Literal["azureml"]
    auth: AuthKind = "managed_identity"
    scoring_url: str = Field(pattern=r"^https?://")
    deployment: str | None = None
    payload: Literal["openai_chat", "tgi"] = "openai_chat"


class SageMakerBackendConfig(_BackendBase):
    kind: Literal["sagemaker"]
    auth: AuthKind = "aws_iam"
    endpoint_name: str = Field(min_length=1)
    region: str = Field(min_length=1)
    inference_component: str | None = None
    payload: Literal["messages", "tgi"] = "messages"
    endpoint_url: str | None = None


BackendConfig = Annotated[
    OpenAIBackendConfig | AzureOpenAIBackendConfig | AzureMLBackendConfig | SageMakerBackendConfig,
    Field(discriminator="kind"),
]


def default_backends() -> list[BackendConfig]:
    return [
        OpenAIBackendConfig(
            name="local", kind="openai", base_url=DEFAULT_BACKEND_URL, models=[DEFAULT_MODEL, "*"]
        )
    ]


class Settings(BaseSettings):
    """Every ``INFER_*`` setting (README has the table)."""

    model_config = SettingsConfigDict(env_prefix="INFER_", extra="ignore", frozen=True)

    backends: list[BackendConfig] = Field(default_factory=default_backends)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_tokens_cap: int = Field(default=4096, ge=1)
    log_prompts: bool = False
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    bucket: str | None = None
    queue_url: str | None = None

    @field_validator("backends")
    @classmethod
    def _unique_names(cls, value: list[BackendConfig]) -> list[BackendConfig]:
        names = [b.name for b in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"backend names must be unique; repeated: {', '.join(dupes)}")
        if not value:
            raise ValueError("at least one backend is needed")
        return value


def _describe(err: Any, prefix: str = "INFER_") -> str:
    loc = list(err.get("loc", ()))
    if not loc:
        return str(err.get("msg"))
    name = f"{prefix}{str(loc[0]).upper()}"
    rest = loc[1:]
    where = name
    if rest and isinstance(rest[0], int):
        where += f"[{rest[0]}]"
        rest = rest[1:]
        if rest and rest[0] in ("openai", "azure_openai", "azureml", "sagemaker"):
            where += f" (kind {rest[0]})"
            rest = rest[1:]
    if rest:
        where += ": field " + ".".join(repr(p) if isinstance(p, str) else f"[{p}]" for p in rest)
    msg = str(err.get("msg"))
    if err.get("type") == "union_tag_invalid":
        msg = "unknown 'kind'; expected one of openai, azure_openai, azureml, sagemaker"
    elif err.get("type") == "union_tag_not_found":
        msg = "missing 'kind'; expected one of openai, azure_openai, azureml, sagemaker"
    return f"{where}: {msg}"


S = TypeVar("S", bound=BaseSettings)


def build_settings(cls: type[S]) -> S:
    """Build ``cls`` from the environment; raise ``ConfigError`` naming what is wrong."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    try:
        return cls()
    except ValidationError as exc:
        problems = "; ".join(_describe(e, prefix) for e in exc.errors(include_url=False))
        raise ConfigError(f"invalid configuration: {problems}") from None
    except ValueError as exc:
        # pydantic-settings raises SettingsError (a ValueError) for undecodable JSON.
        match = re.search(r'field "(\w+)"', str(exc))
        name = f"{prefix}{match.group(1).upper()}" if match else f"a {prefix}* setting"
        raise ConfigError(f"invalid configuration: {name}: not valid JSON") from None


class CachedSettings(Singleton[S]):
    """One settings object per process (``shared.lifecycle``): built (and validated) on
    first use, never at import, reused by warm invocations; ``reset_all`` for tests."""

    def __init__(self, cls: type[S]) -> None:
        super().__init__(lambda: build_settings(cls))


def load_settings() -> Settings:
    """Build settings from the environment; raise ``ConfigError`` naming what is wrong."""
    return build_settings(Settings)


_cached = CachedSettings(Settings)
#: The process's settings, built on first use and reused on warm invocations.
get_settings = _cached.get
