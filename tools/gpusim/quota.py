"""A deployment's rate limit, as Azure OpenAI and OpenAI enforce one: ``--tpm`` / ``--rpm``.

A request is charged its prompt tokens plus its ``max_tokens`` (the natural longest answer
when it sets none) the moment it arrives, as Azure OpenAI does, against token buckets that
refill continuously over a minute. Over either: 429 with ``Retry-After`` (whole seconds)
and ``retry-after-ms``. Every answer carries ``x-ratelimit-limit-*``,
``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*`` for requests and tokens.
"""

from __future__ import annotations

import math
import time


def _duration(seconds: float) -> str:
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    minutes, secs = divmod(ms / 1000.0, 60)
    return f"{int(minutes)}m{secs:.3g}s" if minutes else f"{secs:.3g}s"


class OverQuota(Exception):
    def __init__(self, what: str, limit: int, retry_after: float, headers: dict[str, str]) -> None:
        super().__init__(
            f"Requests to the ChatCompletions_Create Operation have exceeded {what} rate limit "
            f"of {limit} per minute. Please retry after {math.ceil(retry_after)} seconds."
        )
        self.retry_after = retry_after
        self.headers = headers


class Quota:
    def __init__(self, tpm: int, rpm: int, clock: object = time.monotonic) -> None:
        self.limits = {"tokens": tpm, "requests": rpm}
        self.level = {"tokens": float(tpm), "requests": float(rpm)}  # what is left now
        self._clock = clock
        self._at = self._now()
        self.refused = 0

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    @property
    def active(self) -> bool:
        return any(self.limits.values())

    def _refill(self) -> None:
        now = self._now()
        gone = now - self._at
        self._at = now
        for kind, limit in self.limits.items():
            if limit:
                self.level[kind] = min(float(limit), self.level[kind] + gone * limit / 60.0)

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, limit in self.limits.items():
            if not limit:
                continue
            left = self.level[kind]
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(left)))
            out[f"x-ratelimit-reset-{kind}"] = _duration((limit - left) * 60.0 / limit)
        return out

    def charge(self, tokens: int) -> dict[str, str]:
        """Charge one request of ``tokens``: the headers to send, or :class:`OverQuota`."""
        if not self.active:
            return {}
        self._refill()
        cost = {"tokens": float(tokens), "requests": 1.0}
        for kind, limit in self.limits.items():
            if limit and self.level[kind] < min(cost[kind], float(limit)):
                wait = (min(cost[kind], limit) - self.level[kind]) * 60.0 / limit
                self.refused += 1
                headers = {**self.headers(), "retry-after": str(max(1, math.ceil(wait))),
                           "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}  # fmt: skip
                raise OverQuota("token" if kind == "tokens" else "call", limit, wait, headers)
        for kind, limit in self.limits.items():
            if limit:
                self.level[kind] -= cost[kind]
        return self.headers()
