"""The OpenTelemetry provider: meters and tracers with the exporters the environment names.

Imported only when an exporter is configured (``shared.telemetry`` decides):

- OTLP over HTTP/protobuf (``opentelemetry-exporter-otlp-proto-http``) when
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its ``_TRACES_`` / ``_METRICS_`` variant) is set; the
  exporter itself reads the other standard ``OTEL_EXPORTER_OTLP_*`` variables (headers,
  timeout, temporality preference). ``OTEL_TRACES_EXPORTER=none`` /
  ``OTEL_METRICS_EXPORTER=none`` turn one signal off.
- Application Insights (``azure-monitor-opentelemetry-exporter``) when
  ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set; with
  ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD[;ClientId=…]`` it sends with
  the function's managed identity.
- A Prometheus reader (``opentelemetry-exporter-prometheus``) when
  ``INFER_METRICS_PROMETHEUS`` is on: devhost serves it at ``/metrics``.

Providers are private to this module (the global OpenTelemetry providers are left alone).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.telemetry.names import ALL, Metric

log = logging.getLogger("shared.telemetry")

KINDS = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL}
SCOPE = "serverless-inference"


def service_name() -> str:
    env = os.environ
    return (
        env.get("OTEL_SERVICE_NAME")
        or env.get("AWS_LAMBDA_FUNCTION_NAME")
        or env.get("WEBSITE_SITE_NAME")
        or "serverless-inference"
    )


def _off(signal: str) -> bool:
    return os.environ.get(f"OTEL_{signal}_EXPORTER", "").strip().lower() == "none"


def _otlp(signal: str) -> bool:
    env = os.environ
    if _off(signal):
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


def _check_protocol() -> None:
    proto = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip().lower()
    if proto not in ("http/protobuf", ""):
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; using http/protobuf", proto)


def _azure_credential() -> Any:
    auth = os.environ.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "")
    parts = dict(p.split("=", 1) for p in auth.split(";") if "=" in p)
    if parts.get("Authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=parts.get("ClientId") or None)


class Otel:
    """Metrics (every configured reader) and, when an exporter takes spans, traces."""

    def __init__(self, *, appinsights: str | None, prometheus: bool) -> None:
        _check_protocol()
        resource = Resource.create({"service.name": service_name()})
        readers: list[MetricReader] = []
        credential = _azure_credential() if appinsights else None
        self.appinsights = bool(appinsights)
        self.push = False
        if _otlp("METRICS"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
            self.push = True
        if appinsights and not _off("METRICS"):
            from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter

            exporter = AzureMonitorMetricExporter(
                connection_string=appinsights, credential=credential, disable_offline_storage=True
            )
            readers.append(PeriodicExportingMetricReader(exporter))
            self.push = True
        self.prometheus: MetricReader | None = None
        if prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            self.prometheus = PrometheusMetricReader()
            readers.append(self.prometheus)
        self.meters = MeterProvider(resource=resource, metric_readers=readers)
        meter = self.meters.get_meter(SCOPE)
        self._instruments: dict[str, Any] = {}
        for m in ALL:
            if m.kind == "histogram":
                inst: Any = meter.create_histogram(
                    m.name,
                    unit=m.unit,
                    description=m.description,
                    explicit_bucket_boundaries_advisory=list(m.buckets or ()),
                )
            elif m.kind == "counter":
                inst = meter.create_counter(m.name, unit=m.unit, description=m.description)
            else:
                inst = meter.create_gauge(m.name, unit=m.unit, description=m.description)
            self._instruments[m.name] = inst

        self.tracer: trace.Tracer | None = None
        self.traces: TracerProvider | None = None
        processors: list[BatchSpanProcessor] = []
        if _otlp("TRACES"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        if appinsights and not _off("TRACES"):
            from azure.monitor.opentelemetry.exporter import AzureMonitorTraceExporter

            processors.append(
                BatchSpanProcessor(
                    AzureMonitorTraceExporter(
                        connection_string=appinsights,
                        credential=credential,
                        disable_offline_storage=True,
                    )
                )
            )
        if processors:
            self.traces = TracerProvider(resource=resource)
            for p in processors:
                self.traces.add_span_processor(p)
            self.tracer = self.traces.get_tracer(SCOPE)
            self.push = True
        self._propagator = TraceContextTextMapPropagator()

    # -- metrics ---------------------------------------------------------------------------

    def record(self, metric: Metric, value: float, attrs: dict[str, Any]) -> None:
        inst = self._instruments[metric.name]
        if metric.kind == "histogram":
            inst.record(value, attrs)
        elif metric.kind == "counter":
            inst.add(value, attrs)
        else:
            inst.set(value, attrs)

    # -- spans -----------------------------------------------------------------------------

    def start_span(
        self, name: str, kind: str, traceparent: str | None, parent: Any, attrs: dict[str, Any]
    ) -> Any:
        assert self.tracer is not None
        if parent is not None:
            context = trace.set_span_in_context(parent)
        elif traceparent:
            context = self._propagator.extract({"traceparent": traceparent})
        else:
            context = None
        return self.tracer.start_span(name, context=context, kind=KINDS[kind], attributes=attrs)

    @staticmethod
    def end_span(span: Span, attrs: dict[str, Any], error: str | None) -> None:
        span.set_attributes(attrs)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    @staticmethod
    def event(span: Span, name: str, attrs: dict[str, Any]) -> None:
        span.add_event(name, attrs)

    @staticmethod
    def traceparent(span: Span) -> str:
        sc = span.get_span_context()
        return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"

    @staticmethod
    def trace_id(span: Span) -> str:
        return f"{span.get_span_context().trace_id:032x}"

    # -- lifecycle -------------------------------------------------------------------------

    def flush(self, timeout_s: float) -> None:
        """Export what was recorded, within ``timeout_s`` seconds (traces first)."""
        ms = max(int(timeout_s * 1000), 1)
        if self.traces is not None:
            self.traces.force_flush(ms // 2 or 1)
        self.meters.force_flush(ms // 2 or 1)

    def prometheus_text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        if self.traces is not None:
            self.traces.shutdown()
        self.meters.shutdown()
        if self.appinsights:
            # Azure Monitor's exporters start a process-wide "customer SDK stats" meter
            # provider of their own (its counts of items sent, retried and dropped, exported
            # to the same resource every 15 minutes on its own thread, unless
            # APPLICATIONINSIGHTS_SDKSTATS_DISABLED=true). It goes with the providers that
            # started it; a later provider's exporter starts it again. Exporter releases
            # before it (requirements.txt allows 1.0.0b40 on) have none to shut down.
            try:
                from azure.monitor.opentelemetry.exporter.statsbeat.customer import (
                    shutdown_customer_sdkstats_metrics,
                )
            except ImportError:
                pass
            else:
                shutdown_customer_sdkstats_metrics()
        if self.prometheus is not None:
            from prometheus_client import REGISTRY

            for collector in list(getattr(REGISTRY, "_collector_to_names", {})):
                if type(collector).__module__.startswith("opentelemetry.exporter.prometheus"):
                    REGISTRY.unregister(collector)
