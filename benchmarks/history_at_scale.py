"""History at scale: a year of the box's measurements in DuckDB against pandas over CSV files, side by side.

Data (generated, deterministic): a year of 30-second thermal samples for two GPUs
(2 x 1,051,200 = 2,102,400 rows: temperature with a daily load cycle, power, a
cumulative energy counter, throttle reasons while loaded) and a year of nightly
benchmark runs for two endpoints (730 rows).

Timed, one run, each side given the same data:
  ingest   DuckDB: bulk insert into thermal_samples / bench_runs (history.py schema), then the
                   app's own hourly rollup (thermal_store.rollup_day) for each of the 365 days;
           CSV:    DataFrame.to_csv of the same rows (a CSV store has no rollup table).
  queries  each the function the assets call (short-lived read-only connection included), best of 3:
    hourly rollup    per hour and device: samples, min/avg/max C, seconds above the warning line,
                     kWh from the energy counter, over all 2.1 M raw samples
                     (DuckDB: one GROUP BY over thermal_samples; pandas: read_csv + groupby)
    thermal days     trends.thermal_daily (time above the lines, throttle seconds, kWh per day)
                     against pandas over the hourly CSV (JSON throttle column parsed per row)
    ROI energy       roi.measured_energy (last 30 days of kWh) against pandas over the hourly CSV
    bench trend      trends.load_bench_runs + analyse_runs against read_csv + analyse_runs
Target: every query >= 10x faster than the CSV path and under 0.1 s.

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
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idp_ops.core import history  # noqa: E402
from idp_ops.core.roi import measured_energy  # noqa: E402
from idp_ops.core.thermal_store import rollup_day  # noqa: E402
from idp_ops.core.trends import analyse_runs, load_bench_runs, thermal_daily  # noqa: E402

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
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
                "model": "m", "started_at": datetime.combine(night, datetime.min.time(), timezone.utc) + timedelta(hours=2),
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

HOURLY_SQL = f"""
    WITH spans AS (
        SELECT ts, device, temperature_c,
               least(coalesce(epoch(lead(ts) OVER w) - epoch(ts), 0), {MAX_GAP_S}) AS dt,
               energy_mj - lag(energy_mj) OVER w AS de
        FROM thermal_samples WINDOW w AS (PARTITION BY device ORDER BY ts)
    )
    SELECT date_trunc('hour', ts) AS hour, device, count(*) AS samples, min(temperature_c) AS min_c,
           avg(temperature_c) AS avg_c, max(temperature_c) AS max_c,
           sum(CASE WHEN temperature_c >= {WARN_C} THEN dt ELSE 0 END) AS seconds_above_warn,
           sum(coalesce(de, 0)) / 3.6e9 AS energy_kwh
    FROM spans GROUP BY 1, 2 ORDER BY 1, 2
