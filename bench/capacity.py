"""An endpoint's max_concurrency across function instances, and what waiting for it costs.

1. **Kept, and used.** HOSTS devhost processes in front of one gpusim endpoint whose backend
   entry says ``max_concurrency`` CAP; CALLERS concurrent callers spread over the hosts.
   Run twice: per instance (no shared state: each host counts its own) and shared (one real
   Redis). gpusim's running count is sampled every 20 ms: the plot shows in flight at the
   endpoint over time for both; the JSON the peaks, the wall time against the ideal
   (CALLERS / CAP rounds of one request) and the ratio.
2. **Waiting costs no CPU.** One devhost, ``max_concurrency`` 1, held by a stream whose first
   token takes long; 200 requests then wait for the slot. The host's CPU over 5 s while they
   wait, against 5 s idle before; with ``--base-ref`` the same on that revision (whose
   waiters polled every 5 ms), side by side in one run.

    python -m bench.capacity [--hosts 3] [--cap 8] [--callers 240] [--base-ref REF]

Writes bench/results/capacity.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    PYTHON,
    RESULTS,
    ROOT,
    ServerProcess,
    cpu_s,
    free_port,
    gpusim,
    worktree,
    write_result,
)

BODY = {
    "model": "local-model",
    "messages": [{"role": "user", "content": "Write one sentence about GPUs."}],
    "max_tokens": 16,
}
WAITERS = 200
WINDOW_S = 5.0
#: The request that holds the only slot, and the 200 that wait for it (their own processes).
HOLD = "import httpx, json, sys; httpx.post(sys.argv[1], json=json.loads(sys.argv[2]), timeout=120)"
WAIT = (
    "import asyncio, sys; sys.path.insert(0, sys.argv[2]); from bench.capacity import "
    "callers, BODY; asyncio.run(callers([sys.argv[1]], int(sys.argv[3]), BODY))"
)


def redis_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    binary = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            import redis

            redis.Redis(port=port).ping()
            break
        except Exception:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def host(sim: ServerProcess, cap: int, redis_url: str | None, code: Path | None = None,
         name: str = "bench-cap") -> ServerProcess:  # fmt: skip
    backends = [{"name": "gpu", "kind": "openai", "base_url": sim.url + "/v1",
                 "models": ["local-model"], "max_concurrency": cap}]  # fmt: skip
    tree = code or ROOT
    env = {"INFER_BACKENDS": json.dumps(backends), "INFER_AUTH_LEVEL": "ANONYMOUS",
           "INFER_MAX_RETRIES": "0", "INFER_REQUEST_TIMEOUT_S": "120",
           "INFER_STATE_TIMEOUT_S": "5", "PYTHONPATH": str(tree)}  # fmt: skip
    if redis_url:
        env["INFER_STATE_URL"] = redis_url
    port = free_port()
    argv = [PYTHON, "-m", "tools.devhost", "--port", str(port), "--app-dir", str(tree),
            "--no-queues", "--no-blobs", "--no-timers"]  # fmt: skip
    proc = ServerProcess(argv, port, ready_path="/api/healthz", name=name, env=env, cwd=tree)
    proc.start(timeout=60)
    return proc


class Sampler(threading.Thread):
    """gpusim's running count every ``every`` seconds, until stopped."""

    def __init__(self, sim: ServerProcess, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.sim = sim
        self.every = every
        self.points: list[tuple[float, int]] = []
        self.halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        with httpx.Client(base_url=self.sim.url) as client:
            while not self.halt.is_set():
                running = int(client.get("/admin/stats").json()["running"])
                self.points.append((round(time.monotonic() - self.t0, 3), running))
                time.sleep(self.every)


async def callers(urls: list[str], n: int, body: dict[str, Any]) -> list[int]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one(i: int) -> int:
            r = await client.post(urls[i % len(urls)], json=body)
            return r.status_code

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def one_request_s(sim: ServerProcess) -> float:
    with httpx.Client() as client:
        times = []
        for _ in range(5):
            t = time.monotonic()
            client.post(sim.url + "/v1/chat/completions", json=BODY, timeout=30)
            times.append(time.monotonic() - t)
    return sorted(times)[2]


def kept(args: argparse.Namespace, sim: ServerProcess, redis_url: str | None) -> dict[str, Any]:
    hosts = [host(sim, args.cap, redis_url, name=f"bench-cap-{i}") for i in range(args.hosts)]
    try:
        urls = [h.url + "/api/v1/chat/completions" for h in hosts]
        asyncio.run(callers(urls, len(urls), BODY))  # warm every host
        one = one_request_s(sim)
        httpx.post(sim.url + "/admin/reset")
        sampler = Sampler(sim)
        sampler.start()
        started = time.monotonic()
        statuses = asyncio.run(callers(urls, args.callers, BODY))
        took = time.monotonic() - started
        sampler.halt.set()
        sampler.join()
        peak = httpx.get(sim.url + "/admin/stats").json()["peak_running"]
    finally:
        for h in hosts:
            h.stop()
    ideal = args.callers / args.cap * one
    return {
        "answered_200": statuses.count(200),
        "callers": args.callers,
        "peak_in_flight": peak,
        "cap": args.cap,
        "seconds": round(took, 3),
        "ideal_seconds": round(ideal, 3),
        "ratio_to_ideal": round(took / ideal, 3),
        "one_request_s": round(one, 4),
        "series": sampler.points,
    }


def waiting_cpu(sim: ServerProcess, redis_url: str | None, code: Path | None) -> dict[str, Any]:
    h = host(sim, 1, redis_url, code, name="bench-cap-wait")
    assert h.proc is not None
    pid = h.proc.pid
    url = h.url + "/api/v1/chat/completions"
    try:
        asyncio.run(callers([url], 1, BODY))
        time.sleep(1.0)
        c0, t0 = cpu_s(pid), time.monotonic()
        time.sleep(WINDOW_S)
        idle = (cpu_s(pid) - c0) / (time.monotonic() - t0)
        httpx.post(sim.url + "/admin/faults",
                   json={"type": "slow_first_token", "count": 1, "delay_s": 60})  # fmt: skip
        held = json.dumps({**BODY, "stream": True})
        holder = subprocess.Popen(
            [PYTHON, "-c", HOLD, url, held], stdout=subprocess.DEVNULL)  # fmt: skip
        time.sleep(1.0)
        waiters = subprocess.Popen(
            [PYTHON, "-c", WAIT, url, str(ROOT), str(WAITERS)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(3.0)  # every waiter has arrived
        c1, t1 = cpu_s(pid), time.monotonic()
        time.sleep(WINDOW_S)
        busy = (cpu_s(pid) - c1) / (time.monotonic() - t1)
        waiters.kill()
        holder.kill()
    finally:
        h.kill()
        httpx.delete(sim.url + "/admin/faults")
    return {"idle_cpu_share": round(idle, 4), "waiting_cpu_share": round(busy, 4),
            "waiters": WAITERS}  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 1]})
    for mode, color in (("per_instance", "#d62728"), ("shared", "#1f77b4")):
        run = result["kept"][mode]
        xs = [p[0] for p in run["series"]]
        ys = [p[1] for p in run["series"]]
        label = (f"{mode.replace('_', ' ')}: peak {run['peak_in_flight']}, "
                 f"{run['seconds']:.1f}s ({run['ratio_to_ideal']:.2f}x ideal)")  # fmt: skip
        ax.plot(xs, ys, color=color, label=label, lw=1.2)
    ax.axhline(
        result["cap"], color="black", ls="--", lw=1, label=f"max_concurrency {result['cap']}"
    )
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests running at the endpoint")
    ax.set_title(f"{result['callers']} callers over {result['hosts']} devhost hosts")
    ax.legend(fontsize=8)
    names, values = [], []
    for tag, run in result["waiting"].items():
        short = (
            tag.split(" ")[0] if tag.startswith("base") else tag.replace("per instance", "local")
        )
        names += [f"{short}\nidle", f"{short}\n{WAITERS} wait"]
        values += [run["idle_cpu_share"] * 100, run["waiting_cpu_share"] * 100]
    bx.bar(range(len(values)), values, color=["#bbbbbb", "#1f77b4"] * (len(values) // 2))
    bx.set_xticks(range(len(values)), names, fontsize=7, rotation=45, ha="right")
    bx.set_ylabel("% of one core (devhost)")
    bx.set_title("CPU while requests wait for a slot", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--cap", type=int, default=8)
    parser.add_argument("--callers", type=int, default=240)
    parser.add_argument("--base-ref", default=None)
    args = parser.parse_args(argv)
    sim = gpusim(None, "--ttft-base-ms", "20", "--itl-ms", "10", "--min-output-tokens", "16",
                 "--max-output-tokens", "16", "--batch-slowdown", "0", "--max-num-seqs", "256",
                 "--max-waiting", "4096")  # fmt: skip
    redis_proc, redis_url = redis_server()
    command = "python -m bench.capacity " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict[str, Any] = {"hosts": args.hosts, "cap": args.cap, "callers": args.callers,
                              "command": command}  # fmt: skip
    try:
        sim.start(timeout=30)
        result["kept"] = {
            "per_instance": kept(args, sim, None),
            "shared": kept(args, sim, redis_url),
        }
        waiting: dict[str, Any] = {}
        with worktree(args.base_ref) as base:
            if base is not None:
                waiting[f"base {args.base_ref}"] = waiting_cpu(sim, None, base)
        waiting["per instance"] = waiting_cpu(sim, None, None)
        waiting["shared"] = waiting_cpu(sim, redis_url, None)
        result["waiting"] = waiting
    finally:
        sim.stop()
        redis_proc.kill()
    path = write_result("capacity", result)
    plot(result, RESULTS / "capacity.png")
    for mode, run in result["kept"].items():
        print(f"{mode}: peak {run['peak_in_flight']} (cap {args.cap}), {run['seconds']}s, "
              f"{run['ratio_to_ideal']}x ideal, {run['answered_200']} answered")  # fmt: skip
    for tag, run in result["waiting"].items():
        print(f"{tag}: idle {run['idle_cpu_share']:.1%}, {WAITERS} waiting "
              f"{run['waiting_cpu_share']:.1%} of a core")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
