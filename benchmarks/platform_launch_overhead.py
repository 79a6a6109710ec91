"""Run launch overhead: the ops platform (every run its own container) against the embedded instance.

Side by side in one process, on one settings file: the embedded instance (webserver + daemon as host
processes, SQLite, the run worker a subprocess) and the platform (compose/ops: Postgres, the
DockerRunLauncher). Each launches the same cheap job (platform_housekeeping_job: one op, a few docker
calls at most) N times over GraphQL, one after the other, and reports from the run's own event log:
  - launch overhead: RUN_ENQUEUED -> the first STEP_START (queue, launcher, process/container start,
    loading the code location in the new process);
  - total: RUN_ENQUEUED -> RUN_SUCCESS.
Prints medians, ranges and the ratio platform / embedded. Needs compose/setup.sh to have run.

Usage: .venv/bin/python benchmarks/platform_launch_overhead.py [N]   (default 5)
"""

import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: idp_ops_harness

from idp_ops.models.demo_model import fetch_demo_model
from idp_ops.settings import REPO_ROOT, load_settings
from idp_ops_harness.dagster_processes import Dagster
from idp_ops_harness.graphql_queries import LAUNCH_MUTATION, LOGS_QUERY, RUN_QUERY, WORKSPACE_QUERY
from idp_ops_harness.ops_platform import OpsPlatform
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

JOB = "platform_housekeeping_job"
LOCATION = "idp_ops"

Gql = Callable[[str, dict | None], dict]


def repository_name(gql: Gql, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            entries = gql(WORKSPACE_QUERY, None)["workspaceOrError"]["locationEntries"]
            loaded = {e["name"]: e["locationOrLoadError"] for e in entries}.get(LOCATION)
            if loaded and loaded.get("repositories"):
                return loaded["repositories"][0]["name"]
        except Exception:  # the webserver is still starting
            pass
        time.sleep(2)
    raise SystemExit(f"code location {LOCATION} not loaded after {timeout_s:.0f} s")


def one_run(gql: Gql, repository: str) -> tuple[float, float]:
    selector = {"repositoryLocationName": LOCATION, "repositoryName": repository, "jobName": JOB}
    launched = gql(LAUNCH_MUTATION, {"executionParams": {"selector": selector, "runConfigData": {}}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 300
    while (status := gql(RUN_QUERY, {"runId": run_id})["runOrError"]["status"]) not in {"SUCCESS", "FAILURE"}:
        assert time.monotonic() < deadline, f"run {run_id} still {status}"
        time.sleep(0.5)
    assert status == "SUCCESS", f"run {run_id} {status}"
    events = gql(LOGS_QUERY, {"runId": run_id})["logsForRun"]["events"]
    first = {}
    for event in events:
        if event.get("timestamp"):
            first.setdefault(event["__typename"], int(event["timestamp"]) / 1000)
    enqueued = first["RunEnqueuedEvent"]
    return first["ExecutionStepStartEvent"] - enqueued, first["RunSuccessEvent"] - enqueued


def measure(name: str, gql: Gql, rounds: int) -> list[tuple[float, float]]:
    repository = repository_name(gql)
    one_run(gql, repository)  # warm-up, not counted: first imports, first container from the image
    results = []
    for index in range(rounds):
        overhead, total = one_run(gql, repository)
        results.append((overhead, total))
        print(f"{name:<9} run {index + 1}: launch overhead {overhead:5.1f} s, total {total:5.1f} s", flush=True)
    return results


def summary(name: str, values: list[float]) -> str:
    return f"median {statistics.median(values):5.1f} s ({min(values):.1f}-{max(values):.1f})"


def main(rounds: int) -> None:
    repo = load_settings(REPO_ROOT / "idp-ops.yaml") if (REPO_ROOT / "idp-ops.yaml").exists() else load_settings()
    models_dir = fetch_demo_model(REPO_ROOT / ".idp-data" / "models").parent
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        config = write_settings(
            tmp_path / "idp-ops.yaml",
            **cpu_stack_settings(tmp_path / "home", models_dir, repo.llama_server_image, "idp-ops-bench-launch"),
        )
        dagster_home = tmp_path / "dagster_home"
        dagster_home.mkdir()
        shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
        embedded = Dagster(tmp_path, dagster_home, config)
        embedded.start()
        try:
            results["embedded"] = measure("embedded", lambda q, v: embedded.gql(q, v or {}), rounds)
        finally:
            embedded.stop()
        platform = OpsPlatform(tmp_path, config, name="idp-ops-bench-launch")
        try:
            platform.up()
            results["platform"] = measure("platform", lambda q, v: platform.gql(q, v or {}), rounds)
        finally:
            platform.down()
    for name, runs in results.items():
        print(
            f"{name:<9} launch overhead {summary(name, [r[0] for r in runs])}; total {summary(name, [r[1] for r in runs])}"
        )
    ratio = statistics.median(r[0] for r in results["platform"]) / statistics.median(r[0] for r in results["embedded"])
    print(f"platform / embedded launch overhead: {ratio:.2f}x (n={rounds} each)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
