"""Retention as restic's forget (keep-last / keep-weekly / keep-monthly), decided on names with real dates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from idp_ops.backup.retention import retention, snapshot_key, snapshot_time, to_prune


def name(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def weekly_sundays(first: datetime, count: int) -> list[str]:
    return [name(first + timedelta(weeks=i)) for i in range(count)]


def test_a_year_of_sunday_backups_keeps_4_last_8_weekly_and_12_monthly():
    names = weekly_sundays(datetime(2024, 1, 7, 3, 0, tzinfo=UTC), 53)  # every Sunday of 2024, 03:00
    assert names[-1] == "20250105T030000Z"

    kept = retention(names, last=4, weekly=8, monthly=12)

    # The last 8 weeks (the last 4 are inside them) ...
    assert set(names[-8:]) <= set(kept)
    assert kept[names[-1]] == ["last 1", "weekly 2025-W01", "monthly 2025-01"]
    assert kept[names[-5]] == ["weekly 2024-W49"]
    # ... and the last Sunday of each of the 11 months before January 2025.
    month_ends = {
        "20241229T030000Z",
        "20241124T030000Z",
        "20241027T030000Z",
        "20240929T030000Z",
        "20240825T030000Z",
        "20240728T030000Z",
        "20240630T030000Z",
        "20240526T030000Z",
        "20240428T030000Z",
        "20240331T030000Z",
        "20240225T030000Z",
    }
    assert {n for n, why in kept.items() if any(w.startswith("monthly") for w in why)} == month_ends | {names[-1]}
    # 8 weekly + 12 monthly, of which Jan 5, Dec 29 and Nov 24 are both.
    assert len(kept) == 8 + 12 - 3
    # So a model deleted in late February 2024 is still in a snapshot in January 2025.
    assert "20240225T030000Z" in kept and "20240218T030000Z" not in kept
    assert to_prune(names, last=4, weekly=8, monthly=12) == sorted(set(names) - set(kept))


def test_weeks_and_months_without_a_snapshot_do_not_count_as_in_restic():
    # A box that was off from March to June: the 3 monthly slots go to the months that have snapshots.
    names = [name(datetime(2024, m, d, 3, tzinfo=UTC)) for m, d in ((1, 7), (1, 28), (2, 11), (7, 7), (7, 14))]
    kept = retention(names, last=1, weekly=0, monthly=3)
    assert sorted(kept) == ["20240128T030000Z", "20240211T030000Z", "20240714T030000Z"]
    assert kept["20240714T030000Z"] == ["last 1", "monthly 2024-07"]


def test_the_newest_of_each_bucket_is_kept_and_several_runs_a_week_collapse():
    base = datetime(2025, 3, 3, 3, tzinfo=UTC)  # a Monday
    names = [name(base + timedelta(days=d)) for d in range(14)]  # two ISO weeks, daily
    kept = retention(names, last=1, weekly=2, monthly=0)
    assert sorted(kept) == [name(base + timedelta(days=6)), name(base + timedelta(days=13))]  # the two Sundays


def test_iso_weeks_cross_the_new_year_and_same_second_names_sort_after_the_plain_one():
    assert snapshot_key("20250105T030000Z-2") > snapshot_key("20250105T030000Z")
    assert snapshot_time("20250105T030000Z-2") == datetime(2025, 1, 5, 3, tzinfo=UTC)
    # 2024-12-30 (Monday) is ISO week 2025-W01, like 2025-01-05 (Sunday): one bucket.
    names = ["20241230T030000Z", "20250105T030000Z", "20250105T030000Z-2"]
    kept = retention(names, last=1, weekly=5, monthly=0)
    assert kept == {"20250105T030000Z-2": ["last 1", "weekly 2025-W01"]}


def test_last_never_drops_the_newest_and_foreign_names_are_kept():
    names = ["20250101T000000Z", "20250201T000000Z", "not-a-snapshot"]
    kept = retention(names, last=0, weekly=0, monthly=0)
    assert set(kept) == {"20250201T000000Z", "not-a-snapshot"}
    assert to_prune(names, last=0) == ["20250101T000000Z"]
    with pytest.raises(ValueError, match="not a snapshot name"):
        snapshot_key("latest")
