"""Thermal samples in DuckDB: idempotent inserts and hourly rollups."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import duckdb

from idp_ops.thermal.telemetry import Sample

# GPU health columns (migration 2): Sample fields stored as they are; xid_errors as "79,48".
HEALTH_COLUMNS = (
    "energy_source",
    "memory_temperature_c",
    "ecc_volatile_corrected",
    "ecc_volatile_uncorrected",
    "ecc_aggregate_corrected",
    "ecc_aggregate_uncorrected",
    "retired_pages_sbe",
    "retired_pages_dbe",
    "retired_pages_pending",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "remap_pending",
    "remap_failure",
    "pcie_replay_count",
    "power_limit_w",
    "power_default_limit_w",
    "xid_errors",
)
_BASE_COLUMNS = (
    "ts, device, source, temperature_c, power_w, energy_mj, utilization_pct, memory_used_mb, "
    "memory_total_mb, sm_clock_mhz, mem_clock_mhz, throttle_reasons"
)
_COLUMNS = _BASE_COLUMNS + ", " + ", ".join(HEALTH_COLUMNS)
_COUNT = len(_COLUMNS.split(", "))


def _health_values(s: Sample) -> tuple:
    xids = None if s.xid_errors is None else ",".join(str(x) for x in s.xid_errors)
    return tuple(xids if name == "xid_errors" else getattr(s, name) for name in HEALTH_COLUMNS)


def insert_samples(con: duckdb.DuckDBPyConnection, samples: Iterable[Sample]) -> int:
    """Insert samples not already stored (key: ts, device); returns how many were new."""
    rows = [
        (
            s.ts,
            s.device,
            s.source,
            s.temperature_c,
            s.power_w,
            s.energy_mj,
            s.utilization_pct,
            s.memory_used_mb,
            s.memory_total_mb,
            s.sm_clock_mhz,
            s.mem_clock_mhz,
            ",".join(s.throttle_reasons),
            *_health_values(s),
        )
        for s in samples
    ]
    if not rows:
        return 0
    before = con.execute("SELECT count(*) FROM thermal_samples").fetchone()[0]
    con.execute("CREATE TEMP TABLE IF NOT EXISTS incoming AS SELECT * FROM thermal_samples LIMIT 0")
    con.execute("DELETE FROM incoming")
    con.executemany(f"INSERT INTO incoming ({_COLUMNS}) VALUES ({', '.join('?' * _COUNT)})", rows)
    # A re-ingested day, or the same sample twice in one spool, adds nothing.
    con.execute(
        f"INSERT INTO thermal_samples ({_COLUMNS}) SELECT DISTINCT ON (ts, device) {_COLUMNS} FROM incoming "
        "ON CONFLICT (ts, device) DO NOTHING"
    )
    return con.execute("SELECT count(*) FROM thermal_samples").fetchone()[0] - before


def rollup_day(
    con: duckdb.DuckDBPyConnection, day_start: datetime, *, warn_c: float, contain_c: float, max_gap_s: float
) -> list[dict]:
    """Recompute the hourly rollups of one UTC day from its samples; returns them.

    Time above a line is the sum of the intervals that start at a sample at or
    above it; an interval longer than ``max_gap_s`` (the sampler was down)
    counts as ``max_gap_s``. Energy comes from the cumulative counter: a counter
    that went backwards was reset (driver reload), and its new value is the
    energy since the reset.

    Between counter reads energy_mj is integrated power (energy_source "integrated"),
    so a counter read may land slightly BELOW the estimate before it: that is a
    correction, counted as a negative delta (the deltas then sum to the counter's own
    difference). Only a value below the last COUNTER-read value is a reset. Rows
    without energy_source (before migration 2) were all counter reads.
    """
    start = day_start.astimezone(UTC)
    end = start + timedelta(days=1)
    con.execute("DELETE FROM thermal_hourly WHERE hour >= ? AND hour < ?", [start, end])
    base = """
        WITH ordered AS (
            SELECT *,
                   lead(ts) OVER w AS next_ts,
                   lag(energy_mj) OVER w AS prev_energy,
                   last_value(CASE WHEN coalesce(energy_source, 'counter') = 'counter' THEN energy_mj END
                              IGNORE NULLS) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                       AS prev_counter
            FROM thermal_samples
            WHERE ts >= ? AND ts < ?
            WINDOW w AS (PARTITION BY device ORDER BY ts)
        ), spans AS (
            SELECT *,
                   least(coalesce(epoch(next_ts) - epoch(ts), 0), ?) AS dt,
                   CASE WHEN energy_mj IS NULL OR prev_energy IS NULL THEN 0
                        WHEN energy_mj < coalesce(prev_counter, prev_energy) THEN energy_mj
                        ELSE energy_mj - prev_energy END AS de
            FROM ordered
        )
    """
    con.execute(
        base
        + """
        INSERT INTO thermal_hourly (hour, device, samples, min_c, avg_c, max_c,
                                    seconds_above_warn, seconds_above_contain, throttle_seconds, energy_kwh)
        SELECT date_trunc('hour', ts), device, count(*), min(temperature_c), avg(temperature_c), max(temperature_c),
               sum(CASE WHEN temperature_c >= ? THEN dt ELSE 0 END),
               sum(CASE WHEN temperature_c >= ? THEN dt ELSE 0 END),
               '{}',
               sum(de) / 3.6e9
        FROM spans GROUP BY 1, 2
        """,
        [start, end, max_gap_s, warn_c, contain_c],
    )
    throttle = con.execute(
        base
        + """
        SELECT date_trunc('hour', ts) AS hour, device, reason, sum(dt) AS seconds
        FROM spans, unnest(string_split(throttle_reasons, ',')) AS t(reason)
        WHERE reason <> ''
        GROUP BY 1, 2, 3
        """,
        [start, end, max_gap_s],
    ).fetchall()
    per_hour: dict[tuple, dict[str, float]] = {}
    for hour, device, reason, seconds in throttle:
        per_hour.setdefault((hour, device), {})[reason] = round(seconds, 1)
    for (hour, device), reasons in per_hour.items():
        con.execute(
            "UPDATE thermal_hourly SET throttle_seconds = ? WHERE hour = ? AND device = ?",
            [json.dumps(reasons, sort_keys=True), hour, device],
        )
    rows = con.execute(
        "SELECT * FROM thermal_hourly WHERE hour >= ? AND hour < ? ORDER BY hour, device", [start, end]
    ).fetchall()
    names = [d[0] for d in con.description]
    return [dict(zip(names, row)) for row in rows]
