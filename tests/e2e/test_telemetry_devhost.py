"""Telemetry end to end: devhost (the real chat, jobs and queue_worker blueprints) against a
gpusim with a known time to first token and inter-token latency, exporting OTLP/HTTP to a
local receiver that decodes the protobuf (opentelemetry-proto).

A loopback proxy in front of gpusim records the ``traceparent`` each model request carried,
so trace propagation to the endpoint is checked on the wire.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.fixtures.devhost import DevhostProcess, wait_for
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.jobs import CountingProxy
from tests.fixtures.otlp import Receiver, hist

pytestmark = pytest.mark.e2e

TTFT_MS = 120.0
ITL_MS = 25.0
TOKENS = 12
SERVER, CLIENT = 2, 3  # OTLP span kinds
HOST_JSON = {
    "version": "2.0",
    "extensions": {
        "http": {"routePrefix": "api"},
        "queues": {
            "batchSize": 4,
            "maxDequeueCount": 5,
            "visibilityTimeout": "00:00:01",
            "maxPollingInterval": "00:00:00.200",
            "messageEncoding": "base64",
        },
    },
}


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@dataclass
class Stack:
    host: DevhostProcess
    proxy: CountingProxy
    receiver: Receiver
    http: httpx2.Client

    def chat(self, content: str, *, stream: bool, traceparent: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": "local-model",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 64,
        }
        headers = {"traceparent": traceparent}
        if not stream:
            r = self.http.post("/api/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 200, r.text
            return {"usage": r.json()["usage"]}
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        first: float | None = None
        last = 0.0
        usage = None
        with self.http.stream("POST", "/api/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status_code == 200, self.host.log()[-3000:]
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                delta = (event.get("choices") or [{}])[0].get("delta") or {}
                if delta.get("content"):
                    last = time.perf_counter()
                    first = first or last
                usage = event.get("usage") or usage
        assert first is not None and usage is not None
        gap = (last - first) / max(usage["completion_tokens"] - 1, 1)
        return {"usage": usage, "ttft_s": first - t0, "tpot_s": gap}


@pytest.fixture
def telemetry_stack(
    azurite: Any,
    counting_proxy: Callable[[str], CountingProxy],
    devhost_factory: Callable[..., DevhostProcess],
    gpusim_factory: Callable[..., Gpusim],
    otlp_receiver: Receiver,
    tmp_path: Path,
) -> Iterator[Callable[..., Stack]]:
    clients: list[httpx2.Client] = []

    def make(**env: str) -> Stack:
        sim = gpusim_factory(
            ttft_base_ms=TTFT_MS,
            prefill_ms_per_token=0,
            itl_ms=ITL_MS,
            batch_slowdown=0,
            min_output_tokens=TOKENS,
            max_output_tokens=TOKENS,
        )
        proxy = counting_proxy(sim.url)
        app_dir = tmp_path / "app"
        app_dir.mkdir(exist_ok=True)
        (app_dir / "host.json").write_text(json.dumps(HOST_JSON))
        backends = [{"name": "sim", "kind": "openai", "base_url": proxy.v1, "models": ["*"]}]
        full_env = {
            "AzureWebJobsStorage": azurite.connection_string,
            "INFER_BACKENDS": json.dumps(backends),
            "INFER_JOBS_CONTAINER": "jobs-" + uuid.uuid4().hex[:12],
            "INFER_MAX_RETRIES": "0",
            "INFER_AUTH_LEVEL": "ANONYMOUS",  # no function key in these tests
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url,
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
            "OTEL_SERVICE_NAME": "infer-test",
            **env,
        }
        from azure.storage.queue import QueueClient

        for name in ("inference-requests", "inference-requests-poison"):
            q = QueueClient.from_connection_string(azurite.connection_string, name)
            try:
                q.create_queue()
            except Exception:
                q.clear_messages()
        host = devhost_factory(
            app_module="tests.e2e.jobs_app",
            app_dir=app_dir,
            env=full_env,
            args=["--poll-interval", "0.05"],
        )
        http = httpx2.Client(base_url=host.url, timeout=30)
        clients.append(http)
        return Stack(host, proxy, otlp_receiver, http)

    yield make
    for c in clients:
        c.close()


def _server_spans(receiver: Receiver, n: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        spans = [s for s in receiver.spans() if s["name"] == "chat local-model"]
        return spans if sum(1 for s in spans if s["kind"] != CLIENT) >= n else None

    found = wait_for(ready, timeout=20)
    assert isinstance(found, list)
    return found


def test_chats_through_devhost_export_genai_metrics_and_spans(
    telemetry_stack: Callable[..., Stack],
) -> None:
    stack = telemetry_stack()
    stack.chat("warm up", stream=True, traceparent=new_traceparent()[0])  # first-call setup
    _server_spans(stack.receiver, 1)
    time.sleep(0.5)
    since = stack.receiver.mark()
    stack.proxy.traces.clear()
    calls = []
    for i in range(4):
        tp, trace_id, span_id = new_traceparent()
        answer = stack.chat(f"question {i}", stream=i % 2 == 0, traceparent=tp)
        calls.append({**answer, "trace_id": trace_id, "span_id": span_id, "stream": i % 2 == 0})
    spans = [
        s
        for s in _server_spans(stack.receiver, 5)
        if s["trace_id"] in {c["trace_id"] for c in calls}
    ]

    # One SERVER span per request, continuing the caller's trace, named `chat {model}`.
    by_trace = {c["trace_id"]: c for c in calls}
    server = [s for s in spans if s["kind"] == SERVER]
    assert sorted(s["trace_id"] for s in server) == sorted(by_trace)
    for s in server:
        call = by_trace[s["trace_id"]]
        assert s["parent_id"] == call["span_id"]
        a = s["attrs"]
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] == "local-model"
        assert a["gen_ai.response.model"] == "local-model"
        assert a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.max_tokens"] == 64
        assert a["gen_ai.usage.output_tokens"] == call["usage"]["completion_tokens"]
        assert a["gen_ai.usage.input_tokens"] == call["usage"]["prompt_tokens"]
        assert a["gen_ai.response.finish_reasons"] == ["length"] or a[
            "gen_ai.response.finish_reasons"
        ] == ["stop"]
        assert a["gen_ai.response.id"].startswith("chatcmpl-")
        assert a["server.address"] == "127.0.0.1" and a["infer.backend"] == "sim"
        assert s["resource"]["service.name"] == "infer-test"
    # A CLIENT span per attempt, child of the request's span, whose id the endpoint got.
    client = {s["span_id"]: s for s in spans if s["kind"] == CLIENT}
    assert len(client) == 4
    sent = [tp for _, tp in stack.proxy.traces if tp]
    assert len(sent) == 4
    for tp in sent:
        _, trace_id, span_id, _ = tp.split("-")
        assert trace_id in by_trace and span_id in client
        parent = client[span_id]["parent_id"]
        assert any(s["span_id"] == parent for s in server)

    def metrics_in() -> Any:
        points = stack.receiver.metrics(since)
        done = sum(p.count or 0 for p in hist(points, "gen_ai.server.request.duration"))
        return points if done >= 4 else None

    wait_for(metrics_in, timeout=20)
    time.sleep(0.3)
    points = stack.receiver.metrics(since)
    # Output tokens recorded == the usage the callers were given (delta temporality: add).
    out = hist(points, "gen_ai.client.token.usage", **{"gen_ai.token.type": "output"})
    assert sum(p.sum or 0 for p in out) == sum(c["usage"]["completion_tokens"] for c in calls)
    inp = hist(points, "gen_ai.client.token.usage", **{"gen_ai.token.type": "input"})
    assert sum(p.sum or 0 for p in inp) == sum(c["usage"]["prompt_tokens"] for c in calls)
    for p in out:
        assert p.attrs["infer.backend"] == "sim" and p.attrs["infer.caller"] == "anonymous"
        assert p.attrs["gen_ai.provider.name"] == "openai" and p.attrs["server.port"] > 0
    durations = hist(
        points, "gen_ai.client.operation.duration", **{"gen_ai.operation.name": "chat"}
    )
    assert sum(p.count or 0 for p in durations) == 4
    assert sum(p.count or 0 for p in hist(points, "gen_ai.server.request.duration")) == 4

    # TTFT: at least gpusim's, and no more than what the callers measured (gpusim's plus
    # every overhead on the way) -- a band, not a timing: the machine is shared.
    streams = [c for c in calls if c["stream"]]
    ttft = hist(points, "gen_ai.server.time_to_first_token")
    n = sum(p.count or 0 for p in ttft)
    assert n == len(streams)
    mean_ttft = sum(p.sum or 0 for p in ttft) / n
    caller_ttft = sum(c["ttft_s"] for c in streams) / n
    assert TTFT_MS / 1000 <= mean_ttft <= caller_ttft + 0.005, (mean_ttft, caller_ttft)
    # TPOT: near gpusim's inter-token latency, and near the gaps the callers saw.
    tpot = hist(points, "gen_ai.server.time_per_output_token")
    assert sum(p.count or 0 for p in tpot) == n
    mean_tpot = sum(p.sum or 0 for p in tpot) / n
    caller_tpot = sum(c["tpot_s"] for c in streams) / n
    assert mean_tpot >= 0.6 * ITL_MS / 1000, mean_tpot
    assert abs(mean_tpot - caller_tpot) <= 0.5 * caller_tpot, (mean_tpot, caller_tpot)


def test_traceparent_continues_through_a_queue_job(telemetry_stack: Callable[..., Stack]) -> None:
    stack = telemetry_stack()
    tp, trace_id, span_id = new_traceparent()
    line = {
        "custom_id": "t-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]},
    }
    r = stack.http.post("/api/v1/jobs", json=line, headers={"traceparent": tp})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def succeeded() -> bool:
        got = stack.http.get(f"/api/v1/jobs/{job_id}")
        return got.status_code == 200 and got.json()["status"] == "succeeded"

    wait_for(succeeded, timeout=30, interval=0.2)
    spans = _server_spans(stack.receiver, 1)
    job = [s for s in spans if s["attrs"].get("infer.trigger") == "queue"]
    assert len(job) == 1
    assert job[0]["trace_id"] == trace_id and job[0]["parent_id"] == span_id
    assert job[0]["attrs"]["infer.request_id"] == job_id
    # The endpoint got the job's trace too, from the attempt's CLIENT span.
    sent = [t for rid, t in stack.proxy.traces if rid == job_id]
    assert len(sent) == 1 and sent[0] is not None and sent[0].split("-")[1] == trace_id

    def job_metrics() -> Any:
        points = stack.receiver.metrics()
        return points if hist(points, "infer.job.age_at_start") else None

    points = wait_for(job_metrics, timeout=20)
    assert isinstance(points, list)
    assert sum(p.count or 0 for p in hist(points, "infer.job.queue_time")) >= 1


def _word() -> str:
    return "zebra" + secrets.token_hex(6)


def test_without_content_capture_no_prompt_text_reaches_telemetry_or_logs(
    telemetry_stack: Callable[..., Stack],
) -> None:
    stack = telemetry_stack()
    word = _word()
    for i, stream in enumerate((True, False)):
        tp, *_ = new_traceparent()
        stack.chat(f"tell me about {word} number {i}", stream=stream, traceparent=tp)
    _server_spans(stack.receiver, 2)
    time.sleep(0.5)
    log = stack.host.log()
    assert '"event": "inference"' in log  # request logs are there, as JSON lines
    assert word not in log
    assert word.encode() not in stack.receiver.raw()
    # the structured log line carries ids and the outcome
    lines = [json.loads(x[x.index("{") :]) for x in log.splitlines() if '"event": "inference"' in x]
    assert {ln["outcome"] for ln in lines} == {"ok"}
    assert all(ln["trace_id"] and ln["request_id"] and ln["backend"] == "sim" for ln in lines)
    assert all(ln["model"] == "local-model" and ln["caller"] == "anonymous" for ln in lines)
    assert len(lines) == 2 and all(len(ln["trace_id"]) == 32 for ln in lines)


def test_content_capture_records_redacted_prompts_as_span_events(
    telemetry_stack: Callable[..., Stack],
) -> None:
    stack = telemetry_stack(INFER_CAPTURE_CONTENT="true", INFER_REDACT_PATTERNS='["ACCT-\\\\d{6}"]')
    word = _word()
    key = "sk-" + secrets.token_hex(20)
    email = "jane.doe@example.com"
    prompt = f"{word}: my key is {key}, mail {email}, account ACCT-123456"
    tp, trace_id, _ = new_traceparent()
    stack.chat(prompt, stream=True, traceparent=tp)
    spans = _server_spans(stack.receiver, 1)
    server = next(s for s in spans if s["trace_id"] == trace_id and s["kind"] == SERVER)
    captured = server["events"]["gen_ai.input.messages"]["gen_ai.input.messages"]
    assert word in captured
    assert key not in captured and email not in captured and "ACCT-123456" not in captured
    assert "[REDACTED]" in captured and "[EMAIL]" in captured
    answer = server["events"]["gen_ai.output.messages"]["gen_ai.output.messages"]
    assert json.loads(answer)[0]["content"]
    raw = stack.receiver.raw()
    assert key.encode() not in raw and email.encode() not in raw
    log = stack.host.log()
    assert word in log and key not in log and email not in log
