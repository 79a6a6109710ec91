"""Run the Locust load test headless in a subprocess and parse its CSV stats.

Locust monkey-patches the process it runs in with gevent (sockets, threads, ssl),
which would break httpx, Dagster and DuckDB here; so it always runs as its own
``locust`` process, driven by the locustfile in ``idp_ops/locustfiles``. The key
travels as a file path in the child's environment, never on its command line.

Locust times a streamed request to its response headers only: its response-time
figures (``p50_ms``, ``p95_ms``) are time-to-headers, good for load and failure
counts, not for TTFT. Latency acceptance comes from ``idp_ops.validation.bench``.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from idp_ops.errors import IdpOpsError
from idp_ops.validation.locustfiles import INFERENCE_LOCUSTFILE

USER_CLASSES = {"openai": "OpenAIUser", "llamacpp": "LlamaCppUser"}
RESPONSE_TIME_NOTE = (
    "Locust times streamed requests to the response headers only: p50_ms/p95_ms are "
    "time-to-headers, not TTFT or E2E (take latency from the streaming benchmark)"
)


class LoadTestError(IdpOpsError, RuntimeError):
    """Locust could not run (not installed, bad arguments, no stats written)."""


@dataclass
class RequestStats:
    method: str
    name: str
    requests: int
    failures: int
    median_ms: float | None
    average_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    rps: float


@dataclass
class FailureStats:
    method: str
    name: str
    error: str
    occurrences: int
    # An HTTP status ("500"), "connect" (no HTTP answer), "stream" (cut off / bad stream), or "other".
    status: str


@dataclass
class LoadTestResult:
    url: str
    protocol: str
    user_class: str
    users: int
    spawn_rate: float
    run_time_s: float
    requests: int
    failures: int
    failures_by_status: dict[str, int]
    rps: float
    # Time to response headers for streamed completions (see RESPONSE_TIME_NOTE).
    p50_ms: float | None
    p95_ms: float | None
    stats: list[RequestStats]
    failure_details: list[FailureStats]
    exit_code: int
    wall_s: float
    ok: bool
    stderr_tail: str
    csv_prefix: str
    # The locust command line (holds no key: the key file's path travels in the environment).
    command: list[str] = field(default_factory=list)
    response_time_note: str = RESPONSE_TIME_NOTE
    problems: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        """5xx answers: the load test's "zero 5xx" criterion."""
        return sum(n for status, n in self.failures_by_status.items() if status.isdigit() and status.startswith("5"))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["server_errors"] = self.server_errors
        return data


