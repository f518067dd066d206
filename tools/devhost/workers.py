"""``--workers N``: N worker processes, as the host's ``FUNCTIONS_WORKER_PROCESS_COUNT``.

The Functions host runs one listener per trigger and spreads invocations over N Python
worker processes. devhost gets the same effect (user code on N cores, the same total
concurrency) with N full devhost processes under one supervisor:

- HTTP: the supervisor binds the port once and every process serves the same listening
  socket; the kernel hands each connection to one of them.
- Queue triggers: every process polls each queue with ``batchSize / N`` (and
  ``newBatchThreshold / N``), rounded up, so the messages in flight across processes stay
  what one host keeps in flight. The storage service hands each message to one poller.
- Blob triggers: only process 0 scans containers (receipts are not leased across
  processes), so each blob version still runs once.

The supervisor forwards SIGTERM/SIGINT to every process and exits once all have (with the
first non-zero status, if any). A process that dies is not restarted.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from types import FrameType

from tools.devhost.config import QueueOptions

WORKER_COUNT_SETTING = "FUNCTIONS_WORKER_PROCESS_COUNT"


def worker_count(value: int | None, environ: dict[str, str] | os._Environ[str]) -> int:
    """``--workers``, else the ``FUNCTIONS_WORKER_PROCESS_COUNT`` app setting, else 1."""
    if value is not None:
        count = value
    else:
        raw = environ.get(WORKER_COUNT_SETTING, "1")
        try:
            count = int(raw)
        except ValueError:
            raise ValueError(f"{WORKER_COUNT_SETTING}={raw!r}: expected a whole number") from None
    if not 1 <= count <= 10:  # the host's own bounds
        raise ValueError(f"worker process count {count}: expected 1..10")
    return count


def share_queue_options(options: QueueOptions, workers: int) -> QueueOptions:
    """One process's share of what the host keeps in flight per queue."""
    if workers <= 1:
        return options
    return replace(
        options,
        batch_size=max(1, math.ceil(options.batch_size / workers)),
        new_batch_threshold=math.ceil(options.fetch_threshold / workers),
    )


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def supervise(argv: Sequence[str], host: str, port: int, workers: int, grace_s: float) -> int:
    """Start ``workers`` devhost processes sharing one HTTP socket; wait for all of them."""
    sock = bind(host, port)
    fd = sock.fileno()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tools.devhost",
                *argv,
                "--workers",
                str(workers),
                "--worker-index",
                str(i),
                "--http-fd",
                str(fd),
            ],
            pass_fds=(fd,),
        )
        for i in range(workers)
    ]
    stopping: list[float] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not stopping:
            stopping.append(time.monotonic())
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while any(p.poll() is None for p in procs):
            if not stopping and any(p.returncode not in (None, 0) for p in procs):
                forward(signal.SIGTERM, None)  # one failed to start or crashed: stop all
            if stopping and time.monotonic() - stopping[0] > grace_s + 10:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
    finally:
        sock.close()
    codes = [p.returncode for p in procs]
    return next((c for c in codes if c != 0), 0)
