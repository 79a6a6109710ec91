"""Compose project names unique to this test run, and the cleanup of what a run leaves.

A constant name lets a crashed run's containers collide with the next run's (ports,
names, a stale key file); a name carrying this run's token cannot, and the session
fixture in conftest.py removes every project of this run at the end, passed or not.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

RUN_TOKEN = f"t{os.getpid():x}{uuid.uuid4().hex[:4]}"


def unique_project(name: str) -> str:
    return f"{name}-{RUN_TOKEN}"


def remove_projects_of_this_run() -> list[str]:
    """Remove the containers and networks of every compose project named with this run's token."""
    listed = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{json .}}", "--filter", "label=com.docker.compose.project"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    projects = set()
    for line in listed.stdout.splitlines():
        labels = dict(item.split("=", 1) for item in json.loads(line).get("Labels", "").split(",") if "=" in item)
        project = labels.get("com.docker.compose.project", "")
        if project.endswith(RUN_TOKEN):
            projects.add(project)
    for project in sorted(projects):
        containers = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        if containers:
            subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, timeout=120)
        subprocess.run(
            ["docker", "network", "prune", "-f", "--filter", f"label=com.docker.compose.project={project}"],
            capture_output=True,
            timeout=60,
        )
    return sorted(projects)
