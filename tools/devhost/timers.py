"""Timer triggers, run as the Functions host's timer extension runs them.

- ``schedule``: a six-field NCRONTAB expression ``{second} {minute} {hour} {day} {month}
  {day-of-week}`` (``%Setting%`` references resolved first), or a TimeSpan ``hh:mm:ss``
  (a constant interval; on Azure only App Service plans accept it). Times are the host's local
  time (``TZ``; UTC on Azure unless ``WEBSITE_TIME_ZONE`` is set). As in NCrontab, a time
  matches when *both* the day of month and the day of week match.
- ``useMonitor`` (default: true unless the schedule fires more than once a minute): the
  schedule status ``{"Last", "Next", "LastUpdated"}`` is kept in the storage account
  (``azure-webjobs-hosts/timers/{hostId}/{function}/status``) and handed to the function as
  ``TimerRequest.schedule_status``. At start-up an occurrence missed while the host was down
  (the recorded ``Next`` is in the past) runs at once with ``past_due`` true.
- ``runOnStartup``: when nothing is past due, one invocation right after start.
- One host at a time runs a timer (the host's singleton listener lock): a 15 s blob lease on
  ``azure-webjobs-hosts/locks/{hostId}/Host.Functions.{function}.Listener``, renewed while
  the listener runs. Another devhost on the same storage and host id waits, and takes over
  (start-up logic included) when the lease is released or runs out.
- One invocation at a time per function; the next occurrence is computed after it ends (an
  occurrence that passed meanwhile runs at once, later ones are not queued). A failed
  invocation is logged and not retried; the schedule goes on.

The function receives ``func.TimerRequest`` decoded by azure-functions' own converter from
the JSON the host sends: ``{"Schedule": {"AdjustForDST": true}, "ScheduleStatus": …,
"IsPastDue": …}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.functions import meta
from azure.functions.timer import TimerRequestConverter
from azure.storage.blob import BlobLeaseClient, ContainerClient

from tools.devhost.config import ConfigError, parse_timespan, resolve_setting_expressions
from tools.devhost.invoke import Invoker
from tools.devhost.registry import FunctionSpec

log = logging.getLogger("devhost")

HOSTS_CONTAINER = "azure-webjobs-hosts"
LOCK_LEASE_S = 15  # the shortest lease Blob storage grants
LOCK_RENEW_S = 5.0
LOCK_POLL_S = 5.0
#: ScheduleStatus values below this count as unset (the host's DefaultDateTimeThreshold).
_UNSET = datetime(1971, 1, 1).astimezone()

_NAMES = {
    "month": {
        m: i + 1
        for i, m in enumerate(
            ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
        )
    },
    "dow": {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
}
# (name, low, high) of the six fields, in NCRONTAB order.
_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("dow", 0, 6),
)
_TIMESPAN = re.compile(r"^\d+(?:\.\d+)?:\d+:\d+(?:\.\d+)?$|^\d+:\d+:\d+(?:\.\d+)?$")


class ScheduleError(ConfigError):
    """A schedule that neither NCRONTAB nor TimeSpan parsing accepts."""


def _value(text: str, kind: str, low: int, high: int, expr: str) -> int:
    names = _NAMES.get(kind, {})
    key = text.strip().lower()
    if key[:3] in names and key.isalpha():
        return names[key[:3]]
    if not key.isdigit():
        raise ScheduleError(f"schedule {expr!r}: bad {kind} value {text!r}")
    value = int(key)
    if not low <= value <= high:
        raise ScheduleError(f"schedule {expr!r}: {kind} {value} is outside {low}-{high}")
    return value


def _field(text: str, kind: str, low: int, high: int, expr: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"schedule {expr!r}: empty item in the {kind} field")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"schedule {expr!r}: bad step {step_text!r} ({kind})")
            step = int(step_text)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, stop = _value(a, kind, low, high, expr), _value(b, kind, low, high, expr)
            if start > stop:
                raise ScheduleError(f"schedule {expr!r}: range {base!r} runs backwards")
        else:
            start = _value(base, kind, low, high, expr)
            # NCrontab: "n/step" means from n to the end of the range.
            stop = high if step_text else start
        values.update(range(start, stop + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    """A six-field NCRONTAB schedule."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        parts = expression.split()
        if len(parts) != 6:
            raise ScheduleError(
                f"schedule {expression!r}: NCRONTAB needs six fields "
                "'{second} {minute} {hour} {day} {month} {day-of-week}', "
                f"got {len(parts)}"
            )
        sets = [_field(p, *spec, expression) for p, spec in zip(parts, _FIELDS, strict=True)]
        return cls(expression, *sets)

    def next_after(self, base: datetime) -> datetime:
        """The first occurrence strictly after ``base`` (same tzinfo as ``base``)."""
        start = base.replace(microsecond=0) + timedelta(seconds=1)
        day = start.replace(hour=0, minute=0, second=0)
        hours, minutes, seconds = sorted(self.hours), sorted(self.minutes), sorted(self.seconds)
        for _ in range(366 * 5):  # a schedule that never fires (Feb 30) stops the search
            if (
                day.month in self.months
                and day.day in self.days
                and (day.isoweekday() % 7) in self.weekdays
            ):
                for h in hours:
                    for m in minutes:
                        for s in seconds:
                            t = day.replace(hour=h, minute=m, second=s)
                            if t >= start:
                                return t
            day = (day + timedelta(days=1, hours=2)).replace(hour=0)  # DST-safe next day
        raise ScheduleError(f"schedule {self.expression!r} has no occurrence in five years")


