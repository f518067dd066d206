"""The official openai SDK against the chat function served by devhost, backed by gpusim.

This is the README's promise: change only base_url and the SDK works, plain and streamed,
sync and async; and the project's retry policy handles the endpoint's faults without ever
waiting past the invocation deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import openai
import pytest

from tests.fixtures.devhost import DevhostProcess
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import PYTHON, ROOT, free_port

pytestmark = pytest.mark.e2e
MSG = [{"role": "user", "content": "Write one sentence about GPUs."}]


def start_devhost(sim: Gpusim, **env: str) -> DevhostProcess:
    port = free_port()
    backends = [{"name": "sim", "kind": "openai", "base_url": sim.v1, "models": ["local-model"]}]
    proc = DevhostProcess(
        [
            PYTHON,
            "-m",
            "tools.devhost",
            "--port",
            str(port),
            "--app-dir",
            str(ROOT),
            "--no-queues",
            "--no-blobs",
        ],
        port,
        ready_path="/api/healthz",
        env={"INFER_BACKENDS": json.dumps(backends), "PYTHONUNBUFFERED": "1", **env},
        name="devhost-sdk",
    )
    return proc.start()


@pytest.fixture(scope="module")
def host(gpusim_server: Gpusim) -> Iterator[DevhostProcess]:
    proc = start_devhost(gpusim_server, INFER_MAX_RETRIES="3")
    yield proc
    proc.stop()


@pytest.fixture
def client(host: DevhostProcess, gpusim: Gpusim) -> openai.OpenAI:
    # max_retries=0: every retry observed here is the function's own, not the SDK's.
    return openai.OpenAI(base_url=host.url + "/api/v1", api_key="unused", max_retries=0)


def test_sync_chat(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="local-model", messages=MSG, max_tokens=12)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens <= 12


def test_streamed_chat_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="local-model",
        messages=MSG,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = client.chat.completions.create(model="local-model", messages=MSG, max_tokens=10)
    assert text == plain.choices[0].message.content  # gpusim is deterministic
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len({c.id for c in chunks}) == 1


async def test_async_chat_and_stream(host: DevhostProcess, gpusim: Gpusim) -> None:
    client = openai.AsyncOpenAI(base_url=host.url + "/api/v1", api_key="unused", max_retries=0)
    answer = await client.chat.completions.create(model="local-model", messages=MSG, max_tokens=5)
    assert answer.choices[0].finish_reason in ("stop", "length")
    stream = await client.chat.completions.create(
        model="local-model", messages=MSG, max_tokens=5, stream=True
    )
    pieces = [
        c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert pieces
    await client.close()


def test_completions_embeddings_models(client: openai.OpenAI) -> None:
    done = client.completions.create(model="local-model", prompt="Once upon", max_tokens=4)
    assert done.choices[0].text
    emb = client.embeddings.create(model="local-model", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    assert [m.id for m in client.models.list()] == ["local-model"]


def test_sdk_errors_map_to_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MSG)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="local-model", messages=MSG, max_tokens=-3)
    assert info.value.body["param"] == "max_tokens"  # type: ignore[index]


@pytest.mark.parametrize("fault", ["429", "503", "reset"])
def test_transient_faults_are_retried(client: openai.OpenAI, gpusim: Gpusim, fault: str) -> None:
    gpusim.set_fault(fault, count=2, retry_after=0.2)
    answer = client.chat.completions.create(model="local-model", messages=MSG, max_tokens=4)
    assert answer.choices[0].message.content
    requests = gpusim.stats()["requests"]["/v1/chat/completions"]
    assert requests.get("200") == 1  # two injected failures, then the one that answered
    assert sum(requests.values()) >= 3 if fault == "reset" else requests.get(fault) == 2


def test_a_stream_that_cannot_be_completed_ends_with_an_error(
    client: openai.OpenAI, gpusim: Gpusim
) -> None:
    """Every continuation is cut too (one backend): the SDK raises, and never sees a
    truncated answer as complete (tests/e2e/test_stream_rescue.py: the rescued ones)."""
    gpusim.set_fault("midstream", count=-1)
    stream = client.chat.completions.create(
        model="local-model", messages=MSG, max_tokens=20, stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_no_wait_passes_the_deadline(gpusim_factory: object) -> None:
    """Endpoint says 'retry in 1 s' forever; a 2 s deadline answers 429 within the deadline."""
    sim = gpusim_factory()  # type: ignore[operator]
    proc = start_devhost(sim, INFER_REQUEST_TIMEOUT_S="2", INFER_MAX_RETRIES="10")
    try:
        client = openai.OpenAI(base_url=proc.url + "/api/v1", api_key="unused", max_retries=0)
        sim.set_fault("429", count=-1, retry_after=0.8)
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="local-model", messages=MSG, max_tokens=4)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0 + 0.5, elapsed
        assert info.value.response.headers.get("retry-after")
        # A hanging endpoint is cut at the deadline: 504, not a platform timeout.
        sim.clear_faults()
        sim.set_fault("timeout", count=-1)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as hang:
            client.chat.completions.create(model="local-model", messages=MSG, max_tokens=4)
        assert hang.value.status_code == 504
        assert time.monotonic() - started < 2.0 + 0.5
    finally:
        proc.stop()
