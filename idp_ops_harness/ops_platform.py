"""The ops platform in containers (compose/ops) as an operator brings it up, for end-to-end tests.

Up through compose/ops/up.sh (which builds the idp-ops and Postgres images when they are missing, so a
fresh clone works), under a project name and loopback ports of this test run; GraphQL on its webserver;
down with everything it made: the services, their named volumes, and the run containers the
DockerRunLauncher left behind (it never removes them; they carry the project's label).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from idp_ops.settings import REPO_ROOT, Settings
from idp_ops.stack.deploy import compose_project
from idp_ops_harness.graphql_queries import (
    DAEMON_HEALTH_QUERY,
    LAUNCH_MUTATION,
    LOGS_QUERY,
    RUN_QUERY,
    RUNS_QUERY,
    SCHEDULES_QUERY,
    SENSOR_TICKS_QUERY,
    WORKSPACE_QUERY,
)
from idp_ops_harness.ports import free_port
from idp_ops_harness.projects import unique_project

UP_SCRIPT = REPO_ROOT / "compose" / "ops" / "up.sh"
COMPOSE_FILE = REPO_ROOT / "compose" / "ops" / "docker-compose.yml"
PROJECT_LABEL = "idp-ops/ops-project"  # set on run containers by compose/ops/platform_env.py
# A cold image build (debootstrap base + locked dependencies) takes minutes; a cached one is instant.
UP_TIMEOUT_S = 1800


class OpsPlatform:
    """compose/ops brought up by up.sh for one settings file, under this test run's project name."""

    def __init__(self, tmp_path: Path, config_file: Path, name: str = "idp-ops-platform"):
        self.project = unique_project(name)
        self.ui_port, self.pg_port = free_port(), free_port()
        self.config_file = Path(config_file)
        self.env_file = tmp_path / "ops-platform.env"
        self.url = f"http://127.0.0.1:{self.ui_port}/graphql"
        # IDP_* of the caller's shell must not steer the platform (the tests' settings are hermetic).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("IDP_", "COMPOSE_"))}
        self.env.update(
            IDP_CONFIG=str(self.config_file),
            IDP_OPS_PROJECT=self.project,
            IDP_OPS_UI_PORT=str(self.ui_port),
            IDP_OPS_PG_PORT=str(self.pg_port),
            IDP_OPS_ENV_FILE=str(self.env_file),
        )
        self.client = httpx.Client(timeout=60)

    # -- up / down -----------------------------------------------------------------
    def up(self, *services: str, **env: str) -> float:
        """Run up.sh (builds missing images, then `compose up --wait` of the services, all by default),
        with extra environment (IDP_OPS_GUARD=on, ...); seconds it took."""
        started = time.monotonic()
        self.env.update(env)
        result = subprocess.run(
            [str(UP_SCRIPT), *services],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise AssertionError(f"compose/ops/up.sh failed (exit {result.returncode}):\n{result.stderr[-6000:]}")
        self.up_output = result.stderr
        return time.monotonic() - started

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        command = ["docker", "compose"]
        if subprocess.run([*command, "version"], capture_output=True).returncode != 0:
            command = [str(Path(os.environ.get("VIRTUAL_ENV", REPO_ROOT / ".venv")) / "bin" / "docker-compose")]
        # The guard's profile is named so that ps, logs and down see it too (a profile only adds services).
        argv = [*command, "--env-file", str(self.env_file), "-f", str(COMPOSE_FILE), "--profile", "guard"]
        argv += ["-p", self.project, *args]
        return subprocess.run(argv, cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)

    def run_containers(self) -> list[dict]:
        """The run containers of this platform (every state), as `docker ps -a` lists them."""
        listed = subprocess.run(
            [
                "docker",
                "ps",
                "-a",
                "--no-trunc",
                "--format",
                "{{json .}}",
                "--filter",
                f"label={PROJECT_LABEL}={self.project}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]

    def wait_container(self, container_id: str, timeout_s: float = 120) -> int:
        """The exit code of a (run) container once it has stopped."""
        result = subprocess.run(
            ["docker", "wait", container_id], capture_output=True, text=True, timeout=timeout_s, check=True
        )
        return int(result.stdout.strip())

    def down(self) -> None:
        """The run containers first (they hold the data volume), then the services and volumes (`down -v`)."""
        self.client.close()
        ids = [c["ID"] for c in self.run_containers()]
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=120)
        if self.env_file.exists():
            result = self.compose("down", "-v", "--remove-orphans", "--timeout", "10")
            if result.returncode != 0:
                raise AssertionError(f"compose down of {self.project} failed:\n{result.stderr[-3000:]}")
            self.env_file.unlink()

    def stop(self) -> None:
        """`compose down` without -v: the services go, the Postgres volume and the env file stay (a box reboot)."""
        result = self.compose("down", "--timeout", "10")
        if result.returncode != 0:
            raise AssertionError(f"compose down of {self.project} failed:\n{result.stderr[-3000:]}")

    def inspect(self, service: str) -> dict:
        """`docker inspect` of one service's container."""
        ids = self.compose("ps", "-q", "-a", service, timeout=60).stdout.split()
        assert len(ids) == 1, f"expected one {service} container in {self.project}, got {ids}"
        listed = subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True, timeout=60, check=True)
        return json.loads(listed.stdout)[0]

    def crash(self, service: str) -> int:
        """SIGKILL the service's main process from the host, as a crash would (not `docker kill`, which
        counts as a manual stop and defeats the restart policy); its restart count before the crash."""
        state = self.inspect(service)
        os.kill(state["State"]["Pid"], signal.SIGKILL)
        return state["RestartCount"]

    def wait_restarted_healthy(self, service: str, restarts_before: int, timeout_s: float = 300) -> float:
        """Seconds until the service's container restarted (policy) and reports healthy again."""
        started = time.monotonic()
        deadline = started + timeout_s
        state: dict = {}
        while time.monotonic() < deadline:
            state = self.inspect(service)
            health = (state["State"].get("Health") or {}).get("Status")
            if state["RestartCount"] > restarts_before and state["State"]["Running"] and health == "healthy":
                return time.monotonic() - started
            time.sleep(1)
        raise AssertionError(f"{service} not restarted and healthy after {timeout_s:.0f} s: {state.get('State')}")

    def volumes(self) -> list[str]:
        listed = subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter", f"name={self.project}-"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return listed.stdout.split()

    def logs(self, lines: int = 80) -> str:
        if not self.env_file.exists():
            return "(the platform never got an env file)"
        return self.compose("logs", "--no-color", "--tail", str(lines), timeout=60).stdout

    # -- GraphQL -------------------------------------------------------------------
    def gql(self, query: str, variables: dict | None = None) -> dict:
        response = self.client.post(self.url, json={"query": query, "variables": variables or {}})
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), f"GraphQL errors: {body['errors']}"
        return body["data"]

    def wait_for_location(self, location: str, timeout_s: float = 180) -> dict:
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                workspace = self.gql(WORKSPACE_QUERY)["workspaceOrError"]
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(2)
                continue
            assert workspace["__typename"] == "Workspace", f"workspace failed to load: {workspace}"
            entries = {e["name"]: e for e in workspace["locationEntries"]}
            assert location in entries, f"the platform's workspace has locations {sorted(entries)}, not {location!r}"
            loaded = entries[location]["locationOrLoadError"]
            if loaded is not None:
                assert loaded["__typename"] == "RepositoryLocation", (
                    f"code location {location} failed to load:\n{loaded.get('message')}\n"
                    + "".join(loaded.get("stack") or [])
                )
                return loaded
            last = f"loadStatus {entries[location]['loadStatus']}"
            time.sleep(2)
        raise AssertionError(f"code location {location} not loaded after {timeout_s:.0f} s ({last})")

    def launch(self, location: str, repository: str, job: str, run_config: dict | None = None) -> str:
        launch = self.gql(
            LAUNCH_MUTATION,
            {
                "executionParams": {
                    "selector": {"repositoryLocationName": location, "repositoryName": repository, "jobName": job},
                    "runConfigData": run_config or {},
                }
            },
        )["launchRun"]
        assert launch["__typename"] == "LaunchRunSuccess", f"launchRun of {job} failed: {launch}"
        return launch["run"]["runId"]

    def run(self, run_id: str) -> dict:
        run = self.gql(RUN_QUERY, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", f"run {run_id} not found: {run}"
        return run

    def wait_for_run(self, run_id: str, timeout_s: float = 400) -> str:
        deadline = time.monotonic() + timeout_s
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.run(run_id)["status"]
            if status in {"SUCCESS", "FAILURE", "CANCELED"}:
                return status
            time.sleep(2)
        raise AssertionError(f"run {run_id} still {status} after {timeout_s:.0f} s")

    def runs(self, job_name: str | None = None) -> list[dict]:
        """Every run the instance (Postgres) holds, newest first; one job's when named."""
        filter_ = {"pipelineName": job_name} if job_name else {}
        runs = self.gql(RUNS_QUERY, {"filter": filter_})["runsOrError"]
        assert runs["__typename"] == "Runs", f"runs query failed: {runs}"
        return runs["results"]

    def sensor_ticks(self, location: str, repository: str, sensor: str) -> list[dict]:
        selector = {"repositoryLocationName": location, "repositoryName": repository, "sensorName": sensor}
        found = self.gql(SENSOR_TICKS_QUERY, {"selector": selector})["sensorOrError"]
        assert found["__typename"] == "Sensor", f"sensor {sensor} not found: {found}"
        return found["sensorState"]["ticks"]

    def schedule_states(self, location: str, repository: str) -> dict[str, str]:
        selector = {"repositoryLocationName": location, "repositoryName": repository}
        found = self.gql(SCHEDULES_QUERY, {"selector": selector})["schedulesOrError"]
        assert found["__typename"] == "Schedules", f"schedules query failed: {found}"
        return {s["name"]: s["scheduleState"]["status"] for s in found["results"]}

    def daemon_health(self) -> dict[str, bool]:
        statuses = self.gql(DAEMON_HEALTH_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
        return {s["daemonType"]: s["healthy"] for s in statuses if s["required"]}

    def events(self, run_id: str) -> list[dict]:
        logs = self.gql(LOGS_QUERY, {"runId": run_id})["logsForRun"]
        assert logs["__typename"] == "EventConnection", f"no event log for run {run_id}: {logs}"
        return logs["events"]

    def errors(self, run_id: str) -> str:
        lines = []
        for event in self.events(run_id):
            error = (event.get("error") or {}).get("message")
            if event.get("level") in ("ERROR", "CRITICAL") or error or "Failure" in event["__typename"]:
                lines.append(f"[{event['__typename']} {event.get('stepKey') or ''}] {event.get('message', '')}")
                if error:
                    lines.append(f"    {error.strip()}")
        return "\n".join(lines) or "(no error events)"


def compose_working_dirs(project: str) -> set[str]:
    """Where compose ran for each container of a project (its working-dir label): which machine's paths made it."""
    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}", "--format",
         '{{.Label "com.docker.compose.project.working_dir"}}'],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )  # fmt: skip
    return set(listed.stdout.split())


@contextmanager
def torn_down_after(platform: OpsPlatform, stack: Settings) -> Iterator[OpsPlatform]:
    """One test's platform: its services' logs printed when the test fails; then the stack it drove and the
    platform itself torn down, and nothing of the platform left (run containers, volumes)."""
    started = time.monotonic()
    try:
        yield platform
    except BaseException:
        print(platform.logs())
        raise
    finally:
        try:
            compose_project(stack).down()
        finally:
            platform.down()
            assert not platform.run_containers(), "run containers left behind"
            assert not platform.volumes(), f"volumes left behind: {platform.volumes()}"
            print(f"torn down; {time.monotonic() - started:.1f} s in all")
