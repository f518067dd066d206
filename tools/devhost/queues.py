"""Queue triggers: poll, lease, invoke, then delete, retry or poison — as the host does.

A message is deleted only after its function succeeded, so a crash (SIGKILL) loses nothing:
the message becomes visible again when its lease runs out and is delivered again.

A failed message becomes visible again after host.json's fixed ``visibilityTimeout``, as in
the deployed host: nothing a function raises changes that delay (a function that wants a
longer one must send a new message with its own delay and return normally). After
``maxDequeueCount`` failed deliveries the message moves to ``<queue>-poison``.

The trigger argument is built by the library's own converter
(``QueueMessageInConverter.decode`` over a ``Datum`` and the host's trigger metadata), so it
is the same ``func.QueueMessage`` the Python worker passes.

The listener's own storage calls (receive, delete, lease renewals, poison moves) run on a
thread pool of their own (``HOST_THREADS`` wide), not on the loop's default executor (6
threads on a 2-core machine) and not on the function's pool: the deployed host makes these
calls in its own process, so they neither queue behind the function's calls nor make the
function's wait. ``host_cpu_s()`` is the CPU those threads used, so a benchmark can tell
the host's share of devhost's CPU from the function's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, QueueMessage

from shared.lifecycle import Singleton
from tools.devhost.config import QueueOptions, resolve_setting_expressions
from tools.devhost.convert import queue_trigger_arg
from tools.devhost.invoke import Invoker
from tools.devhost.registry import FunctionSpec
from tools.devhost.startup import MAX_RETRY_S, START_KWARGS, start_with_backoff
from tools.devhost.storage import decode_message

log = logging.getLogger("devhost")

DEFAULT_LEASE_S = 600  # the host dequeues for 10 minutes and renews while the function runs
HOST_THREADS = 32

T = TypeVar("T")
_host_pool: Singleton[ThreadPoolExecutor] = Singleton(
    lambda: ThreadPoolExecutor(HOST_THREADS, thread_name_prefix="devhost-queue"),
    close=lambda pool: pool.shutdown(wait=False),
)
_cpu_lock = threading.Lock()
_host_cpu = [0.0]


def _timed(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    t0 = time.thread_time()
    try:
        return fn(*args, **kwargs)
    finally:
        spent = time.thread_time() - t0
        with _cpu_lock:
            _host_cpu[0] += spent


async def _host_call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run one of the listener's blocking storage calls on the host's own threads."""
    loop = asyncio.get_running_loop()
    call = functools.partial(_timed, fn, *args, **kwargs)
    return await loop.run_in_executor(_host_pool.get(), call)


def host_cpu_s() -> float:
    """CPU seconds the listeners' storage calls have used in this process."""
    with _cpu_lock:
        return _host_cpu[0]


@dataclass
class _Lease:
    message: QueueMessage
    pop_receipt: str


def retry_delay(options: QueueOptions) -> int:
    """Seconds before a failed message is visible again: host.json's, whatever failed."""
    return max(0, round(options.visibility_timeout_s))


