"""``INFER_LIMITS``: rate limits, concurrency and token quotas per caller, model, or both.

A JSON list of rules ``{"caller": id | "*", "model"?: name | "*", "rpm"?, "tpm"?,
"max_parallel"?, "token_quota"?, "cost_quota"?, "quota_period"?: "hour" | "day" | "month",
"window_s"?}``.

- ``caller``: a caller id (``shared.callers``) or ``"*"``: every caller gets its own counters.
  A caller named by any rule is governed by its own rules only; ``"*"`` rules are the default
  for every other caller.
- ``model``: absent: one counter for all models; a name: that model only; ``"*"``: each
  model its own counter.
- ``rpm`` / ``tpm``: requests / tokens per ``window_s`` seconds (60 by default, so per
  minute), replenished continuously (a token bucket: GCRA). ``max_parallel``: requests in
  flight. ``max_queued_jobs``: jobs (``POST /v1/jobs``) queued or running at once; a job
  submission is also charged the rule's ``rpm`` (its own counter). ``token_quota``
  (tokens) and ``cost_quota`` (money, in the backends' ``price`` currency) per
  ``quota_period`` (calendar hour/day/month, UTC).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.settings import CachedSettings, EnvSettings, NoDecode, setting_set

QuotaPeriod = Literal["hour", "day", "month"]


class LimitRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    caller: str = Field(default="*", min_length=1)
    model: str | None = None
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_parallel: int | None = Field(default=None, ge=1)
    token_quota: int | None = Field(default=None, ge=1)
    #: Money per ``quota_period`` (the backends' ``price`` currency): reserved at the worst
    #: case at admission, settled to the real cost; over it: 429 ``insufficient_quota``.
    cost_quota: float | None = Field(default=None, gt=0)
    quota_period: QuotaPeriod | None = None
    #: Jobs (``POST /v1/jobs``) a caller may have queued or running at once.
    max_queued_jobs: int | None = Field(default=None, ge=1)
    window_s: float = Field(default=60.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _something(self) -> LimitRule:
        if not any((self.rpm, self.tpm, self.max_parallel, self.token_quota, self.cost_quota,
                    self.max_queued_jobs)):  # fmt: skip
            raise ValueError(
                "a rule needs at least one of rpm, tpm, max_parallel, token_quota, cost_quota, "
                "max_queued_jobs"
            )
        if self.quota_period is not None and not (self.token_quota or self.cost_quota):
            raise ValueError("quota_period needs token_quota or cost_quota")
        return self

    @property
    def period(self) -> QuotaPeriod:
        return self.quota_period or "month"

    @property
    def rule_id(self) -> str:
        """Stable across reordering: a digest of the rule itself."""
        text = json.dumps(self.model_dump(exclude_none=True), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


class LimitSettings(EnvSettings):
    env_prefix: ClassVar[str] = "INFER_"

    limits: Annotated[list[LimitRule], NoDecode] = Field(default_factory=list)
    #: While Redis does not answer: ``local`` counts in this instance, ``open`` admits all.
    limits_on_state_down: Literal["local", "open"] = "local"

    @field_validator("limits", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text else []
        return [value] if isinstance(value, dict) else value


_cached = CachedSettings(LimitSettings)
get_limit_settings = _cached.get


def limits_configured() -> bool:
    """Cheap check (no parsing) used on the hot path before anything is imported."""
    return setting_set("INFER_LIMITS")
