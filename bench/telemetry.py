"""What telemetry costs: cold start and CPU per request, off and on, side by side in one run.

Cold start: ``bench/probe.py`` (fresh interpreter: import + first invocation of the Lambda
chat handler) with telemetry off, OTLP/HTTP on (to a local receiver, flushed before the
invocation returns) and EMF on, alternating, ``--rounds`` each; the median is reported.

CPU per request: one fresh process per mode sends ``--requests`` chats (half streamed)
through the real FastAPI app in-process (``httpx.ASGITransport``) to a zero-latency gpusim,
after a warm-up, and reports the process CPU time (``time.process_time``) per request. The
modes alternate, ``--rounds`` processes each, and the median is reported.

    python -m bench.telemetry [--rounds 3] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from bench.common import PYTHON, ROOT, backends_for, gpusim, write_result
from tests.fixtures.otlp import Receiver

TELEMETRY_OK = "opentelemetry.sdk,opentelemetry.exporter,google.protobuf,requests"
WORKER = r"""
import asyncio, json, sys, time, httpx
from functions.chat.app import app
N = int(sys.argv[1])
BODY = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
async def main():
    t = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=t, base_url="http://fn", timeout=30) as c:
        async def one(i):
            body = dict(BODY, stream=bool(i % 2), stream_options={"include_usage": True}) \
                if i % 2 else BODY
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
        for i in range(20):
            await one(i)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(N):
            await one(i)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(json.dumps({"cpu_ms_per_request": cpu / N * 1000,
                      "wall_ms_per_request": wall / N * 1000}))
asyncio.run(main())
"""


def _env(backends: str, extra: dict[str, str]) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "INFER_BACKENDS": backends, **extra}


def _last_json(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return data


def cold(modes: dict[str, dict[str, str]], backends: str, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, extra in modes.items():
            argv = [PYTHON, str(ROOT / "bench" / "probe.py"), "--import", "functions.chat.aws",
                    "--invoke", "aws", "--heavy-ok", TELEMETRY_OK]  # fmt: skip
            out = subprocess.run(
                argv, capture_output=True, text=True, env=_env(backends, extra), cwd=ROOT,
                check=True, timeout=120,
            )  # fmt: skip
            runs[mode].append(_last_json(out.stdout))
    result = {}
    for mode, rs in runs.items():
        result[mode] = {
            "import_s": round(statistics.median(r["import_s"] for r in rs), 4),
            "first_invoke_s": round(statistics.median(r["invoke_s"] for r in rs), 4),
            "total_s": round(statistics.median(r["total_s"] for r in rs), 4),
            "rss_mb": round(statistics.median(r["rss_mb"] for r in rs), 1),
            "status": sorted({r["status"] for r in rs}),
        }
    return result


def cpu(modes: dict[str, dict[str, str]], backends: str, rounds: int, n: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, extra in modes.items():
            out = subprocess.run(
                [PYTHON, "-c", WORKER, str(n)], capture_output=True, text=True,
                env=_env(backends, extra), cwd=ROOT, check=True, timeout=600,
            )  # fmt: skip
            runs[mode].append(_last_json(out.stdout))
    return {
        mode: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
        for mode, rs in runs.items()
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args(argv)
    receiver = Receiver().start()
    sim = gpusim(None, "--ttft-base-ms", "0", "--itl-ms", "0", "--prefill-ms-per-token", "0",
                 "--max-output-tokens", "16", "--min-output-tokens", "16")  # fmt: skip
    sim.start()
    try:
        backends = backends_for(sim)
        modes = {
            "off": {},
            "otlp": {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url},
            "emf": {"INFER_METRICS_EMF": "true"},
        }
        data = {
            "cold_start": cold(modes, backends, args.rounds),
            "per_request": cpu(modes, backends, args.rounds, args.requests),
            "requests": args.requests,
            "rounds": args.rounds,
            "command": "python -m bench.telemetry " + " ".join(argv or sys.argv[1:]),
        }
    finally:
        sim.stop()
        receiver.stop()
    off_cs, off_cpu = data["cold_start"]["off"], data["per_request"]["off"]
    for mode in ("otlp", "emf"):
        cs, pr = data["cold_start"][mode], data["per_request"][mode]
        added_cpu = pr["cpu_ms_per_request"] - off_cpu["cpu_ms_per_request"]
        data[f"added_by_{mode}"] = {
            "cold_start_s": round(cs["total_s"] - off_cs["total_s"], 4),
            "cpu_ms_per_request": round(added_cpu, 3),
        }
    path = write_result("telemetry", data)
    print(json.dumps(data, indent=2))
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
