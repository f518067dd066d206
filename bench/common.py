"""Shared helpers for the benchmarks: servers on free ports, percentiles, result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def worktree(ref: str | None) -> Iterator[Path | None]:
    """The project at commit ``ref`` in a temporary git worktree, removed on exit (None: no
    ref given, no tree): a ``--base-ref`` target runs the earlier product code beside this
    tree's harness and gpusim."""
    if ref is None:
        yield None
        return
    base = Path(tempfile.mkdtemp(prefix="bench-base-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), ref],
                   cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    try:
        yield base
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)
        shutil.rmtree(base.parent, ignore_errors=True)


#: The bare pass-through runs as ``pip install fastapi uvicorn httpx`` gives it: asyncio's
#: event loop and h11, whatever else the venv holds.
BARE = ["--loop", "asyncio", "--http", "h11"]
#: The chat function as Lambda serves it behind the Web Adapter (functions/chat/lambda_stream.sh).
LWA = ["--loop", "uvloop", "--http", "httptools"]
DEVHOST = ["--no-queues", "--no-blobs", "--no-timers"]


def chat_targets(sim: ServerProcess, base: Path | None = None) -> dict[str, ServerProcess]:
    """The servers the latency and streaming benches compare, not yet started, in front of
    ``sim``: ``passthrough`` (bench/passthrough_app.py, BARE), ``function`` (the chat app as
    the Lambda Web Adapter runs it, LWA), ``devhost`` (the Functions app through
    tools/devhost) and, given ``base`` (a worktree), ``base``: the chat app of that commit as
    it shipped (BARE). URLs: ``/v1/...``, devhost's under ``/api``."""
    env = {
        "INFER_BACKENDS": backends_for(sim),
        "INFER_LOG_PROMPTS": "false",
        "PYTHONUNBUFFERED": "1",
    }
    uv = [PYTHON, "-m", "uvicorn", "--log-level", "warning", "--no-access-log",
          "--host", "127.0.0.1"]  # fmt: skip
    ports = {name: free_port() for name in ("passthrough", "function", "devhost", "base")}
    targets = {
        "passthrough": ServerProcess(
            [*uv, "--port", str(ports["passthrough"]), *BARE, "bench.passthrough_app:app"],
            ports["passthrough"],
            ready_path=None,
            env={"UPSTREAM": sim.url + "/v1"},
            name="bench-pass",
        ),
        "function": ServerProcess(
            [*uv, "--port", str(ports["function"]), *LWA, "functions.chat.app:app"],
            ports["function"],
            ready_path=None,
            env=env,
            name="bench-fn",
        ),
        "devhost": ServerProcess(
            [PYTHON, "-m", "tools.devhost", "--port", str(ports["devhost"]), *DEVHOST],
            ports["devhost"],
            ready_path=None,
            env={**env, "AzureWebJobsStorage": ""},
            name="bench-devhost",
        ),
    }
    if base is not None:
        targets["base"] = ServerProcess(
            [*uv, "--port", str(ports["base"]), *BARE, "functions.chat.app:app"],
            ports["base"],
            ready_path=None,
            env=env,
            cwd=base,
            name="bench-base",
        )
    return targets


__all__ = [
    "BARE",
    "DEVHOST",
    "LWA",
    "PYTHON",
    "ROOT",
    "ServerProcess",
    "chat_targets",
    "free_port",
    "gpusim",
    "pct",
    "summary",
    "worktree",
    "write_result",
]