def locust_command() -> list[str]:
    """The ``locust`` beside this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).with_name("locust")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("locust")
    if found:
        return [found]
    raise LoadTestError("the `locust` command is not installed (pip install locust)")


def run_locust(
    url: str,
    protocol: str,
    model: str,
    key_file: str | Path | None,
    *,
    users: int = 10,
    spawn_rate: float = 2.0,
    run_time_s: float = 600,
    csv_dir: str | Path,
    timeout_s: float | None = None,
    wait_scale: float = 1.0,
    stop_timeout_s: float | None = None,
) -> LoadTestResult:
    """One headless Locust run against ``url`` with the plan's user mix for ``protocol``.

    ``timeout_s`` caps each request's timeout (default: the plan's per-task 15–120 s).
    At the end of ``run_time_s`` users finish the request they are in for up to
    ``stop_timeout_s`` (default: ``timeout_s``, at most 30 s), so a short run still counts
    its last requests instead of killing them unrecorded; the subprocess itself is killed
    after ``run_time_s + stop_timeout_s`` plus a grace period. ``wait_scale`` multiplies the plan's think times (1.0 = the plan's). A run
    where Locust reports failures still returns a result (``ok`` False); a run that
    produced no stats raises :class:`LoadTestError`.
    """
    if protocol not in USER_CLASSES:
        raise LoadTestError(f"unknown protocol {protocol!r}: use one of {sorted(USER_CLASSES)}")
    if users < 1 or spawn_rate <= 0 or run_time_s < 1:
        raise LoadTestError("users must be >= 1, spawn_rate > 0 and run_time_s >= 1")
    key_path = Path(key_file).resolve() if key_file else None
    if key_path is not None and not key_path.is_file():
        raise LoadTestError(f"key file {key_path} does not exist")
    csv_dir = Path(csv_dir)
    csv_dir.mkdir(parents=True, exist_ok=True)
    prefix = csv_dir / f"locust-{protocol}"
    for old in csv_dir.glob(f"{prefix.name}_*.csv"):
        old.unlink()
    user_class = USER_CLASSES[protocol]
    if stop_timeout_s is None:
        stop_timeout_s = min(timeout_s or 30.0, 30.0)
    run_time = max(1, round(run_time_s))
    command = [
        *locust_command(),
        "-f",
        str(INFERENCE_LOCUSTFILE),
        user_class,
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        f"{spawn_rate:g}",
        "--run-time",
        f"{run_time}s",
        "--host",
        url.rstrip("/"),
        "--csv",
        str(prefix),
        "--only-summary",
        "--stop-timeout",
        f"{stop_timeout_s:g}",
        "--loglevel",
        "WARNING",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "IDPOPS_LOAD_"))}
    env.update(
        {
            "IDPOPS_LOAD_MODEL": model,
            "IDPOPS_LOAD_WAIT_SCALE": f"{wait_scale:g}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if key_path is not None:
        env["IDPOPS_LOAD_KEY_FILE"] = str(key_path)
    if timeout_s is not None:
        env["IDPOPS_LOAD_TIMEOUT_S"] = f"{timeout_s:g}"
    deadline = run_time + stop_timeout_s + (timeout_s or 120) + 60
    started = time.monotonic()
    try:
        completed = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=deadline, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        tail = _tail(exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode("utf-8", "replace"))
        raise LoadTestError(f"locust did not finish within {deadline:.0f} s; stderr tail:\n{tail}") from None
    wall_s = time.monotonic() - started
    stderr_tail = _tail(completed.stderr + completed.stdout)
    # The locustfile writes *_final_*.csv from the finished totals on quit; Locust's own
    # *_stats.csv lags by up to a second (it is refreshed, not written at shutdown).
    final = Path(f"{prefix}_final_stats.csv").is_file()
    stats_file = Path(f"{prefix}_final_stats.csv" if final else f"{prefix}_stats.csv")
    if not stats_file.is_file():
        raise LoadTestError(f"locust exited {completed.returncode} without writing {stats_file.name}:\n{stderr_tail}")
    stats, aggregated = parse_stats_csv(stats_file)
    failures_file = Path(f"{prefix}_final_failures.csv" if final else f"{prefix}_failures.csv")
    failure_details = parse_failures_csv(failures_file) if failures_file.is_file() else []
    by_status: dict[str, int] = {}
    for failure in failure_details:
        by_status[failure.status] = by_status.get(failure.status, 0) + failure.occurrences

    requests = aggregated.requests if aggregated else sum(s.requests for s in stats)
    failures = aggregated.failures if aggregated else sum(s.failures for s in stats)
    problems = []
    if requests == 0:
        problems.append("locust sent no requests (run too short, or users never spawned)")
    if failures:
        summary = ", ".join(f"{status} {n}" for status, n in sorted(by_status.items()))
        problems.append(f"{failures} of {requests} requests failed ({summary})")
    exceptions_file = Path(f"{prefix}_exceptions.csv")
    if exceptions_file.is_file():
        with exceptions_file.open(newline="") as handle:
            raised = sum(int(row.get("Count") or 0) for row in csv.DictReader(handle))
        if raised:
            problems.append(f"the locustfile's tasks raised {raised} unhandled exceptions (see {exceptions_file})")
    # Locust exits 1 when any request failed: that is a finding, not a crash.
    if completed.returncode not in (0, 1):
        problems.append(f"locust exited {completed.returncode}")
    return LoadTestResult(
        url=url,
        protocol=protocol,
        user_class=user_class,
        users=users,
        spawn_rate=spawn_rate,
        run_time_s=run_time,
        requests=requests,
        failures=failures,
        failures_by_status=dict(sorted(by_status.items())),
        rps=aggregated.rps if aggregated else 0.0,
        p50_ms=aggregated.median_ms if aggregated else None,
        p95_ms=aggregated.p95_ms if aggregated else None,
        stats=stats,
        failure_details=failure_details,
        exit_code=completed.returncode,
        wall_s=round(wall_s, 2),
        ok=not problems,
        stderr_tail=stderr_tail,
        csv_prefix=str(prefix),
        command=command,
        problems=problems,
    )


def _number(value: str | None) -> float | None:
    if value in (None, "", "N/A"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_stats_csv(path: Path) -> tuple[list[RequestStats], RequestStats | None]:
    """Per-name rows and the "Aggregated" row of Locust's ``*_stats.csv``."""
    rows: list[RequestStats] = []
    aggregated = None
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            stats = RequestStats(
                method=row.get("Type", ""),
                name=row.get("Name", ""),
                requests=int(row.get("Request Count") or 0),
                failures=int(row.get("Failure Count") or 0),
                median_ms=_number(row.get("Median Response Time")),
                average_ms=_number(row.get("Average Response Time")),
                p95_ms=_number(row.get("95%")),
                p99_ms=_number(row.get("99%")),
                max_ms=_number(row.get("Max Response Time")),
                rps=_number(row.get("Requests/s")) or 0.0,
            )
            if stats.name == "Aggregated":
                aggregated = stats
            else:
                rows.append(stats)
    return rows, aggregated


_HTTP_STATUS = re.compile(r"HTTP (\d{3})\b|\b(\d{3}) (?:Client|Server) Error")


def failure_status(error: str) -> str:
    """Classify one Locust failure message: an HTTP status, "connect", "stream" or "other"."""
    match = _HTTP_STATUS.search(error)
    if match:
        return match.group(1) or match.group(2)
    lowered = error.lower()
    if "connect:" in lowered or "connection refused" in lowered or "connectionerror" in lowered:
        return "connect"
    if "stream" in lowered:
        return "stream"
    return "other"


def parse_failures_csv(path: Path) -> list[FailureStats]:
    failures = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            error = row.get("Error", "")
            failures.append(
                FailureStats(
                    method=row.get("Method", ""),
                    name=row.get("Name", ""),
                    error=error,
                    occurrences=int(row.get("Occurrences") or 0),
                    status=failure_status(error),
                )
            )
    return failures


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
