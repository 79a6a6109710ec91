"""History at scale: a year of the box's measurements in DuckDB against pandas over CSV files, side by side.

Data (generated, deterministic): a year of 30-second thermal samples for two GPUs
(2 x 1,051,200 = 2,102,400 rows: temperature with a daily load cycle, power, a
cumulative energy counter, throttle reasons while loaded) and a year of nightly
benchmark runs for two endpoints (730 rows).

Timed, one run:
  ingest   DuckDB: bulk insert into thermal_samples / bench_runs (history.py schema), then the
                   app's own hourly rollup (thermal_store.rollup_day) for each of the 365 days, as
                   thermal_log does every 15 minutes for the day at hand;
           CSV:    DataFrame.to_csv of the same rows (the plan's scripts append CSV lines).
  queries  best of 3, DuckDB side = the function the assets call (short-lived read-only
           connection included), pandas side = the same figures from CSV files:
    hourly rollup    per hour and device: samples, min/avg/max C, time above the warning line,
                     kWh from the energy counter, over all 2.1 M raw samples (both sides the same
                     definition; DuckDB straight from thermal_samples)
    thermal days     trends.thermal_daily (time above the lines, throttle time, kWh per day)
    ROI energy       roi.measured_energy (kWh over the last 30 days)
    bench trend      trends.load_bench_runs + analyse_runs (rolling medians, regressions)
  The CSV path is shown two ways: from the raw samples CSV (a CSV store has nothing else:
  every report re-reads the year), and from an hourly CSV (like for like with the rollup
  table DuckDB keeps; its upkeep is the rollup_day ingest cost above).
Target: queries >= 10x faster than the CSV path and under 0.1 s.

Usage: .venv/bin/python benchmarks/history_at_scale.py [--work DIR] [--keep]
Writes about 0.5 GB under --work (default: a fresh directory in /tmp), deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idp_ops.history import database as history  # noqa: E402
from idp_ops.reports.roi import measured_energy  # noqa: E402
from idp_ops.reports.trends import analyse_runs, load_bench_runs, thermal_daily  # noqa: E402
from idp_ops.thermal.store import rollup_day  # noqa: E402

START = datetime(2025, 1, 1, tzinfo=UTC)
DAYS = 365
INTERVAL_S = 30
DEVICES = ("gpu0", "gpu1")
WARN_C, CONTAIN_C = 85.0, 90.0
MAX_GAP_S = 3 * INTERVAL_S
REPEATS = 3


def thermal_samples() -> pd.DataFrame:
    """A year of samples per device: idle nights, loaded afternoons, now and then a hot hour."""
    rng = np.random.default_rng(6)
    steps = DAYS * 86400 // INTERVAL_S
    seconds = np.arange(steps, dtype=np.int64) * INTERVAL_S
    hour_of_day = (seconds // 3600) % 24
    frames = []
    for index, device in enumerate(DEVICES):
        loaded = (hour_of_day >= 9) & (hour_of_day < 17)
        temperature = np.where(loaded, 70.0, 38.0) + rng.normal(0, 2.0, steps) + index
        hot = rng.random(steps // 120) < 0.01  # about one hour in a hundred runs hot
        temperature += np.repeat(hot, 120)[:steps] * 17.0
        power = np.where(loaded, 420.0, 60.0) + rng.normal(0, 10.0, steps)
        energy_mj = np.cumsum(power * INTERVAL_S * 1000.0)
        frames.append(
            pd.DataFrame(
                {
                    "ts": pd.to_datetime(START) + pd.to_timedelta(seconds, unit="s"),
                    "device": device,
                    "source": "nvml",
                    "temperature_c": temperature.round(1),
                    "power_w": power.round(1),
                    "energy_mj": energy_mj.round(0),
                    "utilization_pct": np.where(loaded, 95.0, 0.0),
                    "memory_used_mb": np.where(loaded, 14000.0, 500.0),
                    "memory_total_mb": 16303.0,
                    "sm_clock_mhz": np.where(loaded, 2600.0, 210.0),
                    "mem_clock_mhz": 14001.0,
                    "throttle_reasons": np.where(loaded, "sw_power_cap", ""),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def bench_runs() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for day in range(DAYS):
        night = (START + timedelta(days=day)).date()
        for endpoint, decode, ceiling in (("vllm-gpu", 80.0, 89.6), ("llamacpp-cpu", 30.0, 40.96)):
            rows.append({
                "night": night, "endpoint": endpoint, "protocol": "openai", "url": "http://127.0.0.1:8000",
                "model": "m", "started_at": datetime.combine(night, datetime.min.time(), UTC) + timedelta(hours=2),
                "decode_tok_s": decode * rng.normal(1, 0.02), "server_decode_tok_s": decode * rng.normal(1.02, 0.02),
                "ttft_p50_ms": 60 * rng.normal(1, 0.03), "ttft_p95_ms": 120 * rng.normal(1, 0.05),
                "itl_p50_ms": 12.0, "tpot_p50_ms": 12.5, "e2e_p50_ms": 1600.0, "max_concurrency": 32,
                "success_rate_at_max": 1.0, "aggregate_tok_s_at_max": 20 * decode * rng.normal(1, 0.03),
                "ceiling_tok_s": ceiling, "errors": "[]", "sweep": "[]", "ok": True,
            })  # fmt: skip
    return pd.DataFrame(rows)


def best_of(fn, repeats: int = REPEATS) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


# -- the two sides of each query ----------------------------------------------------

# Both sides use one definition: time above a line = samples at or above it x the interval;
# energy of an hour = the counter's last value in it minus its last value in the hour before
# (the counter only grows here; the app's rollup_day also handles resets and gaps).
# Hours are bucketed on the integer epoch and turned into timestamps once per group: ~2x
# faster here than date_trunc/time_bucket on 2.1 M TIMESTAMPTZ values (ICU time-zone math).
HOURLY_SQL = f"""
    WITH hourly AS (
        SELECT epoch_us(ts) // 3600000000 AS hour_no, device, count(*) AS samples,
               min(temperature_c) AS min_c, avg(temperature_c) AS avg_c, max(temperature_c) AS max_c,
               count(*) FILTER (WHERE temperature_c >= {WARN_C}) * {INTERVAL_S} AS seconds_above_warn,
               max(energy_mj) AS last_mj, min(energy_mj) AS first_mj
        FROM thermal_samples GROUP BY 1, 2
    )
    SELECT make_timestamp(hour_no * 3600000000) AS hour, device, samples, min_c, avg_c, max_c, seconds_above_warn,
           (last_mj - coalesce(lag(last_mj) OVER (PARTITION BY device ORDER BY hour_no), first_mj)) / 3.6e9
               AS energy_kwh
    FROM hourly ORDER BY hour_no, device
