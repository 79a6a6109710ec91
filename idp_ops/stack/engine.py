"""Which Docker engine a code location drives: one place builds the environment of every docker call.

One code location runs one box. Its settings may name that box's dockerd (``docker_host``:
``unix:///run/docker.sock``, ``ssh://ops@box-b``, ``tcp://box-b:2376`` with TLS); every docker
and compose subprocess of deploy, containment, the guard, validation and switching then gets
that engine's DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH from :meth:`DockerEngine.environment`.

Precedence: the settings value wins over a DOCKER_HOST the process inherited (a location must
never drive another box's engine because of its caller's shell); with neither, docker's default
(the local socket, or the CLI's current context).

Plain Python, no Dagster and no settings import (settings.py builds the engine from its fields).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

ENGINE_VARIABLES = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
# When the settings name the engine, these inherited variables could point the CLI elsewhere.
_OVERRIDDEN = (*ENGINE_VARIABLES, "DOCKER_CONTEXT")
SCHEMES = ("unix", "ssh", "tcp")
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class EngineSettingsError(ValueError):
    """A docker_host / TLS combination that cannot work or would be unsafe."""


def check_docker_host(host: str | None) -> str | None:
    """The docker_host setting's shape; returns it normalised (blank: None). Raises EngineSettingsError."""
    host = (host or "").strip() or None
    if host is None:
        return None
    parsed = urlparse(host)
    if parsed.scheme not in SCHEMES:
        raise EngineSettingsError(
            f"docker_host must be unix:///PATH, ssh://USER@HOST or tcp://HOST:PORT, got {_redact(host)!r}"
        )
    if parsed.password is not None:
        # Never a secret in settings (they show up in run metadata): ssh uses keys, tcp uses TLS certs.
        raise EngineSettingsError("docker_host must not carry a password: use an ssh key or TLS client certificates")
    if parsed.scheme == "unix":
        if parsed.netloc or not parsed.path.startswith("/"):
            raise EngineSettingsError(
                f"a unix docker_host needs an absolute socket path (unix:///run/x.sock), got {host!r}"
            )
    elif not parsed.hostname:
        raise EngineSettingsError(f"docker_host {host!r} names no host")
    return host


def check_tls(host: str | None, tls_verify: bool, *, field: str = "docker_tls_verify") -> None:
    """TLS settings only with tcp://, and tcp:// to another machine only with TLS. Raises EngineSettingsError."""
    scheme = urlparse(host).scheme if host else None
    if tls_verify and scheme != "tcp":
        raise EngineSettingsError(f"{field} applies to a tcp:// docker_host only (docker_host is {host!r})")
    # Plain tcp to dockerd is root on that box for anyone on the network.
    plain_remote = scheme == "tcp" and not tls_verify and urlparse(host).hostname not in _LOOPBACK
    if field == "docker_tls_verify" and plain_remote:
        raise EngineSettingsError(
            f"docker_host {host!r} is plain tcp to another host: set docker_tls_verify: true and "
            "docker_cert_path (ca.pem, cert.pem, key.pem), or use ssh://USER@HOST"
        )


def _redact(host: str) -> str:
    """The host URL without any password in it (for messages and reports)."""
    parsed = urlparse(host)
    if parsed.password is None:
        return host
    netloc = f"{parsed.username}@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class DockerEngine:
    """The engine a location's docker calls go to. ``host=None``: whatever the process inherits."""

    host: str | None = None
    tls_verify: bool = False
    cert_path: Path | None = None

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: os.environ) with this engine's variables set, for a docker/compose subprocess."""
        env = dict(os.environ if base is None else base)
        if self.host is None:
            return env  # inherited DOCKER_HOST / context, else docker's default socket
        for name in _OVERRIDDEN:
            env.pop(name, None)
        env["DOCKER_HOST"] = self.host
        # The CLI turns TLS on for any non-empty DOCKER_TLS_VERIFY, so "off" means unset.
        if self.tls_verify:
            env["DOCKER_TLS_VERIFY"] = "1"
        if self.cert_path is not None:
            env["DOCKER_CERT_PATH"] = str(self.cert_path)
        return env

    @property
    def effective_host(self) -> str | None:
        """The host the CLI will use: the setting, else an inherited DOCKER_HOST, else None (the default)."""
        return self.host or os.environ.get("DOCKER_HOST") or None

    @property
    def is_local(self) -> bool:
        """Whether the engine runs on this machine (its containers' PIDs and cgroups are ours to read)."""
        host = self.effective_host
        return host is None or host.startswith("unix://")

    def describe(self) -> dict:
        """Which engine, for reports and `status --json`: the host (no password), its source, TLS on/off."""
        if self.host is not None:
            source, host = "settings", self.host
        elif os.environ.get("DOCKER_HOST"):
            source, host = "environment", os.environ["DOCKER_HOST"]
        else:
            source, host = "default", os.environ.get("DOCKER_CONTEXT") and f"context {os.environ['DOCKER_CONTEXT']}"
            host = host or "unix:///var/run/docker.sock"
        tls = self.tls_verify if self.host is not None else bool(os.environ.get("DOCKER_TLS_VERIFY"))
        return {"host": _redact(host), "source": source, "tls_verify": tls}

    def label(self) -> str:
        described = self.describe()
        return f"{described['host']} ({described['source']})"

    def missing_tls_files(self) -> list[str]:
        """The TLS client files docker needs but cannot find (checked before the first call, not at load)."""
        if not self.tls_verify:
            return []
        folder = self.cert_path or Path.home() / ".docker"
        return [str(folder / name) for name in TLS_FILES if not (folder / name).is_file()]


DEFAULT_ENGINE = DockerEngine()
