"""The limiter: which counters a request touches, admission, settlement, refusals, headers.

A request's checks are built from the rules (``config``), then handed to a provider that
decides all of them at once, atomically: either every counter is charged or none is.

- ``rate`` (rpm, tpm): GCRA, a token bucket kept as one "theoretical arrival time" per
  counter. A bucket holds ``limit`` units and refills at ``limit / window``. A request is
  admitted when its cost fits (a request larger than the whole bucket is admitted into an
  empty one); ``Retry-After`` is exactly the time until it would fit.
- ``quota`` (token_quota): a counter per calendar period, refused until the period ends.
- ``parallel`` (max_parallel): the request ids in flight, each with an expiry at its deadline
  (a crashed instance's slots free themselves).

Tokens: admission reserves the request's worst case (``reservation_tokens``: the prompt
estimate plus ``n`` x ``max_tokens``, which the service sets to ``INFER_MAX_TOKENS_CAP`` when
the caller leaves it out); :meth:`Admission.settle` then charges the real usage instead
(the answer's, or the stream's usage event, which the service always asks the endpoint
for). Without a usage the reservation stands; a failure before the endpoint did any work
refunds it. Settlement runs once, on every exit, and releases the parallel slot, whose id
is made here (never the caller's request id).

A provider that cannot reach its store raises ``StateUnavailable`` (logged and counted,
``shared.state.failures["limits"]``): the request is then admitted against this instance's
own counters (``INFER_LIMITS_ON_STATE_DOWN=local``, the default: limits hold per instance,
never "unlimited") or not checked (``open``). A settlement Redis did not take is kept and
made once Redis answers again, so a slot is freed and tokens charged late, not never.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from shared.errors import BackendRateLimited
from shared.limits.config import LimitRule, QuotaPeriod
from shared.pricing import MICRO, micro

if TYPE_CHECKING:
    from shared.context import Context

log = logging.getLogger("shared.limits")

CheckKind = Literal["rate", "quota", "parallel"]
#: How long a refused max_parallel request is told to wait (in-flight requests end unseen).
PARALLEL_RETRY_MS = 1000
#: Settlements kept for when Redis answers again (a slot to free, tokens to charge).
MAX_UNSETTLED = 1000
#: Characters per token for the admission estimate (OpenAI's rule of thumb for English).
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Check:
    kind: CheckKind
    key: str
    limit: int
    span_ms: int  # rate: window; quota: until the period ends; parallel: hold (deadline)
    cost: int
    metric: str  # "requests" | "tokens" | "quota" | "cost" | "parallel" | "jobs"
    #: quota: "hour" | "day" | "month": the Redis script reads the period from the server's
    #: clock (``span_ms`` and the key's period are this instance's view, for memory).
    period: str = ""


@dataclass
class Decision:
    refused: int | None  # index of the refusing check, None when admitted
    retry_ms: int
    remaining: list[int]
    reset_ms: list[int]


class Provider(Protocol):
    name: str

    async def acquire(self, checks: Sequence[Check], request_id: str, ctx: Context) -> Decision:
        """Decide and (when admitted) charge every check atomically."""
        ...

    async def settle(
        self, checks: Sequence[Check], deltas: Sequence[int], request_id: str, ctx: Context | None
    ) -> None:
        """Charge ``deltas`` (tokens beyond the estimate, may be negative); free slots."""
        ...


def format_duration(ms: float) -> str:
    """OpenAI's reset format: ``12ms``, ``1.5s``, ``1m30s``, ``6m0s``, ``1h0m0s``."""
    ms = max(0, math.ceil(ms))
    if ms < 1000:
        return f"{ms}ms"
    total_s = ms / 1000.0
    hours, rest = divmod(int(total_s), 3600)
    minutes, secs = divmod(rest, 60)
    frac = total_s - int(total_s)
    sec_text = f"{secs + frac:.3f}".rstrip("0").rstrip(".") if frac >= 0.001 else str(secs)
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"


