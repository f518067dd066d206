"""Settings from the environment (Azure app settings, Lambda environment, local.settings.json).

Validated once, on first use, never at import: ``get_settings()`` builds and caches them.
Each settings class is an ``EnvSettings``: a pydantic model whose fields are read from
``<env_prefix><FIELD>`` (any case), JSON-decoded where the field holds a list, a dict or a
model (as pydantic-settings does), and validated by pydantic. It reads environment variables
and nothing else, which is all these settings need; pydantic-settings' general machinery
(every source, dotenv, secrets, nested delimiters) cost ~30 ms of each cold start, most of it
its first walk through the ``abc`` subclass checks of the field types.
Any invalid value raises ``ConfigError`` whose message names the setting (and for
``INFER_BACKENDS`` the entry and field), e.g.
``INFER_BACKENDS[1] (kind sagemaker): field 'endpoint_name': Field required``.
"""

from __future__ import annotations

import collections.abc
import json
import os
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SerializeAsAny,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared.errors import ConfigError
from shared.lifecycle import Singleton
from shared.pricing import Price

DEFAULT_BACKEND_URL = "http://127.0.0.1:8081/v1"
DEFAULT_MODEL = "local-model"

AuthKind = Literal["none", "key", "managed_identity", "aws_iam"]


class BackendConfig(BaseModel):
    """The fields every backend entry has; each kind's module subclasses it with its own
    (``kind: Literal[...]`` and the endpoint's fields), next to its backend class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: What ``gen_ai.provider.name`` says for this kind (telemetry); None: the kind itself.
    provider: ClassVar[str | None] = None
    #: What the scheduled probe sends when ``probe`` is not set (shared/probe.py).
    default_probe: ClassVar[Literal["stream", "chat", "ready"]] = "stream"
    #: Whether the kind's endpoints continue a partial assistant message (vLLM's
    #: ``continue_final_message``) unless an entry says otherwise (``continuation``).
    continuation_default: ClassVar[bool] = False

    kind: str
    name: str = Field(min_length=1)
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    priority: int = 0
    weight: float = Field(default=1.0, gt=0)
    max_concurrency: int = Field(default=64, ge=1)
    #: The provider's own quota (shared/quota.py): tokens / requests per ``quota_window_s``,
    #: shared by every caller and instance; spent, the backend is passed over.
    tpm: int | None = Field(default=None, ge=1)
    rpm: int | None = Field(default=None, ge=1)
    quota_window_s: float = Field(default=60.0, gt=0, le=86400)
    #: What a request costs here (shared/pricing.py): per million tokens, or hourly.
    price: Price | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    #: A stream's three deadlines per attempt (docs/backends.md "When the endpoint
    #: misbehaves"): until the response headers, until the first bytes of the answer (from
    #: sending), and between two chunks. Each one that passes ends the attempt.
    headers_timeout_s: float = Field(default=15.0, gt=0)
    first_token_timeout_s: float = Field(default=30.0, gt=0)
    idle_timeout_s: float = Field(default=15.0, gt=0)
    #: The longest Retry-After (429/503) waited out on this backend before failing over.
    retry_after_wait_s: float = Field(default=2.0, ge=0)
    #: Accepts a partial assistant message to continue (a broken stream is resumed here);
    #: None: the kind's default (``openai``: yes, as vLLM and TGI chat templates do).
    continuation: bool | None = None
    auth: AuthKind = "none"
    api_key_setting: str | None = None
    client_id: str | None = None
    #: What the scheduled probe sends (shared/probe.py); None: the kind's default.
    probe: Literal["stream", "chat", "ready", "off"] | None = None

    def server_url(self) -> str | None:
        """The endpoint's URL, for telemetry's ``server.address``/``port`` (None: unknown)."""
        return None

    @property
    def continues(self) -> bool:
        """Whether a broken stream may be continued on this backend."""
        return self.continuation_default if self.continuation is None else self.continuation

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


def _kind_names() -> list[str]:
    from shared.backends.registry import KINDS

    return list(KINDS)


def backend_entry(value: Any) -> BackendConfig:
    """One ``INFER_BACKENDS`` entry, validated by its kind's config class: the registry
    names the kind's module, and only that module is imported."""
    if isinstance(value, BackendConfig):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError(
            "model_type", "Input should be a valid dictionary or object to extract fields from"
        )
    kind = value.get("kind")
    if kind is None:
        raise PydanticCustomError("union_tag_not_found", "missing 'kind'")
    from shared.backends.registry import KINDS, config_class

    if not isinstance(kind, str) or kind not in KINDS:
        raise PydanticCustomError("union_tag_invalid", "unknown 'kind'")
    try:
        return config_class(kind).model_validate(value)
    except ValidationError as exc:
        # The kind goes into each error's location: "INFER_BACKENDS[1] (kind sagemaker): ...".
        errors: list[InitErrorDetails] = [
            {
                "type": PydanticCustomError(e["type"], "{message}", {"message": e["msg"]}),
                "loc": (kind, *e["loc"]),
                "input": e["input"],
            }
            for e in exc.errors(include_url=False)
        ]
        raise ValidationError.from_exception_data(exc.title, errors) from None


#: A validated backend entry: an instance of its kind's config class.
BackendEntry = Annotated[SerializeAsAny[BackendConfig], PlainValidator(backend_entry)]


