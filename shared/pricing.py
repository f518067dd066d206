"""What a request costs: a backend's ``price`` applied to the usage it reported.

A backend entry may carry ``"price"``, in any one currency used throughout:

- pay as you go: ``{"input_per_1m": 2.5, "output_per_1m": 10, "cached_input_per_1m": 1.25}``
  per million tokens. Cached prompt tokens (``usage.prompt_tokens_details.cached_tokens``)
  are billed at ``cached_input_per_1m`` (the input price when absent); reasoning tokens are
  part of ``completion_tokens`` and billed as output, as OpenAI and Azure OpenAI bill them.
- a dedicated endpoint: ``{"hourly": 12.0, "tokens_per_second": 2500}``: its hourly price
  over the tokens (prompt and completion alike) it serves in an hour at that throughput.

Money is counted in micro-units (``MICRO`` per unit) wherever it is summed across instances
(``cost_quota`` counters are integers in Redis); reports show it as a float.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MICRO = 1_000_000


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_1m: float | None = Field(default=None, ge=0)
    output_per_1m: float | None = Field(default=None, ge=0)
    cached_input_per_1m: float | None = Field(default=None, ge=0)
    hourly: float | None = Field(default=None, ge=0)
    tokens_per_second: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Price:
        paygo = self.input_per_1m is not None or self.output_per_1m is not None
        dedicated = self.hourly is not None or self.tokens_per_second is not None
        if paygo == dedicated:
            raise ValueError(
                "a price is either input_per_1m and output_per_1m (per million tokens) or "
                "hourly and tokens_per_second (a dedicated endpoint)"
            )
        if paygo and (self.input_per_1m is None or self.output_per_1m is None):
            raise ValueError("input_per_1m and output_per_1m go together")
        if dedicated and (self.hourly is None or self.tokens_per_second is None):
            raise ValueError("hourly and tokens_per_second go together")
        return self

    def per_token(self) -> tuple[float, float, float]:
        """(input, output, cached input) per token."""
        if self.hourly is not None and self.tokens_per_second:
            each = self.hourly / (self.tokens_per_second * 3600.0)
            return each, each, each
        inp = (self.input_per_1m or 0.0) / 1e6
        cached = self.cached_input_per_1m
        return inp, (self.output_per_1m or 0.0) / 1e6, inp if cached is None else cached / 1e6

    def cost(self, usage: dict[str, Any] | None) -> float | None:
        """The cost of an answer's ``usage`` (None without one)."""
        if not usage:
            return None
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens") or 0
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        cached = min(cached, prompt) if isinstance(cached, int) and cached > 0 else 0
        inp, out, cached_in = self.per_token()
        return (prompt - cached) * inp + cached * cached_in + completion * out

    def worst(self, prompt_tokens: int, output_tokens: int) -> float:
        """The most a request of these sizes can cost (nothing cached)."""
        inp, out, _ = self.per_token()
        return prompt_tokens * inp + output_tokens * out


def micro(amount: float) -> int:
    """``amount`` in micro-units, rounded up (a reservation never falls short)."""
    return math.ceil(amount * MICRO - 1e-9)