class QueueListener:
    def __init__(
        self,
        spec: FunctionSpec,
        queue: QueueClient,
        poison: QueueClient,
        options: QueueOptions,
        invoker: Invoker,
        *,
        lease_s: int = DEFAULT_LEASE_S,
        min_poll_s: float = 0.1,
        start_retry_max_s: float = MAX_RETRY_S,
    ) -> None:
        self.spec = spec
        self.queue = queue
        self.poison = poison
        self.options = options
        self.invoker = invoker
        self.lease_s = max(1, lease_s)
        self.min_poll_s = min_poll_s
        self.start_retry_max_s = start_retry_max_s
        self.inflight: set[asyncio.Task[None]] = set()
        self._freed: asyncio.Future[None] | None = None  # set when an in-flight task ends

    @staticmethod
    def queue_name(spec: FunctionSpec) -> str:
        return resolve_setting_expressions(str(spec.trigger["queueName"])).lower()

    def start(self) -> None:
        """Create the queue and its poison queue (one attempt each, no SDK retries)."""
        for client in (self.queue, self.poison):
            with contextlib.suppress(ResourceExistsError):
                client.create_queue(**START_KWARGS)

    async def run(self, stop: asyncio.Event) -> None:
        """Start (retrying while storage is down), poll until ``stop`` is set."""
        what = f"queue listener for function {self.spec.name} (queue {self.queue.queue_name})"
        if not await start_with_backoff(what, self.start, stop, max_s=self.start_retry_max_s):
            return
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await self._poll(stop, stopped)
        finally:
            stopped.cancel()

    async def _poll(self, stop: asyncio.Event, stopped: asyncio.Future[Any]) -> None:
        loop = asyncio.get_running_loop()
        delay = self.min_poll_s
        while not stop.is_set():
            if len(self.inflight) > self.options.fetch_threshold:
                # wait for one to finish (or for stop): one future, not a callback on each
                self._freed = loop.create_future()
                await asyncio.wait({stopped, self._freed}, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                batch = await _host_call(self._receive)
            except Exception as exc:  # storage down: keep polling, say why
                log.warning("queue %s: receive failed: %s", self.queue.queue_name, exc)
                batch = []
            for message in batch:
                task = asyncio.create_task(self._process(message))
                self.inflight.add(task)
                task.add_done_callback(self._done)
            if batch:
                delay = self.min_poll_s
                continue
            await asyncio.wait({stopped}, timeout=delay)
            delay = min(delay * 2, max(self.options.max_polling_interval_s, self.min_poll_s))

    def _done(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        if self._freed is not None and not self._freed.done():
            self._freed.set_result(None)

    async def drain(self, grace_s: float) -> None:
        if self.inflight:
            await asyncio.wait(set(self.inflight), timeout=grace_s)

    def _receive(self) -> list[QueueMessage]:
        n = min(32, self.options.batch_size)
        return list(
            self.queue.receive_messages(
                messages_per_page=n, max_messages=n, visibility_timeout=self.lease_s
            )
        )

    async def _process(self, message: QueueMessage) -> None:
        t0 = time.perf_counter()
        count = int(message.dequeue_count or 0)
        lease = _Lease(message, str(message.pop_receipt))
        if count > self.options.max_dequeue_count:
            await _host_call(self._to_poison, lease)
            self._log(message, t0, "poisoned (dequeue count exceeded)")
            return
        try:
            body = decode_message(str(message.content), self.options.message_encoding)
        except ValueError:
            await _host_call(self._to_poison, lease)
            self._log(message, t0, "poisoned (invalid base64)")
            return
        trigger = queue_trigger_arg(message, body)
        renewal = _Renewal(self, lease)
        error: Exception | None = None
        try:
            await self.invoker.invoke(self.spec, trigger, binding_data=_binding_data(message, body))
        except Exception as exc:  # the user's failure decides retry/poison
            error = exc
            log.error("function %s failed on message %s: %r", self.spec.name, message.id, exc)
        finally:
            await renewal.stop()
        try:
            if error is None:
                await _host_call(self.queue.delete_message, message.id, lease.pop_receipt)
                self._log(message, t0, "success")
            elif count >= self.options.max_dequeue_count:
                await _host_call(self._to_poison, lease)
                self._log(message, t0, "failed, poisoned")
            else:
                delay = retry_delay(self.options)
                await _host_call(
                    self.queue.update_message,
                    message.id,
                    lease.pop_receipt,
                    visibility_timeout=delay,
                )
                self._log(message, t0, f"failed, retry in {delay}s")
        except Exception as exc:  # lease lost: the message comes back anyway
            log.warning(
                "queue %s: settling message %s failed: %s", self.queue.queue_name, message.id, exc
            )

    async def renew(self, lease: _Lease) -> None:
        """Extend the lease by its full length (a failure is logged: the lease may lapse)."""
        try:
            updated = await _host_call(
                self.queue.update_message,
                lease.message.id,
                lease.pop_receipt,
                visibility_timeout=self.lease_s,
            )
            lease.pop_receipt = str(updated.pop_receipt)
        except Exception as exc:
            log.warning("queue %s: lease renewal failed: %s", self.queue.queue_name, exc)

    def _to_poison(self, lease: _Lease) -> None:
        """Copy the message text unchanged (same encoding) to ``<queue>-poison``, then delete."""
        self.poison.send_message(lease.message.content)
        self.queue.delete_message(lease.message.id, lease.pop_receipt)

    def _log(self, message: QueueMessage, t0: float, outcome: str) -> None:
        log.info(
            "invocation function=%s trigger=queue queue=%s id=%s dequeue_count=%s "
            "duration_ms=%.1f outcome=%s",
            self.spec.name,
            self.queue.queue_name,
            message.id,
            message.dequeue_count,
            (time.perf_counter() - t0) * 1000,
            outcome,
        )


class _Renewal:
    """Renews one message's lease every third of its length while its function runs.

    A timer, not a task per message: most functions end long before the first renewal.
    Renewals never overlap, and ``stop`` waits for one in progress, so the message is
    settled with the newest pop receipt.
    """

    def __init__(self, listener: QueueListener, lease: _Lease) -> None:
        self._listener = listener
        self._lease = lease
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._timer = self._loop.call_later(listener.lease_s / 3, self._fire)

    def _fire(self) -> None:
        self._task = self._loop.create_task(self._renew())

    async def _renew(self) -> None:
        await self._listener.renew(self._lease)
        if not self._stopped:
            self._timer = self._loop.call_later(self._listener.lease_s / 3, self._fire)

    async def stop(self) -> None:
        self._stopped = True
        self._timer.cancel()
        if self._task is not None:
            await self._task


def _binding_data(message: QueueMessage, body: bytes) -> dict[str, str]:
    """Values for ``{…}`` expressions in output bindings: metadata plus top-level JSON fields."""
    data: dict[str, str] = {}
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        data.update({k: str(v) for k, v in payload.items() if isinstance(v, str | int | float)})
    data.update(
        QueueTrigger=body.decode("utf-8", "replace"),
        Id=str(message.id),
        DequeueCount=str(message.dequeue_count),
        PopReceipt=str(message.pop_receipt),
    )
    return data
