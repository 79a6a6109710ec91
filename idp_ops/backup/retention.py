"""Which snapshots to keep: ``restic forget``'s keep-last / keep-weekly / keep-monthly.

A snapshot is kept when any rule keeps it:

* keep-last N: the N newest;
* keep-weekly W: the newest snapshot of each of the W most recent ISO weeks that
  have a snapshot (weeks without one do not count, as in restic);
* keep-monthly M: the same per calendar month.

So with the defaults (4 / 8 / 12) a model deleted by mistake is still in a
snapshot about a year later, not four weeks later. Buckets are taken in UTC, the
time a snapshot's name carries. Pure: names in, names out, no file system.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

# A verified snapshot's name: its run's UTC start time, with -N when two share a second.
SNAPSHOT_RE = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")


def snapshot_key(name: str) -> tuple[str, int]:
    """Sort key: names sort by age, -2 after the plain name of the same second."""
    match = SNAPSHOT_RE.match(name)
    if not match:
        raise ValueError(f"not a snapshot name: {name!r}")
    return match.group(1), int(match.group(2) or 1)


def snapshot_time(name: str) -> datetime:
    return datetime.strptime(snapshot_key(name)[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def _week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def _month(moment: datetime) -> str:
    return f"{moment.year}-{moment.month:02d}"


def retention(names: Iterable[str], *, last: int, weekly: int = 0, monthly: int = 0) -> dict[str, list[str]]:
    """The snapshots to keep, each with the rules that keep it (e.g. ``["last 1", "weekly 2025-W02"]``).

    Names that are not snapshot names are kept (they are not ours to judge). The
    newest snapshot is always kept, whatever ``last`` says.
    """
    names = list(names)
    kept: dict[str, list[str]] = {name: ["not a snapshot name"] for name in names if not SNAPSHOT_RE.match(name)}
    ordered = sorted((n for n in names if SNAPSHOT_RE.match(n)), key=snapshot_key, reverse=True)
    for index, name in enumerate(ordered[: max(1, last)]):
        kept.setdefault(name, []).append(f"last {index + 1}")
    for rule, count, bucket_of in (("weekly", weekly, _week), ("monthly", monthly, _month)):
        buckets: list[str] = []
        for name in ordered:  # newest first: the first name seen in a bucket is its newest
            bucket = bucket_of(snapshot_time(name))
            if buckets and buckets[-1] == bucket:
                continue
            if len(buckets) >= count:
                break
            buckets.append(bucket)
            kept.setdefault(name, []).append(f"{rule} {bucket}")
    return kept


def to_prune(names: Iterable[str], *, last: int, weekly: int = 0, monthly: int = 0) -> list[str]:
    """The snapshot names no rule keeps, oldest first."""
    names = list(names)
    kept = retention(names, last=last, weekly=weekly, monthly=monthly)
    return sorted((n for n in names if n not in kept), key=snapshot_key)
