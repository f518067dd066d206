"""``infer cost estimate``: what a month of serving costs, from seed 002's formula.

    cost = function compute (GB-seconds x price) + function requests (requests x price)
         + model: tokens x price (pay as you go), or instance-hours x hourly (dedicated)

Units: GB-seconds are memory (GB) x billed duration (s) per request x requests; tokens are
prompt and completion tokens per request x requests; instance-hours are instances x hours.
The list prices assumed (USD, on-demand, no free tier, no reservation) are in ``PLATFORMS``
and each can be overridden with a flag; the output states every price it used.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any

#: Assumed list prices per platform: (per GB-second, per million requests).
PLATFORMS: dict[str, tuple[float, float]] = {
    # AWS Lambda, x86, us-east-1: $0.0000166667 per GB-s, $0.20 per million requests
    "aws": (0.0000166667, 0.20),
    # Azure Functions Flex Consumption, on demand: $0.000026 per GB-s, $0.40 per million
    "azure": (0.000026, 0.40),
}


@dataclass(frozen=True)
class Estimate:
    requests: float
    gb_seconds: float
    function_compute: float
    function_requests: float
    model: float
    total: float
    per_request: float
    prices: dict[str, float]


def estimate(
    *,
    requests: float,
    memory_mb: float,
    seconds_per_request: float,
    platform: str = "aws",
    gb_second_price: float | None = None,
    request_price_per_1m: float | None = None,
    prompt_tokens: float = 0,
    output_tokens: float = 0,
    input_per_1m: float | None = None,
    output_per_1m: float | None = None,
    hourly: float | None = None,
    instances: float = 1,
    hours: float = 730,
) -> Estimate:
    """A month (or any period) of ``requests``; model priced per token or per hour."""
    if requests < 0 or memory_mb <= 0 or seconds_per_request < 0:
        raise ValueError("requests >= 0, memory_mb > 0 and seconds_per_request >= 0")
    if platform not in PLATFORMS:
        raise ValueError(f"platform: one of {', '.join(PLATFORMS)}")
    per_gbs, per_million = PLATFORMS[platform]
    per_gbs = per_gbs if gb_second_price is None else gb_second_price
    per_million = per_million if request_price_per_1m is None else request_price_per_1m
    gb_seconds = requests * (memory_mb / 1024.0) * seconds_per_request
    compute = gb_seconds * per_gbs
    invocations = requests / 1e6 * per_million
    prices: dict[str, float] = {"gb_second": per_gbs, "requests_per_1m": per_million}
    if hourly is not None:
        if input_per_1m is not None or output_per_1m is not None:
            raise ValueError("price the model per token or per hour, not both")
        model = hourly * instances * hours
        prices.update(hourly=hourly, instances=instances, hours=hours)
    else:
        inp = input_per_1m or 0.0
        out = output_per_1m or 0.0
        model = requests * (prompt_tokens * inp + output_tokens * out) / 1e6
        prices.update(input_per_1m=inp, output_per_1m=out)
    total = compute + invocations + model
    return Estimate(
        requests=requests,
        gb_seconds=round(gb_seconds, 3),
        function_compute=round(compute, 4),
        function_requests=round(invocations, 4),
        model=round(model, 4),
        total=round(total, 4),
        per_request=round(total / requests, 8) if requests else 0.0,
        prices=prices,
    )


def add_parser(sub: Any) -> None:
    cost = sub.add_parser("cost", help="what serving costs (seed 002's formula)")
    csub = cost.add_subparsers(dest="command", required=True)
    e = csub.add_parser("estimate", help="a month of requests: functions plus the model")
    e.add_argument("--requests", type=float, required=True, help="requests in the period")
    e.add_argument("--platform", choices=sorted(PLATFORMS), default="aws")
    e.add_argument("--memory-mb", type=float, default=2048)
    e.add_argument(
        "--seconds-per-request",
        type=float,
        default=2.0,
        help="billed function duration per request (a stream: its whole length)",
    )
    e.add_argument("--gb-second-price", type=float, help="override the platform's list price")
    e.add_argument("--request-price-per-1m", type=float, help="override the list price")
    e.add_argument("--prompt-tokens", type=float, default=0, help="per request")
    e.add_argument("--output-tokens", type=float, default=0, help="per request")
    e.add_argument("--input-per-1m", type=float, help="pay as you go: per million prompt tokens")
    e.add_argument("--output-per-1m", type=float, help="per million completion tokens")
    e.add_argument("--hourly", type=float, help="dedicated endpoint: price per instance-hour")
    e.add_argument("--instances", type=float, default=1)
    e.add_argument("--hours", type=float, default=730, help="hours in the period (730: a month)")
    e.set_defaults(fn=cmd_estimate)


def cmd_estimate(args: argparse.Namespace) -> int:
    try:
        result = estimate(
            requests=args.requests, memory_mb=args.memory_mb,
            seconds_per_request=args.seconds_per_request, platform=args.platform,
            gb_second_price=args.gb_second_price, request_price_per_1m=args.request_price_per_1m,
            prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens,
            input_per_1m=args.input_per_1m, output_per_1m=args.output_per_1m,
            hourly=args.hourly, instances=args.instances, hours=args.hours,
        )  # fmt: skip
    except ValueError as exc:
        print(f"infer cost estimate: {exc}")
        return 2
    print(json.dumps(asdict(result), indent=2))
    return 0
