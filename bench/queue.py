"""Queue throughput: N jobs through devhost + Azurite + the real queue worker against gpusim.

gpusim runs with a known capacity: every request generates exactly ``--tokens`` tokens, with
no batch slowdown, so one request takes ttft + tokens * itl and the endpoint completes at most
``capacity = max_num_seqs / latency`` requests per second. The figure reported is the jobs'
throughput (first enqueue to last record ``succeeded``) as a fraction of that capacity.

    .venv/bin/python -m bench.queue --jobs 500
Writes bench/results/queue.json (and queue.png).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from tests.fixtures.azurite import ACCOUNT, ACCOUNT_KEY, AZURITE_BIN
from tests.fixtures.gpusim import start_gpusim
from tests.fixtures.procs import PYTHON, ServerProcess, free_port

RESULTS = Path(__file__).resolve().parent / "results"


def connection_string(blob: int, queue: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob}/{ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:{queue}/{ACCOUNT};"
    )


def crossing(timeline: list[tuple[float, int]], level: float) -> float:
    """When the completed count crossed ``level``, interpolated between two samples."""
    prev_t, prev_d = 0.0, 0
    for t, d in timeline:
        if d >= level:
            if d == prev_d:
                return t
            return prev_t + (t - prev_t) * (level - prev_d) / (d - prev_d)
        prev_t, prev_d = t, d
    return timeline[-1][0]


def measure_capacity(v1: str, args: argparse.Namespace, n: int = 400) -> float:
    """Requests/s the endpoint itself serves, called directly at 2x max_num_seqs."""
    import asyncio

    async def run() -> float:
        sem = asyncio.Semaphore(2 * args.max_num_seqs)
        body = {"model": "local-model", "max_tokens": args.tokens,
                "messages": [{"role": "user", "content": "capacity probe"}]}  # fmt: skip
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as c:

            async def one() -> None:
                async with sem:
                    (await c.post(v1 + "/chat/completions", json=body)).raise_for_status()

            t0 = time.monotonic()
            await asyncio.gather(*(one() for _ in range(n)))
            return n / (time.monotonic() - t0)

    return asyncio.run(run())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32, help="host.json queues.batchSize")
    p.add_argument("--hosts", type=int, default=1, help="devhost processes polling the queue")
    args = p.parse_args()

    latency_s = (args.ttft_ms + args.tokens * args.itl_ms) / 1000.0
    capacity = args.max_num_seqs / latency_s
    tmp = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    blob, queue_port, table = free_port(), free_port(), free_port()
    azurite = ServerProcess(
        [
            str(AZURITE_BIN),
            "--blobPort",
            str(blob),
            "--queuePort",
            str(queue_port),
            "--tablePort",
            str(table),
            "--location",
            str(tmp / "azurite"),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
        ],
        blob,
        ready_path=None,
        name="bench-azurite",
    ).start()
    sim = start_gpusim(
        {
            "max_num_seqs": args.max_num_seqs,
            "ttft_base_ms": args.ttft_ms,
            "prefill_ms_per_token": 0,
            "itl_ms": args.itl_ms,
            "batch_slowdown": 0,
            "min_output_tokens": args.tokens,
            "max_output_tokens": args.tokens,
            "max_waiting": 100_000,
        },
        name="bench-gpusim",
    )
    measured = measure_capacity(sim.v1, args)
    sim.reset()  # the jobs' count starts from zero
    conn = connection_string(blob, queue_port)
    app_dir = tmp / "app"
    app_dir.mkdir()
    (app_dir / "host.json").write_text(
        json.dumps(
            {
                "version": "2.0",
                "extensions": {
                    "queues": {
                        "batchSize": args.batch_size,
                        "maxDequeueCount": 5,
                        "visibilityTimeout": "00:00:01",
                        "maxPollingInterval": "00:00:00.200",
                        "messageEncoding": "base64",
                    }
                },
            }
        )
    )
    container = "jobs-" + uuid.uuid4().hex[:8]
    backends = [
        {
            "name": "sim",
            "kind": "openai",
            "base_url": sim.v1,
            "models": ["*"],
            "max_concurrency": 256,
        }
    ]

    def devhost(i: int) -> ServerProcess:
        port = free_port()
        return ServerProcess(
            [PYTHON, "-m", "tools.devhost", "--port", str(port), "--app-module",
             "tests.e2e.jobs_app", "--app-dir", str(app_dir), "--poll-interval", "0.05",
             *(["--no-blobs"] if i else [])],
            port,
            ready_path="/",
            name=f"bench-devhost-{i}",
            env={
                "AzureWebJobsStorage": conn,
                "INFER_BACKENDS": json.dumps(backends),
                "INFER_JOBS_CONTAINER": container,
                "INFER_AUTH_LEVEL": "ANONYMOUS",
            },
        )  # fmt: skip

    # Like the platform's scale-out (instances, FUNCTIONS_WORKER_PROCESS_COUNT): each host
    # is one Python process polling the same queue.
    hosts = [devhost(i) for i in range(args.hosts)]
    host = hosts[0]
    try:
        queue = QueueClient.from_connection_string(
            conn, "inference-requests", message_encode_policy=TextBase64EncodePolicy()
        )
        queue.create_queue()
        ids = [f"bench-{i}-{uuid.uuid4().hex[:6]}" for i in range(args.jobs)]
        t_send = time.monotonic()

        def send(i: int) -> None:
            queue.send_message(
                json.dumps(
                    {
                        "id": ids[i],
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "model": "local-model",
                            "max_tokens": args.tokens,
                            "messages": [{"role": "user", "content": f"q{i}"}],
                        },
                    }
                )
            )

        # The whole backlog is queued first (a spike the queue absorbs), then the hosts start
        # and drain it: the drain rate is the worker's throughput, not the producer's.
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(send, range(args.jobs)))
        enqueued = time.monotonic() - t_send
        t0 = time.monotonic()
        for h in hosts:
            h.start()
        timeline: list[tuple[float, int]] = []
        while True:
            done = int(sim.stats()["completed"])
            timeline.append((time.monotonic() - t0, done))
            if done >= args.jobs:
                break
            if time.monotonic() - t0 > 600:
                raise SystemExit(f"timed out with {done}/{args.jobs} done")
            time.sleep(0.05)
        # the model finished every job; now wait for every record to read succeeded
        blobs = BlobServiceClient.from_connection_string(conn).get_container_client(container)
        pending = set(ids)
        with httpx.Client(base_url=host.url, timeout=30) as http:
            while pending:
                for job_id in list(pending):
                    if http.get(f"/api/v1/jobs/{job_id}").json().get("status") == "succeeded":
                        pending.discard(job_id)
                if pending:
                    time.sleep(0.2)
        elapsed = time.monotonic() - t0
        final = sim.stats()
        peak = int(final["peak_running"])
        model_calls = int(final["completed"])
        del blobs
    finally:
        for h in hosts:
            h.stop()
        sim.close()
        sim.server.stop()
        azurite.kill()
    throughput = args.jobs / elapsed
    lo, hi = crossing(timeline, args.jobs * 0.1), crossing(timeline, args.jobs * 0.9)
    steady = (0.8 * args.jobs) / max(hi - lo, 1e-6)
    result: dict[str, Any] = {
        "jobs": args.jobs,
        "gpusim": {
            "max_num_seqs": args.max_num_seqs,
            "ttft_ms": args.ttft_ms,
            "itl_ms": args.itl_ms,
            "tokens": args.tokens,
            "batch_slowdown": 0,
        },
        "host_batch_size": args.batch_size,
        "hosts": args.hosts,
        "per_request_latency_s": latency_s,
        "capacity_rps": round(capacity, 2),
        # What the same gpusim serves when called directly, in this run, with twice its
        # sequence limit in flight: the capacity the worker is compared with.
        "measured_capacity_rps": round(measured, 2),
        "steady_ratio_of_measured_capacity": round(steady / measured, 3),
        "enqueue_s": round(enqueued, 2),
        "elapsed_s": round(elapsed, 2),
        "throughput_jobs_per_s": round(throughput, 2),
        "ratio_of_capacity": round(throughput / capacity, 3),
        "steady_jobs_per_s_10_to_90pct": round(steady, 2),
        "steady_ratio_of_capacity": round(steady / capacity, 3),
        "peak_running_at_gpusim": peak,
        "model_calls": model_calls,
        "all_succeeded": True,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "queue.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs, ys = zip(*timeline, strict=True)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(xs, ys, label="jobs completed at gpusim")
        ax.plot([0, args.jobs / capacity], [0, args.jobs], "--", label="endpoint capacity")
        ax.set_xlabel("seconds since first enqueue")
        ax.set_ylabel("jobs")
        ax.set_title(f"queue worker: {result['ratio_of_capacity']:.0%} of capacity")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "queue.png", dpi=100)
    except Exception as exc:
        print(f"no plot: {exc}")


if __name__ == "__main__":
    main()
