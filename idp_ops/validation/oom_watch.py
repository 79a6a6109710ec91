"""Watch a compose project's containers for out-of-memory kills while a load test runs.

The plan's "zero OOM errors" criterion. No single signal is enough:

* ``State.OOMKilled`` says the container's last death was the kernel's OOM killer, but
  newer engines clear it when the restart policy brings the container back;
* ``RestartCount`` rising proves the container died during the run, whatever the cause;
* ``docker events`` (``oom``, ``die`` with its ``exitCode``) see a death the polls miss
  between two looks; we read them incrementally at every poll, since dockerd keeps
  only its last few hundred events in memory;
* the container log since the run started: CUDA and llama.cpp report an allocation
  that fails inside the process ("out of memory", "failed to allocate", ``std::bad_alloc``)
  without anything being killed;
* the kernel's per-cgroup ``oom_kill`` counter (cgroup v2 ``memory.events``, v1
  ``memory.oom_control``) counts a worker process killed inside a container that
  survives (vLLM's engine core), which no container state shows.

Plain Python, no Dagster import; docker is driven through the CLI with timeouts
(``idp_ops.stack.compose.docker_cli``), like everything else that touches the stack.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any

from idp_ops.stack.compose import DockerUnavailable, docker_cli
from idp_ops.stack.engine import DEFAULT_ENGINE, DockerEngine

DEFAULT_INTERVAL_S = 5.0
# What servers print when an allocation fails in-process (CUDA, llama.cpp/ggml, vLLM/torch, C++).
OOM_LOG_PATTERN = re.compile(
    r"out of memory|failed to allocate|std::bad_alloc|cannot allocate memory|OutOfMemoryError", re.IGNORECASE
)
_UNREACHABLE = re.compile(
    r"Cannot connect to the Docker daemon|Is the docker daemon running|error during connect|"
    r"connection refused|no such file or directory.*docker\.sock",
    re.IGNORECASE,
)
# Lines of a log finding kept verbatim (trimmed): enough to act on, not the whole log.
_LOG_LINES_KEPT = 3
_LINE_LIMIT = 200

Docker = Callable[..., Any]  # docker_cli's signature: (*args, timeout=None) -> CompletedProcess


@dataclass
class OomFinding:
    container: str
    service: str
    # oom_killed | oom_event | restarted | exited | log | cgroup_oom_kill
    kind: str
    detail: str

    @property
    def text(self) -> str:
        return f"{self.container}: {self.detail}"


@dataclass
class OomWatchResult:
    project: str
    services: list[str]
    started_at: datetime
    finished_at: datetime
    polls: int
    findings: list[OomFinding]
    # Why docker could not be asked, once per distinct reason, in order.
    docker_errors: list[str] = field(default_factory=list)
    # Per container name: what the first and last looks saw.
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Services of the project that never had a container during the watch.
    unwatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def judged(self) -> bool:
        return not self.docker_errors

    def status_for(self, service: str | None) -> str:
        """``failed``, ``not judged`` or ``passed`` for one service (None: the whole project)."""
        findings = self.findings_for(service)
        if findings:
            return "failed"  # an OOM that was seen stands, even if docker went away afterwards
        if not self.judged or (service is not None and service in self.unwatched) or not self.containers:
            return "not judged"
        return "passed"

    @property
    def status(self) -> str:
        return self.status_for(None)

    def findings_for(self, service: str | None) -> list[OomFinding]:
        return [f for f in self.findings if service is None or f.service == service]

    def message_for(self, service: str | None) -> str:
        status = self.status_for(service)
        if status == "failed":
            return "; ".join(f.text for f in self.findings_for(service))
        if status == "not judged":
            if not self.judged:
                return "not judged: docker unreachable (" + "; ".join(self.docker_errors) + ")"
            if service is not None and service in self.unwatched:
                return f"not judged: no container of service {service} in project {self.project}"
            return f"not judged: no container of {self.services} in project {self.project}"
        names = [n for n, c in self.containers.items() if service is None or c["service"] == service]
        return f"no OOM in {', '.join(names)} over {self.polls} looks"

    @property
    def message(self) -> str:
        return self.message_for(None)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat()
        data["status"] = self.status
        data["message"] = self.message
        return data


# -- reading the kernel's counter ---------------------------------------------


def parse_oom_kill(text: str) -> int | None:
    """The ``oom_kill N`` line of cgroup v2 ``memory.events`` or v1 ``memory.oom_control``."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "oom_kill" and parts[1].isdigit():
            return int(parts[1])
    return None


