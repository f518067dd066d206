"""CPU per Azure Storage call: the SDK's defaults against the project's clients, interleaved.

One process, one thread, against Azurite, so the figure is the caller's own CPU
(``time.process_time``) whatever else the machine runs. Per round, for each variant:

- ``sdk_default``: a ``BlobServiceClient`` / ``QueueClient`` as the SDK builds it (its
  requests transport trusting the environment) and a new ``BlobClient`` per write, as the
  job store did before;
- ``project``: ``shared.storage.azure_conn.sdk_transport()`` and ``AzureBlobStore``'s
  reused ``BlobClient`` (a job's claim and result write the same blob).

Measured: a job's two blob writes (create ``If-None-Match: *``, then ``If-Match``), and the
host's queue-message delete. Rounds alternate the variants, so load drifts hit both alike.
The environment gets ``--app-settings`` extra variables first (default 100): a Functions
worker's environment holds every app setting, on App Service twice (``NAME`` and
``APPSETTING_NAME``) beside the platform's own ``WEBSITE_*`` ones; 0 measures this
shell's environment as it is.

    .venv/bin/python -m bench.storage_cpu [--writes 300] [--rounds 3] [--app-settings 100]
Writes bench/results/storage_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.fixtures.azurite import ACCOUNT, ACCOUNT_KEY, azurite_argv
from tests.fixtures.procs import ServerProcess, free_port

RESULTS = Path(__file__).resolve().parent / "results"
BODY = json.dumps({"id": "job", "status": "running", "attempts": 1, "pad": "x" * 400}).encode()


def one_round(conn: str, variant: str, n: int, tag: str) -> tuple[float, float]:
    from azure.core import MatchConditions
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueClient

    from shared.storage.azure_blob import AzureBlobStore
    from shared.storage.azure_conn import sdk_transport

    project = variant == "project"
    opts: dict[str, Any] = {"transport": sdk_transport()} if project else {}
    store = AzureBlobStore(f"cpu{tag}", BlobServiceClient.from_connection_string(conn, **opts))
    store._ensure_container()

    def put(key: str, **kw: Any) -> Any:
        client = store._blob(key) if project else store._container.get_blob_client(key)
        return client.upload_blob(BODY, **kw)

    for i in range(10):  # connections open, first-use imports done
        put(f"warm-{i}", overwrite=False)
    t0 = time.process_time()
    for i in range(n):
        etag = put(f"job-{i}.json", overwrite=False)["etag"]
        cas = MatchConditions.IfNotModified
        put(f"job-{i}.json", overwrite=True, etag=etag, match_condition=cas)
    blob_ms = (time.process_time() - t0) * 1000 / n

    queue = QueueClient.from_connection_string(conn, f"cpu{tag}", **opts)
    queue.create_queue()
    for _ in range(n):
        queue.send_message("m")
    messages = []
    while len(messages) < n:
        messages += list(queue.receive_messages(messages_per_page=32, max_messages=n))
    t0 = time.process_time()
    for m in messages:
        queue.delete_message(m.id, m.pop_receipt)
    delete_ms = (time.process_time() - t0) * 1000 / len(messages)
    return blob_ms, delete_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--writes", type=int, default=300, help="jobs (two writes each) per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--app-settings", type=int, default=100, help="extra environment variables")
    args = p.parse_args()
    for i in range(args.app_settings):
        os.environ[f"APPSETTING_BENCH_SETTING_{i}"] = f"value-{i}"
    blob, queue, table = free_port(), free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-storage-cpu-"))
    azurite = ServerProcess(
        azurite_argv(blob, queue, table, tmp),
        blob,
        ready_path=None,
        name="bench-storage-cpu-azurite",
    ).start()
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob}/{ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:{queue}/{ACCOUNT};"
    )
    runs: dict[str, dict[str, list[float]]] = {
        v: {"job_blob_writes_ms": [], "queue_delete_ms": []} for v in ("sdk_default", "project")
    }
    try:
        for r in range(args.rounds):
            for variant in ("sdk_default", "project") if r % 2 == 0 else ("project", "sdk_default"):
                blob_ms, delete_ms = one_round(conn, variant, args.writes, f"{variant[:3]}{r}")
                runs[variant]["job_blob_writes_ms"].append(round(blob_ms, 3))
                runs[variant]["queue_delete_ms"].append(round(delete_ms, 3))
    finally:
        azurite.kill()
    med = {v: {k: statistics.median(x) for k, x in d.items()} for v, d in runs.items()}
    result = {
        "what": "caller CPU ms: a job's two blob writes (create + conditional replace); one "
        "queue-message delete",
        "writes_per_round": args.writes,
        "extra_app_settings": args.app_settings,
        "environment_size": len(os.environ),
        "rounds": runs,
        "median": med,
        "ratio_project_to_sdk_default": {
            k: round(med["project"][k] / med["sdk_default"][k], 3) for k in med["project"]
        },
        "env_settings_seen": sorted(
            k for k in os.environ if k.lower().endswith(("_proxy", "ca_bundle")) or k == "NETRC"
        ),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "storage_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
