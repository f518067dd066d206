"""The local view (devhost ``/_metrics/view``) in headless Chromium while chats flow.

Chats go through devhost (root function_app.py, telemetry on as Prometheus text) to gpusim
with a known TTFT; the page polls ``/metrics``; the test reads the rendered DOM over the
DevTools protocol and takes a screenshot (``$SAVE_VIEW_SCREENSHOT`` also writes it there,
which is how docs/img/local-view.png was made).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.fixtures.azurite import Azurite
from tests.fixtures.chromium import PageFactory
from tests.fixtures.devhost import DevhostFactory
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TTFT_MS = 60
# endpoint faults: a 500 is retried once on the same backend, then fails over to the other
# (retried once too), so each four faults make one failure the caller sees
FAILURES = 8


def padding(n: int) -> str:
    """Prompts of varied length, so the first token comes later for some (prefill)."""
    return "word " * ((n % 7) * 150)


def tile(page: Any, name: str) -> float:
    value = page.evaluate(f"document.getElementById({name!r}).dataset.value")
    return float(value) if value else 0.0


def test_local_view_charts_ttft_tokens_and_errors(
    devhost_factory: DevhostFactory,
    azurite: Azurite,
    gpusim_factory: Any,
    chromium_page: PageFactory,
    tmp_path: Path,
) -> None:
    sim: Gpusim = gpusim_factory(
        ttft_base_ms=TTFT_MS,
        prefill_ms_per_token=0.05,  # longer prompts: a later first token
        itl_ms=12,
        min_output_tokens=8,
        max_output_tokens=40,
    )
    backends = [
        {"name": "gpu-a", "kind": "openai", "base_url": sim.v1, "models": ["local-model"]},
        {"name": "gpu-b", "kind": "openai", "base_url": sim.v1, "models": ["local-model"]},
    ]
    host = devhost_factory(
        app_module="function_app",
        app_dir=ROOT,
        env={
            "AzureWebJobsStorage": azurite.connection_string,
            "AzureFunctionsWebHost__hostid": f"h{uuid.uuid4().hex[:12]}",
            "INFER_BACKENDS": json.dumps(backends),
            "INFER_MAX_RETRIES": "0",
            "INFER_PROBE_SCHEDULE": "*/2 * * * * *",
            # a probe that meets the injected 500s opens the circuits; for a second only, so
            # the traffic after the faults is answered (on a loaded machine the probe's
            # default cool-down outlasted the whole traffic: every request was a 503)
            "INFER_PROBE_OPEN_S": "1",
            "INFER_METRICS_PROMETHEUS": "1",
        },
        args=["--no-queues", "--no-blobs"],
    )
    page = chromium_page(host.url + "/_metrics/view?interval=0.5")
    assert page.wait_for("document.getElementById('status').dataset.ok === '1'", timeout=30)

    sent = failed = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal sent, failed
        with httpx2.Client(base_url=host.url, timeout=30) as client:
            n = 0
            while not stop.is_set() and n < 400:
                n += 1
                body = {
                    "model": "local-model",
                    "stream": n % 3 != 0,
                    "stream_options": {"include_usage": True} if n % 3 else None,
                    "messages": [
                        {"role": "user", "content": f"GPUs ({n}) " + "word " * (n % 7) * 150}
                    ],
                    "max_tokens": 32,
                }
                if body["stream_options"] is None:
                    del body["stream_options"]
                if n == 10:
                    sim.set_fault("500", count=FAILURES)
                with client.stream("POST", "/api/v1/chat/completions", json=body) as r:
                    r.read()
                sent += 1
                failed += r.status_code >= 400

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        page.wait_for(
            "Number(document.getElementById('c-ttft').dataset.points) >= 10 &&"
            " Number(document.getElementById('errors').dataset.value) > 0",
            timeout=90,
        )
    finally:
        stop.set()
        worker.join(timeout=60)
    # once the traffic stopped, the next polls count every request that was sent
    page.wait_for(f"Number(document.getElementById('requests').dataset.value) === {sent}")
    page.wait_for("document.querySelector('#t-backends td.up') !== null", timeout=20)

    ttft_p50 = tile(page, "ttft-p50")
    assert TTFT_MS / 1000 * 0.8 <= ttft_p50 < 5.0, ttft_p50  # gpusim's TTFT plus overhead
    assert tile(page, "tpot-p50") > 0
    assert float(page.evaluate("document.getElementById('tokens').dataset.output")) > sent
    assert failed >= 1 and tile(page, "errors") == failed  # as many as the callers saw
    assert "ms" in page.evaluate("document.getElementById('ttft-p50').textContent")
    rows = page.evaluate(
        "[...document.querySelectorAll('#t-backends tbody tr')].map(r => r.dataset.backend)"
    )
    assert set(rows) == {"gpu-a", "gpu-b"}
    assert page.evaluate("document.querySelectorAll('#c-tokens path.line').length") == 2

    png = page.screenshot()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    (tmp_path / "local-view.png").write_bytes(png)
    target = os.environ.get("SAVE_VIEW_SCREENSHOT")
    if target:
        Path(target).write_bytes(png)