"""


def duck_hourly(db: Path) -> pd.DataFrame:
    with history.connect(db, read_only=True) as con:
        return con.execute(HOURLY_SQL).df()


def pandas_hourly(csv: Path) -> pd.DataFrame:
    df = pd.read_csv(csv, usecols=["ts", "device", "temperature_c", "energy_mj"], parse_dates=["ts"])
    df = df.sort_values(["device", "ts"])
    by_device = df.groupby("device", sort=False)
    df["dt"] = (by_device["ts"].shift(-1) - df["ts"]).dt.total_seconds().fillna(0).clip(upper=MAX_GAP_S)
    df["de"] = by_device["energy_mj"].diff().fillna(0)
    df["warn_dt"] = df["dt"].where(df["temperature_c"] >= WARN_C, 0.0)
    df["hour"] = df["ts"].dt.floor("h")
    out = df.groupby(["hour", "device"]).agg(
        samples=("temperature_c", "size"), min_c=("temperature_c", "min"), avg_c=("temperature_c", "mean"),
        max_c=("temperature_c", "max"), seconds_above_warn=("warn_dt", "sum"), energy_kwh=("de", "sum"),
    )  # fmt: skip
    out["energy_kwh"] /= 3.6e9
    return out.reset_index()


def pandas_thermal_daily(csv: Path) -> pd.DataFrame:
    df = pd.read_csv(csv, parse_dates=["hour"])
    df["throttle"] = [sum(json.loads(t).values()) if isinstance(t, str) else 0.0 for t in df["throttle_seconds"]]
    df["day"] = df["hour"].dt.date
    return df.groupby(["day", "device"]).agg(
        hours=("hour", "size"), samples=("samples", "sum"), max_c=("max_c", "max"),
        seconds_above_warn=("seconds_above_warn", "sum"), seconds_above_contain=("seconds_above_contain", "sum"),
        throttle_seconds=("throttle", "sum"), energy_kwh=("energy_kwh", "sum"),
    ).reset_index()  # fmt: skip


def pandas_energy(csv: Path) -> tuple[float, int]:
    df = pd.read_csv(csv, usecols=["hour", "energy_kwh"], parse_dates=["hour"]).dropna(subset=["energy_kwh"])
    recent = df[df["hour"] > df["hour"].max() - pd.Timedelta(days=30)]
    return float(recent["energy_kwh"].sum()), int(recent["hour"].nunique())


def pandas_bench_trend(csv: Path):
    runs = pd.read_csv(csv, parse_dates=["night"])
    return analyse_runs(runs.sort_values(["endpoint", "night"]))


def duck_bench_trend(db: Path):
    return analyse_runs(load_bench_runs(db))


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
        con.execute(f"INSERT INTO thermal_samples SELECT {', '.join(samples.columns)} FROM samples_df")
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
    results = []
    for name, duck_fn, pandas_fn in (
        ("hourly rollup (2.1 M raw rows)", lambda: duck_hourly(db), lambda: pandas_hourly(samples_csv)),
        ("thermal days (trends.thermal_daily)", lambda: thermal_daily(db), lambda: pandas_thermal_daily(hourly_csv)),
        ("ROI energy, last 30 days (roi.measured_energy)", lambda: measured_energy(db), lambda: pandas_energy(hourly_csv)),
        ("bench trend + regressions (730 runs)", lambda: duck_bench_trend(db), lambda: pandas_bench_trend(bench_csv)),
    ):
        duck_s, duck_out = best_of(duck_fn)
        pandas_s, pandas_out = best_of(pandas_fn)
        results.append((name, duck_s, pandas_s, duck_out, pandas_out))

    # Both sides computed the same thing (else the timing means nothing).
    hourly_duck, hourly_pd = results[0][3], results[0][4]
    assert len(hourly_duck) == len(hourly_pd) == DAYS * 24 * len(DEVICES), (len(hourly_duck), len(hourly_pd))
    assert abs(hourly_duck["energy_kwh"].sum() - hourly_pd["energy_kwh"].sum()) < 1e-6 * hourly_pd["energy_kwh"].sum()
    assert abs(hourly_duck["seconds_above_warn"].sum() - hourly_pd["seconds_above_warn"].sum()) < 1e-6
    days_duck, days_pd = results[1][3], results[1][4]
    assert len(days_duck) == len(days_pd) and abs(days_duck["energy_kwh"].sum() - days_pd["energy_kwh"].sum()) < 1e-6
    (energy, _), (pd_kwh, pd_hours) = results[2][3], results[2][4]
    assert energy.hours == pd_hours and abs(energy.kwh - pd_kwh) < 1e-6
    assert len(results[3][3].latest) == len(results[3][4].latest)

    print("\ningest (one run)                         DuckDB s     CSV s")
    print(f"  {'bulk insert, 2.1 M samples + 730 runs':<38} {duck_insert:>8.2f}  {csv_write:>8.2f}  (CSV: DataFrame.to_csv)")
    print(f"  {'hourly rollup_day x 365 (app path)':<38} {duck_rollup:>8.2f}  {'-':>8}  "
          f"({duck_rollup / DAYS * 1000:.1f} ms per day ingested)")
    print(f"\nqueries (best of {REPEATS})                       DuckDB s   pandas/CSV s   ratio   target (>=10x, <0.1 s)")
    ok = True
    for name, duck_s, pandas_s, _, _ in results:
        ratio = pandas_s / duck_s
        met = ratio >= 10 and duck_s < 0.1
        ok &= met
        print(f"  {name:<46} {duck_s:>7.4f}   {pandas_s:>10.4f}   {ratio:>6.1f}x  {'met' if met else 'NOT met'}")
    print(f"\nyear energy: {hourly_duck['energy_kwh'].sum():,.0f} kWh; last 30 days {energy.kwh:,.1f} kWh "
          f"({energy.kwh_per_day:.1f} kWh/day); bench regressions on the last night: "
          f"{len(results[3][3].regressions)}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