@dataclass(frozen=True)
class ConstantSchedule:
    """A TimeSpan schedule: every ``interval`` from the previous occurrence."""

    expression: str
    interval: timedelta

    def next_after(self, base: datetime) -> datetime:
        return base + self.interval


Schedule = CronSchedule | ConstantSchedule


def parse_schedule(expression: str) -> Schedule:
    """NCRONTAB first, then TimeSpan (as the host's TimerTriggerAttribute)."""
    text = expression.strip()
    if _TIMESPAN.match(text):
        seconds = parse_timespan(text, name=f"schedule {text!r}")
        if seconds <= 0:
            raise ScheduleError(f"schedule {text!r}: a TimeSpan schedule must be positive")
        return ConstantSchedule(text, timedelta(seconds=seconds))
    return CronSchedule.parse(text)


def default_use_monitor(schedule: Schedule, now: datetime) -> bool:
    """The host's default: monitor unless the schedule fires more than once a minute."""
    if isinstance(schedule, ConstantSchedule):
        return schedule.interval >= timedelta(minutes=1)
    first = schedule.next_after(now)
    return schedule.next_after(first) >= now + timedelta(minutes=1)


def _iso(value: datetime) -> str:
    return value.isoformat()


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone()  # naive values are local time, as the host writes them


@dataclass
class ScheduleStatus:
    last: datetime
    next: datetime
    last_updated: datetime

    def to_json(self) -> dict[str, str]:
        return {
            "Last": _iso(self.last),
            "Next": _iso(self.next),
            "LastUpdated": _iso(self.last_updated),
        }

    @classmethod
    def from_json(cls, data: object) -> ScheduleStatus | None:
        if not isinstance(data, dict):
            return None
        nxt = _parse_time(data.get("Next"))
        if nxt is None:
            return None
        return cls(
            _parse_time(data.get("Last")) or _UNSET,
            nxt,
            _parse_time(data.get("LastUpdated")) or _UNSET,
        )


def check_past_due(
    schedule: Schedule, status: ScheduleStatus | None, now: datetime
) -> tuple[ScheduleStatus, bool]:
    """The status to keep and whether an occurrence was missed (the host's CheckPastDue).

    No status yet: record the next occurrence (not past due). A status whose ``Next`` does
    not follow from ``Last`` (or ``LastUpdated``) means the schedule changed: recompute it,
    from now when the recomputed time has passed. Past due when now is after ``Next``.
    """
    if status is None:
        return ScheduleStatus(_UNSET, schedule.next_after(now), now), False
    if status.last > _UNSET:
        expected, updated = schedule.next_after(status.last), status.last
    elif status.last_updated > _UNSET:
        expected, updated = schedule.next_after(status.last_updated), status.last_updated
    else:
        expected, updated = schedule.next_after(now), now
    if status.next != expected:
        if now > expected:
            expected, updated = schedule.next_after(now), now
        status = ScheduleStatus(_UNSET, expected, updated)
    return status, now > status.next


