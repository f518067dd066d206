"""Queue throughput and cost: N queued jobs drained by the real queue worker against gpusim.

Platforms (``--platform``):
- ``azure``: devhost (``--hosts`` processes) + Azurite, the app of bench/queue_app.py;
- ``aws``: moto server (S3 + SQS) + bench/sqs_host.py processes (Lambda's SQS event
  source mapping: batches of 10, partial batch response, DeleteMessageBatch).

gpusim runs with a known capacity: every request generates exactly ``--tokens`` tokens, with
no batch slowdown, so one request takes ttft + tokens * itl. The endpoint's capacity is also
measured in the same run (called directly with twice its sequence limit in flight), and the
drain rate (10% to 90% of the jobs done) is reported as a fraction of it.

Per job, the worker processes' storage operations by kind (counted at the SDK boundary,
bench/storage_ops.py: host polling/deletes included) and CPU time (process CPU of every
worker process, from when it was ready and had run ``--warmup`` jobs each, so first-use
imports and connections are not counted); ``host_cpu_ms_per_job`` is the part spent by the
platform's stand-in (devhost's queue-listener threads; the SQS mapping's receive/delete),
which the deployed platform runs outside the function's process, and
``function_cpu_ms_per_job`` the rest. ``storage_service_cpu_ms_per_job`` and
``endpoint_cpu_ms_per_job`` are what Azurite (run in memory) or moto, and gpusim, cost the
same cores during the drain (none of them is on the worker's machine in the cloud).
``model_calls == jobs`` with every job succeeded
means exactly one model call per job. ``--code DIR`` runs the worker processes on another
checkout's product code (bench/queue_all.py ``--base-ref``); ``--profile PATH`` (Azure)
runs the first devhost under yappi and writes pstats there.

    .venv/bin/python -m bench.queue --jobs 600 [--platform azure|aws] [--hosts 2] [--tag after]
        [--workers 2] [--sku Dynamic]
Writes bench/results/queue_<platform>_<hosts>p[_<N>w][_dynamic][_<tag>].json;
bench/queue_report.py plots them. ``--hosts 2`` is two hosts (each its own listener and
in-flight limit, as two instances); ``--workers 2`` one host with two worker processes
(``FUNCTIONS_WORKER_PROCESS_COUNT``: the same messages in flight, on two cores), whose
storage and CPU counts are not collected (the stats route answers for one process).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from bench.common import cpu_s
from tests.fixtures.azurite import ACCOUNT, ACCOUNT_KEY, azurite_argv
from tests.fixtures.gpusim import start_gpusim
from tests.fixtures.moto import AWS_ENV
from tests.fixtures.procs import PYTHON, ROOT, ServerProcess, free_port

RESULTS = Path(__file__).resolve().parent / "results"
#: messages/s the harness queues at least (Azurite ~300 here; moto 30-40, one sender, as
#: several lose messages): the backlog's visibility delay is set from it
ENQUEUE_PER_S = {"azure": 60, "aws": 20}


def connection_string(blob: int, queue: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob}/{ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:{queue}/{ACCOUNT};"
    )


def code_dir(args: argparse.Namespace) -> Path:
    """Where the worker processes import the product from (``--code``, else this tree)."""
    return Path(args.code).resolve() if args.code else ROOT


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
                    for attempt in range(3):  # a loaded machine can drop a connection
                        try:
                            r = await c.post(v1 + "/chat/completions", json=body)
                            r.raise_for_status()
                            return
                        except httpx.TransportError:
                            if attempt == 2:
                                raise

            t0 = time.monotonic()
            await asyncio.gather(*(one() for _ in range(n)))
            return n / (time.monotonic() - t0)

    return asyncio.run(run())


def config_suffix(workers: int, sku: str) -> str:
    """What follows ``<hosts>p`` in a result's name: ``_2w`` (devhost --workers 2),
    ``_dynamic`` (--sku Dynamic)."""
    return (f"_{workers}w" if workers > 1 else "") + (f"_{sku.lower()}" if sku else "")


def delay_s(visible_at: float | None) -> int | None:
    """Whole seconds until ``visible_at`` (wall clock), at least 1; None: visible now."""
    if visible_at is None:
        return None
    return max(1, math.ceil(visible_at - time.time()))


def job_line(job_id: str, i: int, tokens: int) -> str:
    return json.dumps(
        {
            "id": job_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "local-model",
                "max_tokens": tokens,
                "messages": [{"role": "user", "content": f"q{i}"}],
            },
        }
    )


def host_json(batch_size: int) -> dict[str, Any]:
    return {
        "version": "2.0",
        "extensions": {
            "queues": {
                "batchSize": batch_size,
                "maxDequeueCount": 5,
                "visibilityTimeout": "00:00:01",
                "maxPollingInterval": "00:00:00.200",
                "messageEncoding": "base64",
            }
        },
    }


#: Run in the worker processes' code (``--code``), so an earlier devhost answers for itself.
IN_FLIGHT = """
import json, sys
from tools.devhost.config import parse_host_json
from tools.devhost.workers import share_queue_options
q = share_queue_options(parse_host_json(json.loads(sys.argv[1])).queues, int(sys.argv[2]))
print(json.dumps([q.fetch_threshold, q.batch_size + q.fetch_threshold]))
"""


def azure_in_flight(args: argparse.Namespace) -> dict[str, Any]:
    """What the devhost being measured keeps in flight per process: batchSize +
    newBatchThreshold (whose default is now batchSize / 2 per processor, one on a
    Consumption plan), as that code's own devhost computes it."""
    import subprocess

    env = {**os.environ, **({"WEBSITE_SKU": args.sku} if args.sku else {})}
    argv = [PYTHON, "-c", IN_FLIGHT, json.dumps(host_json(args.batch_size)), str(args.workers)]
    out = subprocess.run(argv, cwd=code_dir(args), env=env, capture_output=True, text=True)
    threshold, in_flight = json.loads(out.stdout) if out.returncode == 0 else (None, None)
    return {
        "host_sku": env.get("WEBSITE_SKU") or None,
        "host_new_batch_threshold": threshold,
        "messages_in_flight_max_per_process": in_flight,
    }


