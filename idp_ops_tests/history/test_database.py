import subprocess
import sys
import time

import pytest

from idp_ops.history import database as history

HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def test_schema_is_created_once_and_stays_at_the_latest_version(tmp_path):
    path = tmp_path / "history.duckdb"
    with history.connect(path) as con:
        assert history.migrate(con) == history.SCHEMA_VERSION
    with history.connect(path) as con:
        versions = con.execute("SELECT version FROM schema_version").fetchall()
    assert versions == [(v,) for v, _ in history.MIGRATIONS]


def test_a_writer_waits_for_another_process_holding_the_file(tmp_path):
    path = tmp_path / "history.duckdb"
    with history.connect(path):
        pass
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "1.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    with history.connect(path, lock_timeout_s=30) as con:
        assert con.execute("SELECT count(*) FROM thermal_samples").fetchone()[0] == 0
    assert time.monotonic() - started > 0.5, "it really waited for the lock"
    holder.wait(timeout=10)


def test_a_lock_held_too_long_is_a_clear_error(tmp_path):
    path = tmp_path / "history.duckdb"
    with history.connect(path):
        pass
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "5"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
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
