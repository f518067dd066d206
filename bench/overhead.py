"""Latency the chat function adds over calling the model endpoint (gpusim) directly.

Targets, all measured side by side in one run against the same gpusim:
  direct       gpusim itself
  passthrough  the barest FastAPI-to-httpx proxy (bench/passthrough_app.py): the floor,
               on uvicorn's plain asyncio loop and h11 (as `pip install fastapi uvicorn` runs)
  function     the chat function's FastAPI app under uvicorn as the Lambda Web Adapter runs
               it (functions/chat/lambda_stream.sh: uvloop, httptools)
  devhost      the chat function as Azure calls it, through tools/devhost (the local host)
  base         (``--base-ref REF``) ``function`` at an earlier commit (a git worktree), run
               as that commit shipped it (asyncio, h11)

Each target's server CPU per request (user + system, all threads) is read from /proc over
its sequential plain requests. Then the same sequential requests go to every target in turn
(one each, ``--requests`` rounds), so that the machine's drift lands on all of them alike:
``interleaved_added_p50_ms`` is the figure to compare targets by.

For each: sequential and 32-concurrent plain requests (end-to-end latency) and streamed
requests (time to first token, gaps between chunks). Overhead = target p50 - direct p50.
Writes bench/results/overhead.json and overhead.png.

    python -m bench.overhead [--requests 200] [--concurrency 32] [--base-ref 927b284]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import chat_targets, cpu_s, gpusim, summary, worktree, write_result

BODY = {
    "model": "local-model",
    "messages": [{"role": "user", "content": "Tell me a story"}],
    "max_tokens": 16,
}


async def one_plain(client: httpx.AsyncClient, url: str) -> float:
    t0 = time.perf_counter()
    r = await client.post(url, json=BODY)
    r.raise_for_status()
    return time.perf_counter() - t0


async def one_stream(client: httpx.AsyncClient, url: str) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    ttft = -1.0
    gaps: list[float] = []
    last = 0.0
    async with client.stream("POST", url, json={**BODY, "stream": True}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            now = time.perf_counter()
            if ttft < 0 and '"content"' in line:
                ttft = now - t0
            elif ttft >= 0:
                gaps.append(now - last)
            last = now
    return ttft, gaps


async def measure(
    url: str, requests: int, concurrency: int, pid: int | None = None
) -> dict[str, Any]:
    limits = httpx.Limits(
        max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8
    )
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for _ in range(10):  # warm: connections, caches, first-use construction
            await one_plain(client, url)
            await one_stream(client, url)
        cpu0 = cpu_s(pid) if pid else 0.0
        seq = [await one_plain(client, url) for _ in range(requests)]
        cpu_ms = (cpu_s(pid) - cpu0) * 1000 / requests if pid else None
        streams = [await one_stream(client, url) for _ in range(requests // 2)]
        sem = asyncio.Semaphore(concurrency)

        async def bounded() -> float:
            async with sem:
                return await one_plain(client, url)

        t0 = time.perf_counter()
        conc = await asyncio.gather(*(bounded() for _ in range(requests)))
        wall = time.perf_counter() - t0

        async def bounded_stream() -> tuple[float, list[float]]:
            async with sem:
                return await one_stream(client, url)

        conc_streams = await asyncio.gather(*(bounded_stream() for _ in range(requests)))
    return {
        "sequential_plain_ms": summary(seq),
        "server_cpu_ms_per_request": round(cpu_ms, 3) if cpu_ms is not None else None,
        "sequential_stream_ttft_ms": summary([s[0] for s in streams]),
        "sequential_stream_gap_ms": summary([g for s in streams for g in s[1]]),
        f"c{concurrency}_plain_ms": summary(list(conc)),
        f"c{concurrency}_throughput_rps": round(requests / wall, 1),
        f"c{concurrency}_stream_ttft_ms": summary([s[0] for s in conc_streams]),
        f"c{concurrency}_stream_gap_ms": summary([g for s in conc_streams for g in s[1]]),
    }


async def interleaved(
    urls: dict[str, str], requests: int, pids: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Sequential plain requests, one to each target in turn, ``requests`` rounds: the
    machine's drift lands on every target alike. Latency p50 and server CPU per request."""
    clients = {name: httpx.AsyncClient(timeout=60) for name in urls}
    times: dict[str, list[float]] = {name: [] for name in urls}
    cpu: dict[str, float] = {}
    try:
        for name, url in urls.items():  # warm
            for _ in range(5):
                await one_plain(clients[name], url)
        cpu0 = {name: cpu_s(pid) for name, pid in pids.items() if pid}
        for _ in range(requests):
            for name, url in urls.items():
                times[name].append(await one_plain(clients[name], url))
        cpu = {name: (cpu_s(pids[name]) - c0) * 1000 / requests for name, c0 in cpu0.items()}
    finally:
        for c in clients.values():
            await c.aclose()
    return {
        name: {"plain_ms": summary(times[name]), "server_cpu_ms_per_request": round(cpu[name], 3)}
        for name in urls
        if name in cpu
    }


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(result["targets"])
    keys = [
        "sequential_plain_ms",
        "sequential_stream_ttft_ms",
        "sequential_stream_gap_ms",
        next(
            k for k in result["targets"]["direct"] if k.endswith("_plain_ms") and k.startswith("c")
        ),
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6))
    for ax, key in zip(axes, keys, strict=True):
        vals = [result["targets"][t][key]["p50"] for t in targets]
        ax.bar(targets, vals, color=["#888", "#4a8", "#48c", "#c84"][: len(targets)])
        ax.set_title(f"{key} (p50)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--base-ref", default=None)
    args = parser.parse_args()
    with worktree(args.base_ref) as base:
        result = run(args, base)
    path = write_result("overhead", result)
    plot(result, str(path.with_suffix(".png")))
    print(json.dumps({"added_p50_ms": result["added_p50_ms"],
                      "interleaved": result["interleaved_added_p50_ms"]}, indent=2))  # fmt: skip


