"""thermal_log ingestion, the thermal CLI, and the guard stopping the real GPU-role container."""

import csv
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance

from idp_ops.definitions import defs
from idp_ops.history import database as history
from idp_ops.resources import SettingsResource
from idp_ops.settings import load_settings
from idp_ops.stack.deploy import compose_project, deploy, read_latch
from idp_ops.stack.secrets import ensure_keys
from idp_ops.thermal.telemetry import CsvReplaySource, Sample
from idp_ops.thermal.watch import Spool
from idp_ops_harness.recorded_data import FIXTURES
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

TRACE = FIXTURES / "h200_trace.csv"


def days_ago(days: int) -> datetime:
    """10:00 UTC `days` before today: a day in the past whatever the date the tests run on."""
    return (datetime.now(UTC) - timedelta(days=days)).replace(hour=10, minute=0, second=0, microsecond=0)


def trace_rows():
    with TRACE.open() as handle:
        return list(csv.DictReader(handle))


def idp_ops(*args, config, extra_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update({"IDP_CONFIG": str(config), **(extra_env or {})})
    return subprocess.run(
        [sys.executable, "-m", "idp_ops.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_samples_are_fresh_counts_gpu_temperatures_only(tmp_path):
    config = write_settings(tmp_path / "idp-ops.yaml", home=str(tmp_path / "home"))
    settings = load_settings(config)
    now = datetime.now(UTC)
    spool = Spool(settings.thermal_spool_dir)
    spool.append(
        [
            Sample(ts=now - timedelta(hours=1), device="gpu0", source="nvml", temperature_c=50),
            Sample(ts=now, device="gpu0", source="nvml", temperature_c=None),  # blind
            Sample(ts=now, device="cpu", source="hwmon", temperature_c=60),  # fresh, but not the GPU
        ]
    )
    job = defs.resolve_job_def("thermal_ingest_job")
    (tmp_path / "dh").mkdir()

    def check():
        result = job.execute_in_process(
            instance=instance,
            partition_key=now.date().isoformat(),
            resources={"settings": SettingsResource(config_file=str(config))},
        )
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation

    with DagsterInstance.local_temp(tempdir=str(tmp_path / "dh")) as instance:
        blind = check()
        assert not blind.passed and blind.metadata["age_seconds"].value >= 3600
        spool.append([Sample(ts=now + timedelta(seconds=1), device="gpu0", source="nvml", temperature_c=51)])
        assert check().passed


def test_thermal_log_ingests_the_spool_once_and_rolls_it_up(tmp_path):
    config = write_settings(
        tmp_path / "idp-ops.yaml", home=str(tmp_path / "home"), thermal={"warn_c": 50, "contain_c": 55}
    )
    settings = load_settings(config)
    day = days_ago(3)  # the trace, replayed three days ago: a day whose samples are stale by now
    samples = CsvReplaySource(TRACE, base_time=day).samples()
    assert {s.ts.date() for s in samples} == {day.date()} and {s.ts.hour for s in samples} == {10}
    Spool(settings.thermal_spool_dir).append(samples)
    job = defs.resolve_job_def("thermal_ingest_job")
    (tmp_path / "dh").mkdir()
    with DagsterInstance.local_temp(tempdir=str(tmp_path / "dh")) as instance:
        for _ in range(2):  # a re-run of the same day adds nothing
            result = job.execute_in_process(
                instance=instance,
                partition_key=day.date().isoformat(),
                resources={"settings": SettingsResource(config_file=str(config))},
                raise_on_error=False,
            )
            assert result.success
    metadata = result.asset_materializations_for_node("thermal_log")[0].metadata
    assert metadata["spooled_samples"].value == len(samples) and metadata["new_rows"].value == 0
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and "daemon" in check.description, "samples from days ago are stale"

    rows = trace_rows()
    with history.connect(settings.history_file) as con:
        assert con.execute("SELECT count(*) FROM thermal_samples").fetchone()[0] == len(rows)
        (hour,) = con.execute("SELECT * FROM thermal_hourly").fetchall()
        names = [d[0] for d in con.description]
    hourly = dict(zip(names, hour))
    temps = [float(r["temperature"]) for r in rows]
    assert hourly["max_c"] == max(temps) and hourly["min_c"] == min(temps)
    times = [float(r["t_s"]) for r in rows]
    above = sum(times[i + 1] - times[i] for i in range(len(rows) - 1) if temps[i] >= 50)
    assert hourly["seconds_above_warn"] == pytest.approx(above, abs=0.01)
    energy = [float(r["energy_mj"]) for r in rows]
    assert hourly["energy_kwh"] == pytest.approx((energy[-1] - energy[0]) / 3.6e9, rel=1e-9)
    throttle = json.loads(hourly["throttle_seconds"])
    power_capped = sum(
        times[i + 1] - times[i] for i in range(len(rows) - 1) if int(rows[i]["clocks_event_reasons"]) & 0x4
    )
    assert throttle["sw_power_cap"] == pytest.approx(power_capped, abs=0.1)


def test_thermal_replay_cli_prints_the_policys_decisions(tmp_path):
    config = write_settings(tmp_path / "idp-ops.yaml", home=str(tmp_path / "home"))
    quiet = idp_ops("thermal", "replay", str(TRACE), "--json", config=config)
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout)["decisions"] == [], "59 °C is far below the default lines"

    scaled = idp_ops(
        "thermal",
        "replay",
        str(TRACE),
        "--json",
        config=config,
        extra_env={"IDP_THERMAL__WARN_C": "50", "IDP_THERMAL__CONTAIN_C": "55", "IDP_THERMAL__CLEAR_AFTER_S": "10"},
    )
    decisions = json.loads(scaled.stdout)["decisions"]
    assert [d["action"] for d in decisions] == ["warn", "contain", "clear"]
    assert set(decisions[0]) >= {"timestamp", "device", "action", "temperature_c", "reason"}
    assert decisions[1]["temperature_c"] >= 55


def test_thermal_import_of_an_old_plan_log_with_garbage_rows(tmp_path):
    log = tmp_path / "gpu-thermal.csv"
    log.write_text(
        "timestamp,temperature_c,power_w,utilization_pct,memory_used_mb,memory_total_mb\n"
        "2026-01-12T10:00:00-06:00,45,120.5,30,4000,16303\n"
        "2026-01-12T10:00:30-06:00,47,180.0,80,9000,16303\n"
        "not a timestamp,50,1,1,1,1\n"
        "2026-01-12T10:01:00-06:00,hot,1,1,1,1\n"
        "2026-01-12T10:01:30-06:00,49,200.1,95,9100,16303\n"
    )
    config = write_settings(tmp_path / "idp-ops.yaml", home=str(tmp_path / "home"))
    result = idp_ops("thermal", "import", str(log), "--json", config=config)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 3 and report["new_rows"] == 3 and len(report["problems"]) == 2
    again = json.loads(idp_ops("thermal", "import", str(log), "--json", config=config).stdout)
    assert again["new_rows"] == 0
    missing = tmp_path / "missing-columns.csv"
    missing.write_text("when,power_w\n2026-01-12T10:00:00Z,100\n")
    failed = idp_ops("thermal", "import", str(missing), config=config)
    assert failed.returncode == 2 and "temperature" in failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.docker
@pytest.mark.model
def test_guard_stops_the_gpu_role_container_without_any_dagster_process(tmp_path, llama_image, demo_models_dir):
    values = cpu_stack_settings(tmp_path / "home", demo_models_dir, llama_image, "idp-ops-guard")
    values["thermal"] = {"warn_c": 50, "contain_c": 55, "replay_csv": str(TRACE), "replay_rows_per_tick": 5}
    config = write_settings(tmp_path / "idp-ops.yaml", **values)
    settings = load_settings(config)
    ensure_keys(
        settings.secrets_dir, settings.key_names, owner_uid=settings.service_uid, owner_gid=settings.service_gid
    )
    project = compose_project(settings)
    try:
        deploy(settings)
        guard = idp_ops("thermal-guard", "--interval", "0.5", "--max-ticks", "8", config=config)
        assert guard.returncode == 0, guard.stderr
        assert "CONTAIN gpu0" in guard.stderr
        states = {s.service: s for s in project.ps()}
        assert not states["openai-standin"].running and states["llamacpp-cpu"].running
        latch = read_latch(settings)
        assert latch["reason"].startswith("thermal guard:") and latch["reading"]["temperature_c"] >= 55
        alerts = [json.loads(line) for line in settings.alerts_log.read_text().splitlines()]
        assert [a["action"] for a in alerts] == ["warn", "contain"] and alerts[0]["origin"] == "guard"

        redeploy = deploy(settings)
        assert redeploy.rearmed and read_latch(settings) is None
    finally:
        project.down()
