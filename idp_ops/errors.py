"""The errors idp_ops raises on purpose, and what each means to a caller.

Every domain error derives from IdpOpsError (beside the builtin it always had, so
``except ValueError`` callers keep working). ``exit_code`` is the CLI's contract:
2 the work could not run (bad settings, dockerd unreachable, a file unreadable),
1 it ran and found a problem (a deploy that did not prove itself, a refused audit).
The CLI maps exit codes from this alone.
"""


class IdpOpsError(Exception):
    """Could not run: exit 2."""

    exit_code = 2


class ProblemFound(IdpOpsError):
    """Ran and found a problem: exit 1."""

    exit_code = 1
