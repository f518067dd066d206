"""devhost timer triggers: NCRONTAB / TimeSpan schedules, past-due detection, TimerRequest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import azure.functions as func
import pytest

from tools.devhost.timers import (
    ConstantSchedule,
    CronSchedule,
    ScheduleError,
    ScheduleStatus,
    check_past_due,
    default_use_monitor,
    parse_schedule,
    timer_request,
)


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def upcoming(expr: str, base: datetime, n: int = 4) -> list[datetime]:
    schedule = parse_schedule(expr)
    out = []
    t = base
    for _ in range(n):
        t = schedule.next_after(t)
        out.append(t)
    return out


def test_every_five_minutes_on_the_minute() -> None:
    assert upcoming("0 */5 * * * *", at(2026, 12, 1, 8, 57, 30), 3) == [
        at(2026, 12, 1, 9, 0, 0),
        at(2026, 12, 1, 9, 5, 0),
        at(2026, 12, 1, 9, 10, 0),
    ]


def test_seconds_field_and_strictly_after_base() -> None:
    assert upcoming("*/2 * * * * *", at(2026, 1, 1, 0, 0, 0), 3) == [
        at(2026, 1, 1, 0, 0, 2),
        at(2026, 1, 1, 0, 0, 4),
        at(2026, 1, 1, 0, 0, 6),
    ]
    # base on an occurrence: that occurrence is not returned again
    assert parse_schedule("0 0 * * * *").next_after(at(2026, 1, 1, 3)) == at(2026, 1, 1, 4)


def test_lists_ranges_steps_and_names() -> None:
    # 9:30 on weekdays (Mon-Fri); 2026-12-05 is a Saturday
    assert upcoming("0 30 9 * * Mon-Fri", at(2026, 12, 4, 10), 2) == [
        at(2026, 12, 7, 9, 30),
        at(2026, 12, 8, 9, 30),
    ]
    assert upcoming("5,10 0 12 1 Jan,Jul *", at(2026, 1, 1, 12, 0, 7), 3) == [
        at(2026, 1, 1, 12, 0, 10),
        at(2026, 7, 1, 12, 0, 5),
        at(2026, 7, 1, 12, 0, 10),
    ]
    # NCrontab: "n/step" runs from n to the end of the field
    assert parse_schedule("10/20 * * * * *").next_after(at(2026, 1, 1, 0, 0, 31)) == at(
        2026, 1, 1, 0, 0, 50
    )


def test_day_of_month_and_day_of_week_must_both_match() -> None:
    # NCrontab (unlike Vixie cron) needs both: the 13th that is a Friday
    first = parse_schedule("0 0 0 13 * 5").next_after(at(2026, 1, 1))
    assert first == at(2026, 2, 13)
    assert first.weekday() == 4


def test_short_months_are_skipped() -> None:
    assert upcoming("0 0 0 31 * *", at(2026, 1, 31, 1), 2) == [at(2026, 3, 31), at(2026, 5, 31)]


def test_timespan_schedule_is_a_constant_interval() -> None:
    s = parse_schedule("00:00:05")
    assert isinstance(s, ConstantSchedule)
    assert s.next_after(at(2026, 1, 1)) == at(2026, 1, 1, 0, 0, 5)
    assert parse_schedule("1.00:00:00").next_after(at(2026, 1, 1)) == at(2026, 1, 2)


@pytest.mark.parametrize(
    "expr",
    [
        "*/5 * * * *",  # five fields: the host wants six
        "0 60 * * * *",
        "0 0 24 * * *",
        "0 0 0 0 * *",
        "0 0 0 * 13 *",
        "0 0 0 * * 7",
        "0 */0 * * * *",
        "0 5-1 * * * *",
        "0 0 0 * Foo *",
        "0 0 0 30 2 *",  # never fires
    ],
)
def test_bad_schedules_are_refused(expr: str) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(expr).next_after(at(2026, 1, 1))


def test_monitor_defaults_off_for_sub_minute_schedules() -> None:
    now = at(2026, 1, 1, 0, 0, 0)
    assert default_use_monitor(CronSchedule.parse("0 */5 * * * *"), now)
    assert not default_use_monitor(CronSchedule.parse("*/10 * * * * *"), now)
    assert not default_use_monitor(parse_schedule("00:00:30"), now)
    assert default_use_monitor(parse_schedule("00:05:00"), now)


def test_no_status_yet_records_the_next_occurrence_and_is_not_past_due() -> None:
    s = parse_schedule("0 */5 * * * *")
    status, past_due = check_past_due(s, None, at(2026, 1, 1, 0, 2))
    assert not past_due
    assert status.next == at(2026, 1, 1, 0, 5)


def test_missed_occurrence_while_down_is_past_due() -> None:
    s = parse_schedule("0 */5 * * * *")
    last = at(2026, 1, 1, 0, 5)
    stored = ScheduleStatus(last, s.next_after(last), last)  # Next 00:10
    status, past_due = check_past_due(s, stored, at(2026, 1, 1, 0, 12))
    assert past_due
    assert status is stored
    _, on_time = check_past_due(s, stored, at(2026, 1, 1, 0, 9))
    assert not on_time


def test_changed_schedule_is_recomputed_and_not_past_due() -> None:
    old_last = at(2026, 1, 1, 0, 0)
    stored = ScheduleStatus(old_last, at(2026, 1, 1, 1, 0), old_last)  # an hourly schedule
    s = parse_schedule("0 */5 * * * *")  # now every five minutes
    status, past_due = check_past_due(s, stored, at(2026, 1, 1, 0, 42))
    assert not past_due
    assert status.next == at(2026, 1, 1, 0, 45)


def test_timer_request_comes_from_the_library_converter() -> None:
    status = ScheduleStatus(at(2026, 1, 1, 0, 5), at(2026, 1, 1, 0, 10), at(2026, 1, 1, 0, 5))
    req = timer_request(status, past_due=True)
    assert isinstance(req, func.TimerRequest)
    assert req.past_due is True
    assert req.schedule == {"AdjustForDST": True}
    assert datetime.fromisoformat(req.schedule_status["Next"]) == at(2026, 1, 1, 0, 10)
    plain = timer_request(None, past_due=False)
    assert plain.past_due is False
    assert plain.schedule_status == {}


def test_status_round_trips_through_json() -> None:
    status = ScheduleStatus(at(2026, 1, 1), at(2026, 1, 1) + timedelta(minutes=5), at(2026, 1, 1))
    again = ScheduleStatus.from_json(status.to_json())
    assert again == status
    assert ScheduleStatus.from_json({"Next": "not a time"}) is None
