"""Seeded history: bench_runs and thermal_hourly rows in a real DuckDB file, and a planted-regression series."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from idp_ops.history import database as history

FIRST_NIGHT = date(2026, 2, 1)


def seed_bench_runs(history_file: Path, rows: list[dict]) -> None:
    """bench_runs rows; each dict needs night and endpoint, the rest defaults."""
    with history.connect(history_file) as con:
        for row in rows:
            full = {
                "protocol": "openai",
                "url": "http://127.0.0.1:1",
                "model": "m",
                "started_at": datetime.combine(row["night"], datetime.min.time(), UTC) + timedelta(hours=2),
                "ok": True,
                **row,
            }
            columns = list(full)
            con.execute(
                f"INSERT OR REPLACE INTO bench_runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [full[c] for c in columns],
            )


def nightly_history(nights: int = 12) -> list[dict]:
    """Two endpoints, steady with +-2 % wiggle; on the last night 'gpu' decodes 20 % slower and
    'cpu' answers its p95 TTFT 30 % later. 'gpu' also had a one-night dip on night 5, since recovered."""
    wiggle = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0, 1.02, 0.98]
    rows = []
    for i in range(nights):
        night = FIRST_NIGHT + timedelta(days=i)
        last = i == nights - 1
        gpu_decode = 80.0 * wiggle[i] * (0.8 if last else 1.0) * (0.5 if i == 5 else 1.0)
        rows.append({"night": night, "endpoint": "gpu", "decode_tok_s": gpu_decode, "ttft_p50_ms": 50.0 * wiggle[i],
                     "ttft_p95_ms": 90.0 * wiggle[i], "aggregate_tok_s_at_max": 600.0 * wiggle[i],
                     "ceiling_tok_s": 100.0})  # fmt: skip
        rows.append({"night": night, "endpoint": "cpu", "protocol": "llamacpp", "decode_tok_s": 30.0 * wiggle[i],
                     "ttft_p50_ms": 40.0 * wiggle[i], "ttft_p95_ms": 70.0 * wiggle[i] * (1.3 if last else 1.0),
                     "ceiling_tok_s": None})  # fmt: skip
    return rows


def seed_thermal_hourly(history_file: Path, rows: list[dict]) -> None:
    with history.connect(history_file) as con:
        for row in rows:
            full = {"samples": 120, "min_c": 40.0, "avg_c": 50.0, "max_c": 60.0, "seconds_above_warn": 0.0,
                    "seconds_above_contain": 0.0, "throttle_seconds": "{}", "energy_kwh": None, **row}  # fmt: skip
            columns = list(full)
            con.execute(
                f"INSERT OR REPLACE INTO thermal_hourly ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [full[c] for c in columns],
            )
