"""What a failed run's alert says: the job, the run, the failing step and the first error line.

Pure logic (no Dagster import): ``alerts.defs`` hands in the error chains it reads from the
failure events. Only one line of the error goes out, never a traceback, and any secret
the box holds (its API keys) or anything shaped like a credential is masked first: the
alert leaves the box through a webhook.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from idp_ops.alerts.sink import Alert

RUN_FAILED = "run_failed"
MAX_ERROR_CHARS = 300
MASK = "***"

# Credentials in the shapes errors carry them: headers, URL parameters, key=value pairs.
_CREDENTIALS = [
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"(?i)\b(authorization|x-api-key)\b\s*[:=]\s*(?:(?:bearer|basic)\s+)?\S+"),
    re.compile(r"(?i)\b([a-z_-]*(?:api[_-]?key|token|secret|password|passwd))\b(\s*[=:]\s*|=)[^\s,;&'\"]+"),
    re.compile(r"(?i)(://[^/\s:@]+):[^/\s@]+@"),  # user:password@host
]


class ErrorInfo(Protocol):
    """Dagster's SerializableErrorInfo, as far as an alert needs it."""

    message: str
    cause: Any


def _chain(error: ErrorInfo | None) -> list[ErrorInfo]:
    chain = []
    while error is not None and len(chain) < 20:
        chain.append(error)
        error = getattr(error, "cause", None)
    return chain


# "dagster._core.definitions.events.Failure: ..." -> "Failure: ...": the class, not its module path.
_QUALIFIED = re.compile(r"^[A-Za-z_]\w*(?:\.\w+)*\.(\w+): ")


def first_error_line(error: ErrorInfo | None, fallback: str = "") -> str:
    """The first line of the innermost cause (the op's own exception, not Dagster's wrapper)."""
    for info in reversed(_chain(error)):
        for line in (getattr(info, "message", "") or "").splitlines():
            if line.strip():
                return _QUALIFIED.sub(r"\1: ", line.strip())
    for line in fallback.splitlines():
        if line.strip():
            return line.strip()
    return "no error message"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask the box's own secrets and anything shaped like a credential; cut to one short line."""
    for secret in sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _CREDENTIALS[0].sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _CREDENTIALS[1].sub(lambda m: f"{m.group(1)}: {MASK}", text)
    text = _CREDENTIALS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _CREDENTIALS[3].sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def box_secrets(secrets_dir: Path, key_names: Iterable[str]) -> list[str]:
    """The API keys the box holds (one per line in each key file), to mask them; unreadable ones are skipped."""
    found = []
    for name in key_names:
        try:
            found += [line.strip() for line in (secrets_dir / name).read_text().splitlines() if line.strip()]
        except OSError:
            continue
    return found


@dataclass(frozen=True)
class StepFailure:
    step_key: str | None
    error: ErrorInfo | None


def run_failed_key(run_id: str) -> str:
    return f"{RUN_FAILED}:{run_id}"


def run_failure_alert(
    *,
    job: str,
    run_id: str,
    failed_at: datetime,
    steps: list[StepFailure],
    run_error: ErrorInfo | None,
    run_message: str,
    secrets: Iterable[str] = (),
    partition: str | None = None,
) -> Alert:
    """The alert for one failed run. The failing step is the first step that failed; a run
    that failed outside any step (run worker died, bad config) has step_key null."""
    secrets = list(secrets)
    first = steps[0] if steps else None
    if first is not None:
        error = first_error_line(first.error, run_message)
    else:
        error = first_error_line(run_error, run_message)
    error = redact(error, secrets)
    where = f"step {first.step_key}" if first and first.step_key else "the run (no step failed)"
    more = f" (and {len(steps) - 1} more failed steps)" if len(steps) > 1 else ""
    reason = f"{job} run {run_id[:8]} failed in {where}{more}: {error}"
    fields = {
        "timestamp": failed_at.isoformat(),
        "action": RUN_FAILED,
        "job": job,
        "run_id": run_id,
        "partition": partition,
        "step_key": first.step_key if first else None,
        "failed_steps": [s.step_key for s in steps if s.step_key],
        "error": error,
        "reason": reason,
    }
    return Alert(run_failed_key(run_id), fields, f"idp-ops {RUN_FAILED}: {job}", reason)
