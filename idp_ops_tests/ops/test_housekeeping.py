"""Pruning what the ops platform leaves behind, on the real dockerd: only this platform's finished run
containers past the cutoff, only unused superseded images; never a running container, never another
platform's, never the image the run came from, never an image a container still uses."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance, RunConfig

from idp_ops.definitions import defs
from idp_ops.platform.defs import HousekeepingConfig
from idp_ops.platform.housekeeping import (
    PROJECT_LABEL,
    HousekeepingError,
    PruneReport,
    housekeep,
    prune_ops_images,
)
from idp_ops.stack.engine import DockerEngine
from idp_ops_harness.projects import unique_project

pytestmark = pytest.mark.docker

IMAGE = "idp-ops/postgres:15"  # built by compose/setup.sh; any local image with /bin/true and sleep


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=True).stdout.strip()


def run_container(project: str, command: list[str], *, detach: bool = False) -> str:
    created = docker("create", "--label", f"{PROJECT_LABEL}={project}", "--entrypoint", command[0], IMAGE, *command[1:])
    if detach:
        docker("start", created)
    else:
        docker("start", "-a", created)
    return created


def exists(ref: str, kind: str = "container") -> bool:
    return subprocess.run(["docker", kind, "inspect", ref], capture_output=True, timeout=60).returncode == 0


@pytest.fixture
def projects():
    mine, other = unique_project("idp-ops-housekeeping"), unique_project("idp-ops-other-platform")
    yield mine, other
    for project in (mine, other):
        ids = docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}").split()
        if ids:
            docker("rm", "-f", *ids)


def test_only_this_platforms_old_finished_run_containers_go(projects):
    mine, other = projects
    finished = [run_container(mine, ["true"]) for _ in range(3)]
    running = run_container(mine, ["sleep", "300"], detach=True)
    others = run_container(other, ["true"])
    engine = DockerEngine()

    # Finished just now: younger than a 7-day cutoff, all kept.
    report = housekeep(engine, mine, keep_days=7, current_image=None)
    assert report.removed_containers == [] and report.kept_containers == 3
    assert all(exists(c) for c in [*finished, running, others])

    # Eight days later: the finished ones of this platform go; the running one and the other platform's stay.
    later = datetime.now(UTC) + timedelta(days=8)
    report = housekeep(engine, mine, keep_days=7, current_image=None, now=later)
    assert sorted(report.removed_containers) == sorted(finished)  # `docker create` printed the full ids
    assert not any(exists(c) for c in finished)
    assert exists(running) and exists(others)


def test_superseded_images_go_unless_current_or_in_use(projects):
    mine, _ = projects
    repository = f"{mine}/ops"  # never the real idp-ops/ops: other tests run on these images
    tags = {name: f"{repository}:{name}" for name in ("old", "current", "in-use")}
    # Three distinct images, as three builds would leave (a commit with its own label: no new layer data).
    base = docker("create", "--entrypoint", "true", IMAGE)
    user = None
    try:
        for name, tag in tags.items():
            docker("commit", "--change", f"LABEL idp-test-build={name}", base, tag)
        user = docker("create", "--label", f"{PROJECT_LABEL}={mine}", "--entrypoint", "true", tags["in-use"])
        report = prune_ops_images(DockerEngine(), {tags["current"]}, repository=repository, report=PruneReport())
        assert report.removed_images == [tags["old"]], report
        assert sorted(report.kept_images) == sorted([tags["current"], tags["in-use"]])
        assert not exists(tags["old"], "image") and exists(tags["current"], "image") and exists(IMAGE, "image")

        docker("rm", user)  # its user gone (pruned), in-use is superseded too
        report = prune_ops_images(DockerEngine(), {tags["current"]}, repository=repository, report=PruneReport())
        assert report.removed_images == [tags["in-use"]] and report.kept_images == [tags["current"]]
    finally:
        subprocess.run(["docker", "rm", "-f", base, *([user] if user else [])], capture_output=True, timeout=60)
        subprocess.run(["docker", "rmi", *tags.values()], capture_output=True, timeout=60)


def test_an_unreachable_engine_is_a_clear_error(tmp_path):
    with pytest.raises(HousekeepingError, match="not reachable|failed"):
        housekeep(DockerEngine(f"unix://{tmp_path}/no.sock"), "idp-ops-platform", keep_days=7, current_image=None)


def test_the_job_outside_the_platform_prunes_nothing_and_succeeds(monkeypatch, projects):
    mine, _ = projects
    finished = run_container(mine, ["true"])
    monkeypatch.delenv("IDP_OPS_PROJECT", raising=False)
    job = defs.get_job_def("platform_housekeeping_job")
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            instance=instance,
            run_config=RunConfig(ops={"prune_platform_leftovers": HousekeepingConfig(keep_days=0)}),
        )
    assert result.success
    assert result.output_for_node("prune_platform_leftovers") == {"platform": None}
    assert exists(finished)
