"""Dead-man judgments on ages: overdue jobs and a silent daemon, alerted once per spell."""

from datetime import UTC, datetime, timedelta

import pytest

from idp_ops.alerts.deadman import (
    OVERDUE,
    RECOVERED,
    SCHEDULER_DOWN,
    SCHEDULER_UP,
    Spells,
    judge_daemon,
    judge_job,
)

T0 = datetime(2026, 3, 1, 2, 30, tzinfo=UTC)
DAY, HOUR = 24 * 3600.0, 3600.0


def nightly(now, last_success, since=T0 - timedelta(days=30)):
    return judge_job(
        "nightly_validation_job",
        window_s=DAY,
        grace_s=2 * HOUR,
        last_success=last_success,
        watching_since=since,
        now=now,
    )


@pytest.mark.parametrize(
    ("age", "overdue"),
    [
        (timedelta(hours=1), False),
        (timedelta(hours=26), False),  # the window plus the grace, to the second: still on time
        (timedelta(hours=26, seconds=1), True),
        (timedelta(days=3), True),
    ],
)
def test_a_job_is_overdue_only_past_its_window_plus_grace(age, overdue):
    verdict = nightly(T0 + age, T0)
    assert (verdict.spell is not None) == overdue
    assert verdict.fields["window_h"] == 24 and verdict.fields["grace_h"] == 2
    assert verdict.fields["last_success"] == T0.isoformat()
    if overdue:
        assert verdict.spell == f"overdue:nightly_validation_job:{T0.isoformat()}"
        assert "nightly_validation_job last succeeded" in verdict.reason


def test_a_job_that_never_succeeded_is_judged_from_when_watching_began():
    since = T0
    assert nightly(T0 + timedelta(hours=25), None, since).spell is None, "a fresh install is not overdue at once"
    late = nightly(T0 + timedelta(hours=27), None, since)
    assert late.spell == "overdue:nightly_validation_job:never"
    assert late.fields["last_success"] is None and "has not succeeded" in late.reason


def test_an_overdue_spell_alerts_once_and_its_end_once():
    spells = Spells()
    last = T0
    seen = []
    for hours in (1, 25, 27, 28, 40, 60):  # overdue from 26 h on, every check of the spell after the first is quiet
        seen += spells.step([nightly(T0 + timedelta(hours=hours), last)], T0 + timedelta(hours=hours))
    assert [a.fields["action"] for a in seen] == [OVERDUE]
    assert seen[0].key == f"overdue:nightly_validation_job:{T0.isoformat()}"
    assert seen[0].fields["age_h"] == 27

    success = T0 + timedelta(hours=61)
    ended = spells.step([nightly(success + timedelta(minutes=5), success)], success + timedelta(minutes=5))
    assert [a.fields["action"] for a in ended] == [RECOVERED]
    assert ended[0].key == seen[0].key + ":recovered" and ended[0].fields["last_success"] == success.isoformat()
    assert spells.open == {}
    assert spells.step([nightly(success + timedelta(hours=2), success)], success + timedelta(hours=2)) == []


def test_a_success_nobody_saw_closes_the_old_spell_and_opens_the_new_one():
    spells = Spells()
    spells.step([nightly(T0 + timedelta(hours=30), T0)], T0 + timedelta(hours=30))
    later_success = T0 + timedelta(hours=31)
    alerts = spells.step([nightly(later_success + timedelta(days=2), later_success)], later_success + timedelta(days=2))
    assert [a.fields["action"] for a in alerts] == [RECOVERED, OVERDUE]
    assert alerts[1].key == f"overdue:nightly_validation_job:{later_success.isoformat()}"


def test_the_spells_survive_a_cursor_round_trip():
    spells = Spells()
    spells.since(T0)
    spells.step([nightly(T0 + timedelta(hours=30), T0)], T0 + timedelta(hours=30))
    again = Spells.from_json(spells.to_json())
    assert again.open == spells.open and again.since(T0 + timedelta(days=9)) == T0
    assert again.step([nightly(T0 + timedelta(hours=31), T0)], T0 + timedelta(hours=31)) == []
    assert Spells.from_json("not json").open == {}


def beats(now, **ages):
    return {kind: (now - timedelta(seconds=age) if age is not None else None) for kind, age in ages.items()}


def test_the_daemon_is_down_when_any_watched_heartbeat_is_stale():
    now = T0
    fresh = judge_daemon(beats(now, SCHEDULER=5, SENSOR=29), stale_after_s=120, watching_since=now, now=now)
    assert fresh.spell is None
    one_stale = judge_daemon(beats(now, SCHEDULER=5, SENSOR=121), stale_after_s=120, watching_since=now, now=now)
    assert one_stale.spell == f"scheduler_down:SENSOR:{(now - timedelta(seconds=121)).isoformat()}"
    assert one_stale.fields["daemon_type"] == "SENSOR" and one_stale.fields["age_s"] == 121
    assert "dagster-daemon is not running" in one_stale.reason


def test_no_heartbeat_ever_counts_from_when_watching_began():
    since = T0
    assert (
        judge_daemon(
            beats(T0, SENSOR=None), stale_after_s=120, watching_since=since, now=T0 + timedelta(seconds=60)
        ).spell
        is None
    )
    down = judge_daemon(
        beats(T0, SENSOR=None), stale_after_s=120, watching_since=since, now=T0 + timedelta(seconds=121)
    )
    assert down.spell == "scheduler_down:SENSOR:never" and "no SENSOR heartbeat ever" in down.reason
    with pytest.raises(ValueError):
        judge_daemon({}, stale_after_s=120, watching_since=since, now=T0)


def test_a_dead_daemon_alerts_down_once_and_up_once_it_beats_again():
    spells = Spells()
    killed_at = T0
    actions = []
    for seconds in (10, 60, 130, 200, 600):  # heartbeats stopped at the kill
        now = killed_at + timedelta(seconds=seconds)
        verdict = judge_daemon(
            {"SCHEDULER": killed_at, "SENSOR": killed_at - timedelta(seconds=3)},
            stale_after_s=120,
            watching_since=T0 - timedelta(hours=1),
            now=now,
            last_tick=("thermal_sensor", killed_at - timedelta(seconds=20)),
        )
        actions += [(seconds, a.fields["action"], a.key) for a in spells.step([verdict], now)]
    key = f"scheduler_down:SENSOR:{(killed_at - timedelta(seconds=3)).isoformat()}"
    assert actions == [(130, SCHEDULER_DOWN, key)]

    back = killed_at + timedelta(seconds=700)
    verdict = judge_daemon(
        {"SCHEDULER": back, "SENSOR": back}, stale_after_s=120, watching_since=T0, now=back + timedelta(seconds=1)
    )
    up = spells.step([verdict], back + timedelta(seconds=1))
    assert [(a.fields["action"], a.key) for a in up] == [(SCHEDULER_UP, key + ":scheduler_up")]
