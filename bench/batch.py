"""Batch throughput: the adaptive engine against fixed concurrency on a 64-sequence gpusim.

    .venv/bin/python -m bench.batch [--lines 10000] [--time-scale 0.25]

gpusim runs 64 concurrent sequences (vLLM-like: TTFT 30 ms + 0.2 ms/prompt token, ITL 10 ms
growing to 20 ms at full batch, 16-64 output tokens) with time scaled by ``--time-scale``
so the run stays under ~3 minutes while the ratios hold. Measured in one run:

- sequential loop (a small sample), fixed concurrency 8, and a sweep of fixed 32/64/96: the
  best of the sweep is the endpoint's capacity;
- the batch engine (``shared.batch``, in-process, local-directory store) on ``--lines``
  requests, started at its default concurrency, sampled every 0.25 s;
- storage operations by kind and CPU per line, the engine over Azurite and over moto S3
  (``--cost-lines``, bench/batch_cost.py).

Writes bench/results/batch.json and bench/results/batch.png (throughput and concurrency
over time). The engine's result also checks that no line was lost or written twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, gpusim, write_result

SEQS = 64


def _sim_flags(scale: float) -> list[str]:
    return [
        "--max-num-seqs", str(SEQS), "--max-waiting", "64", "--ttft-base-ms", "30",
        "--prefill-ms-per-token", "0.2", "--itl-ms", "10", "--batch-slowdown", "1.0",
        "--min-output-tokens", "16", "--max-output-tokens", "64",
        "--retry-after", "0.1", "--time-scale", str(scale),
    ]  # fmt: skip


def _line(i: int) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "local-model",
            "messages": [{"role": "user", "content": f"Summarise item {i}: " + "data " * 20}],
        },
    }


async def fixed(n: int, concurrency: int) -> dict[str, Any]:
    """``n`` requests through the service with at most ``concurrency`` in flight."""
    from shared.context import Context
    from shared.schemas import Operation
    from shared.service import get_service

    service = get_service()
    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            await service.complete(Operation.CHAT, _line(i)["body"], Context.with_timeout(120))
            ok += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.monotonic() - t0
    return {"concurrency": concurrency, "requests": n, "seconds": round(elapsed, 3),
            "rps": round(ok / elapsed, 2)}  # fmt: skip


async def engine(n: int, root: Path) -> dict[str, Any]:
    from shared.batch.runner import Batch
    from shared.batch.state import Stores
    from shared.context import Context
    from shared.storage.local import LocalStore

    stores = Stores(LocalStore(root, "batch-in"), LocalStore(root, "batch-out"),
                    LocalStore(root, "batch-work"))  # fmt: skip
    data = "".join(json.dumps(_line(i)) + "\n" for i in range(n)).encode()
    stores.inp.put("bench.jsonl", data)
    sent: list[dict[str, Any]] = []
    b = Batch(stores=stores, send=sent.append)
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()
    task = asyncio.create_task(b.start("batch-in/bench.jsonl", Context.with_timeout(3600)))
    while not task.done():
        lim = b.limiter
        ckpt = stores.work.list("bench/")
        done = 0
        for key in ckpt:
            if key.endswith(".json") and "/shard-" in key:
                obj = stores.work.get(key)
                if obj is not None:
                    c = json.loads(obj.data)
                    done += c["completed"] + c["failed"]
        samples.append({
            "t": round(time.monotonic() - t0, 3),
            "limit": round(lim.limit, 2) if lim else 0.0,
            "in_flight": lim.in_flight if lim else 0,
            "committed": done,
        })  # fmt: skip
        await asyncio.sleep(0.25)
    outcome = await task
    elapsed = time.monotonic() - t0
    out = stores.out.get("bench.output.jsonl")
    err = stores.out.get("bench.errors.jsonl")
    assert out is not None and err is not None
    ids = Counter(json.loads(x)["custom_id"] for x in (out.data + err.data).splitlines())
    lost = sum(1 for i in range(n) if ids[f"req-{i}"] == 0)
    dup = sum(1 for v in ids.values() if v > 1)
    return {
        "outcome": outcome,
        "requests": n,
        "seconds": round(elapsed, 3),
        "rps": round(n / elapsed, 2),
        "failed_lines": len(err.data.splitlines()),
        "lost": lost,
        "duplicated": dup,
        "throttled_429_503": b.limiter.throttled if b.limiter else 0,
        "samples": samples,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["engine"]["samples"]
    t = [x["t"] for x in s]
    rate = [0.0] + [
        (s[i]["committed"] - s[i - 1]["committed"]) / max(s[i]["t"] - s[i - 1]["t"], 1e-9)
        for i in range(1, len(s))
    ]
    # committed counts move in checkpoint steps: smooth over ~2 s
    w = 8
    smooth = [sum(rate[max(0, i - w + 1) : i + 1]) / len(rate[max(0, i - w + 1) : i + 1])
              for i in range(len(rate))]  # fmt: skip
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    a1.plot(t, smooth, label="adaptive engine (committed lines/s, 2 s mean)")
    cap = result["capacity_rps"]
    a1.axhline(cap, color="k", ls="--", lw=1, label=f"capacity (best fixed) {cap:.0f}/s")
    a1.axhline(result["fixed_8"]["rps"], color="tab:red", ls=":", label="fixed concurrency 8")
    a1.set_ylabel("requests / s")
    a1.legend(loc="lower right", fontsize=8)
    a1.set_title(
        f"batch engine: {result['engine']['rps']:.0f} req/s = "
        f"{100 * result['ratio_of_capacity']:.1f}% of capacity (gpusim {SEQS} seqs)"
    )
    a2.plot(t, [x["limit"] for x in s], label="concurrency limit")
    a2.plot(t, [x["in_flight"] for x in s], label="in flight", alpha=0.7)
    a2.axhline(SEQS, color="k", ls="--", lw=1, label="max_num_seqs")
    a2.set_xlabel("seconds")
    a2.set_ylabel("requests")
    a2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from shared.lifecycle import reset_all

    reset_all()
    seq = await fixed(args.sample, 1)
    f8 = await fixed(max(400, args.lines // 20), 8)
    sweep = [await fixed(args.sweep_requests, c) for c in (32, 64, 96)]
    best = max(sweep, key=lambda r: r["rps"])
    with tempfile.TemporaryDirectory() as root:
        eng = await engine(args.lines, Path(root))
    return {
        "sequential": seq,
        "fixed_8": f8,
        "sweep": sweep,
        "capacity_rps": best["rps"],
        "capacity_concurrency": best["concurrency"],
        "engine": eng,
        "ratio_of_capacity": round(eng["rps"] / best["rps"], 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    p.add_argument("--lines", type=int, default=10_000)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--sample", type=int, default=40, help="requests in the sequential sample")
    p.add_argument("--sweep-requests", type=int, default=800)
    p.add_argument(
        "--cost-lines", type=int, default=1000, help="lines over Azurite / moto S3 (0: skip)"
    )
    args = p.parse_args()
    sim = gpusim(None, *_sim_flags(args.time_scale)).start()
    os.environ["INFER_BACKENDS"] = json.dumps(
        [{"name": "sim", "kind": "openai", "base_url": sim.url + "/v1", "models": ["*"],
          "max_concurrency": 128}]
    )  # fmt: skip
    os.environ.setdefault("INFER_STORE", "local")
    os.environ.setdefault("INFER_BATCH_CHECKPOINT_S", "1")
    os.environ.setdefault("INFER_BATCH_STATUS_S", "2")
    try:
        result = asyncio.run(run(args))
        if args.cost_lines:  # storage calls and CPU per line, bench/batch_cost.py
            from bench.batch_cost import storage_cost

            result["storage_cost"] = storage_cost(args.cost_lines)
    finally:
        sim.stop()
    result["gpusim"] = {"flags": _sim_flags(args.time_scale)}
    result["command"] = f"python -m bench.batch --lines {args.lines} --time-scale {args.time_scale}"
    path = write_result("batch", result)
    plot(result, RESULTS / "batch.png")
    e = result["engine"]
    print(
        f"sequential {result['sequential']['rps']} req/s | fixed 8 {result['fixed_8']['rps']} | "
        f"sweep {[(r['concurrency'], r['rps']) for r in result['sweep']]} | "
        f"engine {e['rps']} req/s = {100 * result['ratio_of_capacity']:.1f}% of capacity; "
        f"lost {e['lost']} duplicated {e['duplicated']} failed {e['failed_lines']} -> {path}"
    )
    _ = ROOT


if __name__ == "__main__":
    main()
