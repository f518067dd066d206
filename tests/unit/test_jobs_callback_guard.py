"""callback_url cannot reach loopback, private or link-local addresses (SSRF), unless
INFER_CALLBACK_ALLOW lists them; checked at submit and again at send, connecting to the
address that was checked (DNS rebinding); never logged with its query string."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from shared.context import Context
from shared.jobs.callback import send_callback
from shared.jobs.callback_guard import CallbackAllow, CallbackRefused, check, checked, redact
from shared.storage.queues import get_queue
from tests.fixtures.core import Handler, chat_answer
from tests.fixtures.procs import free_port

NONE = CallbackAllow()
LINE = {
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "local-model", "messages": [{"role": "user", "content": "hi"}]},
}


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",  # resolved: loopback
        "http://10.1.2.3/hook",
        "http://172.16.5.4/hook",
        "http://192.168.0.10/hook",
        "http://100.64.0.1/hook",  # carrier-grade NAT
        "http://0.0.0.0/hook",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
        "http://224.0.0.1/hook",
        "http://no-such-host.invalid/hook",  # does not resolve
        "ftp://example.com/x",
    ],
)
def test_non_public_callback_addresses_are_refused(url: str) -> None:
    with pytest.raises(CallbackRefused):
        check(url, NONE)


def test_every_resolved_address_must_be_public() -> None:
    def mixed(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.7"]

    with pytest.raises(CallbackRefused, match=r"10\.0\.0\.7"):
        check("https://hooks.example.com/x", NONE, mixed)
    target = check("https://hooks.example.com/x?t=1", NONE, lambda h, p: ["93.184.215.14"])
    assert target.url == "https://93.184.215.14/x?t=1"
    assert target.host_header == "hooks.example.com" and target.sni_hostname == "hooks.example.com"


def test_allow_lists_networks_and_hosts() -> None:
    allow = CallbackAllow.parse(" 127.0.0.0/8, hooks.internal ,fd00::/8")
    assert check("http://127.0.0.1:9/x", allow).url == "http://127.0.0.1:9/x"
    assert check("http://[fd00::5]/x", allow).url == "http://[fd00::5]/x"
    assert check("http://hooks.internal/x", allow).url == "http://hooks.internal/x"
    with pytest.raises(CallbackRefused):
        check("http://10.0.0.1/x", allow)


def test_redact_drops_query_fragment_and_user_info() -> None:
    assert redact("https://u:p@hooks.example.com:8443/a/b?token=s3cret#frag") == (
        "https://hooks.example.com:8443/a/b"
    )


class Receiver:
    """A loopback HTTP server recording the Host header of each POST."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        seen = self.hosts

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                seen.append(str(self.headers.get("host")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


async def test_dns_rebinding_at_send_time_is_refused(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The name resolved to a public address at submit; at send it answers loopback."""
    url = f"http://rebind.example:{receiver.port}/done?token=s3cret"
    with caplog.at_level(logging.WARNING):
        ok = await send_callback(
            url, {"id": "j"}, Context.with_timeout(5), secret=None, timeout_s=1,
            allow=NONE, resolver=lambda h, p: ["127.0.0.1"],
        )  # fmt: skip
    assert not ok and receiver.hosts == []
    assert "refused" in caplog.text and "s3cret" not in caplog.text


async def test_an_allowed_callback_connects_to_the_checked_address(receiver: Receiver) -> None:
    url = f"http://hooks.example:{receiver.port}/done"
    ok = await send_callback(
        url, {"id": "j"}, Context.with_timeout(5), secret=None, timeout_s=2,
        allow=CallbackAllow.parse("127.0.0.1/32"), resolver=lambda h, p: ["127.0.0.1"],
    )  # fmt: skip
    assert ok and receiver.hosts == [f"hooks.example:{receiver.port}"]


async def test_failed_callback_logs_no_query_string(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens
    with caplog.at_level(logging.WARNING):
        ok = await send_callback(
            f"http://127.0.0.1:{port}/x?sig=s3cret", {"id": "j"}, Context.with_timeout(5),
            secret=None, timeout_s=0.5, allow=CallbackAllow.parse("127.0.0.1/32"),
        )  # fmt: skip
    assert not ok and "failed (try 3/3)" in caplog.text and "s3cret" not in caplog.text


@pytest.fixture
def api(job_env: Path, fake_endpoint: Callable[[Handler], None]) -> httpx2.AsyncClient:
    from functions.jobs.app import app

    fake_endpoint(lambda req: httpx2.Response(200, json=chat_answer("local-model")))
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/iam", "http://localhost:8080/hook"]
)
async def test_submitting_a_private_callback_is_400_and_queues_nothing(
    api: httpx2.AsyncClient, url: str
) -> None:
    r = await api.post("/v1/jobs", json={**LINE, "callback_url": url})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "callback_url"
    assert get_queue().drain() == []


async def test_loopback_callback_allowed_by_setting_is_delivered(
    api: httpx2.AsyncClient, receiver: Receiver, clean_env: pytest.MonkeyPatch
) -> None:
    from shared.jobs.worker import Attempt, process_message
    from shared.lifecycle import reset_all

    clean_env.setenv("INFER_CALLBACK_ALLOW", "127.0.0.1/32")
    reset_all()
    hook = f"http://127.0.0.1:{receiver.port}/done"
    r = await api.post("/v1/jobs", json={**LINE, "callback_url": hook})
    assert r.status_code == 202, r.text
    for text in get_queue().drain():
        assert json.loads(text)["callback_url"] == hook
        await process_message(text, Attempt(1, 5), Context.with_timeout(10))
    assert receiver.hosts == [f"127.0.0.1:{receiver.port}"]


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (instance metadata)
        "64:ff9b:1::a00:1",  # local-use NAT64 of 10.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::ffff:192.168.0.1",  # IPv4-mapped
    ],
)
def test_ipv4_embedded_in_ipv6_is_judged_by_the_ipv4(address: str) -> None:
    with pytest.raises(CallbackRefused):
        check(f"http://[{address}]/hook", CallbackAllow.parse(""))
    with pytest.raises(CallbackRefused):  # also when a name resolves to it
        check("http://hook.example/x", CallbackAllow.parse(""), lambda h, p: [address])


def test_a_public_ipv4_behind_nat64_is_allowed() -> None:
    check("http://[64:ff9b::808:808]/hook", CallbackAllow.parse(""))  # 8.8.8.8


async def test_resolution_is_bounded_in_time() -> None:
    import time

    def slow(host: str, port: int) -> list[str]:
        time.sleep(1.0)
        return ["93.184.216.34"]

    started = time.monotonic()
    with pytest.raises(CallbackRefused, match="did not resolve within"):
        await checked("http://slow.example/x", CallbackAllow.parse(""), slow, 0.2)
    assert time.monotonic() - started < 0.6
