import subprocess
import sys
import time
import types
from datetime import UTC, datetime

import pytest

from idp_ops.history import database as history

# Holds the file until told on stdin, then marks that it is letting go and closes: a lock
# whose release the test decides, never a sleep that has to outlast the other side.
HOLD_UNTIL_TOLD = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
open(sys.argv[2], "w").close()
con.close()
"""


def hold(path, released_marker):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_UNTIL_TOLD, str(path), str(released_marker)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_schema_is_created_once_and_stays_at_the_latest_version(tmp_path):
    path = tmp_path / "history.duckdb"
    with history.connect(path) as con:
        assert history.migrate(con) == history.SCHEMA_VERSION
    with history.connect(path) as con:
        versions = con.execute("SELECT version FROM schema_version").fetchall()
    assert versions == [(v,) for v, _ in history.MIGRATIONS]


def test_a_writer_waits_for_another_process_holding_the_file(tmp_path, monkeypatch):
    path = tmp_path / "history.duckdb"
    released = tmp_path / "released"
    with history.connect(path):
        pass
    holder = hold(path, released)
    retries = []

    def sleep(seconds):
        # The first retry is the moment the writer is known to be waiting: only now let go.
        if not retries:
            holder.stdin.write("let go\n")
            holder.stdin.flush()
        retries.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(history, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    try:
        with history.connect(path, lock_timeout_s=60) as con:  # 60 s: a hang guard only
            assert released.exists(), "the writer got in only after the holder let go"
            assert con.execute("SELECT count(*) FROM thermal_samples").fetchone()[0] == 0
        assert retries, "the first attempt found the file locked and was retried"
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_held_too_long_is_a_clear_error(tmp_path):
    path = tmp_path / "history.duckdb"
    with history.connect(path):
        pass
    holder = hold(path, tmp_path / "released")  # never told to let go
    try:
        with (
            pytest.raises(history.HistoryError, match="cannot open history"),
            history.connect(path, lock_timeout_s=0.5),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_history_from_newer_code_is_refused(tmp_path):
    path = tmp_path / "history.duckdb"
    with history.connect(path) as con:
        con.execute("INSERT INTO schema_version VALUES (999, now())")
    with pytest.raises(history.HistoryError, match="newer than this code"), history.connect(path):
        pass


# -- insert_rows: writes by column name ---------------------------------------------

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def thermal_rows(con):
    return con.execute(
        "SELECT ts, device, source, temperature_c, power_w, energy_mj FROM thermal_samples ORDER BY ts, device"
    ).fetchall()


def test_insert_rows_writes_each_value_into_the_column_it_names(tmp_path):
    rows = [
        {"ts": T0, "device": "gpu0", "source": "nvml", "temperature_c": 61.5, "power_w": 300.0},
        {"ts": T0, "device": "gpu1", "source": "nvml", "temperature_c": 48.0, "power_w": 120.0},
    ]
    with history.connect(tmp_path / "history.duckdb") as con:
        assert history.insert_rows(con, "thermal_samples", rows) == 2
        assert thermal_rows(con) == [
            (T0, "gpu0", "nvml", 61.5, 300.0, None),  # a column left out keeps its default
            (T0, "gpu1", "nvml", 48.0, 120.0, None),
        ]


def test_insert_rows_of_nothing_writes_nothing(tmp_path):
    with history.connect(tmp_path / "history.duckdb") as con:
        assert history.insert_rows(con, "thermal_samples", []) == 0
        assert thermal_rows(con) == []


def test_a_row_named_out_of_schema_order_lands_in_the_right_columns(tmp_path):
    # The schema reads ts, device, source, temperature_c, power_w, energy_mj; this row names them
    # backwards, with values a positional insert would put into the wrong (same-typed) columns.
    backwards = {"energy_mj": 7.0, "power_w": 300.0, "temperature_c": 61.5, "source": "csv", "device": "gpu0", "ts": T0}
    with history.connect(tmp_path / "history.duckdb") as con:
        history.insert_rows(con, "thermal_samples", [backwards])
        (row,) = con.execute(
            "SELECT ts, device, source, temperature_c, power_w, energy_mj FROM thermal_samples"
        ).fetchall()
    assert row == (T0, "gpu0", "csv", 61.5, 300.0, 7.0)


def test_a_misspelled_column_is_an_error_naming_it_and_writes_nothing(tmp_path):
    rows = [{"ts": T0, "device": "gpu0", "source": "nvml", "temprature_c": 61.5}]
    with history.connect(tmp_path / "history.duckdb") as con:
        with pytest.raises(history.HistoryError, match=r"thermal_samples has no column\(s\) \['temprature_c'\]"):
            history.insert_rows(con, "thermal_samples", rows)
        assert thermal_rows(con) == []


def test_rows_naming_different_columns_are_an_error_and_write_nothing(tmp_path):
    rows = [
        {"ts": T0, "device": "gpu0", "source": "nvml", "temperature_c": 61.5},
        {"ts": T0, "device": "gpu1", "source": "nvml", "power_w": 120.0},
    ]
    with history.connect(tmp_path / "history.duckdb") as con:
        with pytest.raises(
            history.HistoryError, match=r"rows for thermal_samples name different columns: .*temperature_c.*power_w"
        ):
            history.insert_rows(con, "thermal_samples", rows)
        assert thermal_rows(con) == []


def test_an_unknown_table_is_an_error_naming_it(tmp_path):
    with (
        history.connect(tmp_path / "history.duckdb") as con,
        pytest.raises(history.HistoryError, match="history has no table 'thermal_sample'"),
    ):
        history.insert_rows(con, "thermal_sample", [{"ts": T0, "device": "gpu0", "source": "nvml"}])
