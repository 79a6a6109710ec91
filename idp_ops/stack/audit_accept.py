"""Reasoned, per-service exceptions to the compose audit.

Some services need what the audit rightly flags: the ops platform's daemon starts every run as a
container, so it mounts the Docker API socket (CIS-5.32). Such a service says so next to itself,
in the compose file, with a compose extension field (compose ignores `x-` keys, keeps them in
`docker compose config`, and appends them through `extends`)::

    services:
      daemon:
        x-idp-audit-accept:
          - rule: CIS-5.32
            reason: "the DockerRunLauncher starts every run as a container: it needs the Docker API"

An acceptance covers one rule on one service: the same rule on any other service still fires, and
nothing here can switch a rule off for the whole file. The accepted findings are not dropped: the
audit lists them apart, with their reason, so the operator (and the deploy metadata) still sees them.

The acceptance is itself checked. A missing or empty reason, a rule id the audit does not know,
an entry that is not a {rule, reason} mapping, or an acceptance written at the top of the file
(where it would read as global) is a high finding: a broken exception must not pass the gate by
being ignored. An acceptance that matches no finding is a note, so stale exceptions get noticed.

Pure logic: no dagster, no docker. Rules and findings stay in audit.py; this module gets the known
rule ids passed in and hands back (rule, message) pairs, as the rule checks do.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

ACCEPT_KEY = "x-idp-audit-accept"
INVALID_RULE = "IDP-ACCEPT-INVALID"  # high: a malformed exception must not pass the gate
UNUSED_RULE = "IDP-ACCEPT-UNUSED"  # note: an exception with nothing left to accept
ACCEPTANCE_RULES = (INVALID_RULE, UNUSED_RULE)
_FIELDS = ("rule", "reason")


@dataclass(frozen=True)
class Acceptance:
    """One valid exception: `rule` on `service`, because `reason`."""

    service: str
    rule: str
    reason: str


@dataclass(frozen=True)
class Accepted:
    """A finding an acceptance covers: reported with its reason, never blocking."""

    service: str
    rule: str
    severity: str
    message: str
    reason: str
    status: str = "accepted"

    def to_dict(self) -> dict:
        # The finding's own keys first, in the order `findings` entries use, then the additions.
        return {
            "service": self.service,
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "status": self.status,
            "reason": self.reason,
        }


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_acceptances(
    service: str, raw: dict, known_rules: Collection[str]
) -> tuple[list[Acceptance], list[tuple[str, str]]]:
    """The valid acceptances a service declares, and a (rule, message) problem for each invalid one.

    `raw` is the service as assembled (extends followed), before interpolation: the rule id and the
    reason are judged as written.
    """
    declared = raw.get(ACCEPT_KEY)
    if declared is None:
        return [], []
    where = f"service {service!r} {ACCEPT_KEY}"
    if not isinstance(declared, list):
        return [], [(INVALID_RULE, f"{where} must be a list of {{rule, reason}} entries, not {_describe(declared)}")]
    valid: list[Acceptance] = []
    problems: list[tuple[str, str]] = []
    for index, entry in enumerate(declared):
        at = f"{where}[{index}]"
        if not isinstance(entry, dict):
            problems.append((INVALID_RULE, f"{at} must be a mapping with rule and reason, not {_describe(entry)}"))
            continue
        rule, reason = entry.get("rule"), entry.get("reason")
        unknown_keys = sorted(str(k) for k in entry if k not in _FIELDS)
        if unknown_keys:
            # A narrowing key the audit does not read (target:, services: ...) would make the
            # exception look tighter than it is: refuse it rather than ignore it.
            problems.append((INVALID_RULE, f"{at} has unknown key(s) {unknown_keys}; only rule and reason are read"))
            continue
        if not isinstance(rule, str) or not rule.strip():
            problems.append((INVALID_RULE, f"{at} names no rule (rule: {_describe(rule)})"))
            continue
        rule = rule.strip()
        if rule in ACCEPTANCE_RULES:
            problems.append((INVALID_RULE, f"{at} accepts {rule}, a finding about acceptances themselves"))
            continue
        if rule not in known_rules:
            problems.append((INVALID_RULE, f"{at} accepts unknown rule {rule!r}"))
            continue
        if not isinstance(reason, str) or not reason.strip():
            problems.append((INVALID_RULE, f"{at} accepts {rule} without a reason; say why this service needs it"))
            continue
        valid.append(Acceptance(service, rule, " ".join(reason.split())))
    return valid, problems


def top_level_problems(model: dict) -> Iterator[tuple[str, str]]:
    """An acceptance at the top of the file would read as global: the audit has no such thing."""
    if isinstance(model, dict) and ACCEPT_KEY in model:
        yield (
            INVALID_RULE,
            f"top-level {ACCEPT_KEY} is not read: an acceptance covers one service, so write it under that service",
        )


@dataclass(frozen=True)
class Split:
    open: list  # findings the acceptances do not cover (the gate judges these)
    accepted: list[Accepted]
    unused: list[tuple[str, str, str]]  # (service, rule, message) for acceptances that matched nothing


def split_findings(findings: Iterable[Any], acceptances: Iterable[Acceptance]) -> Split:
    """Set apart the findings an acceptance covers (same service, same rule), and the unused acceptances."""
    reasons: dict[tuple[str, str], list[str]] = {}
    for acceptance in acceptances:
        given = reasons.setdefault((acceptance.service, acceptance.rule), [])
        if acceptance.reason not in given:  # extends may bring the base's acceptance along with the service's own
            given.append(acceptance.reason)
    open_findings, accepted, used = [], [], set()
    for finding in findings:
        key = (finding.service, finding.rule)
        if finding.service and key in reasons:
            used.add(key)
            accepted.append(
                Accepted(finding.service, finding.rule, finding.severity, finding.message, "; ".join(reasons[key]))
            )
        else:
            open_findings.append(finding)
    unused = [
        (service, rule, f"service {service!r} accepts {rule} but does not trigger it; remove the acceptance")
        for (service, rule) in reasons
        if (service, rule) not in used
    ]
    return Split(open_findings, accepted, unused)
