"""The idp-ops console script run as a real subprocess, with IDP_* variables and DAGSTER_HOME from the caller's
shell removed (a developer's own instance, its daemon dead or alive, must not leak alerts into a test)."""

import os
import subprocess
import sys

IDP_OPS = [sys.executable, "-m", "idp_ops.cli"]


def idp_ops(*args, env=None, cwd=None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IDP_") and k != "DAGSTER_HOME"}
    return subprocess.run(
        IDP_OPS + list(args), capture_output=True, text=True, env={**clean, **(env or {})}, cwd=cwd, timeout=120
    )
