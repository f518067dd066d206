"""``python -m tools.devhost``: run function_app.py locally the way ``func start`` does."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tools.devhost.config import ConfigError, apply_local_settings, load_host_json
from tools.devhost.queues import DEFAULT_LEASE_S
from tools.devhost.registry import IndexingError, load_app
from tools.devhost.server import Options, configure_logging, serve
from tools.devhost.startup import MAX_RETRY_S
from tools.devhost.workers import supervise, worker_count


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tools.devhost",
        description="Local Azure Functions host: HTTP, queue (Azurite) and blob (Azurite) "
        "triggers of a Python v2 function app.",
    )
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default %(default)s)")
    p.add_argument("--port", type=int, default=7071, help="HTTP port (default %(default)s)")
    p.add_argument("--app-module", default="function_app", help="module holding the FunctionApp")
    p.add_argument("--app-dir", type=Path, default=Path(), help="function app root (default .)")
    p.add_argument(
        "--settings",
        type=Path,
        default=Path("local.settings.json"),
        help="local.settings.json (relative to --app-dir); its Values fill unset env vars",
    )
    p.add_argument(
        "--host-json", type=Path, default=Path("host.json"), help="relative to --app-dir"
    )
    p.add_argument("--no-queues", action="store_true", help="do not poll queue triggers")
    p.add_argument("--no-blobs", action="store_true", help="do not scan blob triggers")
    p.add_argument("--no-timers", action="store_true", help="do not run timer triggers")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.1,
        help="first queue poll delay in seconds; doubles while idle up to maxPollingInterval",
    )
    p.add_argument(
        "--blob-poll-interval", type=float, default=1.0, help="blob container scan interval (s)"
    )
    p.add_argument(
        "--queue-lease",
        type=int,
        default=DEFAULT_LEASE_S,
        help="seconds a dequeued message stays invisible, renewed while the function runs "
        "(default %(default)s, as the host); a crashed devhost's messages return after it",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes, as the host's FUNCTIONS_WORKER_PROCESS_COUNT (its default; "
        "else 1): HTTP and queue polling spread over them, blob scans in the first",
    )
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--http-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--listener-retry-max",
        type=float,
        default=MAX_RETRY_S,
        help="while storage is down, each queue/blob listener retries its start with "
        "backoff up to this many seconds (default %(default)s); HTTP serves meanwhile",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="seconds to let functions finish on SIGTERM",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    app_dir: Path = args.app_dir
    try:
        apply_local_settings(app_dir / args.settings, os.environ)
        # The local view: telemetry on as Prometheus text at /metrics (0 turns it off).
        os.environ.setdefault("INFER_METRICS_PROMETHEUS", "1")
        config = load_host_json(app_dir / args.host_json)
        specs = load_app(args.app_module, app_dir)
    except (ConfigError, IndexingError) as exc:
        print(f"devhost: {exc}", file=sys.stderr)
        return 2
    try:
        workers = worker_count(args.workers, os.environ)
    except ValueError as exc:
        print(f"devhost: {exc}", file=sys.stderr)
        return 2
    if workers > 1 and args.worker_index is None:
        child_argv = list(argv if argv is not None else sys.argv[1:])
        return supervise(child_argv, args.host, args.port, workers, args.shutdown_grace)
    options = Options(
        host=args.host,
        port=args.port,
        app_dir=app_dir,
        queues=not args.no_queues,
        blobs=not args.no_blobs,
        timers=not args.no_timers,
        poll_interval_s=args.poll_interval,
        blob_poll_interval_s=args.blob_poll_interval,
        queue_lease_s=args.queue_lease,
        shutdown_grace_s=args.shutdown_grace,
        listener_retry_max_s=args.listener_retry_max,
        workers=workers,
        worker_index=args.worker_index or 0,
        http_fd=args.http_fd,
    )
    try:
        return asyncio.run(serve(specs, config, options))
    except (ConfigError, IndexingError, ValueError) as exc:
        print(f"devhost: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