def run(args: argparse.Namespace, base: Path | None) -> dict[str, Any]:
    sim = gpusim(
        None,
        "--ttft-base-ms",
        "20",
        "--prefill-ms-per-token",
        "0",
        "--itl-ms",
        "2",
        "--batch-slowdown",
        "0",
        "--max-num-seqs",
        "256",
        "--min-output-tokens",
        "16",
        "--max-output-tokens",
        "16",
    ).start()
    targets = chat_targets(sim, base)
    try:
        for t in targets.values():
            t.start()
        urls = {
            "direct": sim.url + "/v1/chat/completions",
            "passthrough": targets["passthrough"].url + "/v1/chat/completions",
            "function": targets["function"].url + "/v1/chat/completions",
            "devhost": targets["devhost"].url + "/api/v1/chat/completions",
        }
        if base is not None:
            urls["base"] = targets["base"].url + "/v1/chat/completions"
        pids = {name: t.proc.pid for name, t in targets.items() if t.proc is not None}
        pids["direct"] = sim.proc.pid if sim.proc is not None else 0
        out: dict[str, Any] = {}
        for name, url in urls.items():
            out[name] = asyncio.run(
                measure(url, args.requests, args.concurrency, pids.get(name))
            )
            print(name, json.dumps(out[name]["sequential_plain_ms"]))
        side_by_side = asyncio.run(interleaved(urls, args.requests, pids))
    finally:
        for t in targets.values():
            t.stop()
        sim.stop()
    direct = out["direct"]
    added = {
        name: {
            key: round(vals[key]["p50"] - direct[key]["p50"], 3)
            for key in vals
            if isinstance(vals[key], dict)
        }
        for name, vals in out.items()
        if name != "direct"
    }
    d0 = side_by_side["direct"]["plain_ms"]["p50"]
    interleaved_added = {
        name: {
            "sequential_plain_ms": round(v["plain_ms"]["p50"] - d0, 3),
            "server_cpu_ms_per_request": v["server_cpu_ms_per_request"],
        }
        for name, v in side_by_side.items()
        if name != "direct"
    }
    result = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "targets": out,
        "added_p50_ms": added,
        "interleaved": side_by_side,
        "interleaved_added_p50_ms": interleaved_added,
    }
    return result


if __name__ == "__main__":
    main()
