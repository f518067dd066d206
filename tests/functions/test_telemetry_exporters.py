"""Exporters chosen by the environment, through the real entry points against gpusim:

- Application Insights (``APPLICATIONINSIGHTS_CONNECTION_STRING``) through the FastAPI app,
  its ``IngestionEndpoint`` a loopback receiver that records the Track requests;
- CloudWatch EMF on stdout (``INFER_METRICS_EMF``) through the Lambda handler;
- nothing configured: no telemetry module imported, the caller's ``traceparent`` still
  reaches the endpoint unchanged.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from shared.lifecycle import reset_all
from tests.fixtures.events import LambdaContext, load_event
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.jobs import CountingProxy
from tests.fixtures.otlp import Receiver, hist
from tests.fixtures.procs import PYTHON, ROOT

CHAT = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def sim_env(clean_env: pytest.MonkeyPatch, gpusim: Gpusim) -> pytest.MonkeyPatch:
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "APPLICATIONINSIGHTS_CONNECTION_STRING"):
        clean_env.delenv(key, raising=False)
    backends = [{"name": "sim", "kind": "openai", "base_url": gpusim.v1}]
    clean_env.setenv("INFER_BACKENDS", json.dumps(backends))
    return clean_env


async def _post(body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx2.Response:
    from functions.chat.app import app

    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://fn") as client:
        return await client.post("/v1/chat/completions", json=body, headers=headers or {})


async def test_application_insights_receives_metrics_and_spans_before_the_answer(
    otlp_receiver: Receiver, sim_env: pytest.MonkeyPatch
) -> None:
    sim_env.setenv(
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "InstrumentationKey=00000000-0000-0000-0000-000000000001;"
        f"IngestionEndpoint={otlp_receiver.url}/",
    )
    sim_env.setenv("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")
    before = set(threading.enumerate())
    r = await _post(CHAT, {"traceparent": TRACEPARENT})
    assert r.status_code == 200, r.text
    # The invocation flushed before answering: the Track requests are already there.
    items = otlp_receiver.track_items()
    kinds = {i["data"]["baseType"] for i in items}
    assert {"MetricData", "RequestData", "RemoteDependencyData"} <= kinds, kinds
    metrics = {m["name"] for i in items if i["data"]["baseType"] == "MetricData"
               for m in i["data"]["baseData"]["metrics"]}  # fmt: skip
    assert {"gen_ai.client.operation.duration", "gen_ai.server.request.duration"} <= metrics
    assert "gen_ai.client.token.usage" in metrics
    request = next(i for i in items if i["data"]["baseType"] == "RequestData")
    assert request["data"]["baseData"]["name"] == "chat local-model"
    assert request["tags"]["ai.operation.id"] == TRACEPARENT.split("-")[1]
    props = request["data"]["baseData"]["properties"]
    assert props["gen_ai.operation.name"] == "chat" and props["infer.backend"] == "sim"
    # Shutting telemetry down stops every exporting thread it started, the exporter's own
    # SDK-stats provider included: none is left to export later, past any deadline.
    started = [t for t in threading.enumerate() if t not in before]
    readers = [t for t in started if t.name == "OtelPeriodicExportingMetricReader"]
    assert len(readers) >= 2, started  # ours and the exporter's SDK-stats provider
    reset_all()
    for t in readers:
        t.join(timeout=5)
    assert not [t for t in readers if t.is_alive()], readers


def test_lambda_handler_writes_cloudwatch_emf_to_stdout(
    sim_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sim_env.setenv("INFER_METRICS_EMF", "true")
    sim_env.setenv("INFER_METRICS_NAMESPACE", "InferTest")
    from functions.chat.aws import handler

    # Mangum runs on the thread's event loop, as in the Lambda runtime; an async test before
    # this one may have left none set.
    asyncio.set_event_loop(asyncio.new_event_loop())
    out = handler(load_event("apigw_v2_chat"), LambdaContext())
    assert out["statusCode"] == 200
    usage = json.loads(out["body"])["usage"]
    docs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"_aws"' in x]
    assert docs, "no EMF document on stdout"
    doc = next(d for d in docs if "gen_ai.server.request.duration" in d)
    spec = doc["_aws"]["CloudWatchMetrics"][0]
    assert spec["Namespace"] == "InferTest"
    assert spec["Dimensions"] == [["operation", "model", "backend"]]
    assert (doc["operation"], doc["model"], doc["backend"]) == ("chat", "local-model", "sim")
    units = {m["Name"]: m["Unit"] for m in spec["Metrics"]}
    assert units["gen_ai.client.operation.duration"] == "Seconds"
    assert units["gen_ai.client.token.usage.output"] == "Count"
    assert doc["gen_ai.client.token.usage.output"] == usage["completion_tokens"]
    assert doc["gen_ai.client.token.usage.input"] == usage["prompt_tokens"]
    assert isinstance(doc["_aws"]["Timestamp"], int)


def test_off_imports_nothing_and_passes_the_callers_traceparent_on(
    gpusim: Gpusim, counting_proxy: Callable[[str], CountingProxy]
) -> None:
    proxy = counting_proxy(gpusim.url)
    code = f"""
import asyncio, json, sys, httpx2
from functions.chat.app import app
async def main():
    t = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=t, base_url="http://fn") as c:
        r = await c.post("/v1/chat/completions", json={CHAT!r},
                         headers={{"traceparent": "{TRACEPARENT}"}})
        assert r.status_code == 200, r.text