def host_id(environ: dict[str, str] | None = None) -> str:
    """The host id the status blob path uses: ``AzureFunctionsWebHost__hostid`` when set,
    else derived from the machine name (lower case, at most 32 characters), as locally."""
    env = os.environ if environ is None else environ
    explicit = env.get("AzureFunctionsWebHost__hostid")
    if explicit:
        return explicit.lower()
    name = re.sub(r"[^a-z0-9-]", "", socket.gethostname().lower()) or "devhost"
    return name[:32].rstrip("-")


def timer_request(status: ScheduleStatus | None, *, past_due: bool) -> Any:
    """``func.TimerRequest`` built by azure-functions' converter, as the worker builds it."""
    payload = {
        "Schedule": {"AdjustForDST": True},
        "ScheduleStatus": status.to_json() if status is not None else None,
        "IsPastDue": past_due,
    }
    return TimerRequestConverter.decode(
        meta.Datum(json.dumps(payload), "json"), trigger_metadata={}
    )


class ListenerLock:
    """The singleton listener lock: a blob lease only one host holds at a time."""

    def __init__(self, container: Callable[[], ContainerClient], blob_name: str) -> None:
        self._container = container
        self.blob_name = blob_name
        self._lease: BlobLeaseClient | None = None

    def try_acquire(self) -> bool:
        """True when this host now holds the lease; False when another one does."""
        blob = self._container().get_blob_client(self.blob_name)
        with contextlib.suppress(ResourceExistsError):
            blob.upload_blob(b"", overwrite=False)
        lease = BlobLeaseClient(blob)
        try:
            lease.acquire(lease_duration=LOCK_LEASE_S)
        except HttpResponseError as exc:
            if exc.status_code == 409:  # LeaseAlreadyPresent
                return False
            raise
        self._lease = lease
        return True

    def renew(self) -> None:
        assert self._lease is not None
        self._lease.renew()

    def release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(Exception):
                lease.release()


