"""gpusim fault decisions: header > scheduled queue > global rate."""

from __future__ import annotations

import pytest

from tools.gpusim import faults
from tools.gpusim.faults import Fault, FaultInjector, FaultSpecError


def injector(rate: float = 0.0, types: tuple[str, ...] = ("429",)) -> FaultInjector:
    return FaultInjector(rate, types, retry_after=1.5, seed=0)


def test_nothing_fails_by_default() -> None:
    assert injector().decide({}) is None


def test_header_forces_a_fault_without_consuming_scheduled_ones() -> None:
    f = injector()
    f.schedule("503", count=1)
    assert f.decide({"x-gpusim-fail": "reset"}) == Fault("reset", 1.5)
    assert f.decide({"x-gpusim-fail": "429", "x-gpusim-retry-after": "0.2"}) == Fault("429", 0.2)
    assert f.decide({}) == Fault("503", 1.5)
    assert f.decide({}) is None


def test_unknown_header_value_is_an_error() -> None:
    with pytest.raises(FaultSpecError, match="unknown fault type"):
        injector().decide({"x-gpusim-fail": "418"})


def test_scheduled_faults_run_in_order_and_count_down() -> None:
    f = injector()
    f.schedule("429", count=2, retry_after=3)
    f.schedule("midstream")
    kinds = [f.decide({}) for _ in range(4)]
    assert kinds == [Fault("429", 3), Fault("429", 3), Fault("midstream", 1.5), None]


def test_count_minus_one_fails_until_cleared() -> None:
    f = injector()
    f.schedule("500", count=-1)
    assert all(f.decide({}) == Fault("500", 1.5) for _ in range(20))
    f.clear()
    assert f.decide({}) is None


def test_for_s_window_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(faults.time, "monotonic", lambda: now[0])
    f = injector()
    f.schedule("503", for_s=2.0)
    assert f.decide({}) == Fault("503", 1.5)
    now[0] = 101.9
    assert f.decide({}) == Fault("503", 1.5)
    now[0] = 102.0
    assert f.decide({}) is None
    assert f.describe()["scheduled"] == []


def test_rate_is_seeded_and_draws_from_types() -> None:
    draws = [FaultInjector(0.5, ("429", "reset"), 1.0, seed=7) for _ in range(2)]
    seqs = [[d.decide({}) for _ in range(200)] for d in draws]
    assert seqs[0] == seqs[1]
    hits = [x for x in seqs[0] if x is not None]
    assert 60 < len(hits) < 140
    assert {x.type for x in hits} == {"429", "reset"}


def test_admin_json_schedules_and_sets_rate() -> None:
    f = injector()
    f.schedule_from_json([{"type": "429", "count": 1}, {"rate": 1.0, "types": ["500"]}])
    assert f.decide({}) == Fault("429", 1.5)
    assert f.decide({}) == Fault("500", 1.5)
    assert f.describe()["rate"] == 1.0
    f.clear()
    assert f.describe() == {"rate": 0.0, "types": ["500"], "scheduled": []}


@pytest.mark.parametrize(
    "body",
    [
        {"type": "nope"},
        {"type": "429", "count": 0},
        {"type": "429", "count": "3"},
        {"type": "429", "for_s": -1},
        {"rate": 2},
        {"rate": 0.5, "types": "429"},
        ["not an object"],
    ],
)
def test_admin_json_rejects_bad_specs(body: object) -> None:
    with pytest.raises(FaultSpecError):
        injector().schedule_from_json(body)


def test_fault_status_only_for_http_kinds() -> None:
    assert Fault("429", 1).status == 429
    assert Fault("reset", 1).status is None
