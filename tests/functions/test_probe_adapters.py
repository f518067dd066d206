"""probe adapters: the Azure timer function as the host calls it (``func.TimerRequest`` from
the library's converter) and the Lambda handler, against gpusim and a dead endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from functions.probe.aws import handler
from shared.lifecycle import reset_all
from shared.probe import last_report
from tests.fixtures.events import LambdaContext, azure_bindings, azure_function
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.identity import Server
from tests.fixtures.procs import free_port
from tests.iam_policy import Call
from tools.devhost.timers import timer_request


@pytest.fixture(autouse=True)
def usable_event_loop_after() -> Iterator[None]:
    """asyncio.run leaves the main thread without an event loop; Mangum, in later tests,
    needs one."""
    yield
    asyncio.set_event_loop_policy(None)


@pytest.fixture
def probe_env(clean_env: pytest.MonkeyPatch, gpusim: Gpusim) -> Iterator[pytest.MonkeyPatch]:
    backends = [
        {"name": "up", "kind": "openai", "base_url": gpusim.v1, "models": ["local-model"]},
        {
            "name": "down",
            "kind": "openai",
            "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "models": ["local-model"],
        },
    ]
    clean_env.setenv("INFER_BACKENDS", json.dumps(backends))
    clean_env.setenv("INFER_PROBE_TIMEOUT_S", "3")
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "APPLICATIONINSIGHTS_CONNECTION_STRING"):
        clean_env.delenv(key, raising=False)
    reset_all()
    yield clean_env
    reset_all()


def test_azure_binding_is_a_monitored_timer_on_the_schedule_setting() -> None:
    (binding,) = azure_bindings("probe")["bindings"]
    assert binding["type"] == "timerTrigger"
    assert binding["schedule"] == "%INFER_PROBE_SCHEDULE%"
    assert binding["useMonitor"] is True
    assert binding["runOnStartup"] is False


def test_azure_function_probes_every_backend(probe_env: pytest.MonkeyPatch) -> None:
    asyncio.run(azure_function("probe")(timer_request(None, past_due=True)))
    report = last_report()
    assert report is not None and report["past_due"] is True
    by_name = {b["backend"]: b for b in report["backends"]}
    assert by_name["up"]["available"] and by_name["up"]["ttft_s"] > 0
    assert not by_name["down"]["available"] and by_name["down"]["circuit"] == "open"


def test_aws_handler_returns_the_report_and_writes_emf(
    probe_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    probe_env.setenv("INFER_METRICS_EMF", "1")
    reset_all()
    report = handler({"source": "aws.scheduler"}, LambdaContext(name="probe"))
    assert report["available"] == 1 and len(report["backends"]) == 2
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    values = {
        d["backend"]: d["infer.probe.availability"] for d in docs if "infer.probe.availability" in d
    }
    assert values == {"up": 1.0, "down": 0.0}
    (up,) = [d for d in docs if d.get("backend") == "up" and "infer.probe.availability" in d]
    assert up["infer.probe.time_to_first_token"] > 0
    assert up["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ServerlessInference"


@pytest.mark.usefixtures("cloud_env")
def test_sagemaker_probe_is_one_invoke_endpoint_the_role_allows(
    monkeypatch: pytest.MonkeyPatch, cloudsim: Server, aws_permissions: list[Call]
) -> None:
    """SageMaker's default probe is a buffered one-token chat (serverless endpoints do not
    stream); the IAM check (tests/fixtures/iam.py) holds it to ProbeFunction's role."""
    backends = [{"name": "sm", "kind": "sagemaker", "endpoint_name": "llm-endpoint",
                 "region": "us-east-1", "endpoint_url": cloudsim.url}]  # fmt: skip
    monkeypatch.setenv("INFER_BACKENDS", json.dumps(backends))
    reset_all()
    report = handler({}, LambdaContext(name="probe"))
    (sm,) = report["backends"]
    assert sm["available"] and sm["mode"] == "chat" and sm["ttft_s"] > 0
    assert {str(c) for c in aws_permissions if c.function == "ProbeFunction"} == {
        "sagemaker-runtime.InvokeEndpoint"
    }
