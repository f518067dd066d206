"""What the production controls cost: limits in-process and in Redis, side by side.

Targets, measured in one run against the same gpusim (and one redis-server):
  none          the chat function, no controls
  limits_memory ``INFER_LIMITS`` with in-process counters
  limits_redis  ``INFER_LIMITS`` with ``INFER_STATE_URL`` (one Lua script per admission and
                one per settlement)
Requests go round-robin to the targets, so machine noise hits all of them alike. Reported:
latency p50/p90 per target and the difference to ``none``; CPU per request of the function
process (and of redis-server for the Redis target), from /proc. Limits are set high enough
that nothing is refused: this is the cost of admitting and settling.

Cold start: ``bench/probe.py`` on ``functions.chat.aws`` (import + first invocation) with
each configuration, alternating, best of ``--cold-runs``.

Writes bench/results/controls.json and controls.png.

    python -m bench.controls [--requests 300] [--cold-runs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from typing import Any

import httpx

from bench.common import (
    PYTHON,
    ROOT,
    ServerProcess,
    backends_for,
    cpu_s,
    free_port,
    gpusim,
    summary,
    write_result,
)

BODY = {
    "model": "local-model",
    "messages": [{"role": "user", "content": "Tell me a story"}],
    "max_tokens": 16,
}
LIMITS = json.dumps([{"caller": "*", "rpm": 10_000_000, "tpm": 1_000_000_000,
                      "max_parallel": 100_000}])  # fmt: skip


def start_redis() -> tuple[ServerProcess, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: run `make setup`")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir]  # fmt: skip
    return ServerProcess(argv, port, ready_path=None, name="bench-redis"), (
        f"redis://127.0.0.1:{port}/0"
    )


def start_functions(sim: ServerProcess, redis_url: str) -> dict[str, ServerProcess]:
    base = {"INFER_BACKENDS": backends_for(sim), "PYTHONUNBUFFERED": "1"}
    envs = {
        "none": base,
        "limits_memory": {**base, "INFER_LIMITS": LIMITS},
        "limits_redis": {**base, "INFER_LIMITS": LIMITS, "INFER_STATE_URL": redis_url},
    }
    out = {}
    for name, env in envs.items():
        port = free_port()
        argv = [PYTHON, "-m", "uvicorn", "--log-level", "warning", "--no-access-log",
                "--host", "127.0.0.1", "--port", str(port), "functions.chat.app:app"]  # fmt: skip
        out[name] = ServerProcess(argv, port, ready_path=None, env=env, name=f"bench-{name}")
    return out


def measure(targets: dict[str, ServerProcess], redis: ServerProcess, n: int) -> dict[str, Any]:
    lat: dict[str, list[float]] = {t: [] for t in targets}
    cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
    redis_cpu = 0.0
    with httpx.Client(timeout=60) as client:
        for proc in targets.values():  # warm: connections, first-use construction
            for _ in range(20):
                r = client.post(proc.url + "/v1/chat/completions", json=BODY)
                r.raise_for_status()
        for _ in range(n):
            for name, proc in targets.items():
                assert proc.proc is not None and redis.proc is not None
                c0 = cpu_s(proc.proc.pid)
                r0 = cpu_s(redis.proc.pid)
                t0 = time.perf_counter()
                r = client.post(proc.url + "/v1/chat/completions", json=BODY)
                lat[name].append(time.perf_counter() - t0)
                r.raise_for_status()
                cpu[name] += cpu_s(proc.proc.pid) - c0
                if name == "limits_redis":
                    redis_cpu += cpu_s(redis.proc.pid) - r0
    base = summary(lat["none"])
    out: dict[str, Any] = {}
    for name in targets:
        s = summary(lat[name])
        out[name] = {
            "latency_ms": s,
            "added_p50_ms": round(s["p50"] - base["p50"], 3),
            "cpu_ms_per_request": round(cpu[name] / n * 1000, 3),
        }
    out["limits_redis"]["redis_server_cpu_ms_per_request"] = round(redis_cpu / n * 1000, 3)
    for name in ("limits_memory", "limits_redis"):
        out[name]["added_cpu_ms_per_request"] = round(
            out[name]["cpu_ms_per_request"] - out["none"]["cpu_ms_per_request"], 3
        )
    return out


def cold_starts(sim: ServerProcess, redis_url: str, runs: int) -> dict[str, Any]:
    base = {"PATH": "/usr/bin:/bin", "INFER_BACKENDS": backends_for(sim)}
    envs = {
        "none": base,
        "limits_memory": {**base, "INFER_LIMITS": LIMITS},
        "limits_redis": {**base, "INFER_LIMITS": LIMITS, "INFER_STATE_URL": redis_url},
    }
    subprocess.run([PYTHON, "-m", "compileall", "-q", "shared", "functions"], cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    best: dict[str, dict[str, Any]] = {}
    for _ in range(runs):
        for name, env in envs.items():
            out = subprocess.run(
                [PYTHON, str(ROOT / "bench" / "probe.py"), "--import", "functions.chat.aws",
                 "--invoke", "aws"],
                capture_output=True, text=True, env=env, cwd=ROOT, check=True, timeout=120,
            )  # fmt: skip
            data = json.loads(out.stdout.strip().splitlines()[-1])
            if name not in best or data["total_s"] < best[name]["total_s"]:
                best[name] = data
    floor = best["none"]["total_s"]
    return {
        name: {
            "total_ms": round(d["total_s"] * 1000, 1),
            "import_ms": round(d["import_s"] * 1000, 1),
            "first_invoke_ms": round(d["invoke_s"] * 1000, 1),
            "ratio_to_none": round(d["total_s"] / floor, 3),
            "rss_mb": d["rss_mb"],
            "heavy_modules": d["heavy_modules"],
        }
        for name, d in best.items()
    }


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["requests"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    series = [
        ("latency p50 (ms)", [result["requests"][n]["latency_ms"]["p50"] for n in names]),
        ("CPU per request (ms)", [result["requests"][n]["cpu_ms_per_request"] for n in names]),
        ("cold start (ms)", [result["cold_start"][n]["total_ms"] for n in names]),
    ]
    for ax, (title, values) in zip(axes, series, strict=True):
        ax.bar(names, values, color=["#888", "#4a8", "#c84"])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--cold-runs", type=int, default=5)
    args = parser.parse_args()
    sim = gpusim(None, "--ttft-base-ms", "5", "--prefill-ms-per-token", "0", "--itl-ms", "0.2",
                 "--min-output-tokens", "16", "--max-output-tokens", "16").start()  # fmt: skip
    redis, redis_url = start_redis()
    redis.start()
    targets = start_functions(sim, redis_url)
    try:
        for t in targets.values():
            t.start()
        result = {
            "requests": measure(targets, redis, args.requests),
            "cold_start": cold_starts(sim, redis_url, args.cold_runs),
        }
    finally:
        for t in targets.values():
            t.stop()
        redis.stop()
        sim.stop()
    path = write_result("controls", result)
    plot(result, str(path.with_suffix(".png")))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
