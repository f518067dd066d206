"""shared.telemetry without exporters: redaction, settings, the off facade, EMF documents."""

from __future__ import annotations

import io
import json

import pytest

from shared import telemetry
from shared.context import Context
from shared.errors import ConfigError
from shared.lifecycle import reset_all
from shared.telemetry import names as N
from shared.telemetry.emf import EmfSink
from shared.telemetry.redact import Redactor, parse_patterns


def test_redactor_masks_keys_tokens_emails_and_configured_patterns() -> None:
    r = Redactor(parse_patterns('["ACCT-\\\\d{6}"]'))
    # Fake secrets of each shape, assembled here so no key-like literal sits in the source.
    openai_key = "sk-" + "proj-" + "abcdefghijklmnop1234"
    aws_key_id = "AKIA" + "ABCDEFGHIJKLMNOP"
    azure_key = "0123456789abcdef" * 2
    text = (
        f"key {openai_key} bearer: Authorization: Bearer eyJhbGciOi.eyJzdWIi.sig "
        f"aws {aws_key_id} azure {azure_key} "
        "mail jane.doe+x@example.co.uk password=hunter2hunter acct ACCT-123456 keep me"
    )
    out = r(text)
    secrets = [openai_key, "eyJhbGciOi", aws_key_id]
    secrets += [azure_key, "jane.doe", "hunter2hunter", "123456"]
    for secret in secrets:
        assert secret not in out, secret
    assert "[EMAIL]" in out and out.count("[REDACTED]") >= 6 and out.endswith("keep me")


def test_redact_patterns_setting_is_checked() -> None:
    assert parse_patterns("") == [] and parse_patterns("x\\d+") == ["x\\d+"]
    with pytest.raises(ConfigError, match="INFER_REDACT_PATTERNS"):
        parse_patterns('["("]')
    with pytest.raises(ConfigError, match="INFER_REDACT_PATTERNS"):
        parse_patterns("[1, 2]")


def test_off_facade_records_nothing_and_passes_the_traceparent_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "APPLICATIONINSIGHTS_CONNECTION_STRING",
                "INFER_METRICS_EMF", "INFER_METRICS_PROMETHEUS", "INFER_CAPTURE_CONTENT",
                "INFER_LOG_PROMPTS"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    reset_all()
    ctx = Context.with_timeout(5)
    ctx.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    rec = telemetry.start("chat/completions", {"model": "m"}, ctx)
    assert rec is telemetry.NO_REQUEST and ctx.telemetry is None
    assert not telemetry.enabled() and telemetry.capture() is None
    assert telemetry.traceparent(ctx) == ctx.traceparent
    assert telemetry.trace_id(ctx) == "0af7651916cd43dd8448eb211c80319c"
    assert telemetry.prometheus_text() is None
    telemetry.record_retry(ctx, RuntimeError())  # no-ops
    telemetry.record_cache(ctx, "hit")
    reset_all()