def period_bounds(period: QuotaPeriod, now: float) -> tuple[str, float]:
    """(period id, seconds until it ends) for a UTC calendar period containing ``now``."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(hours=1)
        ident = start.strftime("%Y%m%dT%H")
    elif period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(days=1)
        ident = start.strftime("%Y%m%d")
    else:
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        days = calendar.monthrange(start.year, start.month)[1]
        end = start + dt.timedelta(days=days)
        ident = start.strftime("%Y%m")
    return ident, (end - t).total_seconds()


def _text_len(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, dict):
                total += _text_len(item.get("text") or "")
            elif isinstance(item, int):  # a token id
                total += CHARS_PER_TOKEN
            else:
                total += _text_len(item)
        return total
    if value is None:
        return 0
    return len(json.dumps(value))


def estimate_prompt_tokens(payload: dict[str, Any]) -> int:
    """A cheap estimate of a request's prompt tokens (charged at admission)."""
    if "messages" in payload:
        messages = payload.get("messages") or []
        chars = sum(_text_len(m.get("content")) for m in messages if isinstance(m, dict))
        overhead = 4 * len(messages)
        if payload.get("tools"):
            chars += len(json.dumps(payload["tools"]))
    else:
        chars = _text_len(payload.get("prompt", payload.get("input")))
        overhead = 1
    return max(1, math.ceil(chars / CHARS_PER_TOKEN) + overhead)


def reservation_tokens(payload: dict[str, Any], cap: int) -> int:
    """A request's worst case: its prompt estimate plus ``n`` times its ``max_tokens``
    (``max_completion_tokens``; ``cap`` when it sets neither). Embeddings: the prompt only."""
    prompt = estimate_prompt_tokens(payload)
    if "messages" not in payload and "prompt" not in payload:
        return prompt
    out = payload.get("max_completion_tokens") or payload.get("max_tokens") or cap
    if not out:
        return prompt
    n = payload.get("n") or 1
    best_of = payload.get("best_of") or 1
    return prompt + int(out) * max(int(n), int(best_of))


class CallerRateLimited(BackendRateLimited):
    """Over the caller's rpm/tpm/max_parallel: a 429 the caller retries after Retry-After
    (queue jobs wait, batches slow down; never a failed line)."""

    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"
    #: Marks a refusal of the caller's own limits (not the endpoint's): batches wait it out.
    caller_limit = True

    def __init__(self, message: str, *, retry_ms: int, headers: dict[str, str]) -> None:
        super().__init__(message, retry_after=retry_ms / 1000.0)
        self.retry_ms = retry_ms
        self.limit_headers = headers

    def headers(self) -> dict[str, str]:
        seconds = max(1, math.ceil(self.retry_ms / 1000.0))
        return {
            **self.limit_headers,
            "Retry-After": str(seconds),
            "retry-after-ms": str(max(1, self.retry_ms)),
        }


class CallerQuotaExceeded(CallerRateLimited):
    """Over the caller's token quota for the period: 429 ``insufficient_quota``."""

    type = "insufficient_quota"
    code = "insufficient_quota"


@dataclass
class Admission:
    """What admission charged; :meth:`settle` (once) charges the real usage, frees slots."""

    limiter: Limiter | None
    checks: list[Check] = field(default_factory=list)
    request_id: str = ""
    estimate: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    #: Where it was admitted: Redis, or this instance's counters while Redis was down.
    provider: Provider | None = None
    #: Money reserved (micro-units) against ``cost_quota`` counters.
    reserved_cost: int = 0

    async def settle(
        self, tokens: int | None, ctx: Context | None = None, cost: int | None = None
    ) -> None:
        """Charge ``tokens`` and ``cost`` (micro-units) (None: keep what was reserved; 0:
        refund it, e.g. a cache hit or a failed call) and release the parallel slot.
        ``cost`` left None follows ``tokens``: refunded with them when they are 0."""
        if self.settled or self.limiter is None or not self.checks:
            self.settled = True
            return
        self.settled = True
        delta = 0 if tokens is None else tokens - self.estimate
        if cost is None and tokens == 0:
            cost = 0
        cost_delta = 0 if cost is None else cost - self.reserved_cost
        deltas = [
            cost_delta if c.metric == "cost" else delta if c.metric in ("tokens", "quota") else 0
            for c in self.checks
        ]  # requests stay charged; parallel slots are released by the provider
        if not any(deltas) and not any(c.kind == "parallel" for c in self.checks):
            return
        await self.limiter.settle(self, deltas, ctx)


