"""Run one shard of a batch: read lines, call the model with adaptive concurrency, commit.

Exactly-once output comes from one rule: a line's result becomes part of the output only
through a checkpoint, and a checkpoint only moves forward by compare-and-swap.

- Results are committed in contiguous runs: every ``checkpoint_s`` the longest finished
  prefix of lines after ``next`` is written as a part file, then the checkpoint
  ``{next, parts, counts}`` is replaced with ``if_match`` on its etag. A part's key holds
  its byte range and a random id of the invocation that wrote it, so it is written once
  and never replaced: only the keys a checkpoint lists are committed output.
- A killed or timed-out invocation loses at most the uncommitted lines; its successor
  resumes at ``next`` and calls the model again for those (at-least-once calls,
  exactly-once lines).
- Two invocations on the same shard (a redelivery while the first still runs): the first
  failed compare-and-swap tells the loser to stop without committing anything. The part it
  wrote for that commit has its own key, so the winner's committed part is untouched; the
  loser deletes it (anything left over goes with the work prefix when the batch completes).
- Lines still in flight when the time budget ends are left uncommitted; ``run`` returns
  ``"handoff"`` and the caller enqueues a continuation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from shared import telemetry
from shared.batch import lines as L
from shared.batch.config import BatchSettings
from shared.batch.limiter import AdaptiveLimiter
from shared.batch.state import RunRef, Stores, dumps
from shared.blocking import run_blocking
from shared.context import Context
from shared.errors import DeadlineExceeded, InferenceError
from shared.retry import MIN_ATTEMPT_S, retry_delay, retry_share, unit_budget
from shared.service import Service
from shared.storage import PreconditionFailed

log = logging.getLogger("shared.batch")

READ_BATCH = 256
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def new_checkpoint(start: int, end: int | None) -> dict[str, Any]:
    return {
        "start": start,
        "end": end,
        "next": start,
        "parts": [],
        "completed": 0,
        "failed": 0,
        "usage": dict.fromkeys(USAGE_KEYS, 0),
        "done": False,
    }


def ceiling_for(service: Service, settings: BatchSettings) -> int:
    """The most requests the backends accept at once (their ``max_concurrency`` summed)."""
    total = sum(b.config.max_concurrency for b in service.router.backends) or 1
    return min(total, settings.max_concurrency) if settings.max_concurrency else total


def make_limiter(service: Service, settings: BatchSettings) -> AdaptiveLimiter:
    return AdaptiveLimiter(
        start=settings.start_concurrency,
        floor=settings.min_concurrency,
        ceiling=ceiling_for(service, settings),
        backoff=settings.backoff,
        tolerance=settings.latency_tolerance,
    )


class _Held(dict[int, L.Outcome]):
    """Finished lines waiting for the lines before them, and how many bytes they hold."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __setitem__(self, key: int, value: L.Outcome) -> None:
        old = self.get(key)
        if old is not None:
            self.bytes -= len(old.text)
        self.bytes += len(value.text)
        super().__setitem__(key, value)

    def pop(self, key: int, *default: Any) -> Any:
        value = super().pop(key, *default)
        if isinstance(value, L.Outcome):
            self.bytes -= len(value.text)
        return value


def _take(it: Iterator[L.Line], n: int) -> list[L.Line]:
    out = []
    for line in it:
        out.append(line)
        if len(out) >= n:
            break
    return out