"""


def duck_hourly(db: Path) -> pd.DataFrame:
    with history.connect(db, read_only=True) as con:
        return con.execute(HOURLY_SQL).df()


def _raw_hourly(df: pd.DataFrame) -> pd.DataFrame:
    df["hour"] = df["ts"].dt.floor("h")
    df["warn"] = (df["temperature_c"] >= WARN_C) * INTERVAL_S
    df["contain"] = (df["temperature_c"] >= CONTAIN_C) * INTERVAL_S
    df["throttled"] = df["throttle_reasons"].notna() * INTERVAL_S if "throttle_reasons" in df else 0
    out = df.groupby(["hour", "device"]).agg(
        samples=("temperature_c", "size"), min_c=("temperature_c", "min"), avg_c=("temperature_c", "mean"),
        max_c=("temperature_c", "max"), seconds_above_warn=("warn", "sum"), seconds_above_contain=("contain", "sum"),
        throttle_seconds=("throttled", "sum"), last_mj=("energy_mj", "max"), first_mj=("energy_mj", "min"),
    ).reset_index()  # fmt: skip
    previous = out.groupby("device")["last_mj"].shift(1)
    out["energy_kwh"] = (out["last_mj"] - previous.fillna(out["first_mj"])) / 3.6e9
    return out


def pandas_hourly(csv: Path) -> pd.DataFrame:
    df = pd.read_csv(csv, usecols=["ts", "device", "temperature_c", "energy_mj"], parse_dates=["ts"])
    return _raw_hourly(df)


def pandas_raw_thermal_daily(csv: Path) -> pd.DataFrame:
    cols = ["ts", "device", "temperature_c", "energy_mj", "throttle_reasons"]
    hourly = _raw_hourly(pd.read_csv(csv, usecols=cols, parse_dates=["ts"]))
    return _daily(hourly)


def _daily(hourly: pd.DataFrame) -> pd.DataFrame:
    hourly["day"] = hourly["hour"].dt.date
    return hourly.groupby(["day", "device"]).agg(
        hours=("hour", "size"), samples=("samples", "sum"), max_c=("max_c", "max"),
        seconds_above_warn=("seconds_above_warn", "sum"), seconds_above_contain=("seconds_above_contain", "sum"),
        throttle_seconds=("throttle_seconds", "sum"), energy_kwh=("energy_kwh", "sum"),
    ).reset_index()  # fmt: skip


def pandas_thermal_daily(csv: Path) -> pd.DataFrame:
    df = pd.read_csv(csv, parse_dates=["hour"])
    df["throttle_seconds"] = [
        sum(json.loads(t).values()) if isinstance(t, str) else 0.0 for t in df["throttle_seconds"]
    ]
    return _daily(df)


def _last_30_days(hourly: pd.DataFrame) -> tuple[float, int]:
    hourly = hourly.dropna(subset=["energy_kwh"])
    recent = hourly[hourly["hour"] > hourly["hour"].max() - pd.Timedelta(days=30)]
    return float(recent["energy_kwh"].sum()), int(recent["hour"].nunique())


def pandas_raw_energy(csv: Path) -> tuple[float, int]:
    return _last_30_days(pandas_hourly(csv))


def pandas_energy(csv: Path) -> tuple[float, int]:
    return _last_30_days(pd.read_csv(csv, usecols=["hour", "energy_kwh"], parse_dates=["hour"]))


def pandas_bench_trend(csv: Path):
    runs = pd.read_csv(csv, parse_dates=["night"])
    return analyse_runs(runs.sort_values(["endpoint", "night"]))


def duck_bench_trend(db: Path):
    return analyse_runs(load_bench_runs(db))


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: new dir in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="idp-history-bench-", dir=args.work or "/tmp"))
    try:
        return run(work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> int:
    db, samples_csv, hourly_csv, bench_csv = (work / n for n in ("history.duckdb", "thermal_samples.csv",
                                                                 "thermal_hourly.csv", "bench_runs.csv"))  # fmt: skip
    started = time.perf_counter()
    samples, runs = thermal_samples(), bench_runs()
    print(f"generated {len(samples):,} thermal samples ({len(DEVICES)} GPUs x {DAYS} days at {INTERVAL_S} s) and "
          f"{len(runs)} bench runs in {time.perf_counter() - started:.1f} s; work dir {work}")  # fmt: skip

    # -- ingest --
    started = time.perf_counter()
    with history.connect(db) as con:
        con.register("samples_df", samples)
        # By name: migration 2 added GPU health columns after these.
        cols = ", ".join(samples.columns)
        con.execute(f"INSERT INTO thermal_samples ({cols}) SELECT {cols} FROM samples_df")
        con.register("runs_df", runs)
        con.execute(f"INSERT INTO bench_runs ({', '.join(runs.columns)}) SELECT * FROM runs_df")
    duck_insert = time.perf_counter() - started
    started = time.perf_counter()
    with history.connect(db) as con:
        for day in range(DAYS):
            rollup_day(con, START + timedelta(days=day), warn_c=WARN_C, contain_c=CONTAIN_C, max_gap_s=MAX_GAP_S)
        con.execute(f"COPY thermal_hourly TO '{hourly_csv}' (HEADER)")  # the CSV side's hourly file (untimed)
    duck_rollup = time.perf_counter() - started
    started = time.perf_counter()
    samples.to_csv(samples_csv, index=False)
    runs.to_csv(bench_csv, index=False)
    csv_write = time.perf_counter() - started
    print(f"\nsizes: DuckDB {db.stat().st_size / 1e6:.0f} MB (raw + hourly), CSV {samples_csv.stat().st_size / 1e6:.0f} MB "
          f"raw + {hourly_csv.stat().st_size / 1e6:.1f} MB hourly")  # fmt: skip

    # -- queries --
    queries = [
        ("hourly rollup (2.1 M raw rows)", lambda: duck_hourly(db), lambda: pandas_hourly(samples_csv), None),
        ("thermal days (trends.thermal_daily)", lambda: thermal_daily(db),
         lambda: pandas_raw_thermal_daily(samples_csv), lambda: pandas_thermal_daily(hourly_csv)),
        ("ROI energy, 30 days (roi.measured_energy)", lambda: measured_energy(db),
         lambda: pandas_raw_energy(samples_csv), lambda: pandas_energy(hourly_csv)),
        ("bench trend, 730 runs (analyse_runs)", lambda: duck_bench_trend(db), lambda: pandas_bench_trend(bench_csv),
         None),
    ]  # fmt: skip
    results = []
    for name, duck_fn, csv_fn, hourly_fn in queries:
        duck_s, duck_out = best_of(duck_fn)
        csv_s, csv_out = best_of(csv_fn)
        hourly_s, hourly_out = best_of(hourly_fn) if hourly_fn else (None, None)
        results.append((name, duck_s, csv_s, hourly_s, duck_out, csv_out, hourly_out))

    # The sides computed the same figures (else the timing means nothing).
    hourly_duck, hourly_pd = results[0][4], results[0][5]
    assert len(hourly_duck) == len(hourly_pd) == DAYS * 24 * len(DEVICES), (len(hourly_duck), len(hourly_pd))
    assert _close(hourly_duck["energy_kwh"].sum(), hourly_pd["energy_kwh"].sum())
    assert hourly_duck["seconds_above_warn"].sum() == hourly_pd["seconds_above_warn"].sum()
    days_duck, days_raw, days_hourly = results[1][4], results[1][5], results[1][6]
    assert len(days_duck) == len(days_raw) == len(days_hourly) == DAYS * len(DEVICES)
    assert _close(days_duck["energy_kwh"].sum(), days_hourly["energy_kwh"].sum())
    # rollup_day works one day at a time, so the one 30 s interval that crosses midnight is not
    # counted (1 of 2,880 a day): the raw path may exceed it by that much, never more.
    assert _close(days_duck["energy_kwh"].sum(), days_raw["energy_kwh"].sum(), 1e-3)
    assert (
        abs(days_duck["seconds_above_warn"].sum() - days_raw["seconds_above_warn"].sum())
        <= DAYS * len(DEVICES) * INTERVAL_S
    )
    energy, (raw_kwh, raw_hours), (hourly_kwh, hourly_hours) = results[2][4][0], results[2][5], results[2][6]
    assert (
        energy.hours == raw_hours == hourly_hours
        and _close(energy.kwh, hourly_kwh)
        and _close(energy.kwh, raw_kwh, 1e-3)
    )
    assert [s.as_dict() for s in results[3][4].latest] == [s.as_dict() for s in results[3][5].latest]

    print("\ningest (one run)                         DuckDB s     CSV s")
    print(
        f"  {'bulk insert, 2.1 M samples + 730 runs':<38} {duck_insert:>8.2f}  {csv_write:>8.2f}  (CSV: DataFrame.to_csv)"
    )
    print(
        f"  {'hourly rollup_day x 365 (app path)':<38} {duck_rollup:>8.2f}  {'-':>8}  "
        f"({duck_rollup / DAYS * 1000:.1f} ms per day ingested)"
    )
    print(
        f"\nqueries (best of {REPEATS}), seconds      DuckDB   CSV raw  ratio   CSV hourly  ratio   target >=10x & <0.1 s"
    )
    met_count = 0
    for name, duck_s, csv_s, hourly_s, *_ in results:
        ratio = csv_s / duck_s
        met = ratio >= 10 and duck_s < 0.1
        met_count += met
        like = f"{hourly_s:>10.4f} {hourly_s / duck_s:>6.1f}x" if hourly_s is not None else f"{'-':>10} {'':>7}"
        print(f"  {name:<41} {duck_s:>7.4f} {csv_s:>8.3f} {ratio:>6.1f}x  {like}   {'met' if met else 'NOT met'}")
    print(
        "  (CSV raw: the year's samples re-read from CSV; CSV hourly: a pre-rolled hourly CSV, like for like;"
        " bench runs: one CSV either way)"
    )
    print(f"\nyear energy: {hourly_duck['energy_kwh'].sum():,.0f} kWh; last 30 days {energy.kwh:,.1f} kWh "
          f"({energy.kwh_per_day:.1f} kWh/day); bench regressions on the last night: "
          f"{len(results[3][4].regressions)}")  # fmt: skip
    # Reported, not enforced: a 730-row table is read from CSV in milliseconds, quicker than DuckDB
    # opens any file (~13 ms here even in memory), so that row cannot reach 10x by design.
    print(f"targets met: {met_count} of {len(results)} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
