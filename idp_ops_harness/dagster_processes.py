"""The Dagster webserver and daemon as an operator starts them, for end-to-end tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from idp_ops.settings import REPO_ROOT
from idp_ops_harness.ports import free_port

BIN = Path(os.environ.get("VIRTUAL_ENV", REPO_ROOT / ".venv")) / "bin"
STOP_GRACE_S = 20


class Dagster:
    """The webserver and the daemon, as an operator starts them, with their output in files."""

    def __init__(self, tmp_path: Path, dagster_home: Path, config_file: Path, workspace: Path | None = None):
        self.workspace = str(workspace or "workspace.yaml")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
        self.env.update(DAGSTER_HOME=str(dagster_home), IDP_CONFIG=str(config_file), PYTHONUNBUFFERED="1")
        self.logs = {"webserver": tmp_path / "webserver.log", "daemon": tmp_path / "daemon.log"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.client = httpx.Client(timeout=60)

    def start(self, *, webserver: bool = True, daemon: bool = True) -> None:
        commands = {
            "webserver": [
                str(BIN / "dagster-webserver"),
                "-w",
                self.workspace,
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            "daemon": [str(BIN / "dagster-daemon"), "run", "-w", self.workspace],
        }
        wanted = {"webserver": webserver, "daemon": daemon}
        for name, command in commands.items():
            if not wanted[name]:
                continue
            with self.logs[name].open("wb") as out:
                # Own process group: stop() signals the server and the code servers it spawned, nothing else.
                self.procs[name] = subprocess.Popen(
                    command, cwd=REPO_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"dagster {name} exited with {proc.returncode} (its output is printed below)")

    def gql(self, query: str, variables: dict | None = None) -> dict:
        response = self.client.post(self.url, json={"query": query, "variables": variables or {}})
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), f"GraphQL errors: {body['errors']}"
        return body["data"]

    def stop(self) -> None:
        self.client.close()
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)  # stragglers in the group (code servers), if any
            if proc.poll() is None:
                proc.wait(timeout=10)

    def tails(self, lines: int = 60) -> str:
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace") if path.exists() else "(no output)"
            parts.append(f"----- {name} ({path}) last {lines} lines -----\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
