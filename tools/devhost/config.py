"""host.json and local.settings.json, read the way the Functions host reads them."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d+):(?P<m>\d+):(?P<s>\d+(?:\.\d+)?)$")
_SETTING_EXPR = re.compile(r"%([^%]+)%")


class ConfigError(ValueError):
    """A host.json, local.settings.json or app setting that devhost cannot use."""


def parse_timespan(value: object, *, name: str) -> float:
    """Seconds from a .NET TimeSpan string (``[d.]hh:mm:ss[.fff]``) or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a TimeSpan like '00:00:30', got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _TIMESPAN.match(value.strip())
        if m:
            days = int(m["d"] or 0)
            return days * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"])
    raise ConfigError(f"{name}: expected a TimeSpan like '00:00:30', got {value!r}")


@dataclass(frozen=True)
class QueueOptions:
    """``extensions.queues`` of host.json (also used by blob triggers for retries)."""

    batch_size: int = 16
    new_batch_threshold: int | None = None
    max_dequeue_count: int = 5
    visibility_timeout_s: float = 0.0
    max_polling_interval_s: float = 2.0  # the host's default in development (60 s deployed)
    message_encoding: str = "base64"
    #: what the default newBatchThreshold is multiplied by (``host_processor_count``)
    processor_count: int = 1

    @property
    def fetch_threshold(self) -> int:
        """Fetch a new batch when no more than this many messages are in flight.

        The host's default is ``batchSize / 2`` per processor (the Storage extension's
        ``QueuesOptions.NewBatchThreshold``): with a 2-vCPU plan and ``batchSize`` 32, up to
        32 + 32 messages run at once; on a Consumption plan, 32 + 16.
        """
        if self.new_batch_threshold is not None:
            return self.new_batch_threshold
        return (self.batch_size // 2) * self.processor_count


def host_processor_count(env: Mapping[str, str]) -> int:
    """The host's processor count for queue defaults: 1 on a Consumption plan
    (``WEBSITE_SKU=Dynamic``), else the processors this process may run on."""
    if env.get("WEBSITE_SKU", "").strip().lower() == "dynamic":
        return 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover (macOS, Windows)
        return os.cpu_count() or 1


@dataclass(frozen=True)
class HostConfig:
    route_prefix: str = "api"
    queues: QueueOptions = field(default_factory=QueueOptions)
    function_timeout_s: float | None = None


def _int(raw: Mapping[str, Any], key: str, default: int, *, low: int, high: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(
            f"host.json extensions.queues.{key}: expected {low}..{high}, got {value!r}"
        )
    return value


def parse_host_json(data: Mapping[str, Any], *, processor_count: int | None = None) -> HostConfig:
    """host.json's settings; ``processor_count`` defaults to ``host_processor_count``."""
    extensions = data.get("extensions") or {}
    http = extensions.get("http") or {}
    prefix = http.get("routePrefix", "api")
    if not isinstance(prefix, str):
        raise ConfigError(
            f"host.json extensions.http.routePrefix: expected a string, got {prefix!r}"
        )
    raw = extensions.get("queues") or {}
    batch_size = _int(raw, "batchSize", 16, low=1, high=32)
    threshold = raw.get("newBatchThreshold")
    if threshold is not None:
        threshold = _int(raw, "newBatchThreshold", 0, low=0, high=1000)
    encoding = str(raw.get("messageEncoding", "base64")).lower()
    if encoding not in ("base64", "none"):
        raise ConfigError(
            f"host.json extensions.queues.messageEncoding: expected base64|none, got {encoding!r}"
        )
    queues = QueueOptions(
        batch_size=batch_size,
        new_batch_threshold=threshold,
        max_dequeue_count=_int(raw, "maxDequeueCount", 5, low=1, high=10_000),
        visibility_timeout_s=parse_timespan(
            raw.get("visibilityTimeout", 0), name="host.json extensions.queues.visibilityTimeout"
        ),
        max_polling_interval_s=parse_timespan(
            raw.get("maxPollingInterval", 2), name="host.json extensions.queues.maxPollingInterval"
        ),
        message_encoding=encoding,
        processor_count=host_processor_count(os.environ)
        if processor_count is None
        else processor_count,
    )
    timeout = data.get("functionTimeout")
    return HostConfig(
        route_prefix=prefix.strip("/"),
        queues=queues,
        function_timeout_s=None
        if timeout is None
        else parse_timespan(timeout, name="host.json functionTimeout"),
    )


def load_host_json(path: Path) -> HostConfig:
    """Read host.json; a missing file means the host's defaults."""
    if not path.exists():
        return parse_host_json({})
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return parse_host_json(data)


def apply_local_settings(path: Path, environ: MutableMapping[str, str]) -> list[str]:
    """Copy ``Values`` into ``environ`` for keys it does not already hold (environment wins).

    Returns the keys that were applied. A missing file applies nothing.
    """
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from exc
    values = data.get("Values") if isinstance(data, dict) else None
    if values is None:
        return []
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: 'Values' must be an object")
    applied = []
    for key, value in values.items():
        if key in environ or value is None:
            continue
        environ[key] = value if isinstance(value, str) else json.dumps(value)
        applied.append(key)
    return applied


def resolve_setting_expressions(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``%Name%`` app-setting expressions (as in ``queue_name="%JOBS_QUEUE%"``)."""
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        try:
            return env[m[1]]
        except KeyError:
            raise ConfigError(f"app setting {m[1]!r} (used as %{m[1]}%) is not set") from None

    return _SETTING_EXPR.sub(sub, text)
