"""What the response cache costs and saves, every mode side by side in one run.

One gpusim with realistic latency (the model), one Redis with the Query Engine
(redis-server 8.2 + RediSearch), and the chat function's app in this process over ASGI, so
the CPU time of this process is the function's (plus the load generator's, equal in every
mode). Modes: ``off``, ``exact`` in the process, ``exact`` in Redis, ``semantic``
(gpusim's embeddings: not semantic, but the same calls and sizes). Rounds alternate the
modes so load on the machine hits them all alike.

- miss: a new question each time: the endpoint's latency plus what the cache adds (the
  lookup and the store; the semantic mode adds an embeddings call to the model server);
  ``added`` is each mode's p50 and CPU per request minus those of ``off``;
- hit: the same question again: answered from the cache;
- cold start: import + first invocation of the chat handler (fresh interpreters,
  median of ``--rounds``), with each mode configured.

Writes bench/results/cache.json and cache.png.

    python -m bench.cache [--requests 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.common import PYTHON, ROOT, ServerProcess, free_port, gpusim, summary, write_result

MODES: dict[str, dict[str, Any] | None] = {
    "off": None,
    "exact (process)": {"mode": "exact"},
    "exact (redis)": {"mode": "exact"},
    "semantic (redis)": {"mode": "semantic", "semantic": {"embeddings_model": "local-model"}},
}
USES_REDIS = {"exact (redis)", "semantic (redis)"}


def redis_stack() -> ServerProcess:
    from tests.fixtures.redis_stack import stack_argv

    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    argv = [*stack_argv(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir]  # fmt: skip
    return ServerProcess(argv, port, ready_path=None, name="bench-redis")


def configure(mode: str, sim: ServerProcess, redis_url: str) -> None:
    from shared.lifecycle import reset_all

    os.environ["INFER_BACKENDS"] = json.dumps(
        [{"name": "sim", "kind": "openai", "base_url": sim.url + "/v1"}]
    )
    os.environ.pop("INFER_CACHE", None)
    os.environ.pop("INFER_STATE_URL", None)
    cache = MODES[mode]
    if cache is not None:
        os.environ["INFER_CACHE"] = json.dumps(cache)
    if mode in USES_REDIS:
        os.environ["INFER_STATE_URL"] = redis_url
    reset_all()


def body(question: str) -> dict[str, Any]:
    return {"model": "local-model", "messages": [{"role": "user", "content": question}],
            "max_tokens": 16}  # fmt: skip


async def timed(client: httpx.AsyncClient, question: str, expect: str | None) -> float:
    t0 = time.perf_counter()
    r = await client.post("/v1/chat/completions", json=body(question))
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    if expect is not None and r.headers.get("x-cache") != expect:
        raise SystemExit(f"expected x-cache {expect}, got {r.headers.get('x-cache')}")
    return elapsed


async def run_mode(mode: str, n: int, sim: ServerProcess, redis_url: str) -> dict[str, list[float]]:
    from functions.chat.app import app

    configure(mode, sim, redis_url)
    miss_expect = None if mode == "off" else "miss"
    hit_expect = None if mode == "off" else "hit"
    out: dict[str, list[float]] = {"miss": [], "hit": [], "miss_cpu": [], "hit_cpu": []}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(3):  # warm: service, connections, index
            await timed(client, f"warm {uuid.uuid4().hex}", None)
        c0 = time.process_time()
        for _ in range(n):
            out["miss"].append(
                await timed(client, f"Tell me a story {uuid.uuid4().hex}", miss_expect)
            )
        out["miss_cpu"].append((time.process_time() - c0) / n)
        same = f"Tell me a story {uuid.uuid4().hex}"
        await timed(client, same, miss_expect)
        c0 = time.process_time()
        for _ in range(n):
            out["hit"].append(await timed(client, same, hit_expect))
        out["hit_cpu"].append((time.process_time() - c0) / n)
    return out


def probe(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, str(ROOT / "bench" / "probe.py"), "--import", "functions.chat.aws",
         "--invoke", "aws"],
        capture_output=True, text=True, env=env, cwd=ROOT, check=True, timeout=120,
    )  # fmt: skip
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def cold_starts(rounds: int, fast_sim: ServerProcess, redis_url: str) -> dict[str, Any]:
    base = {"PATH": "/usr/bin:/bin",
            "INFER_BACKENDS": json.dumps([{"name": "sim", "kind": "openai",
                                           "base_url": fast_sim.url + "/v1"}])}  # fmt: skip
    envs: dict[str, dict[str, str]] = {}
    for mode, cache in MODES.items():
        env = dict(base)
        if cache is not None:
            env["INFER_CACHE"] = json.dumps(cache)
        if mode in USES_REDIS:
            env["INFER_STATE_URL"] = redis_url
        envs[mode] = env
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    import redis as redis_lib

    flush = redis_lib.Redis.from_url(redis_url)
    for _ in range(rounds):
        for mode, env in envs.items():
            flush.flushall()  # the first invocation is a miss: the whole path is loaded
            runs[mode].append(probe(env))
    flush.close()
    result = {}
    for mode, rs in runs.items():
        result[mode] = {
            k: round(statistics.median(r[k] for r in rs), 4)
            for k in ("import_s", "invoke_s", "total_s", "rss_mb")
        }
        result[mode]["modules"] = rs[-1]["heavy_modules"]
        result[mode]["status"] = rs[-1]["status"]
    return result


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(data["latency"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(modes))
    misses = [data["latency"][m]["miss"]["p50"] for m in modes]
    hits = [data["latency"][m]["hit"]["p50"] for m in modes]
    axes[0].bar([i - 0.2 for i in x], misses, 0.4, label="miss (new question)")
    axes[0].bar([i + 0.2 for i in x], hits, 0.4, label="repeat (hit; off: endpoint)")
    axes[0].set_xticks(list(x), modes, rotation=15)
    axes[0].set_ylabel("p50 latency, ms")
    axes[0].set_yscale("log")
    axes[0].legend(loc="lower left", fontsize=8)
    imports = [data["cold_start"][m]["import_s"] * 1000 for m in modes]
    first = [data["cold_start"][m]["invoke_s"] * 1000 for m in modes]
    axes[1].bar(list(x), imports, label="import")
    axes[1].bar(list(x), first, bottom=imports, label="first invocation")
    axes[1].legend(loc="upper left", fontsize=8)
    axes[1].set_xticks(list(x), modes, rotation=15)
    axes[1].set_ylabel("cold start (import + first call), ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=40, help="per mode, phase and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    sim = gpusim(None)  # default latencies: ~30 ms to first token, 10 ms per token
    fast = gpusim(None, "--ttft-base-ms", "0", "--itl-ms", "0", "--prefill-ms-per-token", "0")
    redis = redis_stack()
    for server in (sim, fast, redis):
        server.start(timeout=60)
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    saved = {k: v for k, v in os.environ.items() if k.startswith("INFER_")}
    try:
        samples: dict[str, dict[str, list[float]]] = {
            m: {"miss": [], "hit": [], "miss_cpu": [], "hit_cpu": []} for m in MODES
        }
        for _ in range(args.rounds):
            for mode in MODES:
                got = asyncio.run(run_mode(mode, args.requests, sim, redis_url))
                for k, v in got.items():
                    samples[mode][k] += v
        cold = cold_starts(max(args.rounds, 3), fast, redis_url)
    finally:
        for k in [k for k in os.environ if k.startswith("INFER_")]:
            os.environ.pop(k)
        os.environ.update(saved)
        for server in (sim, fast, redis):
            server.stop()
        shutil.rmtree(redis.argv[-1], ignore_errors=True)

    latency: dict[str, Any] = {}
    off = samples["off"]
    off_p50 = summary(off["miss"])["p50"]
    off_cpu = statistics.median(off["miss_cpu"]) * 1000
    for mode, s in samples.items():
        miss, hit = summary(s["miss"]), summary(s["hit"])
        cpu_miss = statistics.median(s["miss_cpu"]) * 1000
        latency[mode] = {
            "miss": miss,
            "hit": hit,
            "cpu_ms_per_miss": round(cpu_miss, 3),
            "cpu_ms_per_hit": round(statistics.median(s["hit_cpu"]) * 1000, 3),
            "miss_added_p50_ms": round(miss["p50"] - off_p50, 3),
            "miss_added_cpu_ms": round(cpu_miss - off_cpu, 3),
            "hit_speedup_vs_miss": round(miss["p50"] / hit["p50"], 1) if hit["p50"] else None,
        }
    data = {"requests_per_phase": args.requests * args.rounds, "latency": latency,
            "cold_start": cold}  # fmt: skip
    path = write_result("cache", data)
    plot(data, path.with_suffix(".png"))
    print(f"{'mode':18s} {'miss p50':>9s} {'hit p50':>8s} {'x':>6s} {'+p50':>7s} "
          f"{'+cpu/miss':>9s} {'cpu/hit':>8s} {'cold':>7s} {'1st call':>8s} {'rss':>6s}"
          "  modules")  # fmt: skip
    for mode, row in latency.items():
        c = cold[mode]
        print(
            f"{mode:18s} {row['miss']['p50']:8.2f}m {row['hit']['p50']:7.2f}m "
            f"{row['hit_speedup_vs_miss'] or 0:6.1f} {row['miss_added_p50_ms']:6.2f}m "
            f"{row['miss_added_cpu_ms']:8.3f}m {row['cpu_ms_per_hit']:7.3f}m "
            f"{c['total_s'] * 1000:6.0f}m {c['invoke_s'] * 1000:7.0f}m {c['rss_mb']:5.1f}M"
            f"  {','.join(c['modules']) or '-'}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