def cgroup_memory_files(
    pid: int, container_id: str, *, proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> list[Path]:
    """Where the container's ``oom_kill`` counter may be, most specific first."""
    candidates: list[Path] = []
    try:
        lines = (proc_root / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        lines = []  # another PID namespace (idp-ops in a container): fall back to docker's defaults
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = path.lstrip("/")
        if hierarchy == "0" and controllers == "":
            candidates += [
                cgroup_root / relative / "memory.events",
                cgroup_root / "unified" / relative / "memory.events",
            ]
        elif "memory" in controllers.split(","):
            candidates.append(cgroup_root / "memory" / relative / "memory.oom_control")
    # cgroupfs and systemd drivers, v2 then v1.
    for relative in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
        candidates += [
            cgroup_root / relative / "memory.events",
            cgroup_root / "memory" / relative / "memory.oom_control",
        ]
    seen: set[Path] = set()
    return [c for c in candidates if not (c in seen or seen.add(c))]


def read_oom_kill(pid: int, container_id: str, **roots: Path) -> int | None:
    for path in cgroup_memory_files(pid, container_id, **roots):
        try:
            value = parse_oom_kill(path.read_text())
        except OSError:
            continue
        if value is not None:
            return value
    return None


# -- the watch -----------------------------------------------------------------


class _Unreachable(Exception):
    pass


@dataclass
class _Track:
    """What the looks at one container have gathered."""

    name: str
    service: str
    first: dict[str, Any]
    last: dict[str, Any]
    oom_killed_at: list[str] = field(default_factory=list)  # FinishedAt of each OOM-killed death seen
    exits: dict[str, int] = field(default_factory=dict)  # FinishedAt -> non-zero exit code
    # (StartedAt of an incarnation) -> (first, last) oom_kill counter seen in its cgroup
    cgroup: dict[str, list[int]] = field(default_factory=dict)
    oom_events: list[str] = field(default_factory=list)
    die_events: dict[str, int] = field(default_factory=dict)  # time -> exit code
    log_matches: list[str] = field(default_factory=list)


def _docker_time(stamp: str | None) -> datetime | None:
    if not stamp or stamp.startswith("0001-"):
        return None
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", stamp).replace("Z", "+00:00"))


class OomWatch:
    """Looks at the project's containers before, every ``interval_s`` during, and after a run.

    Use as a context manager around the run, then read :attr:`result`::

        with OomWatch("idp-ops-cpu", ["llamacpp-cpu"]) as watch:
            run_locust(...)
        watch.result.status  # passed / failed / not judged
    """

    def __init__(
        self,
        project: str,
        services: Sequence[str],
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        docker: Docker = docker_cli,
        scan_logs: bool = True,
        proc_root: Path = Path("/proc"),
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        engine: DockerEngine = DEFAULT_ENGINE,
    ):
        self.project = project
        self.services = list(dict.fromkeys(services))
        self.interval_s = interval_s
        # The location's engine, unless a caller hands in its own docker function.
        self._docker = partial(docker_cli, engine=engine) if docker is docker_cli else docker
        # A remote engine's PIDs are not ours: reading /proc/<pid> here would find another process.
        self._read_cgroups = engine.is_local
        self._scan_logs = scan_logs
        self._roots = {"proc_root": proc_root, "cgroup_root": cgroup_root}
        self._tracks: dict[str, _Track] = {}  # by container id
        self._errors: list[str] = []
        self._notes: list[str] = []
        self._polls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_events: set[tuple[str, str, int]] = set()
        self.started_at: datetime | None = None
        self._events_since: float = 0.0
        self.result: OomWatchResult | None = None

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> OomWatch:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.started_at = datetime.now(UTC)
        self._events_since = time.time()
        self.poll()  # the "before" look: restart counts and exits are judged against it
        self._thread = threading.Thread(target=self._run, name=f"oom-watch-{self.project}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def stop(self) -> OomWatchResult:
        if self.result is not None:
            return self.result
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()  # the "after" look
        if self._scan_logs:
            self._logs()
        self.result = self._compile()
        return self.result

    # -- one look ------------------------------------------------------------
    def poll(self) -> None:
        with self._lock:
            self._polls += 1
            try:
                for container in self._inspect():
                    self._observe(container)
                self._events()
            except _Unreachable as exc:
                if str(exc) not in self._errors:
                    self._errors.append(str(exc))

    def _call(self, *args: str, timeout: float | None = None):
        try:
            out = self._docker(*args, timeout=timeout)
        except DockerUnavailable as exc:
            raise _Unreachable(str(exc).splitlines()[0]) from None
        except OSError as exc:  # no docker CLI at all
            raise _Unreachable(f"docker CLI not runnable: {exc}") from None
        if out.returncode != 0 and _UNREACHABLE.search(out.stderr or ""):
            raise _Unreachable((out.stderr or "").strip().splitlines()[0][:300])
        return out

    def _inspect(self) -> list[dict]:
        listed = self._call(
            "ps", "-a", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={self.project}"
        )
        if listed.returncode != 0:
            raise _Unreachable(f"`docker ps` failed: {(listed.stderr or '').strip()[:300]}")
        ids = listed.stdout.split()
        if not ids:
            return []
        out = self._call("inspect", *ids)
        # A container removed between ps and inspect: inspect prints the others and exits 1.
        try:
            rows = json.loads(out.stdout) if out.stdout.strip() else []
        except json.JSONDecodeError:
            raise _Unreachable(f"`docker inspect` printed no JSON: {(out.stderr or '').strip()[:300]}") from None
        return [
            r
            for r in rows
            if (r.get("Config") or {}).get("Labels", {}).get("com.docker.compose.service") in self.services
        ]

    def _observe(self, container: dict) -> None:
        state = container.get("State") or {}
        cid = container.get("Id", "")
        look = {
            "at": datetime.now(UTC).isoformat(),
            "status": state.get("Status"),
            "oom_killed": bool(state.get("OOMKilled")),
            "exit_code": state.get("ExitCode"),
            "restart_count": container.get("RestartCount", 0),
            "started_at": state.get("StartedAt"),
            "finished_at": state.get("FinishedAt"),
            "pid": state.get("Pid") or 0,
        }
        track = self._tracks.get(cid)
        if track is None:
            name = (container.get("Name") or cid[:12]).lstrip("/")
            service = container["Config"]["Labels"]["com.docker.compose.service"]
            track = self._tracks[cid] = _Track(name=name, service=service, first=look, last=look)
        track.last = look
        finished = look["finished_at"] or ""
        if look["oom_killed"] and finished not in track.oom_killed_at:
            track.oom_killed_at.append(finished)
        if look["status"] in ("exited", "dead", "restarting") and look["exit_code"]:
            track.exits[finished] = look["exit_code"]
        if self._read_cgroups and look["pid"] > 0 and look["status"] == "running":
            counter = read_oom_kill(look["pid"], cid, **self._roots)
            if counter is not None:
                first_last = track.cgroup.setdefault(look["started_at"] or "", [counter, counter])
                first_last[1] = counter

    def _events(self) -> None:
        until = time.time()
        out = self._call(
            "events",
            "--since",
            f"{self._events_since:.6f}",
            "--until",
            f"{until:.6f}",
            "--filter",
            "type=container",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--format",
            "{{json .}}",
        )
        if out.returncode != 0:
            raise _Unreachable(f"`docker events` failed: {(out.stderr or '').strip()[:300]}")
        self._events_since = until
        for line in out.stdout.splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            action = event.get("Action") or event.get("status") or ""
            cid = (event.get("Actor") or {}).get("ID") or event.get("id") or ""
            when = int(event.get("timeNano") or 0)
            key = (cid, action, when)
            if key in self._seen_events or cid not in self._tracks:
                # A container first seen in an event only (created and removed between looks) is
                # not ours to judge by name; the ones we track are every container of the services.
                continue
            self._seen_events.add(key)
            stamp = datetime.fromtimestamp(when / 1e9, UTC).isoformat(timespec="seconds")
            if action == "oom":
                self._tracks[cid].oom_events.append(stamp)
            elif action == "die":
                code = (event.get("Actor") or {}).get("Attributes", {}).get("exitCode", "0")
                if code.isdigit() and int(code) != 0:
                    self._tracks[cid].die_events[stamp] = int(code)

    def _logs(self) -> None:
        assert self.started_at is not None
        since = f"{self.started_at.timestamp():.6f}"
        for cid, track in self._tracks.items():
            try:
                out = self._call("logs", "--since", since, cid, timeout=60)
            except _Unreachable as exc:
                if str(exc) not in self._errors:
                    self._errors.append(str(exc))
                return
            if out.returncode != 0:
                self._notes.append(f"{track.name}: log not readable ({(out.stderr or '').strip()[:200]})")
                continue
            # Servers write their errors to stderr; docker logs replays both streams.
            matches = [line.strip() for line in (out.stdout + out.stderr).splitlines() if OOM_LOG_PATTERN.search(line)]
            track.log_matches = matches

    # -- the verdict ---------------------------------------------------------
    def _compile(self) -> OomWatchResult:
        assert self.started_at is not None
        findings: list[OomFinding] = []
        containers: dict[str, dict[str, Any]] = {}
        for cid, t in self._tracks.items():

            def add(kind: str, detail: str, t: _Track = t) -> None:
                findings.append(OomFinding(container=t.name, service=t.service, kind=kind, detail=detail))

            if t.oom_killed_at:
                finished = max(t.oom_killed_at)
                when = _docker_time(finished)
                if when is None or when >= self.started_at:
                    add("oom_killed", f"State.OOMKilled: the OOM killer ended it at {finished[:19]}Z, during the run")
                elif t.last["status"] != "running":
                    add("oom_killed", f"down since the OOM killer ended it at {finished[:19]}Z, before the run")
                else:
                    # Older engines keep OOMKilled through a restart: an old kill, not this run's.
                    self._notes.append(
                        f"{t.name}: State.OOMKilled still set from a kill at {finished[:19]}Z, before the run "
                        "(running since; not counted)"
                    )
            if t.oom_events:
                add("oom_event", f"docker reported {len(t.oom_events)} 'oom' event(s), first at {t.oom_events[0]}")
            rise = (t.last["restart_count"] or 0) - (t.first["restart_count"] or 0)
            if rise > 0:
                add(
                    "restarted",
                    f"restarted {rise} time(s) during the run "
                    f"(RestartCount {t.first['restart_count']} -> {t.last['restart_count']})",
                )
            exits = {
                stamp: code
                for stamp, code in t.exits.items()
                if (_docker_time(stamp) or self.started_at) >= self.started_at
            }
            codes = sorted(set(exits.values()) | set(t.die_events.values()))
            if codes:
                deaths = max(len(exits), len(t.die_events))
                sigkill = " (137 = SIGKILL, what the OOM killer sends)" if 137 in codes else ""
                add("exited", f"exited {deaths} time(s) with code {', '.join(map(str, codes))}{sigkill}")
            for started, (first, last) in t.cgroup.items():
                began = _docker_time(started)
                base = 0 if began is not None and began >= self.started_at else first
                if last > base:
                    add(
                        "cgroup_oom_kill",
                        f"the kernel killed {last - base} process(es) in its memory cgroup (oom_kill {base} -> {last})",
                    )
            if t.log_matches:
                shown = "; ".join(repr(m[:_LINE_LIMIT]) for m in t.log_matches[:_LOG_LINES_KEPT])
                add("log", f"{len(t.log_matches)} log line(s) since the run began report memory errors: {shown}")
            containers[t.name] = {
                "service": t.service,
                "id": cid[:12],
                "status": t.last["status"],
                "restart_count_before": t.first["restart_count"],
                "restart_count_after": t.last["restart_count"],
                "oom_killed": t.last["oom_killed"],
                "exit_code": t.last["exit_code"],
                "cgroup_oom_kill": dict(t.cgroup) or None,
            }
        if not self._read_cgroups:
            self._notes.append("the cgroup oom_kill counter is not read: the Docker engine is on another machine")
        elif self._tracks and not any(t.cgroup for t in self._tracks.values()):
            self._notes.append("the cgroup oom_kill counter was not readable for any container (other namespace?)")
        watched = {t.service for t in self._tracks.values()}
        return OomWatchResult(
            project=self.project,
            services=self.services,
            started_at=self.started_at,
            finished_at=datetime.now(UTC),
            polls=self._polls,
            findings=findings,
            docker_errors=list(self._errors),
            containers=containers,
            unwatched=[s for s in self.services if s not in watched],
            notes=list(self._notes),
        )


# -- history ---------------------------------------------------------------------


def record_oom_watch(con, night: date, endpoint: str, service: str | None, result: OomWatchResult) -> None:
    """One row per endpoint and night in ``oom_watch`` (schema version 4); a re-run replaces it."""
    from idp_ops.history import database as history

    status = result.status_for(service) if service else "not judged"
    message = result.message_for(service) if service else "not judged: no compose service to watch"
    findings = result.findings_for(service) if service else []
    con.execute("DELETE FROM oom_watch WHERE night = ? AND endpoint = ?", [night, endpoint])
    history.insert_rows(
        con,
        "oom_watch",
        [
            {
                "night": night,
                "endpoint": endpoint,
                "service": service,
                "project": result.project,
                "started_at": result.started_at,
                "finished_at": result.finished_at,
                "polls": result.polls,
                "status": status,
                "message": message,
                "findings": json.dumps([asdict(f) for f in findings]),
            }
        ],
    )