NOOP = Admission(limiter=None, settled=True)


class Limiter:
    """Rules plus a provider (in-process, or Redis when ``INFER_STATE_URL`` is set)."""

    def __init__(
        self,
        rules: Sequence[LimitRule],
        provider: Provider,
        *,
        clock: Any,
        on_state_down: Literal["local", "open"] = "local",
    ) -> None:
        self.rules = list(rules)
        self.provider = provider
        self.named = {r.caller for r in self.rules if r.caller != "*"}
        self._wall = clock
        self.failed_open = 0
        self.on_state_down = on_state_down
        self._local: Provider | None = None
        self._unsettled: list[tuple[list[Check], list[int], str]] = []
        #: Whether any rule is a cost_quota (the service then prices the reservation).
        self.prices = any(r.cost_quota for r in self.rules)

    def applicable(self, caller: str, model: str) -> list[LimitRule]:
        """The rules for ``caller``: those naming it (``key:team-a``, or ``team-a`` for the
        key ``team-a``: see ``shared.callers.aliases``), else the ``"*"`` rules."""
        from shared.callers import aliases

        names = aliases(caller)
        own = bool(names & self.named)
        return [
            r
            for r in self.rules
            if (r.caller in names if own else r.caller == "*")
            and (r.model in (None, "*") or r.model == model)
        ]

    def checks(
        self, caller: str, model: str, estimate: int, hold_ms: int, cost: int = 0
    ) -> list[Check]:
        from shared.state import key as state_key

        out: list[Check] = []
        for rule in self.applicable(caller, model):
            # a caller-chosen name never becomes a key as is: bounded, hashed
            scope = _model_key(model) if rule.model == "*" else (rule.model or "*")
            base = f"{{{caller}}}:{rule.rule_id}:{scope}"
            window = int(rule.window_s * 1000)
            if rule.rpm:
                k = state_key("lim", base, "rpm")
                out.append(Check("rate", k, rule.rpm, window, 1, "requests"))
            if rule.tpm:
                k = state_key("lim", base, "tpm")
                out.append(Check("rate", k, rule.tpm, window, estimate, "tokens"))
            if rule.token_quota:
                _, left_s = period_bounds(rule.period, self._wall())
                k = state_key("lim", base, "quota")
                span = int(left_s * 1000) + 1
                out.append(Check("quota", k, rule.token_quota, span, estimate, "quota",
                                 rule.period))  # fmt: skip
            if rule.cost_quota:
                _, left_s = period_bounds(rule.period, self._wall())
                k = state_key("lim", base, "cost")
                limit = micro(rule.cost_quota)
                out.append(Check("quota", k, limit, int(left_s * 1000) + 1, cost, "cost",
                                 rule.period))  # fmt: skip
            if rule.max_parallel:
                k = state_key("lim", base, "par")
                out.append(Check("parallel", k, rule.max_parallel, hold_ms, 1, "parallel"))
        return out

    async def admit(
        self,
        caller: str,
        model: str,
        payload: dict[str, Any],
        ctx: Context,
        *,
        cap: int = 0,
        cost: int = 0,
    ) -> Admission:
        """Admit at the request's worst case (``reservation_tokens``): prompt estimate plus
        ``n`` x ``max_tokens``; :meth:`Admission.settle` then charges the real usage."""
        from shared import telemetry
        from shared.state import StateUnavailable

        estimate = reservation_tokens(payload, cap)
        hold_ms = int(max(ctx.remaining(), 1.0) * 1000) + 5000
        checks = self.checks(caller, model, estimate, hold_ms, cost)
        if not checks:
            return NOOP
        # the slot's id is ours: requests sharing a caller's x-request-id are distinct
        slot_id = uuid.uuid4().hex
        provider: Provider = self.provider
        try:
            decision = await provider.acquire(checks, slot_id, ctx)
        except StateUnavailable:  # logged and counted by shared.state
            self.failed_open += 1
            if self.on_state_down == "open":
                telemetry.record_limit(ctx, "fail_open")
                return NOOP
            telemetry.record_limit(ctx, "fallback")  # this instance's own counters
            provider = self.local()
            decision = await provider.acquire(checks, slot_id, ctx)
        else:
            if self._unsettled:
                await self._settle_unsettled()
        headers = rate_headers(checks, decision)
        if decision.refused is not None:
            refused = checks[decision.refused]
            outcome = {"quota": "quota", "parallel": "parallel"}.get(refused.kind)
            telemetry.record_limit(ctx, outcome or ("tpm" if refused.metric == "tokens" else "rpm"))
            telemetry.record_throttle(ctx, "limit")
            retry_ms = max(1, decision.retry_ms)
            wait = format_duration(retry_ms)
            if refused.kind == "quota":  # tokens, or money ("cost")
                spent = (
                    f"budget of {refused.limit / MICRO:g}"
                    if refused.metric == "cost"
                    else f"token quota of {refused.limit}"
                )
                raise CallerQuotaExceeded(
                    f"You exceeded your {spent} for this period; it resets in {wait}.",
                    retry_ms=retry_ms,
                    headers=headers,
                )
            what = {"requests": "requests", "tokens": "tokens", "parallel": "requests in flight"}
            raise CallerRateLimited(
                f"Rate limit reached for {model} ({what[refused.metric]}: limit "
                f"{refused.limit}). Please try again in {wait}.",
                retry_ms=retry_ms,
                headers=headers,
            )
        telemetry.record_limit(ctx, "admitted")
        return Admission(self, checks, slot_id, estimate, headers, provider=provider,
                         reserved_cost=cost)  # fmt: skip

    def _job_checks(self, caller: str, job_id_hold_ms: int) -> list[Check]:
        from shared.state import key as state_key

        out: list[Check] = []
        for rule in self.applicable(caller, ""):
            if rule.model not in (None, "*"):
                continue
            base = f"{{{caller}}}:{rule.rule_id}"
            if rule.rpm:
                k = state_key("lim", base, "jobs", "rpm")
                out.append(Check("rate", k, rule.rpm, int(rule.window_s * 1000), 1, "requests"))
            if rule.max_queued_jobs:
                k = state_key("lim", base, "jobs", "queued")
                out.append(Check("parallel", k, rule.max_queued_jobs, job_id_hold_ms, 1,
                                 "jobs"))  # fmt: skip
        return out

    async def admit_job(self, caller: str, job_id: str, ctx: Context, hold_s: float) -> None:
        """A job submission: the caller's request rate (its own counter: the job's model
        call is charged again when it runs) and its jobs queued or running. Refused: 429."""
        from shared.state import StateUnavailable

        checks = self._job_checks(caller, int(hold_s * 1000))
        if not checks:
            return
        try:
            decision = await self.provider.acquire(checks, job_id, ctx)
        except StateUnavailable:
            if self.on_state_down == "open":
                return
            decision = await self.local().acquire(checks, job_id, ctx)
        if decision.refused is None:
            return
        refused = checks[decision.refused]
        retry_ms = max(1, decision.retry_ms)
        what = "jobs queued" if refused.metric == "jobs" else "job submissions"
        raise CallerRateLimited(
            f"Rate limit reached ({what}: limit {refused.limit}). Please try again in "
            f"{format_duration(retry_ms)}.",
            retry_ms=retry_ms,
            headers={},
        )

    async def job_done(self, caller: str, job_id: str) -> None:
        """A job reached its end (or was never queued): its queued slot is freed."""
        from shared.state import StateUnavailable

        checks = [c for c in self._job_checks(caller, 0) if c.kind == "parallel"]
        if not checks:
            return
        for provider in (self.provider, self._local):
            if provider is None:
                continue
            try:
                await provider.settle(checks, [0] * len(checks), job_id, None)
            except StateUnavailable:
                self._unsettled.append((checks, [0] * len(checks), job_id))

    async def usage(self, caller: str, model: str | None, ctx: Context) -> list[dict[str, Any]]:
        """Each rule that applies to ``caller`` (for ``model`` when one is given): its
        counters now, what is used and what remains, charging nothing."""
        rules = [
            r for r in self.applicable(caller, model or "")
            if r.model is None or (model is not None and r.model in ("*", model))
        ]  # fmt: skip
        out: list[dict[str, Any]] = []
        for rule in rules:
            limiter = Limiter([rule], self.provider, clock=self._wall)
            checks = limiter.checks(caller, model or "", 0, 0)
            peek = getattr(self.provider, "peek", None)
            seen = await peek(checks, ctx) if peek is not None else [(0, 0)] * len(checks)
            entry: dict[str, Any] = {"rule": rule.model_dump(exclude_none=True)}
            for check, (used, reset_ms) in zip(checks, seen, strict=True):
                name = {"requests": "rpm", "tokens": "tpm", "quota": "token_quota",
                        "cost": "cost_quota", "parallel": "max_parallel",
                        "jobs": "max_queued_jobs"}[check.metric]  # fmt: skip
                if check.metric == "cost":
                    entry[name] = {"limit": check.limit / MICRO, "spent": round(used / MICRO, 6),
                                   "remaining": round(max(0, check.limit - used) / MICRO, 6),
                                   "period": check.period,
                                   "resets_in": format_duration(reset_ms)}  # fmt: skip
                elif check.kind == "quota":
                    entry[name] = {"limit": check.limit, "used": used,
                                   "remaining": max(0, check.limit - used),
                                   "period": check.period,
                                   "resets_in": format_duration(reset_ms)}  # fmt: skip
                elif check.kind == "parallel":
                    entry[name] = {"limit": check.limit, "in_flight": used,
                                   "remaining": max(0, check.limit - used)}  # fmt: skip
                else:
                    entry[name] = {"limit": check.limit, "remaining": max(0, check.limit - used),
                                   "resets_in": format_duration(reset_ms)}  # fmt: skip
            out.append(entry)
        return out

    def local(self) -> Provider:
        """This instance's own counters: what limits hold while Redis does not answer."""
        if self._local is None:
            from shared.limits.memory import MemoryProvider

            self._local = MemoryProvider()
        return self._local

    async def settle(self, admission: Admission, deltas: list[int], ctx: Context | None) -> None:
        from shared.state import StateUnavailable

        provider = admission.provider or self.provider
        try:
            await provider.settle(admission.checks, deltas, admission.request_id, ctx)
        except StateUnavailable:
            self.failed_open += 1
            # settled (its slot freed, its tokens charged) once Redis answers again
            if len(self._unsettled) < MAX_UNSETTLED:
                self._unsettled.append((admission.checks, deltas, admission.request_id))
        except Exception:  # settlement never fails a request that already got its answer
            log.exception("limits: settlement failed request_id=%s", admission.request_id)

    async def _settle_unsettled(self) -> None:
        from shared.state import StateUnavailable

        pending, self._unsettled = self._unsettled, []
        for i, (checks, deltas, slot_id) in enumerate(pending):
            try:
                await self.provider.settle(checks, deltas, slot_id, None)
            except StateUnavailable:
                self._unsettled = pending[i:] + self._unsettled
                return


def _model_key(model: str) -> str:
    return "m" + hashlib.sha256(model.encode()).hexdigest()[:16]


def rate_headers(checks: Sequence[Check], decision: Decision) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*``, from the tightest requests and tokens counters."""
    headers: dict[str, str] = {}
    for metric in ("requests", "tokens"):
        found = [
            (decision.remaining[i], decision.reset_ms[i], c)
            for i, c in enumerate(checks)
            if c.metric == metric
        ]
        if not found:
            continue
        remaining, reset_ms, check = min(found, key=lambda f: f[0])
        headers[f"x-ratelimit-limit-{metric}"] = str(check.limit)
        headers[f"x-ratelimit-remaining-{metric}"] = str(max(0, remaining))
        headers[f"x-ratelimit-reset-{metric}"] = format_duration(reset_ms)
    return headers
