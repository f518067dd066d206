"""CloudWatch metrics through the Embedded Metric Format: JSON documents on stdout.

Lambda ships stdout to CloudWatch Logs, which extracts the metrics: no network call, no
SDK, no thread. Values are kept per dimension set (operation, model, backend) and written at
the invocation's flush, at most 100 values per metric per document (the EMF limit).

Chosen by measurement over Powertools Metrics (README, Telemetry): this writer imports only
``json``; ``aws_lambda_powertools.metrics`` costs about 47 ms of a cold start here and allows
one dimension set per document, where a batch invocation records several backends at once.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, TextIO

from shared.telemetry.names import CLIENT_TOKENS, Metric

#: EMF dimension name -> telemetry attribute.
DIMENSIONS = (
    ("operation", "gen_ai.operation.name"),
    ("model", "gen_ai.request.model"),
    ("backend", "infer.backend"),
)
MAX_VALUES = 100
MAX_METRICS = 100


def known_models() -> frozenset[str]:
    """The model names the backends are configured with (the wildcard is not one)."""
    try:
        from shared.settings import get_settings

        return frozenset(m for b in get_settings().backends for m in b.models if m != "*")
    except Exception:  # settings broken: the request fails on its own; keep metrics bounded
        return frozenset()


def namespace() -> str:
    return os.environ.get("INFER_METRICS_NAMESPACE") or "ServerlessInference"


class EmfSink:
    """Accumulates values; ``flush`` prints them as EMF documents."""

    push = True

    def __init__(self, ns: str | None = None, out: TextIO | None = None) -> None:
        self.namespace = ns or namespace()
        self._out = out
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, ...], dict[tuple[str, str], list[float]]] = {}
        self._known: frozenset[str] | None = None

    def _model(self, attrs: dict[str, Any]) -> str:
        """The ``model`` dimension: a configured model name, else what the endpoint said it
        served, else ``other``: a caller-chosen string never becomes a CloudWatch metric
        (each distinct dimension value is a metric, and billed)."""
        asked = attrs.get("gen_ai.request.model")
        if not asked:
            return "-"
        if self._known is None:
            self._known = known_models()
        if asked in self._known:
            return str(asked)
        return str(attrs.get("gen_ai.response.model") or "other")

    def record(self, metric: Metric, value: float, attrs: dict[str, Any]) -> None:
        dims = (
            str(attrs.get("gen_ai.operation.name") or "-"),
            self._model(attrs),
            str(attrs.get("infer.backend") or "-"),
        )
        name = metric.name
        if metric is CLIENT_TOKENS:  # one metric per token type: CloudWatch sums them apart
            name = f"{name}.{attrs.get('gen_ai.token.type', 'output')}"
        with self._lock:
            self._pending.setdefault(dims, {}).setdefault((name, metric.emf_unit), []).append(
                float(value)
            )

    def documents(self) -> list[dict[str, Any]]:
        """Take what is pending as EMF documents (and forget it)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        now = int(time.time() * 1000)
        docs: list[dict[str, Any]] = []
        names = [d for d, _ in DIMENSIONS]
        for dims, metrics in pending.items():
            series = [(n, u, v[i : i + MAX_VALUES]) for (n, u), v in metrics.items()
                      for i in range(0, len(v), MAX_VALUES)]  # fmt: skip
            while series:
                doc: dict[str, Any] = dict(zip(names, dims, strict=True))
                defs: list[dict[str, str]] = []
                rest = []
                for name, unit, values in series:
                    if name in doc or len(defs) >= MAX_METRICS:
                        rest.append((name, unit, values))
                        continue
                    defs.append({"Name": name, "Unit": unit})
                    doc[name] = values if len(values) > 1 else values[0]
                doc["_aws"] = {
                    "Timestamp": now,
                    "CloudWatchMetrics": [
                        {"Namespace": self.namespace, "Dimensions": [names], "Metrics": defs}
                    ],
                }
                docs.append(doc)
                series = rest
        return docs

    def flush(self, timeout_s: float) -> None:
        docs = self.documents()
        if not docs:
            return
        out = self._out or sys.stdout
        out.write("".join(json.dumps(d, separators=(",", ":")) + "\n" for d in docs))
        out.flush()

    def shutdown(self) -> None:
        self.flush(0.0)
