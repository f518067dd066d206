"""HTTP triggers through a real devhost process over loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.fixtures.devhost import DevhostFactory, DevhostProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevhostProcess]:
    # a module-scoped devhost (the factory fixture is function-scoped): build it by hand
    from tests.fixtures.devhost import DEVHOST_APP, PYTHON, free_port

    port = free_port()
    proc = DevhostProcess(
        [
            PYTHON,
            "-m",
            "tools.devhost",
            "--port",
            str(port),
            "--app-dir",
            str(DEVHOST_APP),
            "--no-queues",
            "--no-blobs",
        ],
        port,
        env={"DEVHOST_TEST_OVERRIDDEN": "from-env"},
        name="devhost-http",
        log_path=tmp_path_factory.mktemp("devhost") / "devhost.log",
    )
    proc.start()
    yield proc
    proc.stop()


def test_route_params_query_and_body_reach_a_starlette_function(host: DevhostProcess) -> None:
    r = httpx2.post(f"{host.url}/api/echo/42?a=1", content=b"hello")
    assert r.status_code == 200
    assert r.json() == {"id": "42", "method": "POST", "query": {"a": "1"}, "body": "hello"}


def test_optional_and_catch_all_parameters(host: DevhostProcess) -> None:
    assert httpx2.get(f"{host.url}/api/items").json() == {"params": {}}
    assert httpx2.get(f"{host.url}/api/items/7").json() == {"params": {"id": "7"}}
    assert httpx2.get(f"{host.url}/api/files/a/b/c.txt").json() == {"params": {"path": "a/b/c.txt"}}


def test_unknown_path_is_404_and_wrong_method_is_405(host: DevhostProcess) -> None:
    assert httpx2.get(f"{host.url}/api/nope").status_code == 404
    assert httpx2.get(f"{host.url}/echo/1").status_code == 404  # the route prefix is required
    r = httpx2.delete(f"{host.url}/api/echo/1")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"


def test_func_http_request_and_response_are_converted_both_ways(host: DevhostProcess) -> None:
    r = httpx2.post(f"{host.url}/api/native/bob?q=x", content=b"payload", headers={"X-Test": "t"})
    assert r.status_code == 201
    assert r.headers["x-native"] == "1"
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"name": "bob", "q": "x", "body": "payload", "header": "t"}


def test_unhandled_exception_is_500_without_the_traceback(host: DevhostProcess) -> None:
    r = httpx2.get(f"{host.url}/api/boom")
    assert r.status_code == 500
    assert "secret-detail" not in r.text
    assert "Traceback" not in r.text
    assert "secret-detail-that-must-not-leak" in host.log()  # logged, not sent


def test_streaming_response_arrives_chunk_by_chunk(host: DevhostProcess) -> None:
    arrivals: list[float] = []
    with httpx2.stream("GET", f"{host.url}/api/stream?n=3&pause=0.4", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_raw():
            if chunk.strip():
                arrivals.append(time.monotonic())
    assert len(arrivals) == 3
    # buffered, all three would arrive together after ~1.2 s
    assert arrivals[1] - arrivals[0] > 0.25
    assert arrivals[2] - arrivals[1] > 0.25


def test_request_body_is_streamed_to_the_function(host: DevhostProcess) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 16384

    r = httpx2.post(f"{host.url}/api/upload", content=body())
    assert r.json() == {"bytes": 64 * 16384}


def test_environment_wins_over_local_settings(host: DevhostProcess) -> None:
    assert httpx2.get(f"{host.url}/api/settings").json() == {
        "DEVHOST_TEST_FROM_SETTINGS": "from-settings",
        "DEVHOST_TEST_OVERRIDDEN": "from-env",
    }


def test_startup_lists_http_routes_like_func_start(host: DevhostProcess) -> None:
    log = host.log()
    assert f"echo: [GET,POST] {host.url}/api/echo/{{id}}" in log
    assert "work: queueTrigger" in log


def test_factory_starts_and_restarts_on_the_same_port(devhost_factory: DevhostFactory) -> None:
    proc = devhost_factory(args=["--no-queues", "--no-blobs", "--no-timers"])
    port = proc.port
    assert httpx2.get(f"{proc.url}/api/items/1").status_code == 200
    proc.kill()
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{proc.url}/api/items/1")
    proc.restart()
    assert proc.port == port
    assert httpx2.get(f"{proc.url}/api/items/1").status_code == 200
