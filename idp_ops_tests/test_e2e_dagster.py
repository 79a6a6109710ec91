"""End to end through Dagster itself: webserver + daemon, deploy_job launched over GraphQL.

What this proves that the in-process tests cannot: the code location loads from
workspace.yaml in the processes an operator starts, the QueuedRunCoordinator in
the repo's dagster.yaml dequeues a run (so the daemon works with this
instance config), the run worker sees the settings through IDP_CONFIG, and the
deploy materializes ``stack_deployment`` against a real CPU stack.
"""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from idp_ops.settings import REPO_ROOT, load_settings
from idp_ops.stack.deploy import compose_project
from idp_ops_harness.dagster_processes import Dagster
from idp_ops_harness.graphql_queries import LAUNCH_MUTATION, LOGS_QUERY, RUN_QUERY, WORKSPACE_QUERY
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

LOCATION = "idp_ops"
LOAD_TIMEOUT_S = 180
RUN_TIMEOUT_S = 300
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


ASSET_QUERY = """
query Asset($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset { assetMaterializations(limit: 1) { runId timestamp } }
    ... on Error { message }
  }
}
"""


def _wait_for_location(dagster: Dagster) -> dict:
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        dagster.check_alive()
        try:
            data = dagster.gql(WORKSPACE_QUERY)
        except (httpx.HTTPError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(2)
            continue
        workspace = data["workspaceOrError"]
        assert workspace["__typename"] == "Workspace", f"workspace failed to load: {workspace}"
        entries = {e["name"]: e for e in workspace["locationEntries"]}
        assert LOCATION in entries, f"workspace.yaml yields locations {sorted(entries)}, not {LOCATION!r}"
        entry = entries[LOCATION]
        location = entry["locationOrLoadError"]
        if location is not None:
            assert location["__typename"] == "RepositoryLocation", (
                f"code location {LOCATION} failed to load:\n{location.get('message')}\n{''.join(location.get('stack') or [])}"
            )
            return location
        last = f"loadStatus {entry['loadStatus']}"
        time.sleep(2)
    raise AssertionError(f"code location {LOCATION} not loaded after {LOAD_TIMEOUT_S} s ({last})")


def _wait_for_run(dagster: Dagster, run_id: str) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = "unknown"
    while time.monotonic() < deadline:
        dagster.check_alive()
        run = dagster.gql(RUN_QUERY, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", f"run {run_id} not found: {run}"
        status = run["status"]
        if status in TERMINAL:
            return status
        time.sleep(3)
    raise AssertionError(f"run {run_id} still {status} after {RUN_TIMEOUT_S} s")


def _run_errors(dagster: Dagster, run_id: str) -> str:
    logs = dagster.gql(LOGS_QUERY, {"runId": run_id})["logsForRun"]
    if logs["__typename"] != "EventConnection":
        return f"(no event log: {logs})"
    lines = []
    for event in logs["events"]:
        error = (event.get("error") or {}).get("message")
        if event.get("level") in ("ERROR", "CRITICAL") or error or "Failure" in event["__typename"]:
            lines.append(f"[{event['__typename']} {event.get('stepKey') or ''}] {event.get('message', '')}")
            if error:
                lines.append(f"    {error.strip()}")
    return "\n".join(lines) or "(no error events)"


def test_deploy_job_through_webserver_and_daemon(tmp_path, llama_image, demo_models_dir):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    config_file = write_settings(
        tmp_path / "idp-ops.yaml",
        **cpu_stack_settings(tmp_path / "home", demo_models_dir, llama_image, project="idp-ops-e2e"),
    )
    settings = load_settings(config_file)

    dagster = Dagster(tmp_path, dagster_home, config_file)
    started = time.monotonic()
    try:
        dagster.start()
        location = _wait_for_location(dagster)
        print(f"\ncode location loaded after {time.monotonic() - started:.1f} s")
        repos = location["repositories"]
        assert len(repos) == 1, f"expected one repository in {LOCATION}, got {[r['name'] for r in repos]}"
        repository = repos[0]
        jobs = {j["name"] for j in repository["jobs"]}
        assert {"deploy_job", "containment_job"} <= jobs, f"jobs in {repository['name']}: {sorted(jobs)}"

        launch = dagster.gql(
            LAUNCH_MUTATION,
            {
                "executionParams": {
                    "selector": {
                        "repositoryLocationName": LOCATION,
                        "repositoryName": repository["name"],
                        "jobName": "deploy_job",
                    },
                    "runConfigData": {},
                }
            },
        )["launchRun"]
        assert launch["__typename"] == "LaunchRunSuccess", f"launchRun failed: {launch}"
        run_id = launch["run"]["runId"]
        print(f"launched deploy_job run {run_id} ({launch['run']['status']})")

        status = _wait_for_run(dagster, run_id)
        print(f"run {run_id} {status} after {time.monotonic() - started:.1f} s")
        if status != "SUCCESS":
            raise AssertionError(
                f"deploy_job run {run_id} ended {status}; errors from its event log:\n{_run_errors(dagster, run_id)}"
            )

        for asset in ("api_keys", "compose_audit", "stack_deployment"):
            result = dagster.gql(ASSET_QUERY, {"path": [asset]})["assetOrError"]
            assert result["__typename"] == "Asset", f"asset {asset}: {result}"
            materializations = result["assetMaterializations"]
            assert materializations, f"{asset} has no materialization after run {run_id}"
            assert materializations[0]["runId"] == run_id, (
                f"latest {asset} materialization belongs to run {materializations[0]['runId']}, not {run_id}"
            )

        # The stack the run deployed is really up under the test's project name.
        states = compose_project(settings).ps()
        assert {s.service for s in states if s.running} >= {"openai-standin", "llamacpp-cpu"}, states
    except BaseException:
        print(dagster.tails())
        raise
    finally:
        try:
            dagster.stop()
        finally:
            compose_project(settings).down()
