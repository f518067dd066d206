"""Timer triggers through devhost (schedule status in Azurite), and the real probe function
running on schedule against one healthy gpusim backend and one dead one."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.fixtures.azurite import Azurite
from tests.fixtures.devhost import DevhostFactory, wait_for
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import ROOT, free_port

pytestmark = pytest.mark.e2e

YEARLY = "0 0 0 1 1 *"  # never due during a test


def ticks(out: Path) -> list[dict[str, Any]]:
    path = out / "ticks.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def timer_env(azurite: Azurite, out: Path, schedule: str, host: str) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "AzureFunctionsWebHost__hostid": host,
        "DEVHOST_TEST_TIMER": schedule,
        "DEVHOST_TEST_OUT": str(out),
    }


def status_blob(azurite: Azurite, host: str) -> Any:
    return azurite.blob_service().get_blob_client(
        "azure-webjobs-hosts", f"timers/{host}/Host.Functions.tick/status"
    )


def test_run_on_startup_once_then_the_schedule(
    devhost_factory: DevhostFactory, azurite: Azurite, tmp_path: Path
) -> None:
    host = f"h{uuid.uuid4().hex[:12]}"
    devhost_factory(app_module="timer_app", env=timer_env(azurite, tmp_path, YEARLY, host))
    first = wait_for(lambda: ticks(tmp_path), timeout=20)
    assert isinstance(first, list)
    assert first[0]["type"] == "TimerRequest"
    assert first[0]["past_due"] is False
    assert first[0]["schedule"] == {"AdjustForDST": True}
    assert set(first[0]["schedule_status"]) == {"Last", "Next", "LastUpdated"}
    # the status the host keeps for the next start: Next is the yearly occurrence
    saved = wait_for(lambda: json.loads(status_blob(azurite, host).download_blob().readall()))
    assert isinstance(saved, dict)
    assert datetime.fromisoformat(saved["Next"]).month == 1


def test_every_second_schedule_runs_repeatedly(
    devhost_factory: DevhostFactory, azurite: Azurite, tmp_path: Path
) -> None:
    host = f"h{uuid.uuid4().hex[:12]}"
    devhost_factory(app_module="timer_app", env=timer_env(azurite, tmp_path, "*/1 * * * * *", host))
    wait_for(lambda: len(ticks(tmp_path)) >= 4, timeout=30)
    seen = ticks(tmp_path)
    assert all(t["past_due"] is False for t in seen)
    times = [t["t"] for t in seen]
    assert times == sorted(times)


def test_missed_occurrence_runs_past_due_at_start(
    devhost_factory: DevhostFactory, azurite: Azurite, tmp_path: Path
) -> None:
    """A status whose Next passed while the host was down: one past-due run, no startup run."""
    host = f"h{uuid.uuid4().hex[:12]}"
    now = datetime.now().astimezone().replace(microsecond=0)
    last = (now - timedelta(days=2)).replace(hour=0, minute=0, second=0)  # a daily schedule
    nxt = last + timedelta(days=1)
    container = azurite.blob_service().get_container_client("azure-webjobs-hosts")
    if not container.exists():
        container.create_container()
    status = {"Last": last.isoformat(), "Next": nxt.isoformat(), "LastUpdated": last.isoformat()}
    status_blob(azurite, host).upload_blob(json.dumps(status), overwrite=True)

    proc = devhost_factory(
        app_module="timer_app", env=timer_env(azurite, tmp_path, "0 0 0 * * *", host)
    )
    wait_for(lambda: ticks(tmp_path), timeout=20)
    seen = ticks(tmp_path)
    assert seen[0]["past_due"] is True
    assert datetime.fromisoformat(seen[0]["schedule_status"]["Next"]) == nxt
    wait_for(lambda: "trigger=timer" in proc.log(), timeout=10)
    assert len(ticks(tmp_path)) == 1  # past due replaces runOnStartup; next run is at midnight

    def saved_next() -> datetime:
        saved = json.loads(status_blob(azurite, host).download_blob().readall())
        return datetime.fromisoformat(saved["Next"])

    # the status is written once the run finished, which may be just after its log line
    assert wait_for(lambda: saved_next() > now, timeout=10)


def test_one_host_runs_a_timer_until_it_dies(
    devhost_factory: DevhostFactory, azurite: Azurite, tmp_path: Path
) -> None:
    """The listener lock: a second host on the same storage waits, then takes over."""
    host = f"h{uuid.uuid4().hex[:12]}"
    env = timer_env(azurite, tmp_path, "*/1 * * * * *", host)
    first = devhost_factory(app_module="timer_app", env=env)
    wait_for(lambda: len(ticks(tmp_path)) >= 2, timeout=20)
    owner = ticks(tmp_path)[0]["pid"]
    devhost_factory(app_module="timer_app", env=env)
    seen = len(ticks(tmp_path))
    wait_for(lambda: len(ticks(tmp_path)) >= seen + 3, timeout=20)
    assert {t["pid"] for t in ticks(tmp_path)} == {owner}
    first.kill()  # SIGKILL: its lease runs out instead of being released
    taken = wait_for(lambda: [t for t in ticks(tmp_path) if t["pid"] != owner], timeout=45)
    assert isinstance(taken, list) and taken


def probe_backends(sim: Gpusim, dead_port: int) -> str:
    return json.dumps(
        [
            {"name": "up", "kind": "openai", "base_url": sim.v1, "models": ["local-model"]},
            {
                "name": "down",
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{dead_port}/v1",
                "models": ["local-model"],
            },
            {
                "name": "quiet",
                "kind": "openai",
                "base_url": sim.v1,
                "models": ["local-model"],
                "probe": "off",
            },
        ]
    )


def test_probe_runs_on_schedule_and_records_availability(
    devhost_factory: DevhostFactory, azurite: Azurite, gpusim: Gpusim, tmp_path: Path
) -> None:
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "AzureFunctionsWebHost__hostid": f"h{uuid.uuid4().hex[:12]}",
        "INFER_BACKENDS": probe_backends(gpusim, free_port()),
        "INFER_PROBE_SCHEDULE": "*/1 * * * * *",
        "INFER_PROBE_TIMEOUT_S": "2",
        "INFER_PROBE_OPEN_S": "60",
    }
    proc = devhost_factory(
        app_module="tests.e2e.probe_app",
        app_dir=ROOT,
        env=env,
        args=["--no-queues", "--no-blobs"],
    )

    def runs() -> Any:
        body = httpx2.get(proc.url + "/api/probe-report", timeout=5).json()
        return body if body["report"] else None

    body = wait_for(runs, timeout=30)
    assert isinstance(body, dict)
    by_name = {b["backend"]: b for b in body["report"]["backends"]}
    assert set(by_name) == {"up", "down"}  # probe "off" is skipped
    up, down = by_name["up"], by_name["down"]
    assert up["available"] is True and up["mode"] == "stream"
    assert up["ttft_s"] is not None and 0 < up["ttft_s"] <= up["duration_s"]
    assert up["circuit"] == "closed"
    assert down["available"] is False
    assert down["error_type"] == "BackendConnectionError"
    assert down["circuit"] == "open"
    # the live router of the HTTP functions sees the same circuits
    assert body["circuits"] == {"up": "closed", "down": "open", "quiet": "closed"}
    # on schedule: more runs follow, each one one-token request to the healthy backend only
    # ("quiet" shares the simulator but is not probed)
    wait_for(lambda: gpusim.stats()["completed"] >= 3, timeout=30)
    assert proc.log().count("trigger=timer") >= 3
    # and the telemetry devhost serves at /metrics (the local view reads it)
    metrics = httpx2.get(proc.url + "/metrics", timeout=5).text
    availability = prom_values(metrics, "infer_probe_availability")
    assert availability["up"] == 1.0 and availability["down"] == 0.0, metrics[:3000]
    ttft_count = prom_values(metrics, "infer_probe_time_to_first_token_seconds_count")
    assert ttft_count["up"] >= 1 and "down" not in ttft_count


def prom_values(text: str, name: str) -> dict[str, float]:
    """``{backend: value}`` of the samples of ``name`` (summed over other labels)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels, _, value = line[len(name) + 1 :].rpartition("} ")
        backend = re.search(r'infer_backend="([^"]*)"', labels)
        if backend:
            out[backend[1]] = out.get(backend[1], 0.0) + float(value)
    return out
