"""A backend's ``max_concurrency``: the requests in flight toward it, and the wait for a slot.

``max_concurrency`` is the endpoint's capacity (replicas times sequences each), not a number per
function instance:

- With ``INFER_STATE_URL`` set, a slot is a lease in Redis held for every instance of every
  function (HTTP, jobs, batch, probe): one sorted set per backend whose members are lease ids
  (made here: ``<instance>:<n>``, never a caller's request id) scored by their expiry on the
  server's clock. Taking a slot is one script (drop expired leases, count, add when below
  the limit), so the count is exact under any race; freeing one is a second script that
  also publishes the backend's name, so waiters on every instance look again at once. An
  instance renews the leases it holds every third of ``INFER_CAPACITY_LEASE_S`` (a stream
  keeps its slot as long as it runs); a crashed instance's slots come back when its leases
  expire.
- Without shared state, or while Redis does not answer, the count is this instance's own:
  ``max_concurrency`` per instance (never unlimited). A failed Redis call is logged and
  counted (``shared.state.failures["capacity"]``).

Waiting is event driven and first come, first served within an instance: requests for the
same candidates queue in arrival order and only the head of a queue looks for a slot; it
looks again when a slot of one of its backends is freed (here, or on another instance via
the published message) and, with shared state, at least every ``POLL_S`` (a lease that
expired announces nothing). The others sleep on a future: 200 waiters cost no CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.errors import AtCapacity

if TYPE_CHECKING:
    from shared.context import Context
    from shared.quota import Reservation

log = logging.getLogger("shared.capacity")

#: A head waiter in shared mode looks again at least this often (expired leases, lost messages).
POLL_S = 0.1
#: A wait for a slot gives up this long before the deadline, with 429 and Retry-After.
GIVE_UP_MARGIN_S = 0.5
#: What the 429 at the end of a wait suggests (seconds).
BUSY_RETRY_S = 1.0

ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[2]) then return {0, held} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return {1, held + 1}
"""

RELEASE = """
local n = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
"""

RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
local kept = 0
for i = 2, #ARGV do
  kept = kept + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return kept
"""

_INSTANCE = uuid.uuid4().hex[:12]
_numbers = itertools.count(1)


@dataclass(eq=False)
class Waiter:
    key: frozenset[str]
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class Lease:
    """One slot of one backend, held until :meth:`release` (idempotent)."""

    __slots__ = ("gate", "id", "released", "reservation", "shared")

    def __init__(self, gate: Gate, lease_id: str, shared: bool) -> None:
        self.gate = gate
        self.id = lease_id
        self.shared = shared
        self.released = False
        #: The backend quota this request reserved (``shared.quota``), settled by the router.
        self.reservation: Reservation | None = None

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        gate = self.gate
        gate.in_flight -= 1
        if self.shared:
            gate.held.discard(self.id)
            await asyncio.shield(gate.pool.free(gate, self.id))
        gate.pool.wake(gate.name)


class Gate:
    """One backend's slots as this process sees them."""

    def __init__(self, pool: Capacity, name: str, limit: int) -> None:
        self.pool = pool
        self.name = name
        self.limit = limit
        self.in_flight = 0  # slots this process holds (shared or not)
        self.held: set[str] = set()  # lease ids held in Redis, renewed while held
        self.peak = 0

    @property
    def full_here(self) -> bool:
        return self.in_flight >= self.limit

    async def take(self, ctx: Context) -> Lease | None:
        """A slot now, or None when the backend is at capacity."""
        if self.pool.shared:
            from shared.state import StateUnavailable

            try:
                lease_id = f"{_INSTANCE}:{next(_numbers)}"
                if await self.pool.acquire(self, lease_id, ctx):
                    self._count()
                    self.held.add(lease_id)
                    self.pool.keep_renewed()
                    return Lease(self, lease_id, True)
                return None
            except StateUnavailable:
                self.pool.fell_back += 1  # counted and logged by shared.state
        if self.full_here:
            return None
        self._count()
        return Lease(self, "", False)

    def _count(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)


