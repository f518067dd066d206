"""Shared helpers for the benchmarks: servers on free ports, percentiles, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.procs import PYTHON, ROOT, ServerProcess, free_port

RESULTS = ROOT / "bench" / "results"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds (every thread) of a process and its children that exited."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICK


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds (``scale``) of a list of seconds."""
    return {
        "n": len(values),
        "p50": round(pct(values, 0.5) * scale, 3),
        "p90": round(pct(values, 0.9) * scale, 3),
        "p99": round(pct(values, 0.99) * scale, 3),
        "mean": round(statistics.fmean(values) * scale, 3) if values else float("nan"),
    }


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def gpusim(port: int | None = None, *flags: str) -> ServerProcess:
    port = port or free_port()
    argv = [PYTHON, "-m", "tools.gpusim", "--port", str(port), "--no-access-log", *flags]
    return ServerProcess(argv, port, ready_path="/health", name="bench-gpusim")


def backends_for(sim: ServerProcess) -> str:
    return json.dumps([{"name": "sim", "kind": "openai", "base_url": sim.url + "/v1"}])


__all__ = [
    "PYTHON",
    "ROOT",
    "ServerProcess",
    "free_port",
    "gpusim",
    "pct",
    "summary",
    "write_result",
]
