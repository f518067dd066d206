"""Run everything in one event loop: uvicorn for HTTP triggers, pollers for queues and blobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from azure.storage.blob import ContainerClient

from tools.devhost import workers
from tools.devhost.blobs import POISON_QUEUE, RECEIPTS_CONTAINER, BlobListener, BlobPath
from tools.devhost.config import ConfigError, HostConfig, QueueOptions
from tools.devhost.http import HttpApp
from tools.devhost.invoke import Invoker, check_supported
from tools.devhost.keys import auth_level_of
from tools.devhost.queues import DEFAULT_LEASE_S, QueueListener
from tools.devhost.registry import FunctionSpec, IndexingError
from tools.devhost.startup import MAX_RETRY_S
from tools.devhost.storage import Storage
from tools.devhost.timers import HOSTS_CONTAINER, TimerListener, host_id
from tools.devhost.view import VIEW_PATH

log = logging.getLogger("devhost")


@dataclass(frozen=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 7071
    app_dir: Path = Path()
    queues: bool = True
    blobs: bool = True
    timers: bool = True
    poll_interval_s: float = 0.1
    blob_poll_interval_s: float = 1.0
    queue_lease_s: int = DEFAULT_LEASE_S
    shutdown_grace_s: float = 30.0
    listener_retry_max_s: float = MAX_RETRY_S
    workers: int = 1  # --workers: this is process ``worker_index`` of ``workers``
    worker_index: int = 0
    http_fd: int | None = None  # the listening socket the supervisor shares


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: devhost stops HTTP and pollers together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


Listener = QueueListener | BlobListener | TimerListener


def build_listeners(
    specs: list[FunctionSpec], config: HostConfig, options: Options, invoker: Invoker
) -> list[Listener]:
    listeners: list[Listener] = []
    queue_options = workers.share_queue_options(config.queues, options.workers)
    for spec in specs:
        try:
            listener = _listener(spec, config, options, invoker, queue_options)
        except ConfigError as exc:
            # As the host: a function whose binding cannot be resolved (a %Setting% that is
            # not set) fails indexing and is disabled; the other functions run.
            log.error("devhost: error indexing function %s: %s", spec.name, exc)
            log.error("devhost: function %r failed indexing and will be disabled", spec.name)
            continue
        if listener is not None:
            listeners.append(listener)
    return listeners


def _listener(
    spec: FunctionSpec,
    config: HostConfig,
    options: Options,
    invoker: Invoker,
    queue_options: QueueOptions,
) -> Listener | None:
    storage = invoker.storage
    conn = spec.trigger.get("connection")
    if spec.trigger_type == "queueTrigger" and options.queues:
        name = QueueListener.queue_name(spec)
        return QueueListener(
            spec,
            storage.queue(conn, name, create=False),
            storage.queue(conn, f"{name}-poison", create=False),
            queue_options,
            invoker,
            lease_s=options.queue_lease_s,
            min_poll_s=options.poll_interval_s,
            start_retry_max_s=options.listener_retry_max_s,
        )
    elif spec.trigger_type == "blobTrigger" and options.blobs:
        path = BlobPath.parse(str(spec.trigger["path"]))
        listener = BlobListener(
            spec,
            storage.container(conn, path.container, create=False),
            storage.container(conn, RECEIPTS_CONTAINER, create=False),
            storage.queue(conn, POISON_QUEUE, create=False),
            config.queues,
            invoker,
            poll_s=options.blob_poll_interval_s,
            start_retry_max_s=options.listener_retry_max_s,
        )
        return listener
    elif spec.trigger_type == "timerTrigger" and options.timers:
        return timer_listener(spec, storage, invoker)
    return None


def timer_listener(spec: FunctionSpec, storage: Storage, invoker: Invoker) -> TimerListener:
    """A timer whose schedule status lives in AzureWebJobsStorage (when monitored)."""

    def hosts() -> ContainerClient:
        return storage.container(None, HOSTS_CONTAINER)

    return TimerListener(spec, invoker, status_store=hosts, lock_store=hosts, host=host_id())


def banner(app: HttpApp, specs: list[FunctionSpec], options: Options) -> str:
    lines = ["", "Functions:", ""]
    for route in app.routes:
        url = f"http://{options.host}:{options.port}{route.path}"
        lines.append(f"        {route.spec.name}: [{route.display_methods()}] {url}")
    for spec in specs:
        if spec.trigger_type != "httpTrigger":
            lines.append(f"        {spec.name}: {spec.trigger_type}")
    if app.needs_keys:
        key = app.keys.function_keys[0]
        origin = "generated; set DEVHOST_FUNCTION_KEYS to choose" if app.keys.generated else (
            "from DEVHOST_FUNCTION_KEYS")  # fmt: skip
        lines += ["", f"Function key ({origin}): {key}",
                  "        send it as 'x-functions-key: <key>' or '?code=<key>'"]  # fmt: skip
        if any(auth_level_of(r.spec.trigger) == "admin" for r in app.routes):
            lines.append(f"Master key (admin routes; DEVHOST_MASTER_KEY): {app.keys.master_key}")
    if os.environ.get("INFER_METRICS_PROMETHEUS", "").strip().lower() in ("1", "true", "yes", "on"):
        base = f"http://{options.host}:{options.port}"
        lines += ["", f"Local view: {base}{VIEW_PATH}  (Prometheus text: {base}/metrics)"]
    return "\n".join([*lines, ""])


async def serve(specs: list[FunctionSpec], config: HostConfig, options: Options) -> int:
    for spec in specs:
        check_supported(spec)
        if spec.trigger_type not in ("httpTrigger", "queueTrigger", "blobTrigger", "timerTrigger"):
            raise IndexingError(
                f"function {spec.name!r}: trigger {spec.trigger_type} is not supported"
            )
    invoker = Invoker(Storage(), message_encoding=config.queues.message_encoding)
    http_specs = [s for s in specs if s.trigger_type == "httpTrigger"]
    app = HttpApp(http_specs, config.route_prefix, invoker)
    # No storage call here: each listener starts (and retries) in the background, so HTTP
    # functions serve at once even while storage is down.
    listeners = build_listeners(specs, config, options, invoker)
    if options.worker_index > 0:  # --workers: only the first process runs non-queue listeners
        listeners = [lst for lst in listeners if isinstance(lst, QueueListener)]

    server = _Server(
        uvicorn.Config(
            app,
            host=options.host,
            port=options.port,
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=int(options.shutdown_grace_s),
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    sockets = None if options.http_fd is None else [socket.socket(fileno=options.http_fd)]
    http_task = asyncio.create_task(server.serve(sockets=sockets))
    poll_tasks = [asyncio.create_task(lst.run(stop)) for lst in listeners]
    while not server.started and not http_task.done():  # noqa: ASYNC110 - uvicorn has no event
        await asyncio.sleep(0.02)
    if http_task.done():
        stop.set()
        await asyncio.gather(*poll_tasks, return_exceptions=True)
        invoker.shutdown()
        return 1
    if options.worker_index == 0:
        print(banner(app, specs, options), flush=True)
    if options.workers > 1:
        log.info(
            "devhost: worker process %d/%d pid=%d",
            options.worker_index + 1,
            options.workers,
            os.getpid(),
        )

    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait({stop_task, http_task, *poll_tasks}, return_when=asyncio.FIRST_COMPLETED)
    log.info(
        "devhost: shutting down (waiting up to %gs for running functions)", options.shutdown_grace_s
    )
    stop.set()
    server.should_exit = True
    await asyncio.gather(*poll_tasks, return_exceptions=True)
    await asyncio.gather(*(lst.drain(options.shutdown_grace_s) for lst in listeners))
    await asyncio.gather(http_task, return_exceptions=True)
    invoker.shutdown()
    return 0


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("devhost")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    # The functions' own logs at Information, as the Functions host collects them.
    for name in ("shared", "functions"):
        app_log = logging.getLogger(name)
        app_log.addHandler(handler)
        app_log.setLevel(logging.INFO)
        app_log.propagate = False
    # The storage SDK logs every request (with headers) at INFO: keep it quiet.
    logging.getLogger("azure").setLevel(logging.WARNING)