class Capacity:
    """The slots of a router's backends, and the queues of requests waiting for them."""

    def __init__(self, lease_s: float = 15.0, *, shared: bool | None = None) -> None:
        self.lease_ms = int(lease_s * 1000)
        self._shared = shared
        self.gates: dict[str, Gate] = {}
        self.queues: dict[frozenset[str], deque[Waiter]] = {}
        self.fell_back = 0
        self._scripts: dict[int, tuple[Any, Any, Any]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None

    @property
    def shared(self) -> bool:
        if self._shared is None:
            from shared.settings import setting_set

            self._shared = False
            if setting_set("INFER_STATE_URL"):  # else shared.state is not even imported
                from shared.state import configured

                self._shared = configured()
        return self._shared

    def gate(self, name: str, limit: int) -> Gate:
        found = self.gates.get(name)
        if found is None:
            found = self.gates[name] = Gate(self, name, limit)
        return found

    # -- waiting --------------------------------------------------------------------------

    def waiting(self, backend: str) -> int:
        """Requests of this instance waiting for a slot that ``backend`` could give."""
        return sum(len(q) for k, q in self.queues.items() if backend in k)

    def queued(self, key: frozenset[str]) -> bool:
        return bool(self.queues.get(key))

    def join(self, key: frozenset[str]) -> Waiter:
        waiter = Waiter(key)
        self.queues.setdefault(key, deque()).append(waiter)
        if self.shared:
            self._listen()
        self._report(key)
        return waiter

    def leave(self, waiter: Waiter) -> None:
        queue = self.queues.get(waiter.key)
        if not queue:
            return
        head = queue[0] is waiter
        try:
            queue.remove(waiter)
        except ValueError:
            return
        if not queue:
            del self.queues[waiter.key]
        elif head:
            queue[0].woken.set()  # the next in line looks now
        self._report(waiter.key)

    def _report(self, key: frozenset[str]) -> None:
        from shared import telemetry

        telemetry.record_backlog(key, self.waiting)

    def _first(self, waiter: Waiter) -> bool:
        queue = self.queues.get(waiter.key)
        return bool(queue) and queue[0] is waiter  # type: ignore[index]

    async def wait_turn(self, waiter: Waiter, ctx: Context, model: str) -> None:
        """Return when ``waiter`` should look for a slot: it is first in its queue and a slot
        may have been freed. At the deadline (less a margin) raise :class:`AtCapacity`."""
        while True:
            left = ctx.remaining() - GIVE_UP_MARGIN_S
            if left > 0:
                first = self._first(waiter)
                timeout = min(left, POLL_S) if first and self.shared else left
                try:
                    async with asyncio.timeout(timeout):
                        await waiter.woken.wait()
                except TimeoutError:
                    pass
            waiter.woken.clear()
            if ctx.remaining() - GIVE_UP_MARGIN_S <= 0:
                from shared import telemetry

                telemetry.record_throttle(ctx, "capacity")
                raise AtCapacity(
                    f"every backend serving '{model}' is at capacity; try again later",
                    retry_after=BUSY_RETRY_S,
                )
            if self._first(waiter):
                return

    def wake(self, backend: str) -> None:
        """A slot of ``backend`` was freed: the first waiter of every queue it serves looks."""
        for key, queue in self.queues.items():
            if backend in key and queue:
                queue[0].woken.set()

    # -- shared state ---------------------------------------------------------------------

    def _bound(self, redis: Any) -> tuple[Any, Any, Any]:
        found = self._scripts.get(id(redis))
        if found is None:
            found = (
                redis.register_script(ACQUIRE),
                redis.register_script(RELEASE),
                redis.register_script(RENEW),
            )
            self._scripts = {id(redis): found}
        return found

    @staticmethod
    def key(gate: Gate) -> str:
        from shared.state import key

        return key("cap", "{" + gate.name + "}")

    @staticmethod
    def channel() -> str:
        from shared.state import key

        return key("cap", "freed")

    async def acquire(self, gate: Gate, lease_id: str, ctx: Context) -> bool:
        from shared.state import run

        async def call(redis: Any) -> bool:
            script = self._bound(redis)[0]
            out = await script(keys=[self.key(gate)], args=[lease_id, gate.limit, self.lease_ms])
            return bool(int(out[0]))

        return await run("capacity", ctx, call)

    async def free(self, gate: Gate, lease_id: str) -> None:
        from shared.state import StateUnavailable, run

        async def call(redis: Any) -> None:
            script = self._bound(redis)[1]
            await script(keys=[self.key(gate)], args=[lease_id, self.channel(), gate.name])

        # after the answer: bounded by INFER_STATE_TIMEOUT_S, not the spent deadline; on
        # failure the lease expires on its own within INFER_CAPACITY_LEASE_S
        with contextlib.suppress(StateUnavailable):
            await run("capacity", None, call)

    def keep_renewed(self) -> None:
        """Renew the leases held, every third of a lease, while any is held."""
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        from shared.state import StateUnavailable, run

        every = self.lease_ms / 3000.0
        while any(g.held for g in self.gates.values()):
            await asyncio.sleep(every)
            for gate in list(self.gates.values()):
                ids = list(gate.held)
                if not ids:
                    continue

                async def call(redis: Any, gate: Gate = gate, ids: list[str] = ids) -> None:
                    script = self._bound(redis)[2]
                    await script(keys=[self.key(gate)], args=[self.lease_ms, *ids])

                with contextlib.suppress(StateUnavailable):  # again a third of a lease later
                    await run("capacity", None, call)

    def _listen(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._messages())

    async def _messages(self) -> None:
        """Wake local waiters when another instance frees a slot (while any wait here)."""
        from shared.state import get_redis

        try:
            redis = await get_redis()
            pubsub = redis.pubsub()
            await pubsub.subscribe(self.channel())
        except Exception as exc:  # waiters still look every POLL_S
            log.debug("capacity: no subscription (%s); polling", exc)
            return
        try:
            while self.queues:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
                if message is not None and message.get("type") == "message":
                    data = message.get("data")
                    self.wake(data.decode() if isinstance(data, bytes) else str(data))
        except Exception as exc:
            log.debug("capacity: subscription lost (%s); polling", exc)
        finally:
            with contextlib.suppress(Exception):  # best effort
                await pubsub.aclose()

    # -- reporting --------------------------------------------------------------------------

    def describe(self, names: Iterable[str]) -> dict[str, dict[str, int]]:
        return {
            n: {"in_flight": g.in_flight, "waiting": self.waiting(n)}
            for n in names
            if (g := self.gates.get(n)) is not None
        }
