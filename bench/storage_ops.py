"""Count storage operations by kind at the SDK boundary, and a process's CPU time.

- Azure (Blob + Queue through azure-core): ``install_azure()`` wraps the requests
  transport every Storage client sends through, so each HTTP request (retries included)
  is classified by method, path, query and conditional headers.
- AWS (S3 + SQS through botocore): ``install_aws()`` registers a ``before-send`` event hook
  on every client boto3 builds, classified by operation name and conditional headers.

Kinds: ``blob.read``, ``blob.write``, ``blob.create`` (If-None-Match: *), ``blob.cas``
(If-Match), ``blob.delete``, ``blob.list``, ``blob.container``; ``queue.send``,
``queue.receive``, ``queue.delete``, ``queue.visibility``, ``queue.other``. An S3 call
counts as ``blob.*`` and an SQS call as ``queue.*``, so both platforms read alike.

Used by bench/queue_app.py (inside devhost) and bench/sqs_host.py; the benchmark reads the
counts over HTTP (``snapshot()``) before and after a run.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

_lock = threading.Lock()
_counts: collections.Counter[str] = collections.Counter()
_installed: set[str] = set()


def count(kind: str, n: int = 1) -> None:
    with _lock:
        _counts[kind] += n


_host_cpu: list[float] = [0.0]


def add_host_cpu(seconds: float) -> None:
    """CPU the platform's own poller spent (bench/sqs_host.py: receive and delete calls)."""
    with _lock:
        _host_cpu[0] += seconds


def snapshot() -> dict[str, Any]:
    """Counts so far, this process's CPU time (user + system, all threads) and the part of
    it that stands for the platform's host: devhost's queue-listener threads, or what
    ``add_host_cpu`` was given."""
    with _lock:
        counts = dict(_counts)
        host = _host_cpu[0]
    devhost = sys.modules.get("tools.devhost.queues")
    if devhost is not None:
        host += devhost.host_cpu_s()
    return {"ops": counts, "cpu_s": time.process_time(), "host_cpu_s": host}


_profile: dict[str, str] = {}


def start_profile(path: str | None) -> None:
    """Profile this process with yappi (CPU clock, all threads) until ``stop_profile``."""
    if not path:
        return
    import yappi

    yappi.set_clock_type("cpu")
    yappi.start(builtins=False)
    _profile["path"] = path


def clear_profile() -> dict[str, Any]:
    """Forget what was profiled so far (start-up), keep profiling."""
    if "path" in _profile:
        import yappi

        yappi.clear_stats()
    return {"profile": _profile.get("path")}


def stop_profile() -> dict[str, Any]:
    """Stop profiling; write pstats to the path given to ``start_profile``."""
    path = _profile.pop("path", None)
    if path is None:
        return {"profile": None}
    import yappi

    yappi.stop()
    yappi.get_func_stats().save(path, type="pstat")
    threads = [(t.name, round(t.ttot, 3)) for t in yappi.get_thread_stats()]
    return {"profile": path, "threads": threads}


def reset() -> None:
    with _lock:
        _counts.clear()


def azure_kind(method: str, url: str, headers: Any) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    path = parts.path.rstrip("/")
    if path.endswith("/messages") or "/messages/" in path:
        if method == "POST":
            return "queue.send"
        if method == "GET":
            return "queue.receive"
        if method == "DELETE":
            return "queue.delete" if "popreceipt" in query else "queue.other"
        if method == "PUT":
            return "queue.visibility"
        return "queue.other"
    if query.get("restype") == ["container"]:
        return "blob.list" if query.get("comp") == ["list"] else "blob.container"
    if "comp" in query and query["comp"] != ["block"] and query["comp"] != ["blocklist"]:
        return "queue.other" if ".queue." in parts.netloc else "blob.other"
    if method in ("GET", "HEAD"):
        return "blob.read"
    if method == "DELETE":
        return "blob.delete"
    if method == "PUT":
        if headers.get("If-Match"):
            return "blob.cas"
        if headers.get("If-None-Match"):
            return "blob.create"
        if path.count("/") <= 2:  # /account/queue or /account/container
            return "queue.other"
        return "blob.write"
    return "blob.other"


def install_azure() -> None:
    """Count every request the Azure SDK's requests transport sends (this process)."""
    if "azure" in _installed:
        return
    _installed.add("azure")
    from azure.core.pipeline.transport import RequestsTransport

    original = RequestsTransport.send

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        count(azure_kind(request.method, request.url, request.headers))
        return original(self, request, **kwargs)

    RequestsTransport.send = send  # type: ignore[method-assign]


_SQS = {
    "SendMessage": "queue.send",
    "SendMessageBatch": "queue.send",
    "ReceiveMessage": "queue.receive",
    "DeleteMessage": "queue.delete",
    "DeleteMessageBatch": "queue.delete",
    "ChangeMessageVisibility": "queue.visibility",
    "ChangeMessageVisibilityBatch": "queue.visibility",
}
_S3 = {
    "GetObject": "blob.read",
    "HeadObject": "blob.read",
    "DeleteObject": "blob.delete",
    "DeleteObjects": "blob.delete",
    "ListObjectsV2": "blob.list",
}


def aws_kind(operation: str, headers: Any) -> str:
    if operation in _SQS:
        return _SQS[operation]
    if operation in ("PutObject", "UploadPart", "CompleteMultipartUpload"):
        if headers.get("If-Match"):
            return "blob.cas"
        if headers.get("If-None-Match"):
            return "blob.create"
        return "blob.write"
    return _S3.get(operation, "queue.other" if operation.endswith("Queue") else "blob.other")


def install_aws() -> None:
    """Count every request botocore sends, via a ``before-send`` hook on each new client."""
    if "aws" in _installed:
        return
    _installed.add("aws")
    import boto3.session

    original = boto3.session.Session.client

    def client(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = original(self, *args, **kwargs)

        def before_send(request: Any, event_name: str = "", **kw: Any) -> None:
            count(aws_kind(event_name.rsplit(".", 1)[-1], request.headers))

        made.meta.events.register("before-send", before_send)
        return made

    boto3.session.Session.client = client  # type: ignore[method-assign]