class TimerListener:
    """Runs one timer-triggered function on its schedule until ``stop`` is set."""

    def __init__(
        self,
        spec: FunctionSpec,
        invoker: Invoker,
        *,
        status_store: Callable[[], ContainerClient] | None,
        host: str,
        lock_store: Callable[[], ContainerClient] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
    ) -> None:
        self.spec = spec
        self.invoker = invoker
        self.expression = resolve_setting_expressions(str(spec.trigger["schedule"]))
        self.schedule = parse_schedule(self.expression)
        self.clock = clock
        use_monitor = spec.trigger.get("useMonitor")
        self.use_monitor = (
            default_use_monitor(self.schedule, clock()) if use_monitor is None else use_monitor
        )
        self.run_on_startup = bool(spec.trigger.get("runOnStartup"))
        self._store_factory = status_store if self.use_monitor else None
        self._store: ContainerClient | None = None
        self.blob_name = f"timers/{host}/Host.Functions.{spec.name}/status"
        self.lock = (
            ListenerLock(lock_store, f"locks/{host}/Host.Functions.{spec.name}.Listener")
            if lock_store is not None
            else None
        )
        self._halt = asyncio.Event()  # stop, or the lock was lost
        self.status: ScheduleStatus | None = None

    # -------------------------------------------------------------- schedule status
    def _container(self) -> ContainerClient:
        """The status container, made on first use (storage may be down at start-up)."""
        if self._store is None:
            assert self._store_factory is not None
            self._store = self._store_factory()
        return self._store

    def _read_status(self) -> ScheduleStatus | None:
        try:
            raw = self._container().download_blob(self.blob_name).readall()
        except ResourceNotFoundError:
            return None
        try:
            return ScheduleStatus.from_json(json.loads(raw))
        except ValueError:
            return None

    def _write_status(self, status: ScheduleStatus) -> None:
        if self._store_factory is None:
            return
        try:
            self._container().upload_blob(
                self.blob_name, json.dumps(status.to_json()).encode(), overwrite=True
            )
        except Exception as exc:  # best effort, as the host
            log.warning("timer %s: could not save its schedule status: %s", self.spec.name, exc)

    # -------------------------------------------------------------- running
    async def run(self, stop: asyncio.Event) -> None:
        """Hold the listener lock and run the schedule; wait for the lock again if lost."""
        while not stop.is_set():
            if self.lock is None:
                self._halt = stop
                await self._listen(stop)
                return
            if not await self._acquire(stop):
                return
            self._halt = asyncio.Event()
            renewing = asyncio.create_task(self._renew(stop))
            try:
                await self._listen(stop)
            finally:
                renewing.cancel()
                await asyncio.gather(renewing, return_exceptions=True)
                await asyncio.to_thread(self.lock.release)

    async def _acquire(self, stop: asyncio.Event) -> bool:
        assert self.lock is not None
        waiting_logged = False
        while not stop.is_set():
            try:
                if await asyncio.to_thread(self.lock.try_acquire):
                    return True
                if not waiting_logged:
                    log.info("timer %s: another host holds its lock; waiting", self.spec.name)
                    waiting_logged = True
            except Exception as exc:  # storage down: keep trying, say why
                log.warning("timer %s: lock unavailable: %s", self.spec.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=LOCK_POLL_S)
        return False

    async def _renew(self, stop: asyncio.Event) -> None:
        assert self.lock is not None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=LOCK_RENEW_S)
            if stop.is_set():
                break
            try:
                await asyncio.to_thread(self.lock.renew)
            except Exception as exc:
                log.warning("timer %s: lost its lock: %s", self.spec.name, exc)
                self._halt.set()
                return
        self._halt.set()

    async def _listen(self, stop: asyncio.Event) -> None:
        now = self.clock()
        past_due = False
        stored: ScheduleStatus | None = None
        if self._store_factory is not None:
            try:
                stored = await asyncio.to_thread(self._read_status)
            except Exception as exc:  # storage down: run on schedule, say why
                log.warning("timer %s: schedule status unreadable: %s", self.spec.name, exc)
            self.status, past_due = check_past_due(self.schedule, stored, now)
            if self.status is not stored:
                await asyncio.to_thread(self._write_status, self.status)
        else:
            self.status = ScheduleStatus(_UNSET, self.schedule.next_after(now), _UNSET)
        log.info(
            "timer %s: schedule %r (%s), monitor=%s, next %s",
            self.spec.name,
            self.expression,
            type(self.schedule).__name__,
            self.use_monitor,
            self.status.next.isoformat(),
        )
        if past_due:
            log.info("timer %s: past due, invoking now", self.spec.name)
            await self._invoke(stop, past_due=True, unscheduled=True)
        elif self.run_on_startup:
            log.info("timer %s: runOnStartup, invoking now", self.spec.name)
            await self._invoke(stop, past_due=False, unscheduled=True)
        while not self._halt.is_set():
            wait = (self.status.next - self.clock()).total_seconds()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._halt.wait(), timeout=wait)
                continue
            await self._invoke(stop, past_due=False, unscheduled=False)

    async def _invoke(self, stop: asyncio.Event, *, past_due: bool, unscheduled: bool) -> None:
        if stop.is_set() or self._halt.is_set():
            return
        assert self.status is not None
        invoked_at = self.clock()
        status_for_function = self.status if self.use_monitor else None
        request = timer_request(status_for_function, past_due=past_due)
        outcome = "success"
        try:
            await self.invoker.invoke(self.spec, request)
        except Exception:
            outcome = "failed"
            log.exception("function %s raised", self.spec.name)
        log.info(
            "invocation function=%s trigger=timer past_due=%s duration_ms=%.1f outcome=%s",
            self.spec.name,
            past_due,
            (self.clock() - invoked_at).total_seconds() * 1000,
            outcome,
        )
        # An occurrence that fired a little early counts from its scheduled time, so the
        # same Next is never produced twice.
        base = invoked_at
        if not unscheduled and self.status.next > invoked_at:
            base = self.status.next
        self.status = ScheduleStatus(base, self.schedule.next_after(base), base)
        await asyncio.to_thread(self._write_status, self.status)

    async def drain(self, grace_s: float) -> None:
        """Nothing to wait for: ``run`` returns only after its invocation finished."""
