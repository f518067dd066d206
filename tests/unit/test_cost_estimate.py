"""``infer cost estimate``: seed 002's formula with its units, and the prices it states."""

from __future__ import annotations

import json

import pytest

from tools.cli.__main__ import main
from tools.cli.cost import PLATFORMS, estimate


def test_paygo_month_is_gb_seconds_requests_and_tokens() -> None:
    e = estimate(
        requests=1_000_000, memory_mb=1024, seconds_per_request=1.5,
        prompt_tokens=500, output_tokens=200, input_per_1m=0.5, output_per_1m=1.5,
    )  # fmt: skip
    assert e.gb_seconds == 1_500_000  # 1 GB x 1.5 s x 1M
    assert e.function_compute == pytest.approx(1_500_000 * PLATFORMS["aws"][0], abs=1e-3)
    assert e.function_requests == 0.2
    assert e.model == 1_000_000 * (500 * 0.5 + 200 * 1.5) / 1e6  # 550
    assert e.total == pytest.approx(e.function_compute + 0.2 + 550, abs=1e-3)
    assert e.prices["input_per_1m"] == 0.5


def test_a_dedicated_endpoint_is_instance_hours() -> None:
    e = estimate(requests=100_000, memory_mb=2048, seconds_per_request=2, platform="azure",
                 hourly=4.0, instances=2, hours=730)  # fmt: skip
    assert e.model == 4.0 * 2 * 730
    assert e.gb_seconds == 100_000 * 2 * 2
    assert e.prices["gb_second"] == PLATFORMS["azure"][0]
    with pytest.raises(ValueError):
        estimate(requests=1, memory_mb=1, seconds_per_request=1, hourly=1, input_per_1m=1)


def test_the_command_prints_json_and_list_prices_can_be_overridden(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["cost", "estimate", "--requests", "10", "--gb-second-price", "1",
                 "--memory-mb", "1024", "--seconds-per-request", "1"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["function_compute"] == 10.0 and out["prices"]["gb_second"] == 1.0
    assert main(["cost", "estimate", "--requests", "-1"]) == 2