@dataclass
class UnitResult:
    outcome: str  # done | handoff | lost
    checkpoint: dict[str, Any]
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ShardRunner:
    """Processes lines ``[checkpoint.next, end)`` of one shard until done or out of time."""

    def __init__(
        self,
        run: RunRef,
        shard: int,
        checkpoint: dict[str, Any],
        etag: str,
        *,
        stores: Stores,
        service: Service,
        limiter: AdaptiveLimiter,
        settings: BatchSettings,
        deadline: float,
        on_commit: Any = None,
        caller: str | None = None,
    ) -> None:
        self.run = run
        #: Lines are charged to this caller's limits (``INFER_LIMITS``).
        self.caller = caller
        self.shard = shard
        self.ckpt = checkpoint
        self.etag = etag
        self.stores = stores
        self.service = service
        self.limiter = limiter
        self.settings = settings
        self.deadline = deadline
        self.stop_at = deadline - settings.handoff_margin_s
        self.line_deadline = deadline - max(0.5, 0.2 * settings.handoff_margin_s)
        self.on_commit = on_commit
        self.writer = uuid.uuid4().hex[:12]  # names this invocation's part files
        self.lost = False
        self.calls = 0
        self._order: list[L.Line] = []
        self._results = _Held()
        self._tasks: set[asyncio.Task[None]] = set()
        self._commit_lock = asyncio.Lock()
        self._window = max(2000, 16 * limiter.ceiling)
        self._last_open: float = 0.0
        self._stop = asyncio.Event()
        self._started = time.monotonic()
        self._committed = 0

    # -- reading and dispatch --------------------------------------------------------------

    def _lines(self) -> Iterator[L.Line]:
        nxt = int(self.ckpt["next"])
        end = self.ckpt.get("end")
        chunks = self.stores.inp.stream(self.run.input_key, max(nxt - 1, 0), self.run.size)
        return L.split_lines(chunks, nxt, end, self.settings.max_line_bytes)

    async def run_unit(self) -> UnitResult:
        committer = asyncio.create_task(self._committer())
        eof = False
        try:
            it = self._lines()
            while not self.lost and time.monotonic() < self.stop_at:
                batch = await run_blocking(_take, it, READ_BATCH)
                if not batch:
                    eof = True
                    break
                if not await self._dispatch(batch):
                    break
            if self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            for task in self._tasks:
                task.cancel()
            # Let a commit in progress finish: its storage write runs in a thread that a
            # cancellation would not stop, and the checkpoint etag must follow it.
            self._stop.set()
            await asyncio.shield(committer)
        await self._commit()
        done = eof and not self._order and not self.lost
        if done:
            await self._commit(final=True)
        outcome = "lost" if self.lost else ("done" if done else "handoff")
        return UnitResult(outcome, self.ckpt, self.calls)

    async def _dispatch(self, batch: list[L.Line]) -> bool:
        """Start every line of ``batch``; ``False`` when time ran out (or the shard was lost)."""
        for line in batch:
            while (
                len(self._order) >= self._window
                or self._results.bytes >= self.settings.max_held_bytes
            ) and not self.lost:
                if time.monotonic() >= self.stop_at:
                    return False
                await asyncio.sleep(0.02)
            if self.lost:
                return False
            try:
                req = L.parse(line, self.service.validate)
            except L.LineError as err:
                self._order.append(line)
                self._results[line.start] = L.failure(
                    self.run.run_id, line, err.custom_id, err.code, err.message
                )
                continue
            if req is None:
                self._order.append(line)
                self._results[line.start] = L.blank(line)
                continue
            if not await self.limiter.acquire(until=self.stop_at):
                return False
            if self._is_lost():  # the checkpoint moved while we waited for a slot
                self.limiter.on_abandon()
                return False
            self._order.append(line)
            held = [True]
            task = asyncio.create_task(self._line(line, req, held))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._task_done, held))
        return True

    def _is_lost(self) -> bool:
        return self.lost

    # -- one line --------------------------------------------------------------------------

    def _observe_router(self) -> None:
        """A circuit the router opened (429/503 it retried internally) is a congestion signal."""
        now = time.monotonic()
        for slot in self.service.router.slots:
            until = slot.circuit.open_until
            if until > now and until != self._last_open:
                self._last_open = until
                self.limiter.on_congestion(until - now)

    async def _line(self, line: L.Line, req: L.Request, held: list[bool]) -> None:
        """Call the model for one line. The limiter slot is held on entry; ``held[0]`` says
        whether it still is (the task's done-callback frees it if the task is cancelled).

        The line has one retry budget (``unit_budget``: 1 + INFER_MAX_RETRIES +
        INFER_BATCH_LINE_RETRIES service tries) that its own retries and the service's draw
        from; a wait for the caller's own limits draws nothing (no model call was made).
        """
        rid = f"{self.run.run_id}-{line.start}"
        attempt = 0
        per_call = self.service.settings.max_retries
        tries = unit_budget(per_call, self.settings.line_retries)

        def release(
            err: InferenceError | None = None, latency: float = 0.0, tokens: int = 1
        ) -> None:
            held[0] = False
            if err is not None:
                self.limiter.on_error(err)
            elif latency:
                self.limiter.on_success(latency, tokens)
            else:
                self.limiter.on_abandon()

        while True:
            ctx = Context(
                deadline=self.line_deadline,
                request_id=f"{rid}-{attempt}",
                caller=self.caller,
                traceparent=req.traceparent,
                entry="batch",
                tries_left=retry_share(tries, per_call, self.settings.line_retries - attempt),
            )
            share = ctx.tries_left or 0
            started = time.monotonic()
            self.calls += 1
            try:
                result = await self.service.complete(req.op, req.body, ctx)
            except DeadlineExceeded:
                release()
                return  # left for the next invocation
            except InferenceError as err:
                release(err)
                self._observe_router()
                # over the caller's own limit, or no capacity yet (the endpoint scaling out
                # from zero, every backend full): wait and retry without using up the line's
                # attempts or tries (the limiter above paused every line for the Retry-After)
                throttled = getattr(err, "caller_limit", False) or getattr(err, "waits", False)
                if not throttled:
                    tries -= share - max(ctx.tries_left or 0, 0)
                retries_left = throttled or attempt < self.settings.line_retries
                if err.retryable and tries > 0 and retries_left:
                    delay = retry_delay(err.retry_after, attempt, random.random())
                    if delay is not None:
                        if time.monotonic() + delay + MIN_ATTEMPT_S >= self.line_deadline:
                            return  # no time to retry here: the next invocation will
                        await asyncio.sleep(delay)
                        attempt += 0 if throttled else 1
                        if not await self.limiter.acquire(until=self.line_deadline):
                            return
                        held[0] = True
                        continue
                code = err.code or err.type
                self._results[line.start] = L.failure(
                    self.run.run_id, line, req.custom_id, str(code), err.message,
                    err=err, request_id=ctx.request_id,
                )  # fmt: skip
                return
            except Exception as exc:  # a bug or a storage fault: the line fails, visibly
                release()
                log.exception("batch %s line at %d failed", self.run.name, line.start)
                self._results[line.start] = L.failure(
                    self.run.run_id, line, req.custom_id, "internal_error", type(exc).__name__
                )
                return
            body = result.json()
            usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
            tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
            release(
                None,
                max(time.monotonic() - started, 1e-6),
                tokens if isinstance(tokens, int) else 1,
            )
            self._observe_router()
            self._results[line.start] = L.success(
                self.run.run_id, line, req, body, ctx.request_id, ctx.cost
            )
            return

    def _task_done(self, held: list[bool], task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if held[0]:  # cancelled while holding its slot (possibly before it ever ran)
            held[0] = False
            self.limiter.on_abandon()

    # -- commits ---------------------------------------------------------------------------

    async def _committer(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.checkpoint_s):
                    await self._stop.wait()
            await self._commit()

    def _take_prefix(self) -> list[L.Outcome]:
        done: list[L.Outcome] = []
        i = 0
        while i < len(self._order) and self._order[i].start in self._results:
            done.append(self._results.pop(self._order[i].start))
            i += 1
        del self._order[:i]
        return done

    async def _commit(self, *, final: bool = False) -> None:
        async with self._commit_lock:
            if self.lost:
                return
            outcomes = self._take_prefix()
            if not outcomes and not final:
                return
            ckpt = dict(self.ckpt)
            if outcomes:
                first, last = outcomes[0].offset, outcomes[-1].end
                out = b"".join(o.text for o in outcomes if o.ok)
                err = b"".join(o.text for o in outcomes if not o.ok)
                part: dict[str, Any] = {"from": first, "to": last, "out": None, "err": None}
                for kind, data in (("out", out), ("err", err)):
                    if data:
                        key = self.run.part_key(self.shard, first, last, kind, self.writer)
                        await run_blocking(
                            self.stores.work.put, key, data, content_type="application/jsonl"
                        )
                        part[kind] = key
                ckpt["parts"] = [*ckpt["parts"], part]
                ckpt["next"] = last
                ok = sum(1 for o in outcomes if o.ok and o.counted)
                failed = sum(1 for o in outcomes if not o.ok)
                ckpt["completed"] += ok
                ckpt["failed"] += failed
                self._committed += ok + failed
                elapsed = max(time.monotonic() - self._started, 1e-3)
                telemetry.record_batch(
                    self.run.name,
                    ok=ok,
                    failed=failed,
                    rate=self._committed / elapsed,
                    limit=int(self.limiter.limit),
                )
                usage = dict(ckpt["usage"])
                for o in outcomes:
                    for k in USAGE_KEYS:
                        usage[k] = usage.get(k, 0) + o.usage.get(k, 0)
                ckpt["usage"] = usage
                cost = sum(o.usage.get("cost_micro", 0) for o in outcomes)
                if cost:
                    ckpt["cost_micro"] = int(ckpt.get("cost_micro", 0)) + cost
            if final:
                ckpt["done"] = True
            try:
                self.etag = await run_blocking(
                    self.stores.work.put,
                    self.run.ckpt_key(self.shard),
                    dumps(ckpt),
                    if_match=self.etag,
                )
            except PreconditionFailed:
                log.warning(
                    "batch %s shard %d: checkpoint moved under us; another invocation owns it",
                    self.run.name,
                    self.shard,
                )
                self.lost = True
                for task in self._tasks:
                    task.cancel()
                if outcomes:  # never committed: ours alone (its key is), so drop it
                    for key in (part["out"], part["err"]):
                        if key:
                            with contextlib.suppress(Exception):
                                await run_blocking(self.stores.work.delete, key)
                return
            self.ckpt = ckpt
            if self.on_commit is not None:
                await self.on_commit(ckpt)