def test_log_prompts_is_the_same_opt_in_as_capture_content(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INFER_CAPTURE_CONTENT", raising=False)
    monkeypatch.setenv("INFER_LOG_PROMPTS", "true")
    reset_all()
    assert telemetry.capture() is not None
    reset_all()


def test_emf_documents_group_values_by_dimensions_within_limits() -> None:
    out = io.StringIO()
    sink = EmfSink("NS", out)
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m", "infer.backend": "b"}
    for i in range(150):
        sink.record(N.SERVER_TTFT, 0.01 * i, attrs)
    sink.record(N.CLIENT_TOKENS, 7, {**attrs, "gen_ai.token.type": "output"})
    sink.record(N.RETRIES, 1, {**attrs, "infer.backend": "other"})
    sink.flush(1.0)
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    ttft = [d for d in docs if "gen_ai.server.time_to_first_token" in d]
    assert sum(len(d["gen_ai.server.time_to_first_token"]) for d in ttft) == 150
    assert all(len(d["gen_ai.server.time_to_first_token"]) <= 100 for d in ttft)
    tokens = next(d for d in docs if "gen_ai.client.token.usage.output" in d)
    assert tokens["gen_ai.client.token.usage.output"] == 7.0
    retries = next(d for d in docs if "infer.retries" in d)
    assert retries["backend"] == "other"
    for d in docs:
        spec = d["_aws"]["CloudWatchMetrics"][0]
        assert spec["Namespace"] == "NS" and spec["Dimensions"] == [
            ["operation", "model", "backend"]
        ]
        assert all(m["Name"] in d for m in spec["Metrics"])
    sink.flush(1.0)
    assert len(out.getvalue().splitlines()) == len(docs)  # nothing twice


def test_bucket_boundaries_follow_the_conventions() -> None:
    assert N.DURATION_BUCKETS[0] == 0.01 and N.DURATION_BUCKETS[-1] == 81.92
    assert N.TOKEN_BUCKETS[0] == 1 and N.TOKEN_BUCKETS[-1] == 67108864
    assert N.TTFT_BUCKETS[0] == 0.001 and N.TTFT_BUCKETS[-1] == 10.0
    assert N.TPOT_BUCKETS[0] == 0.01 and N.TPOT_BUCKETS[-1] == 2.5


def test_concurrent_flushes_are_shared_and_each_covers_its_caller() -> None:
    import threading
    import time

    class SlowSink:
        push = True

        def __init__(self) -> None:
            self.flushes: list[tuple[float, float]] = []

        def record(self, metric: N.Metric, value: float, attrs: dict[str, object]) -> None:
            return None

        def flush(self, timeout_s: float) -> None:
            start = time.monotonic()
            time.sleep(0.05)
            self.flushes.append((start, time.monotonic()))

        def shutdown(self) -> None:
            return None

    sink = SlowSink()
    t = telemetry._Telemetry([sink], None)
    asked: list[tuple[float, float]] = []

    def call() -> None:
        t0 = time.monotonic()
        t.flush(5.0)
        asked.append((t0, time.monotonic()))

    threads = [threading.Thread(target=call) for _ in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(asked) == 12
    assert len(sink.flushes) <= 4  # shared, not one per caller
    for t0, t1 in asked:  # some flush started after the caller asked and ended before it left
        assert any(s >= t0 - 1e-6 and e <= t1 + 1e-6 for s, e in sink.flushes)


def test_a_caller_chosen_model_never_becomes_an_emf_dimension(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = {"name": "b", "kind": "openai", "base_url": "http://x/v1", "models": ["llama", "*"]}
    monkeypatch.setenv("INFER_BACKENDS", json.dumps([backend]))
    reset_all()
    out = io.StringIO()
    sink = EmfSink("NS", out)
    base = {"gen_ai.operation.name": "chat", "infer.backend": "b"}
    sink.record(N.SERVER_TTFT, 0.1, {**base, "gen_ai.request.model": "llama"})
    sink.record(N.SERVER_TTFT, 0.1, {**base, "gen_ai.request.model": "x" * 200})
    sink.record(N.SERVER_TTFT, 0.1, {**base, "gen_ai.request.model": "made-up",
                                     "gen_ai.response.model": "served-one"})  # fmt: skip
    sink.flush(1.0)
    models = {json.loads(line)["model"] for line in out.getvalue().splitlines()}
    assert models == {"llama", "other", "served-one"}
    reset_all()


def test_redaction_is_linear_and_runs_after_truncating() -> None:
    import time

    from shared.telemetry.redact import Redactor

    redact = Redactor()
    # text that makes unbounded patterns quadratic: long runs with no match
    hostile = "a" * 200_000 + "@" + "b" * 200_000 + " token:" + "c" * 200_000
    started = time.monotonic()
    redact(hostile, 16384)
    assert time.monotonic() - started < 0.5
    # a secret straddling the cut is still masked, not half shown
    text = "x" * 1990 + " sk-" + "k" * 40
    out = redact(text, 2000)
    assert len(out) <= 2000 and "sk-kkk" not in out
    assert redact("mail me at a.b@example.com, key sk-" + "z" * 20) == (
        "mail me at [EMAIL], key [REDACTED]"
    )
