"""weekly_backup_job and restore_job through Dagster, on the real Gemma GGUF, real rsync and DuckDB."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance, DefaultScheduleStatus

from idp_ops.backup.snapshots import DATA, SNAPSHOTS, list_snapshots
from idp_ops.definitions import defs
from idp_ops.history import database as history
from idp_ops.resources import SettingsResource
from idp_ops.settings import DEMO_MODEL_FILE, DEMO_MODEL_SHA256
from idp_ops_harness.model_store import flip_bit
from idp_ops_harness.settings_files import write_settings

MARKER = ".idp-backup-volume"


@pytest.fixture
def box(tmp_path):
    """A models dir with a few small files and a backup volume with its marker."""
    models = tmp_path / "models"
    (models / "gemma").mkdir(parents=True)
    (models / "gemma" / "config.json").write_text('{"architectures": ["Gemma3ForCausalLM"]}')
    (models / "gemma" / "tokenizer.json").write_text('{"model": {"type": "BPE"}}' * 50)
    (models / "download.gguf.tmp").write_bytes(b"an interrupted download: excluded")
    backups = tmp_path / "backup"
    backups.mkdir()
    (backups / MARKER).touch()
    config = write_settings(
        tmp_path / "idp-ops.yaml",
        home=tmp_path / "home",
        models_dir=models,
        backups_dir=backups,
        backup={"scrub_runs": 1},
    )
    return models, backups, config


def run_job(name: str, tmp_path: Path, config: Path, run_config: dict | None = None):
    instance_dir = tmp_path / "dagster-home"
    instance_dir.mkdir(exist_ok=True)
    return defs.resolve_job_def(name).execute_in_process(
        instance=DagsterInstance.local_temp(tempdir=str(instance_dir)),
        resources={"settings": SettingsResource(config_file=str(config))},
        run_config=run_config,
        raise_on_error=False,
    )


def materialization(result, key: str):
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(key)]
    assert events, f"no materialization of {key}"
    return events[-1].materialization.metadata


def checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def backup_rows(home: Path):
    with history.connect(home / "data" / "history.duckdb") as con:
        return con.execute(
            "SELECT run_id, status, snapshot, files_total, files_transferred, verified_files, scrubbed_files, "
            "mismatched, missing, ok FROM backup_runs ORDER BY started_at"
        ).fetchall()


@pytest.mark.model
def test_weekly_backup_job_runs_green_with_verification_in_metadata_and_history(box, tmp_path, demo_models_dir):
    models, backups, config = box
    shutil.copy2(demo_models_dir / DEMO_MODEL_FILE, models / "gemma" / DEMO_MODEL_FILE)
    os.chmod(models / "gemma" / DEMO_MODEL_FILE, 0o644)

    result = run_job("weekly_backup_job", tmp_path, config)

    assert result.success
    manifest = materialization(result, "model_manifest")
    assert manifest["files"].value == 3 and manifest["hashed_files"].value == 3
    backup = materialization(result, "model_backup")
    snapshot = backup["snapshot"].value
    assert backup["status"].value == "ok"
    assert backup["verified_files"].value == 3 and backup["mismatched"].value == [] and backup["missing"].value == []
    assert backup["scrubbed_files"].value == 3 and backup["scrub_coverage"].value == 1.0
    assert backup["bytes_transferred"].value > 253_000_000
    assert {name: e.passed for name, e in checks(result).items()} == {
        "backup_verified": True,
        "scrub_clean": True,
        "file_count_matches": True,
    }
    copy = backups / SNAPSHOTS / snapshot / DATA / "gemma" / DEMO_MODEL_FILE
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == DEMO_MODEL_SHA256
    assert not (backups / SNAPSHOTS / snapshot / DATA / "download.gguf.tmp").exists()
    assert (tmp_path / "home" / "data" / "manifest" / "SHA256SUMS").is_file()

    # A week later, nothing changed: nothing hashed by the manifest, nothing transferred.
    again = run_job("weekly_backup_job", tmp_path, config)
    assert again.success
    assert materialization(again, "model_manifest")["hashed_files"].value == 0
    assert materialization(again, "model_backup")["files_transferred"].value == 0

    rows = backup_rows(tmp_path / "home")
    assert [r[0] for r in rows] == [result.run_id, again.run_id]
    assert rows[0][1:] == ("ok", snapshot, 3, 3, 3, 3, [], [], True)
    assert rows[1][4] == 0 and rows[1][-1] is True

    # restore_job: the deleted model comes back byte-identical from the latest snapshot.
    (models / "gemma" / DEMO_MODEL_FILE).unlink()
    restored = run_job(
        "restore_job", tmp_path, config, {"ops": {"restore_models": {"config": {"path": f"gemma/{DEMO_MODEL_FILE}"}}}}
    )
    assert restored.success
    assert hashlib.sha256((models / "gemma" / DEMO_MODEL_FILE).read_bytes()).hexdigest() == DEMO_MODEL_SHA256
    output = restored.output_for_node("restore_models")
    assert output["restored"] == [f"gemma/{DEMO_MODEL_FILE}"] and output["snapshot"] == list_snapshots(backups)[-1].name


def test_weekly_backup_job_fails_naming_the_reason_when_the_volume_is_not_mounted(box, tmp_path):
    models, backups, config = box
    (backups / MARKER).unlink()

    result = run_job("weekly_backup_job", tmp_path, config)

    assert not result.success
    failed = checks(result)
    assert set(failed) == {"backup_verified", "scrub_clean", "file_count_matches"}
    assert not any(e.passed for e in failed.values())
    assert "not a mount point" in failed["backup_verified"].description
    step_failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "refusing to back up" in step_failure[0].step_failure_data.error.message
    (row,) = backup_rows(tmp_path / "home")
    assert row[1:3] == ("failed", None) and row[-1] is False
    assert not (backups / SNAPSHOTS).exists()


def test_source_bit_rot_fails_the_run_names_the_file_and_keeps_the_good_snapshot(box, tmp_path):
    models, backups, config = box
    assert run_job("weekly_backup_job", tmp_path, config).success
    flip_bit(models / "gemma" / "tokenizer.json", 5)

    result = run_job("weekly_backup_job", tmp_path, config)

    assert not result.success
    scrub = checks(result)["scrub_clean"]
    assert not scrub.passed and "gemma/tokenizer.json" in scrub.description and "SOURCE CORRUPT" in scrub.description
    assert checks(result)["backup_verified"].passed
    backup = materialization(result, "model_backup")  # the snapshot was made and holds the good copy
    assert backup["source_corrupt"].value == ["gemma/tokenizer.json"]
    assert len(list_snapshots(backups)) == 2


def test_restore_job_refuses_an_unknown_snapshot_clearly(box, tmp_path):
    models, backups, config = box
    assert run_job("weekly_backup_job", tmp_path, config).success
    unknown = {"ops": {"restore_models": {"config": {"snapshot": "19990101T000000Z"}}}}
    result = run_job("restore_job", tmp_path, config, unknown)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "no snapshot named '19990101T000000Z'; available" in failure.step_failure_data.error.message


def test_weekly_backup_schedule_runs_sunday_at_three_by_default():
    schedule = defs.resolve_schedule_def("weekly_backup_schedule")
    assert schedule.cron_schedule == "0 3 * * 0"
    assert schedule.job_name == "weekly_backup_job"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    job = defs.resolve_job_def("weekly_backup_job")
    assert {key.to_user_string() for key in job.asset_layer.selected_asset_keys} >= {"model_manifest", "model_backup"}


def step_failure(result):
    return [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0].step_failure_data


def test_an_emptied_store_fails_the_run_with_the_reason_and_keeps_every_snapshot_unless_allowed(box, tmp_path):
    models, backups, config = box
    write_settings(
        config,
        home=tmp_path / "home",
        models_dir=models,
        backups_dir=backups,
        backup={"scrub_runs": 1, "keep_snapshots": 1, "keep_weekly": 0, "keep_monthly": 0},
    )
    assert run_job("weekly_backup_job", tmp_path, config).success
    kept = [s.name for s in list_snapshots(backups)]
    shutil.rmtree(models)
    models.mkdir()  # the mount point of a models disk that is not mounted

    refused = run_job("weekly_backup_job", tmp_path, config)

    assert not refused.success
    failure = step_failure(refused)
    assert "refusing to back up" in failure.error.message and "holds no files" in failure.error.message
    metadata = failure.user_failure_data.metadata
    assert metadata["refused"].value is True and "is the models disk mounted" in metadata["refused_reason"].value
    assert metadata["pruned"].value == [] and metadata["snapshot"].value == "none"
    assert not any(e.passed for e in checks(refused).values())
    assert [s.name for s in list_snapshots(backups)] == kept
    assert backup_rows(tmp_path / "home")[-1][1:3] == ("failed", None)

    allowed = run_job(
        "weekly_backup_job", tmp_path, config, {"ops": {"model_backup": {"config": {"allow_shrink": True}}}}
    )
    assert allowed.success
    backup = materialization(allowed, "model_backup")
    assert backup["status"].value == "warning" and backup["pruned"].value == []
    assert "status is warning" in backup["prune_skipped"].value
    assert [s.name for s in list_snapshots(backups)] == kept + [backup["snapshot"].value]


def test_the_snapshot_holds_the_box_state_with_the_running_dagster_instance_copied_consistently(
    box, tmp_path, monkeypatch
):
    models, backups, config = box
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster-home"))  # the instance run_job uses
    assert run_job("weekly_backup_job", tmp_path, config).success

    result = run_job("weekly_backup_job", tmp_path, config)

    assert result.success
    backup = materialization(result, "model_backup")
    assert backup["state_parts"].value == {
        "settings": "copied",
        "secrets": "absent",
        "history": "copied",
        "dagster": "copied",
        "postgres": "absent",
    }
    state = backups / SNAPSHOTS / backup["snapshot"].value / "state"
    assert (state / "settings" / config.name).read_text() == config.read_text()
    # Copied while this very run was writing to the instance: a consistent database holding the earlier run.
    with sqlite3.connect(state / "dagster" / "history" / "runs.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        run_ids = {row[0] for row in con.execute("SELECT run_id FROM runs")}
    assert backup_rows(tmp_path / "home")[0][0] in run_ids
    with duckdb.connect(str(state / "history" / "history.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM backup_runs").fetchone()[0] == 1  # the first run's row
