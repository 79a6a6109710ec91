"""The whole code location resolves, and its public names stay put (a rename shows up here in review)."""

from dagster import AssetKey

from idp_ops.definitions import defs

ASSETS = {
    "api_keys",
    "compose_audit",
    "stack_deployment",  # deploy
    "benchmark_results",
    "load_test_results",  # nightly validation
    "context_depth_results",
    "prefix_cache_results",
    "model_downloads",
    "model_files",
    "model_manifest",
    "model_backup",  # models and backups
    "thermal_log",  # thermal watch
    "memory_bandwidth",
    "throughput_ceilings",
    "performance_trend",
    "roi_report",  # physics and reports
}
CHECKS = {
    ("compose_audit", "no_high_findings"),
    ("benchmark_results", "ttft_p50"),
    ("benchmark_results", "ttft_p95"),
    ("benchmark_results", "decode_throughput"),
    ("benchmark_results", "success_at_concurrency"),
    ("benchmark_results", "auth_enforced"),
    ("benchmark_results", "gpu_utilization"),
    ("benchmark_results", "goodput"),
    ("context_depth_results", "context_depth_measured"),
    ("prefix_cache_results", "prefix_cache_works"),
    ("load_test_results", "no_failed_requests"),
    ("load_test_results", "no_oom"),
    ("model_files", "no_findings"),
    ("model_backup", "backup_verified"),
    ("model_backup", "scrub_clean"),
    ("model_backup", "file_count_matches"),
    ("thermal_log", "samples_are_fresh"),
    ("throughput_ceilings", "criteria_attainable"),
    ("performance_trend", "no_performance_regression"),
}
JOBS = {
    "deploy_job",
    "containment_job",
    "nightly_validation_job",
    "models_job",
    "switch_model_job",  # models/switch.py
    "weekly_backup_job",
    "restore_job",
    "thermal_ingest_job",
    "reports_job",
    "platform_housekeeping_job",  # platform/defs.py
}
SCHEDULES = {
    ("nightly_validation_schedule", "0 2 * * *"),
    ("weekly_backup_schedule", "0 3 * * 0"),
    ("thermal_ingest_schedule", "*/15 * * * *"),
    ("reports_schedule", "0 6 * * *"),
    ("platform_housekeeping_schedule", "30 5 * * *"),
}

SENSORS = {"thermal_sensor", "run_failure_alert_sensor", "deadman_sensor"}


def test_code_location_resolves_with_expected_assets_checks_jobs_schedules_and_sensors():
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == ASSETS
    assert {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys} == CHECKS
    assert {job.name for job in defs.resolve_all_job_defs()} - {"__ASSET_JOB"} == JOBS
    assert {(s.name, s.cron_schedule) for s in defs.schedules} == SCHEDULES
    assert all(s.default_status.value == "RUNNING" for s in defs.schedules)
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == SENSORS
    assert all(s.default_status.value == "RUNNING" for s in sensors.values())
    sensor = sensors["thermal_sensor"]
    assert sensor.job_name == "containment_job"


def test_deploy_job_runs_keys_then_audit_then_deployment():
    job = defs.resolve_job_def("deploy_job")
    assert job.tags.get("idp_ops/stack") == "exclusive"
    deployment = defs.resolve_assets_def(AssetKey("stack_deployment"))
    assert set(deployment.asset_deps[AssetKey("stack_deployment")]) == {AssetKey("api_keys"), AssetKey("compose_audit")}
    audit = defs.resolve_assets_def(AssetKey("compose_audit"))
    (spec,) = audit.check_specs
    assert spec.blocking


def test_containment_job_runs_in_process_without_queue_tags():
    job = defs.resolve_job_def("containment_job")
    assert job.executor_def.name == "in_process"
    assert "idp_ops/stack" not in job.tags


def test_switch_model_job_takes_the_stack_exclusively():
    job = defs.resolve_job_def("switch_model_job")
    assert job.tags.get("idp_ops/stack") == "exclusive" and job.tags.get("idp_ops/heavy") == "true"
    assert job.executor_def.name == "in_process"
    fields = job.graph.node_named("switch_model").definition.config_schema.config_type.fields
    assert set(fields) == {"endpoint", "model"} and all(f.is_required for f in fields.values())


def test_jobs_select_their_domains():
    def keys(job_name):
        return {k.to_user_string() for k in defs.resolve_job_def(job_name).asset_layer.executable_asset_keys}

    assert keys("deploy_job") == {"api_keys", "compose_audit", "stack_deployment"}
    assert keys("nightly_validation_job") == {
        "benchmark_results",
        "context_depth_results",
        "prefix_cache_results",
        "load_test_results",
    }
    assert keys("weekly_backup_job") == {"model_manifest", "model_backup"}
    assert "model_files" in keys("reports_job") and "model_downloads" not in keys("reports_job")


def test_the_code_location_loads_as_dagster_loads_it():
    """`dagster definitions validate` finds exactly one Definitions at the module's top level."""
    import subprocess
    import sys
    from pathlib import Path

    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "idp_ops.definitions"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Validation successful for code location idp_ops.definitions" in result.stdout + result.stderr