asyncio.run(main())
# fastapi itself imports the OpenTelemetry *API* (its native, no-op-by-default telemetry);
# the SDK, the exporters and the project's providers must stay out.
heavy = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.proto",
         "azure.monitor", "prometheus_client", "google.protobuf", "requests",
         "shared.telemetry.otel", "shared.telemetry.emf", "shared.telemetry.redact")
bad = sorted(m for m in sys.modules if m.startswith(heavy))
print(json.dumps(bad))
"""
    env = {
        "PATH": "/usr/bin:/bin",
        "INFER_BACKENDS": json.dumps([{"name": "sim", "kind": "openai", "base_url": proxy.v1}]),
    }
    out = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert [tp for _, tp in proxy.traces] == [TRACEPARENT]


async def test_failover_throttle_circuit_and_retry_are_counted(
    otlp_receiver: Receiver, sim_env: pytest.MonkeyPatch, gpusim: Gpusim
) -> None:
    backends = [
        {"name": "primary", "kind": "openai", "base_url": gpusim.v1, "priority": 0},
        {"name": "secondary", "kind": "openai", "base_url": gpusim.v1, "priority": 1},
    ]
    sim_env.setenv("INFER_BACKENDS", json.dumps(backends))
    sim_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    sim_env.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    gpusim.set_fault("429", count=1, retry_after=5)  # primary throttles, its circuit opens
    r = await _post(CHAT)
    assert r.status_code == 200, r.text
    gpusim.set_fault("503", count=2, retry_after=0.05)  # secondary, then a retry succeeds
    r = await _post(CHAT)
    assert r.status_code == 200, r.text
    points = otlp_receiver.metrics()

    def total(name: str, **attrs: Any) -> float:
        return sum(p.value or 0 for p in hist(points, name, **attrs))

    assert total("infer.throttles", **{"infer.backend": "primary"}) == 1
    assert total("infer.failovers", **{"infer.failover.from": "primary"}) >= 1
    assert total("infer.circuit.changes", **{"infer.backend": "primary",
                                            "infer.circuit.state": "open"}) == 1  # fmt: skip
    assert total("infer.retries") >= 1
    primary = hist(points, "gen_ai.client.operation.duration", **{"infer.backend": "primary"})
    assert any(p.attrs.get("error.type") for p in primary)  # the throttled attempt
    spans = otlp_receiver.spans()
    clients = [s for s in spans if s["kind"] == 3]
    assert {s["attrs"]["infer.backend"] for s in clients} == {"primary", "secondary"}
    assert any(s["status"] == 2 for s in clients)  # the failed attempt is an error span


async def test_limit_refusals_and_cache_outcomes_are_counted(
    otlp_receiver: Receiver, sim_env: pytest.MonkeyPatch
) -> None:
    sim_env.setenv("INFER_LIMITS", json.dumps([{"caller": "*", "rpm": 2}]))
    sim_env.setenv("INFER_CACHE", json.dumps({"mode": "exact"}))
    sim_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    sim_env.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    first = await _post(CHAT)
    second = await _post(CHAT)  # the same body: a cache hit, still one request of the limit
    third = await _post(CHAT)
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    points = otlp_receiver.metrics()

    def total(name: str, **attrs: Any) -> float:
        return sum(p.value or 0 for p in hist(points, name, **attrs))

    assert total("infer.limit.refusals", **{"infer.limit": "rpm"}) == 1
    assert total("infer.throttles", **{"infer.throttle.source": "limit"}) == 1
    assert total("infer.cache.requests", **{"infer.cache": "miss"}) == 1
    assert total("infer.cache.requests", **{"infer.cache": "hit"}) == 1


def test_batch_lines_are_counted_and_continue_their_traceparent(
    otlp_receiver: Receiver, batch_env: pytest.MonkeyPatch, azurite: Any, gpusim: Gpusim
) -> None:
    from azure.functions.blob import InputStream

    from tests.fixtures.batch import gpusim_backend, make_input
    from tests.functions.test_batch_adapters import azure_fn

    batch_env.setenv("AzureWebJobsStorage", azurite.connection_string)
    batch_env.setenv("INFER_BACKENDS", gpusim_backend(gpusim.v1))
    batch_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    batch_env.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    data, good, bad = make_input(20, bad_every=10, prefix="tel")
    first = json.loads(data.split(b"\n", 1)[0])
    first["traceparent"] = TRACEPARENT
    data = json.dumps(first).encode() + b"\n" + data.split(b"\n", 1)[1]
    container = azurite.blob_service().get_container_client("batch-in")
    if not container.exists():
        container.create_container()
    container.upload_blob("tel.jsonl", data, overwrite=True)
    trigger = InputStream(data=b"", name="batch-in/tel.jsonl", length=len(data))
    asyncio.run(azure_fn("batch").get_user_function()(trigger))
    points = otlp_receiver.metrics()  # flushed before the function returned
    lines = hist(points, "infer.batch.lines", **{"infer.batch": "tel"})
    assert sum(p.value or 0 for p in lines if p.attrs["infer.outcome"] == "ok") == len(good)
    assert sum(p.value or 0 for p in lines if p.attrs["infer.outcome"] == "failed") == bad
    assert hist(points, "infer.batch.lines_per_second") and hist(
        points, "infer.batch.in_flight_limit"
    )
    spans = [s for s in otlp_receiver.spans() if s["kind"] != 3]
    assert len(spans) == len(good) and {s["attrs"]["infer.trigger"] for s in spans} == {"batch"}
    traced = [s for s in spans if s["trace_id"] == TRACEPARENT.split("-")[1]]
    assert len(traced) == 1 and traced[0]["parent_id"] == TRACEPARENT.split("-")[2]
