"""What the ops platform leaves behind on a box, pruned: finished run containers and superseded images.

The DockerRunLauncher never removes a run container: thermal_ingest alone starts 96 a day, so a year
leaves ~35,000 exited containers on the engine. Removing them at once (auto_remove) would lose what an
operator needs after a bad night: the exit code, OOMKilled, `docker logs`. So finished run containers
are kept for a number of days, then removed. Only containers carrying this platform's project label
(set by compose/ops/platform_env.py) are ever touched; a running container never is.

Each `up.sh` after a code change builds a new `idp-ops/ops:<hash>` image (~1 GB shared layers, a few
MB each on top): tags of that repository that no container uses and that are not the image this run
came from are removed. No Dagster import: the job in defs.py calls this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from idp_ops.stack.compose import DockerUnavailable, docker_cli
from idp_ops.stack.engine import DockerEngine

PROJECT_LABEL = "idp-ops/ops-project"
OPS_IMAGE_REPOSITORY = "idp-ops/ops"
FINISHED_STATES = ("exited", "dead")


class HousekeepingError(RuntimeError):
    pass


@dataclass
class PruneReport:
    removed_containers: list[str] = field(default_factory=list)
    kept_containers: int = 0  # finished, but younger than the cutoff
    removed_images: list[str] = field(default_factory=list)
    kept_images: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "removed_containers": len(self.removed_containers),
            "kept_finished_containers": self.kept_containers,
            "removed_images": self.removed_images,
            "kept_images": self.kept_images,
            "problems": self.problems,
        }


def _docker(engine: DockerEngine, *args: str, timeout: float = 120) -> str:
    result = docker_cli(*args, timeout=timeout, engine=engine)
    if result.returncode != 0:
        raise HousekeepingError(f"`docker {' '.join(args[:2])}` failed on {engine.label()}: {result.stderr.strip()}")
    return result.stdout


def _parse_time(value: str) -> datetime | None:
    # dockerd writes nanoseconds (2026-11-30T01:59:53.123456789Z); never-finished is year 1.
    if not value or value.startswith("0001-"):
        return None
    head, _, rest = value.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(head).replace(tzinfo=UTC)
    return stamp + timedelta(microseconds=int((rest + "000000")[:6])) if rest else stamp


def prune_run_containers(
    engine: DockerEngine, project: str, *, keep_days: float, now: datetime | None = None, report: PruneReport
) -> PruneReport:
    """Remove this platform's run containers that finished more than ``keep_days`` ago."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=keep_days)
    listed = _docker(
        engine, "ps", "-a", "-q", "--no-trunc", "--filter", f"label={PROJECT_LABEL}={project}",
        *(arg for state in FINISHED_STATES for arg in ("--filter", f"status={state}")),
    )  # fmt: skip
    ids = listed.split()
    if not ids:
        return report
    stale = []
    for container in json.loads(_docker(engine, "inspect", *ids)):
        state = container["State"]
        finished = _parse_time(state.get("FinishedAt", ""))
        # Belt and braces: only a container that is not running and finished before the cutoff.
        if state.get("Running") or finished is None or finished > cutoff:
            report.kept_containers += 1
        else:
            stale.append(container["Id"])
    for start in range(0, len(stale), 100):  # argv stays short on a box with thousands
        batch = stale[start : start + 100]
        result = docker_cli("rm", *batch, timeout=300, engine=engine)
        if result.returncode != 0:
            report.problems.append(f"docker rm: {result.stderr.strip()}")
        removed = set(result.stdout.split())
        report.removed_containers += [c for c in batch if c in removed]
    return report


def prune_ops_images(
    engine: DockerEngine, keep: set[str], *, repository: str = OPS_IMAGE_REPOSITORY, report: PruneReport
) -> PruneReport:
    """Remove ``repository``'s tags that no container (in any state) uses, except those in ``keep``."""
    listed = _docker(engine, "images", repository, "--format", "{{.Repository}}:{{.Tag}}").split()
    tags = [t for t in listed if not t.endswith(":<none>")]
    if not tags:
        return report
    # What each container (any state) was created from: a tag, or the image id once that tag moved on.
    used = set(_docker(engine, "ps", "-a", "--no-trunc", "--format", "{{.Image}}").split())
    image_ids = dict(zip(tags, _docker(engine, "image", "inspect", "--format", "{{.Id}}", *tags).split(), strict=True))
    for tag in tags:
        if tag in keep or tag in used or image_ids[tag] in used:
            report.kept_images.append(tag)
            continue
        result = docker_cli("rmi", tag, timeout=300, engine=engine)
        if result.returncode == 0:
            report.removed_images.append(tag)
        else:  # in use by something we did not see, or a race with a new build: keep, say why
            report.kept_images.append(tag)
            report.problems.append(f"docker rmi {tag}: {result.stderr.strip()}")
    return report


def housekeep(
    engine: DockerEngine, project: str, *, keep_days: float, current_image: str | None, now: datetime | None = None
) -> PruneReport:
    """Both prunes; a dockerd that does not answer is a HousekeepingError (the run fails, nothing half done)."""
    report = PruneReport()
    try:
        prune_run_containers(engine, project, keep_days=keep_days, now=now, report=report)
        prune_ops_images(engine, {current_image} if current_image else set(), report=report)
    except DockerUnavailable as exc:
        raise HousekeepingError(str(exc)) from exc
    return report
