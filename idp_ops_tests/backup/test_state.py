"""The box's own state in the snapshot: settings file, secrets (modes kept), a consistent copy of the
DuckDB history, the Dagster instance's SQLite files; and restoring each one. Real files, real DuckDB,
real SQLite (a real Dagster instance's), real rsync, the real `idp-ops restore`."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from idp_ops.backup.manifest import MANIFEST_NAME, build_manifest, load_manifest, verify
from idp_ops.backup.snapshots import SNAPSHOTS, RestoreError, backup, list_snapshots, restore_state
from idp_ops.backup.state import STATE, StateSources, settings_file_in_use
from idp_ops_harness.model_store import MARKER, make_store
from idp_ops_harness.settings_files import write_settings

KEY = "k3y-th4t-must-n3ver-be-logged-0123456789abcdef"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def box(tmp_path):
    """A store, a backup volume, and the state a real box has: settings, keys, history, a Dagster instance."""
    store = make_store(tmp_path / "models")
    dest = tmp_path / "backup"
    dest.mkdir()
    (dest / MARKER).touch()
    settings_file = tmp_path / "idp-ops.yaml"
    settings_file.write_text("profile: cpu\nmodels_dir: /mnt/models\n")
    os.chmod(settings_file, 0o640)
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    for name in ("llamacpp_api_key", "openai_api_key"):
        fd = os.open(secrets / name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, f"{KEY}-{name}\n".encode())
        os.close(fd)
    history = tmp_path / "data" / "history.duckdb"
    history.parent.mkdir()
    # Rows still in the write-ahead log (a writer that died before a checkpoint): a byte copy of
    # the .duckdb file alone does not hold them; a consistent copy must.
    subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import duckdb, os, sys\n"
                "con = duckdb.connect(sys.argv[1])\n"
                "con.execute('CREATE TABLE backup_runs (run_id VARCHAR PRIMARY KEY, ok BOOLEAN)')\n"
                "con.execute('CHECKPOINT')\n"
                "con.execute(\"INSERT INTO backup_runs SELECT 'run-' || i, true FROM range(500) t(i)\")\n"
                "os._exit(0)\n"
            ),
            str(history),
        ],
        check=True,
    )
    assert Path(f"{history}.wal").exists()
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    _real_dagster_run(dagster_home)
    sources = StateSources(settings_file, secrets, history, dagster_home)
    return store, dest, sources


def _real_dagster_run(home: Path) -> str:
    from dagster import DagsterInstance, asset, materialize

    @asset
    def one() -> int:
        return 1

    with DagsterInstance.local_temp(tempdir=str(home)) as instance:
        return materialize([one], instance=instance).run_id


def snap_state(dest: Path, name: str) -> Path:
    return dest / SNAPSHOTS / name / STATE


def run(store: Path, dest: Path, sources: StateSources | None, **kwargs):
    return backup(store, dest, build_manifest(store).manifest, marker_file=MARKER, state=sources, **kwargs)


def test_the_snapshot_holds_every_part_verified_with_modes_kept_and_no_key_in_any_log(box):
    store, dest, sources = box
    lines: list[str] = []

    report = run(store, dest, sources, log=lines.append)

    assert report.status == "ok", report.message
    assert report.state["parts"] == {
        "settings": "copied",
        "secrets": "copied",
        "history": "copied",
        "dagster": "copied",
        "postgres": "absent",  # no ops platform project: the embedded instance
    }
    state = snap_state(dest, report.snapshot)
    assert mode(state) == 0o700
    # Settings: the file itself, its mode kept.
    assert (state / "settings" / "idp-ops.yaml").read_text() == sources.settings_file.read_text()
    assert mode(state / "settings" / "idp-ops.yaml") == 0o640
    # Secrets: 0700 directory, 0600 keys, same bytes; never in a log line or the report.
    assert mode(state / "secrets") == 0o700
    for key in sources.secrets_dir.iterdir():
        assert (state / "secrets" / key.name).read_bytes() == key.read_bytes() and mode(
            state / "secrets" / key.name
        ) == 0o600
    assert not any(KEY in line for line in lines) and KEY not in json.dumps(report.as_dict())
    assert KEY not in (dest / SNAPSHOTS / report.snapshot / "backup.json").read_text()
    # History: every row, the ones in the WAL too, in one self-contained file; the original untouched.
    copy = state / "history" / "history.duckdb"
    with duckdb.connect(str(copy), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM backup_runs").fetchone()[0] == 500
    assert not Path(f"{copy}.wal").exists() and Path(f"{sources.history_file}.wal").exists()
    byte_copy = copy.with_name("byte-copy.duckdb")
    shutil.copy2(sources.history_file, byte_copy)
    with duckdb.connect(str(byte_copy), read_only=True) as con:  # what a plain file copy would have kept
        assert con.execute("SELECT count(*) FROM backup_runs").fetchone()[0] == 0
    byte_copy.unlink()
    # Dagster: the instance's SQLite files through the backup API, and dagster.yaml.
    runs_db = state / "dagster" / "history" / "runs.db"
    with sqlite3.connect(runs_db) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert (state / "dagster" / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    assert (state / "dagster" / "schedules" / "schedules.db").is_file()
    # The state's own manifest: verify and sha256sum accept it; state.json says what each part is.
    assert verify(state, state / MANIFEST_NAME).ok
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=state, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    info = json.loads((state / "state.json").read_text())
    assert info["parts"]["history"]["tables"] == {"main.backup_runs": 500}
    assert info["parts"]["secrets"]["files"]["openai_api_key"]["mode"] == "0600"
    assert len(load_manifest(state / MANIFEST_NAME).entries) == 1 + 2 + 1 + 5  # 4 dagster *.db + dagster.yaml


def test_absent_parts_are_recorded_and_a_part_that_cannot_be_copied_fails_the_run_but_not_the_snapshot(box, tmp_path):
    store, dest, sources = box
    (sources.secrets_dir / "linked_key").symlink_to(tmp_path / "elsewhere-key")
    partial = StateSources(None, sources.secrets_dir, sources.history_file, None)

    report = run(store, dest, partial)

    assert report.status == "failed" and report.snapshot is not None and report.pruned == []
    assert report.state["parts"] == {
        "settings": "absent",
        "secrets": "failed",
        "history": "copied",
        "dagster": "absent",
        "postgres": "absent",
    }
    assert "linked_key is a symlink" in report.state["errors"][0] and "STATE NOT BACKED UP" in report.message
    state = snap_state(dest, report.snapshot)
    assert not (state / "secrets").exists() and (state / "history" / "history.duckdb").is_file()
    assert verify(state, state / MANIFEST_NAME).ok


def test_each_part_comes_back_into_place_atomically_refusing_to_overwrite_without_force(box, tmp_path):
    store, dest, sources = box
    report = run(store, dest, sources)
    targets = {"secrets": sources.secrets_dir, "history": sources.history_file}

    with pytest.raises(RestoreError, match="exist.*nothing was replaced.*--into DIR.*--force"):
        restore_state(dest, targets)

    # The keys are lost; the history is replaced with --force (the current one is kept aside).
    shutil.rmtree(sources.secrets_dir)
    history_before = sources.history_file.read_bytes()
    restored = restore_state(dest, {"secrets": sources.secrets_dir})
    assert restored.snapshot == report.snapshot and restored.chosen_because == "the latest snapshot"
    assert mode(sources.secrets_dir) == 0o700
    assert sorted(p.name for p in sources.secrets_dir.iterdir()) == ["llamacpp_api_key", "openai_api_key"]
    assert all(mode(p) == 0o600 for p in sources.secrets_dir.iterdir())
    assert (sources.secrets_dir / "openai_api_key").read_text() == f"{KEY}-openai_api_key\n"

    forced = restore_state(dest, {"history": sources.history_file}, force=True)
    (part,) = forced.parts
    aside = Path(part["kept_aside"])
    assert aside.name.startswith("history.duckdb.before-restore-") and aside.read_bytes() == history_before
    assert Path(f"{aside}.wal").exists() and not Path(f"{sources.history_file}.wal").exists()  # the stale log moved too
    with duckdb.connect(str(sources.history_file), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM backup_runs").fetchone()[0] == 500
    assert not list(tmp_path.rglob("*.idp-restore-*"))


def test_into_a_directory_and_a_bad_copy_is_refused_before_anything_is_written(box, tmp_path):
    store, dest, sources = box
    report = run(store, dest, sources)
    into = tmp_path / "recovered"

    out = restore_state(dest, {"settings": None, "dagster": None}, into=into)

    assert [p["target"] for p in out.parts] == [str(into / "idp-ops.yaml"), str(into / "dagster_home")]
    assert (into / "idp-ops.yaml").read_text() == sources.settings_file.read_text() and mode(
        into / "idp-ops.yaml"
    ) == 0o640
    with sqlite3.connect(into / "dagster_home" / "history" / "runs.db") as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1

    key_copy = snap_state(dest, report.snapshot) / "secrets" / "openai_api_key"
    key_copy.write_text("rotten\n")
    fresh = tmp_path / "fresh"
    with pytest.raises(
        RestoreError, match="does not hold a good copy of secrets.*openai_api_key.*nothing was replaced"
    ):
        restore_state(dest, {"settings": None, "secrets": None}, into=fresh)
    assert not fresh.exists()  # the good part was not restored either: every part is checked first


def test_the_latest_snapshot_that_holds_a_part_is_used_and_an_unknown_part_is_a_clear_error(box):
    store, dest, sources = box
    with_history = run(store, dest, sources)
    run(store, dest, StateSources(sources.settings_file, None, None, None))  # a later run without it
    names = [s.name for s in list_snapshots(dest)]

    out = restore_state(dest, {"history": None}, into=sources.history_file.parent / "elsewhere")
    assert out.snapshot == with_history.snapshot and "newer ones do not" in out.chosen_because
    with pytest.raises(RestoreError, match=f"snapshot {names[-1]} holds no history \\(absent\\)"):
        restore_state(dest, {"history": None}, snapshot=names[-1], into=sources.history_file.parent / "x")


def cli(*args: str, config: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_") and k != "DAGSTER_HOME"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "idp_ops.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_idp_ops_backup_then_restore_state_through_the_real_command(tmp_path):
    store = make_store(tmp_path / "models")
    dest = tmp_path / "backup"
    dest.mkdir()
    (dest / MARKER).touch()
    home = tmp_path / "home"
    config = write_settings(tmp_path / "idp-ops.yaml", home=home, models_dir=store, backups_dir=dest)
    secrets = home / "secrets"
    secrets.mkdir(parents=True, mode=0o700)
    (secrets / "llamacpp_api_key").write_text(f"{KEY}\n")
    os.chmod(secrets / "llamacpp_api_key", 0o600)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    _real_dagster_run(dagster_home)

    made = cli("backup", "--json", config=config, env_extra={"DAGSTER_HOME": str(dagster_home)})
    assert made.returncode == 0, made.stderr
    data = json.loads(made.stdout)
    assert data["state"]["parts"] == {
        "settings": "copied",
        "secrets": "copied",
        "history": "copied",
        "dagster": "copied",
        "postgres": "absent",
    }
    assert KEY not in made.stdout + made.stderr

    assert settings_file_in_use(config) == config.resolve()
    exists = cli("restore", "--state", "secrets", config=config)
    assert exists.returncode == 2 and "exist" in exists.stderr and "--force" in exists.stderr
    shutil.rmtree(secrets)
    back = cli(
        "restore", "--state", "secrets", "--state", "settings", "--into", str(tmp_path / "r"), "--json", config=config
    )
    assert back.returncode == 0, back.stderr
    parts = {p["part"]: p for p in json.loads(back.stdout)["parts"]}
    assert parts["settings"]["target"] == str(tmp_path / "r" / "idp-ops.yaml")
    into_place = cli("restore", "--state", "secrets", config=config)
    assert into_place.returncode == 0, into_place.stderr
    assert "from snapshot" in into_place.stdout and "secrets ->" in into_place.stdout
    assert (secrets / "llamacpp_api_key").read_text() == f"{KEY}\n" and mode(secrets / "llamacpp_api_key") == 0o600
    assert mode(secrets) == 0o700
    no_home = cli("restore", "--state", "dagster", config=config)
    assert no_home.returncode == 2 and "DAGSTER_HOME is not set" in no_home.stderr
    both = cli("restore", "llama", "--state", "secrets", config=config)
    assert both.returncode == 2 and "not both" in both.stderr