class AzureRun:
    """Azurite + devhost processes; records read back from the blob container."""

    def __init__(self, args: argparse.Namespace, tmp: Path, backends: list[dict[str, Any]]):
        self.args = args
        blob, queue_port, table = free_port(), free_port(), free_port()
        # in memory: the deployed service keeps nothing on these cores, so its stand-in
        # should cost them as little as it can (~20% less CPU per call than on disk)
        self.azurite = ServerProcess(
            azurite_argv(blob, queue_port, table, None), blob, ready_path=None,
            name="bench-azurite",
        ).start()  # fmt: skip
        self.service = self.azurite
        self.hosts: list[ServerProcess] = []
        try:
            self.conn = connection_string(blob, queue_port)
            app_dir = tmp / "app"
            app_dir.mkdir()
            (app_dir / "host.json").write_text(json.dumps(host_json(args.batch_size)))
            self.container = "jobs-" + uuid.uuid4().hex[:8]
            env = {
                "AzureWebJobsStorage": self.conn,
                "INFER_BACKENDS": json.dumps(backends),
                "INFER_JOBS_CONTAINER": self.container,
                "INFER_AUTH_LEVEL": "ANONYMOUS",
                **({"WEBSITE_SKU": args.sku} if args.sku else {}),
            }
            for i in range(args.hosts):
                port = free_port()
                if args.profile and i == 0:
                    env = {**env, "BENCH_PROFILE": str(Path(args.profile).resolve())}
                elif "BENCH_PROFILE" in env:
                    env = {k: v for k, v in env.items() if k != "BENCH_PROFILE"}
                self.hosts.append(ServerProcess(
                    [PYTHON, "-m", "tools.devhost", "--port", str(port), "--app-module",
                     "bench.queue_app", "--app-dir", str(app_dir), "--poll-interval", "0.05",
                     "--workers", str(args.workers), *(["--no-blobs"] if i else [])],
                    port, ready_path="/", name=f"bench-devhost-{i}", env=env, cwd=code_dir(args),
                ))  # fmt: skip
            self.queue = QueueClient.from_connection_string(
                self.conn, "inference-requests", message_encode_policy=TextBase64EncodePolicy()
            )
            self.queue.create_queue()
            self.blobs = BlobServiceClient.from_connection_string(self.conn)
        except BaseException:  # set-up failed: stop what was started
            self.close()
            raise

    def enqueue(self, lines: list[str], visible_at: float | None = None) -> None:
        def send(line: str) -> None:
            self.queue.send_message(line, visibility_timeout=delay_s(visible_at))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(send, lines))

    def stats(self, host: ServerProcess) -> dict[str, Any]:
        return dict(httpx.get(host.url + "/api/bench/stats", timeout=30).json())

    def profile(self, action: str) -> None:
        if self.args.profile:
            query = "?clear=1" if action == "clear" else ""
            httpx.get(self.hosts[0].url + "/api/bench/profile" + query, timeout=60)

    def succeeded(self, job_id: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self.blobs.get_blob_client(self.container, f"{job_id}.json")
        try:
            return bool(json.loads(blob.download_blob().readall())["status"] == "succeeded")
        except ResourceNotFoundError:
            return False

    def close(self) -> None:
        for h in self.hosts:
            h.stop()
        self.azurite.kill()


class AwsRun:
    """moto server + bench/sqs_host.py processes; records read back from S3."""

    def __init__(self, args: argparse.Namespace, tmp: Path, backends: list[dict[str, Any]]):
        import boto3

        self.args = args
        port = free_port()
        self.moto = ServerProcess(
            [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            port, ready_path="/moto-api/", name="bench-moto",
        ).start()  # fmt: skip
        self.service = self.moto
        self.hosts: list[ServerProcess] = []
        try:
            aws = {**AWS_ENV, "AWS_ENDPOINT_URL": self.moto.url}
            session = boto3.session.Session(
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
            )
            self.s3 = session.client("s3", endpoint_url=self.moto.url)
            self.sqs = session.client("sqs", endpoint_url=self.moto.url)
            self.bucket = "bench-" + uuid.uuid4().hex[:8]
            self.s3.create_bucket(Bucket=self.bucket)
            dlq = self.sqs.create_queue(QueueName="inference-requests-dlq")["QueueUrl"]
            dlq_arn = self.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
            redrive = {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"],
                       "maxReceiveCount": "5"}  # fmt: skip
            self.url = self.sqs.create_queue(
                QueueName="inference-requests",
                Attributes={"VisibilityTimeout": "60", "RedrivePolicy": json.dumps(redrive)},
            )["QueueUrl"]
            arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
            env = {**aws, "INFER_BUCKET": self.bucket, "INFER_QUEUE_URL": self.url,
                   "INFER_BACKENDS": json.dumps(backends)}  # fmt: skip
            for i in range(args.hosts):
                hp = free_port()
                self.hosts.append(ServerProcess(
                    [PYTHON, "-m", "bench.sqs_host", "--queue-url", self.url, "--queue-arn",
                     arn["Attributes"]["QueueArn"], "--port", str(hp), "--batches",
                     str(args.sqs_batches)],
                    hp, ready_path="/", name=f"bench-sqs-host-{i}", env=env, cwd=code_dir(args),
                ))  # fmt: skip
        except BaseException:  # set-up failed: stop what was started
            self.close()
            raise

    def enqueue(self, lines: list[str], visible_at: float | None = None) -> None:
        def send(chunk: list[str]) -> None:
            delay = {"DelaySeconds": delay_s(visible_at)} if visible_at is not None else {}
            entries = [{"Id": str(i), "MessageBody": t, **delay} for i, t in enumerate(chunk)]
            for _ in range(5):  # a batch can fail in part (moto on a loaded machine does)
                got = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
                failed = {f["Id"] for f in got.get("Failed", [])}
                entries = [e for e in entries if e["Id"] in failed]
                if not entries:
                    return
            raise RuntimeError(f"could not queue {len(entries)} messages")

        # one sender: moto has lost a message or two of batches sent from several threads
        for chunk in (lines[i : i + 10] for i in range(0, len(lines), 10)):
            send(chunk)

    def stats(self, host: ServerProcess) -> dict[str, Any]:
        return dict(httpx.get(host.url + "/stats", timeout=30).json())

    def profile(self, action: str) -> None:
        if self.args.profile:
            raise SystemExit("--profile: Azure (devhost) only")

    def succeeded(self, job_id: str) -> bool:
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=f"jobs/{job_id}.json")
        except self.s3.exceptions.NoSuchKey:
            return False
        return bool(json.loads(obj["Body"].read())["status"] == "succeeded")

    def close(self) -> None:
        for h in self.hosts:
            h.stop()
        self.moto.stop()


def process_cpu_s(server: ServerProcess) -> float:
    assert server.proc is not None
    return cpu_s(server.proc.pid)


def per_job(before: list[dict[str, Any]], after: list[dict[str, Any]], jobs: int) -> dict[str, Any]:
    ops: dict[str, float] = {}
    cpu = host = 0.0
    for b, a in zip(before, after, strict=True):
        cpu += a["cpu_s"] - b["cpu_s"]
        host += a.get("host_cpu_s", 0.0) - b.get("host_cpu_s", 0.0)
        for kind, n in a["ops"].items():
            ops[kind] = ops.get(kind, 0) + n - b["ops"].get(kind, 0)
    per = {k: round(v / jobs, 3) for k, v in sorted(ops.items()) if v}
    blob = sum(v for k, v in per.items() if k.startswith("blob."))
    queue = sum(v for k, v in per.items() if k.startswith("queue."))
    return {
        "storage_ops_per_job": per,
        "blob_ops_per_job": round(blob, 3),
        "queue_ops_per_job": round(queue, 3),
        "total_ops_per_job": round(blob + queue, 3),
        "worker_cpu_ms_per_job": round(cpu * 1000 / jobs, 2),
        "worker_cpu_s": round(cpu, 2),
        # the part of it that stands for the platform's host (devhost's queue listener
        # threads; the SQS mapping's receive/delete calls), which the deployed platform
        # runs outside the function's process; the rest is the function's
        "host_cpu_ms_per_job": round(host * 1000 / jobs, 2),
        "function_cpu_ms_per_job": round((cpu - host) * 1000 / jobs, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=600)
    p.add_argument("--platform", choices=["azure", "aws"], default="azure")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32, help="host.json queues.batchSize")
    p.add_argument("--sqs-batches", type=int, default=5, help="AWS: batches of 10 in flight")
    p.add_argument(
        "--sku", default="",
        help="Azure: WEBSITE_SKU for devhost (Dynamic: a Consumption plan, whose default "
        "newBatchThreshold counts one processor); default: this machine's processors",
    )  # fmt: skip
    p.add_argument("--hosts", type=int, default=1, help="worker processes polling the queue")
    p.add_argument(
        "--workers", type=int, default=1,
        help="Azure: devhost --workers per host (storage counts need 1: use --hosts)",
    )  # fmt: skip
    p.add_argument(
        "--profile", default="",
        help="Azure: profile the first devhost process with yappi, pstats to this path",
    )  # fmt: skip
    p.add_argument(
        "--code", default="",
        help="run the worker processes on the product code of this checkout (e.g. a git "
        "worktree of an earlier commit), the harness and endpoint staying this tree's",
    )  # fmt: skip
    p.add_argument(
        "--warmup", type=int, default=20, help="warm-up jobs per host, not counted"
    )  # fmt: skip
    p.add_argument("--tag", default="", help="suffix of the result file (e.g. before/after)")
    p.add_argument("--code-ref", default="", help=argparse.SUPPRESS)  # recorded only
    args = p.parse_args()

    latency_s = (args.ttft_ms + args.tokens * args.itl_ms) / 1000.0
    capacity = args.max_num_seqs / latency_s
    tmp = Path(tempfile.mkdtemp(prefix="bench-queue-"))
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
    backends = [{"name": "sim", "kind": "openai", "base_url": sim.v1, "models": ["*"],
                 "max_concurrency": 256}]  # fmt: skip
    try:
        run: AzureRun | AwsRun = (AzureRun if args.platform == "azure" else AwsRun)(
            args, tmp, backends
        )
    except BaseException:  # the platform's stand-ins did not start: nor does the run
        sim.close()
        sim.server.stop()
        raise
    try:
        measured = measure_capacity(sim.v1, args)
        ids = [f"bench-{i}-{uuid.uuid4().hex[:6]}" for i in range(args.jobs)]
        lines = [job_line(j, i, args.tokens) for i, j in enumerate(ids)]
        # The workers start on an empty queue and run a few warm-up jobs (first-use imports
        # and connections), so their start-up is not counted; then the backlog is queued,
        # all of it becoming visible at one moment; the drain rate (10% to 90% done) is the
        # workers' throughput.
        for h in run.hosts:
            h.start()
        time.sleep(1.0)  # listeners up, first (empty) polls done
        sim.reset()
        warm = args.warmup * args.hosts
        run.enqueue([job_line(f"warm-{uuid.uuid4().hex[:8]}", i, args.tokens) for i in range(warm)])
        while int(sim.stats()["completed"]) < warm:
            time.sleep(0.1)
        time.sleep(1.0)  # their records written, messages deleted
        sim.reset()  # the jobs' count starts from zero
        before = [run.stats(h) for h in run.hosts]
        run.profile("clear")
        # The backlog is queued first, every message invisible until one moment (whole
        # seconds of delay, so they appear within a second of it), then drained: the
        # harness's own sending does not share the machine with the drain it measures.
        t_send = time.monotonic()
        visible_at = time.time() + 2.0 + args.jobs / ENQUEUE_PER_S[args.platform]
        run.enqueue(lines, visible_at)
        enqueued = time.monotonic() - t_send
        queued_first = time.time() < visible_at
        if not queued_first:
            print(f"!! the backlog took {enqueued:.1f} s to queue: part of it drained meanwhile")
        time.sleep(max(0.0, visible_at - time.time()))
        t0 = time.monotonic()
        others0 = process_cpu_s(run.service), process_cpu_s(sim.server)
        timeline: list[tuple[float, int]] = []
        while True:
            done = int(sim.stats()["completed"])
            timeline.append((time.monotonic() - t0, done))
            if done >= args.jobs:
                others = process_cpu_s(run.service), process_cpu_s(sim.server)
                break
            now = timeline[-1][0]
            window = [d for t, d in timeline if t >= now - 90]  # the last 90 s
            if now > 600 or (now > 90 and window[0] == done):
                raise SystemExit(f"stopped with {done}/{args.jobs} done (no progress)")
            time.sleep(0.05)
        # the model finished every job; now wait for every record to read succeeded (read
        # from storage by this process, so the workers' counts stay theirs alone)
        pending = set(ids)
        while pending:
            for job_id in list(pending):
                if run.succeeded(job_id):
                    pending.discard(job_id)
            if pending:
                time.sleep(0.2)
        elapsed = time.monotonic() - t0
        after = [run.stats(h) for h in run.hosts]
        run.profile("stop")
        final = sim.stats()
        peak = int(final["peak_running"])
        model_calls = int(final["completed"])
    finally:
        run.close()
        sim.close()
        sim.server.stop()
    throughput = args.jobs / elapsed
    lo, hi = crossing(timeline, args.jobs * 0.1), crossing(timeline, args.jobs * 0.9)
    steady = (0.8 * args.jobs) / max(hi - lo, 1e-6)
    result: dict[str, Any] = {
        "platform": args.platform,
        "tag": args.tag,
        "code": args.code_ref or None,
        "jobs": args.jobs,
        "hosts": args.hosts,
        "workers_per_host": args.workers,
        "gpusim": {
            "max_num_seqs": args.max_num_seqs,
            "ttft_ms": args.ttft_ms,
            "itl_ms": args.itl_ms,
            "tokens": args.tokens,
            "batch_slowdown": 0,
        },
        "host_batch_size": args.batch_size if args.platform == "azure" else 10,
        **(azure_in_flight(args) if args.platform == "azure" else {}),
        "batches_in_flight": args.sqs_batches if args.platform == "aws" else None,
        "per_request_latency_s": latency_s,
        "capacity_rps": round(capacity, 2),
        # What the same gpusim serves when called directly, in this run, with twice its
        # sequence limit in flight: the capacity the worker is compared with.
        "measured_capacity_rps": round(measured, 2),
        "steady_ratio_of_measured_capacity": round(steady / measured, 3),
        "enqueue_s": round(enqueued, 2),
        "backlog_queued_before_drain": queued_first,
        "elapsed_s": round(elapsed, 2),
        "throughput_jobs_per_s": round(throughput, 2),
        "ratio_of_capacity": round(throughput / capacity, 3),
        "steady_jobs_per_s_10_to_90pct": round(steady, 2),
        "steady_ratio_of_capacity": round(steady / capacity, 3),
        "peak_running_at_gpusim": peak,
        "model_calls": model_calls,
        "model_calls_per_job": round(model_calls / args.jobs, 3),
        "all_succeeded": True,
        "warmup_jobs": args.warmup * args.hosts,
        # with --workers N the stats route answers for one process of N: no per-job counts
        **(per_job(before, after, args.jobs) if args.workers == 1 else {}),
        # What the stand-ins for the platform's storage (Azurite; moto's S3 + SQS) and the
        # endpoint (gpusim) cost these same cores during the drain: in the cloud neither
        # runs on the worker's machine
        "storage_service_cpu_ms_per_job": round((others[0] - others0[0]) * 1e3 / args.jobs, 2),
        "endpoint_cpu_ms_per_job": round((others[1] - others0[1]) * 1e3 / args.jobs, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"queue_{args.platform}_{args.hosts}p" + config_suffix(args.workers, args.sku)
    name += f"_{args.tag}" if args.tag else ""
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
