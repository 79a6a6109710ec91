"""The box's history in one DuckDB file: schema, migrations, short-lived connections.

DuckDB lets one process write a file at a time, so every writer opens a
connection for one unit of work and closes it; a writer that finds the file
locked retries with backoff instead of failing the run. Sensors never open it:
they spool to files that an asset ingests.

Migrations are append-only: add a new (version, statements) entry, never edit
an applied one. Each domain's tables are declared here so the whole schema is
readable in one place.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from idp_ops.errors import IdpOpsError

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            # Incremental sha256 cache: a file whose stat is unchanged reuses its hash.
            """CREATE TABLE manifest_cache (
                path VARCHAR PRIMARY KEY,
                size BIGINT NOT NULL,
                mtime_ns BIGINT NOT NULL,
                inode BIGINT NOT NULL,
                sha256 VARCHAR NOT NULL,
                hashed_at TIMESTAMPTZ NOT NULL
            )""",
            # One row per backup run, refused and failed runs included. snapshot is NULL
            # when no verified snapshot was made, rsync_exit when rsync never ran; the
            # lists name the files (mismatched/missing block a snapshot; source_corrupt
            # is bit rot found on the store by the scrub; repaired are rotten backup
            # copies replaced in the new snapshot).
            """CREATE TABLE backup_runs (
                run_id VARCHAR PRIMARY KEY,
                started_at TIMESTAMPTZ NOT NULL,
                finished_at TIMESTAMPTZ NOT NULL,
                source VARCHAR NOT NULL,
                destination VARCHAR NOT NULL,
                snapshot VARCHAR,
                status VARCHAR NOT NULL,
                message VARCHAR,
                rsync_exit INTEGER,
                files_total BIGINT,
                bytes_total BIGINT,
                files_transferred BIGINT,
                bytes_transferred BIGINT,
                duration_s DOUBLE,
                verified_files BIGINT,
                verified_bytes BIGINT,
                scrub_slice INTEGER,
                scrub_slices INTEGER,
                scrubbed_files BIGINT,
                scrub_bytes BIGINT,
                mismatched VARCHAR[],
                missing VARCHAR[],
                source_corrupt VARCHAR[],
                repaired VARCHAR[],
                vanished VARCHAR[],
                pruned VARCHAR[],
                ok BOOLEAN NOT NULL
            )""",
            """CREATE TABLE thermal_samples (
                ts TIMESTAMPTZ NOT NULL,
                device VARCHAR NOT NULL,
                source VARCHAR NOT NULL,
                temperature_c DOUBLE,
                power_w DOUBLE,
                energy_mj DOUBLE,
                utilization_pct DOUBLE,
                memory_used_mb DOUBLE,
                memory_total_mb DOUBLE,
                sm_clock_mhz DOUBLE,
                mem_clock_mhz DOUBLE,
                throttle_reasons VARCHAR,
                PRIMARY KEY (ts, device)
            )""",
            # One row per endpoint per night: re-running a night replaces its rows.
            """CREATE TABLE bench_runs (
                night DATE NOT NULL,
                endpoint VARCHAR NOT NULL,
                protocol VARCHAR NOT NULL,
                url VARCHAR NOT NULL,
                model VARCHAR,
                started_at TIMESTAMPTZ NOT NULL,
                decode_tok_s DOUBLE,
                server_decode_tok_s DOUBLE,
                ttft_p50_ms DOUBLE,
                ttft_p95_ms DOUBLE,
                itl_p50_ms DOUBLE,
                tpot_p50_ms DOUBLE,
                e2e_p50_ms DOUBLE,
                max_concurrency INTEGER,
                success_rate_at_max DOUBLE,
                aggregate_tok_s_at_max DOUBLE,
                ceiling_tok_s DOUBLE,
                errors VARCHAR,
                sweep VARCHAR,
                ok BOOLEAN NOT NULL,
                PRIMARY KEY (night, endpoint)
            )""",
            """CREATE TABLE bench_samples (
                night DATE NOT NULL,
                endpoint VARCHAR NOT NULL,
                scenario VARCHAR NOT NULL,
                concurrency INTEGER NOT NULL,
                idx INTEGER NOT NULL,
                started_at TIMESTAMPTZ,
                ttft_ms DOUBLE,
                e2e_ms DOUBLE,
                tpot_ms DOUBLE,
                itl_p50_ms DOUBLE,
                output_tokens INTEGER,
                status INTEGER,
                error VARCHAR,
                PRIMARY KEY (night, endpoint, scenario, concurrency, idx)
            )""",
            """CREATE TABLE load_tests (
                night DATE NOT NULL,
                endpoint VARCHAR NOT NULL,
                started_at TIMESTAMPTZ NOT NULL,
                users INTEGER,
                run_time_s DOUBLE,
                requests BIGINT,
                failures BIGINT,
                failures_5xx BIGINT,
                rps DOUBLE,
                p50_ms DOUBLE,
                p95_ms DOUBLE,
                failures_by_status VARCHAR,
                ok BOOLEAN NOT NULL,
                PRIMARY KEY (night, endpoint)
            )""",
            """CREATE TABLE thermal_hourly (
                hour TIMESTAMPTZ NOT NULL,
                device VARCHAR NOT NULL,
                samples INTEGER NOT NULL,
                min_c DOUBLE,
                avg_c DOUBLE,
                max_c DOUBLE,
                seconds_above_warn DOUBLE,
                seconds_above_contain DOUBLE,
                throttle_seconds VARCHAR,
                energy_kwh DOUBLE,
                PRIMARY KEY (hour, device)
            )""",
            # Model inventory (core/gguf_meta.py): one row per model file; a rescan of
            # a root replaces that root's rows. Byte columns feed the physics ceilings:
            # tensor_bytes is what one decode step streams (less most of token_embd
            # when output.weight is separate), layer_bytes what offloading one layer moves.
            # Memory bandwidth of this host (the memory_bandwidth asset): one row per device
            # and thread count per measurement. source: "measured" (probe) or "datasheet"
            # (no probe possible, e.g. no CUDA library: the profile's figure, kept for the record).
            """CREATE TABLE bandwidth_measurements (
                measured_at TIMESTAMPTZ NOT NULL,
                host VARCHAR,
                device VARCHAR NOT NULL,
                threads INTEGER NOT NULL,
                read_gbs DOUBLE,
                copy_gbs DOUBLE,
                source VARCHAR,
                PRIMARY KEY (measured_at, device, threads)
            )""",
            """CREATE TABLE model_files (
                path VARCHAR PRIMARY KEY,
                root VARCHAR NOT NULL,
                kind VARCHAR NOT NULL,
                size BIGINT NOT NULL,
                architecture VARCHAR,
                model_name VARCHAR,
                size_label VARCHAR,
                parameters BIGINT,
                file_type VARCHAR,
                tensor_types VARCHAR,
                tensor_count INTEGER,
                tensor_bytes BIGINT,
                layer_bytes BIGINT,
                layer_bytes_max BIGINT,
                non_layer_bytes BIGINT,
                token_embd_bytes BIGINT,
                tied_embeddings BOOLEAN,
                block_count INTEGER,
                context_length BIGINT,
                embedding_length BIGINT,
                feed_forward_length BIGINT,
                head_count INTEGER,
                head_count_kv INTEGER,
                key_length INTEGER,
                value_length INTEGER,
                sliding_window INTEGER,
                expert_count INTEGER,
                expert_used_count INTEGER,
                details VARCHAR,
                finding VARCHAR,
                scanned_at TIMESTAMPTZ NOT NULL
            )""",
        ],
    ),
    (
        2,
        [
            # GPU health (thermal/nvml_health.py, issue 13): NULL where the card answers NotSupported.
            # energy_source: "counter" (NVML's counter) or "integrated" (power since the last counter read).
            # xid_errors: XIDs seen since the previous sample, comma-separated ('' none, NULL not watched).
            *(
                f"ALTER TABLE thermal_samples ADD COLUMN {column}"
                for column in (
                    "energy_source VARCHAR",
                    "memory_temperature_c DOUBLE",
                    "ecc_volatile_corrected BIGINT",
                    "ecc_volatile_uncorrected BIGINT",
                    "ecc_aggregate_corrected BIGINT",
                    "ecc_aggregate_uncorrected BIGINT",
                    "retired_pages_sbe INTEGER",
                    "retired_pages_dbe INTEGER",
                    "retired_pages_pending BOOLEAN",
                    "remapped_rows_correctable INTEGER",
                    "remapped_rows_uncorrectable INTEGER",
                    "remap_pending BOOLEAN",
                    "remap_failure BOOLEAN",
                    "pcie_replay_count BIGINT",
                    "power_limit_w DOUBLE",
                    "power_default_limit_w DOUBLE",
                    "xid_errors VARCHAR",
                )
            ),
        ],
    ),
    (
        3,
        [
            # Validation workloads (validation/workloads.py, goodput.py, server_metrics.py).
            # Context depth: one row per request; depth is the exact prompt length sent (the
            # server's tokenizer), requested_depth what the settings asked before the context cap.
            """CREATE TABLE depth_samples (
                night DATE NOT NULL,
                endpoint VARCHAR NOT NULL,
                depth INTEGER NOT NULL,
                idx INTEGER NOT NULL,
                requested_depth INTEGER,
                started_at TIMESTAMPTZ,
                prompt_tokens INTEGER,
                ttft_ms DOUBLE,
                prefill_tok_s DOUBLE,
                decode_tok_s DOUBLE,
                output_tokens INTEGER,
                server_prompt_tokens INTEGER,
                server_prompt_ms DOUBLE,
                server_prefill_tok_s DOUBLE,
                server_decode_tok_s DOUBLE,
                server_cached_tokens INTEGER,
                ceiling_tok_s DOUBLE,
                kv_bytes_per_token DOUBLE,
                error VARCHAR,
                PRIMARY KEY (night, endpoint, depth, idx)
            )""",
            # Prefix cache: every request of every round; kind is cold (a new prefix) or warm.
            """CREATE TABLE prefix_cache_samples (
                night DATE NOT NULL,
                endpoint VARCHAR NOT NULL,
                round INTEGER NOT NULL,
                idx INTEGER NOT NULL,
                kind VARCHAR NOT NULL,
                started_at TIMESTAMPTZ,
                prefix_tokens INTEGER,
                prompt_tokens INTEGER,
                cached_tokens INTEGER,
                ttft_ms DOUBLE,
                error VARCHAR,
                PRIMARY KEY (night, endpoint, round, idx)
            )""",
            # Goodput per sweep level: requests that met both per-request SLOs.
            """CREATE TABLE goodput (
                night DATE NOT NULL,
                endpoint VARCHAR NOT NULL,
                concurrency INTEGER NOT NULL,
                arrival VARCHAR NOT NULL,
                arrival_rate DOUBLE,
                requests INTEGER NOT NULL,
                met INTEGER NOT NULL,
                share DOUBLE,
                slo_ttft_ms DOUBLE,
                slo_itl_ms DOUBLE,
                goodput_tok_s DOUBLE,
                PRIMARY KEY (night, endpoint, concurrency)
            )""",
            # The server's /metrics during a run, per Dagster run (or CLI run id) and phase.
            """CREATE TABLE server_metrics (
                run_id VARCHAR NOT NULL,
                night DATE,
                endpoint VARCHAR NOT NULL,
                phase VARCHAR NOT NULL,
                ts TIMESTAMPTZ NOT NULL,
                metric VARCHAR NOT NULL,
                value DOUBLE
            )""",
            # One row per run, endpoint and phase: "not exposed" is recorded, not an error.
            """CREATE TABLE server_metric_runs (
                run_id VARCHAR NOT NULL,
                night DATE,
                endpoint VARCHAR NOT NULL,
                phase VARCHAR NOT NULL,
                recorded_at TIMESTAMPTZ NOT NULL,
                status VARCHAR NOT NULL,
                detail VARCHAR,
                scrapes INTEGER NOT NULL,
                summary VARCHAR,
                PRIMARY KEY (run_id, endpoint, phase)
            )""",
        ],
    ),
    (
        4,
        [
            # The no-OOM watch around each night's load test, one row per endpoint: status
            # passed / failed / not judged, and what was seen (JSON list of {container,
            # service, kind, detail}; kind: oom_killed, oom_event, restarted, exited, log,
            # cgroup_oom_kill).
            """CREATE TABLE oom_watch (
                night DATE NOT NULL,
                endpoint VARCHAR NOT NULL,
                service VARCHAR,
                project VARCHAR NOT NULL,
                started_at TIMESTAMPTZ NOT NULL,
                finished_at TIMESTAMPTZ NOT NULL,
                polls INTEGER NOT NULL,
                status VARCHAR NOT NULL,
                message VARCHAR NOT NULL,
                findings VARCHAR NOT NULL,
                PRIMARY KEY (night, endpoint)
            )""",
        ],
    ),
    (
        5,
        [
            # Model switches (models/switch.py), one row per attempt, refused ones included.
            # outcome: switched | rolled_back | rollback_failed | refused; *_s NULL for phases not reached.
            """CREATE TABLE model_switches (
                id VARCHAR PRIMARY KEY,
                endpoint VARCHAR NOT NULL,
                service VARCHAR,
                from_model VARCHAR,
                to_model VARCHAR NOT NULL,
                started_at TIMESTAMPTZ NOT NULL,
                finished_at TIMESTAMPTZ NOT NULL,
                preflight_s DOUBLE,
                recreate_s DOUBLE,
                prove_s DOUBLE,
                rollback_s DOUBLE,
                outcome VARCHAR NOT NULL,
                message VARCHAR NOT NULL,
                preflight VARCHAR
            )""",
            # The model the server said it served when the night was measured (trends keep one
            # series per endpoint and served model); NULL for nights before this column.
            "ALTER TABLE bench_runs ADD COLUMN served_model VARCHAR",
        ],
    ),
    (
        6,
        [
            # Router endpoints (models/router.py): each served model's load time, measured apart from
            # TTFT: unloaded first, then POST /models/load polled until loaded (method "explicit").
            # status loaded / failed; error says why a model did not load.
            """CREATE TABLE router_loads (
                night DATE NOT NULL,
                endpoint VARCHAR NOT NULL,
                model VARCHAR NOT NULL,
                started_at TIMESTAMPTZ NOT NULL,
                unload_s DOUBLE,
                load_s DOUBLE,
                method VARCHAR NOT NULL,
                models_max INTEGER,
                status VARCHAR NOT NULL,
                error VARCHAR,
                PRIMARY KEY (night, endpoint, model)
            )""",
        ],
    ),
    (
        7,
        [
            # Every model download attempt (models/downloads.py): what was asked (url without its query,
            # or hf_repo + revision), the commit a Hub revision resolved to, what was verified and how.
            """CREATE TABLE model_downloads (
                finished_at TIMESTAMPTZ NOT NULL,
                name VARCHAR NOT NULL,
                target VARCHAR NOT NULL,
                url VARCHAR,
                hf_repo VARCHAR,
                revision VARCHAR,
                commit VARCHAR,
                status VARCHAR NOT NULL,
                verified_by VARCHAR,
                sha256 VARCHAR,
                size BIGINT,
                bytes_downloaded BIGINT,
                seconds DOUBLE,
                attempts INTEGER,
                resumed_from BIGINT,
                files VARCHAR,
                message VARCHAR
            )""",
        ],
    ),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]


class HistoryError(IdpOpsError, RuntimeError):
    pass


# -- writes by column name ---------------------------------------------------


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND table_schema = current_schema()",
        [table],
    ).fetchall()
    if not rows:
        raise HistoryError(f"history has no table {table!r}")
    return {name for (name,) in rows}


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> int:
    """Insert rows given as {column: value}, never by position.

    Every row must name the same columns, each of them a column of ``table``: a
    misspelled or missing column is an error here, not a value shifted into the
    wrong field by a migration that added one. Values may be SQL expressions only
    through the schema's defaults (columns left out).
    """
    if not rows:
        return 0
    names = list(rows[0])
    unknown = sorted(set(names) - _columns(con, table))
    if unknown:
        raise HistoryError(f"{table} has no column(s) {unknown}")
    for row in rows:
        if list(row) != names:
            raise HistoryError(f"rows for {table} name different columns: {names} and {list(row)}")
    placeholders = ", ".join("?" for _ in names)
    con.executemany(
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})", [[row[n] for n in names] for row in rows]
    )
    return len(rows)


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema up to date; returns the version it is at."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL)")
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in statements:
                con.execute(statement)
            con.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, now())", [version])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        current = version
    if current > SCHEMA_VERSION:
        raise HistoryError(
            f"history file is at schema {current}, newer than this code ({SCHEMA_VERSION}): upgrade idp_ops"
        )
    return current


@contextmanager
def connect(
    path: Path, *, read_only: bool = False, lock_timeout_s: float = 60.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """One short-lived connection, migrated, retried while another writer holds the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_timeout_s
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only and path.exists())
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() + delay > deadline:
                raise HistoryError(f"cannot open history {path}: {exc}") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    try:
        if not (read_only and path.exists()):
            migrate(con)
        yield con
    finally:
        con.close()