def default_backends() -> list[BackendConfig]:
    entry = {"name": "local", "kind": "openai", "base_url": DEFAULT_BACKEND_URL,
             "models": [DEFAULT_MODEL, "*"]}  # fmt: skip
    return [backend_entry(entry)]


class NoDecode:
    """``Annotated[list[X], NoDecode]``: the field's environment value reaches its validators
    as the string it is, not JSON-decoded first (they accept other spellings too)."""


#: Containers whose environment value is JSON (as pydantic-settings decodes "complex" fields).
_JSON_ORIGINS: tuple[Any, ...] = (list, dict, set, frozenset, tuple)
_JSON_ABCS: tuple[Any, ...] = (
    collections.abc.Sequence,
    collections.abc.Mapping,
    collections.abc.Set,
)


def _json_kind(annotation: Any) -> tuple[bool, bool]:
    """(is the value JSON, may it also be a plain string) for a field's annotation.

    Types are compared by identity and by MRO, never with ``issubclass`` against an ABC:
    the first such check walks every registered subclass (the cost this module avoids)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _json_kind(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        kinds = [_json_kind(a) for a in typing.get_args(annotation) if a is not type(None)]
        json_ = any(k[0] for k in kinds)
        return json_, json_ and not all(k[0] for k in kinds)
    if origin is not None:
        return origin in _JSON_ORIGINS or origin in _JSON_ABCS, False
    if annotation in _JSON_ORIGINS:
        return True, False
    return BaseModel in getattr(annotation, "__mro__", ()), False


def _env_value(setting: str, field: FieldInfo, raw: str) -> Any:
    if NoDecode in field.metadata:
        return raw
    is_json, lenient = _json_kind(field.annotation)
    if not is_json:
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        if lenient:
            return raw
        raise ConfigError(f"invalid configuration: {setting}: not valid JSON") from None


def setting(name: str) -> str | None:
    """The raw value of setting ``name`` (None: not set), matched in any case as
    ``EnvSettings`` matches it. It reads the environment and nothing else: the check a
    control makes before importing anything, so that one not configured costs nothing."""
    value = os.environ.get(name)
    if value is None:
        upper = name.upper()
        value = next((v for k, v in os.environ.items() if k.upper() == upper), None)
    return value


def setting_set(name: str) -> bool:
    """Whether setting ``name`` holds something other than blanks (see ``setting``)."""
    value = setting(name)
    return bool(value and value.strip())


class EnvSettings(BaseModel):
    """A settings model read from environment variables: ``env_prefix`` + a field's name,
    matched in any case (``INFER_MAX_RETRIES`` or ``infer_max_retries``). A field that holds
    a list, a dict or a model takes JSON unless annotated ``NoDecode``; everything else
    reaches pydantic as the string it is. Unknown variables are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: The prefix of this class's environment variables.
    env_prefix: ClassVar[str] = "INFER_"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> typing.Self:
        env = os.environ if environ is None else environ
        prefix = cls.env_prefix.lower()
        found = {k.lower(): v for k, v in env.items() if k.lower().startswith(prefix)}
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = found.get(prefix + name)
            if raw is not None:
                setting = f"{cls.env_prefix}{name.upper()}"
                values[name] = _env_value(setting, field, raw)
        return cls.model_validate(values)


class Settings(EnvSettings):
    """Every ``INFER_*`` setting (README has the table)."""

    backends: list[BackendEntry] = Field(default_factory=default_backends)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_tokens_cap: int = Field(default=4096, ge=1)
    log_prompts: bool = False
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    #: How long a slot of a backend's ``max_concurrency`` held in shared state outlives an
    #: instance that stopped renewing it (a crash); renewed every third of it (capacity.py).
    capacity_lease_s: float = Field(default=15.0, ge=1.0, le=600.0)
    bucket: str | None = None
    queue_url: str | None = None

    @field_validator("backends")
    @classmethod
    def _unique_names(cls, value: list[BackendConfig]) -> list[BackendConfig]:
        require_unique([b.name for b in value], "backend names")
        if not value:
            raise ValueError("at least one backend is needed")
        return value


def require_unique(values: list[str], what: str) -> None:
    """Refuse a list naming one thing twice (backend names, key ids): a validator's error."""
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(dupes)}")


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
        if rest and isinstance(rest[0], str) and rest[0] in _kind_names():
            where += f" (kind {rest[0]})"
            rest = rest[1:]
    if rest:
        where += ": field " + ".".join(repr(p) if isinstance(p, str) else f"[{p}]" for p in rest)
    msg = str(err.get("msg"))
    if err.get("type") == "union_tag_invalid":
        msg = f"unknown 'kind'; expected one of {', '.join(_kind_names())}"
    elif err.get("type") == "union_tag_not_found":
        msg = f"missing 'kind'; expected one of {', '.join(_kind_names())}"
    return f"{where}: {msg}"


S = TypeVar("S", bound=EnvSettings)


def build_settings(cls: type[S]) -> S:
    """Build ``cls`` from the environment; raise ``ConfigError`` naming what is wrong."""
    try:
        return cls.from_env()
    except ValidationError as exc:
        problems = "; ".join(_describe(e, cls.env_prefix) for e in exc.errors(include_url=False))
        raise ConfigError(f"invalid configuration: {problems}") from None


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
