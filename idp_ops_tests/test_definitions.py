"""The whole code location resolves, and its public names stay put (a rename shows up here in review)."""

from dagster import AssetKey

from idp_ops.definitions import defs


def test_code_location_resolves_with_expected_assets_checks_and_jobs():
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {
        "api_keys",
        "compose_audit",
        "stack_deployment",
    }
    assert {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys} == {
        ("compose_audit", "no_high_findings")
    }
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"deploy_job", "containment_job"}


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
