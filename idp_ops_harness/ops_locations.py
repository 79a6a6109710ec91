"""A second box for the ops platform, on this machine: its Docker engine, its code location, its credentials.

- :func:`box_engine`: a SecondEngine in its own network namespace joined to the host by a veth pair (a box
  on a LAN), serving its API on the host socket and on tcp + TLS at its LAN address, the way the central
  daemon reaches a remote box. Its bridges NAT in its own namespace, so its code-location container
  reaches the central Postgres published on the host side of the pair.
- :func:`make_engine_tls`: a CA, the engine's server certificate (IP SAN) and a client certificate,
  with openssl.
- :class:`BoxLocation`: compose/ops/code-location.yml brought up on that engine with the env file
  ``platform_env.py --location`` writes; down with its volumes and the run containers of its project.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from idp_ops.settings import REPO_ROOT, load_settings
from idp_ops.stack.secrets import POSTGRES_PASSWORD_FILE_NAME, ensure_keys
from idp_ops_harness.docker_engine import SecondEngine
from idp_ops_harness.ops_platform import PROJECT_LABEL

OPS_DIR = REPO_ROOT / "compose" / "ops"
LOCATION_COMPOSE = OPS_DIR / "code-location.yml"
IMAGE_BUILD = REPO_ROOT / "compose" / "images" / "idp-ops" / "build.sh"
TLS_PORT = 2376


def platform_env_module():
    """compose/ops/platform_env.py (a script, not a package module), imported from its file."""
    spec = importlib.util.spec_from_file_location("idp_ops_platform_env", OPS_DIR / "platform_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ops_image() -> str:
    """The idp-ops image of this tree (built by its build.sh when missing; cached afterwards)."""
    result = subprocess.run([str(IMAGE_BUILD)], capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise AssertionError(f"{IMAGE_BUILD} failed:\n{result.stderr[-4000:]}")
    return result.stdout.strip().splitlines()[-1]


# -- TLS ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineTls:
    server_dir: Path  # ca.pem, server-cert.pem, server-key.pem: for dockerd
    client_dir: Path  # ca.pem, cert.pem, key.pem: DOCKER_CERT_PATH of whoever drives the engine

    def dockerd_args(self, address: str, port: int = TLS_PORT) -> list[str]:
        return [
            "-H",
            f"tcp://{address}:{port}",
            "--tlsverify",
            "--tlscacert",
            str(self.server_dir / "ca.pem"),
            "--tlscert",
            str(self.server_dir / "server-cert.pem"),
            "--tlskey",
            str(self.server_dir / "server-key.pem"),
        ]


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {result.stderr[-2000:]}")


def make_engine_tls(folder: Path, address: str) -> EngineTls:
    """A throwaway CA, a server certificate for ``address`` and a client certificate (EC P-256, one day)."""
    server_dir, client_dir = folder / "server", folder / "client"
    for d in (server_dir, client_dir):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = folder / "work"
    work.mkdir(exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=idp-test-ca",
        cwd=work,
    )
    (work / "server.ext").write_text(f"subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth\n")
    (work / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for role, subject in (("server", f"/CN={address}"), ("client", "/CN=idp-ops-daemon")):
        _openssl("req", "-new", *ec, "-keyout", f"{role}-key.pem", "-out", f"{role}.csr", "-subj", subject, cwd=work)
        _openssl(
            "x509", "-req", "-in", f"{role}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-out", f"{role}-cert.pem", "-days", "1", "-extfile", f"{role}.ext", cwd=work,
        )  # fmt: skip
    for name, target in (
        ("ca.pem", server_dir / "ca.pem"),
        ("server-cert.pem", server_dir / "server-cert.pem"),
        ("server-key.pem", server_dir / "server-key.pem"),
        ("ca.pem", client_dir / "ca.pem"),
        ("client-cert.pem", client_dir / "cert.pem"),
        ("client-key.pem", client_dir / "key.pem"),
    ):
        shutil.copyfile(work / name, target)
        target.chmod(0o600 if "key" in name else 0o644)
    shutil.rmtree(work)
    return EngineTls(server_dir, client_dir)


def box_engine(name: str, link: str, tls: EngineTls) -> SecondEngine:
    """A second engine on a veth link, answering on its socket and on tcp+TLS at its link address."""
    engine = SecondEngine(name, link=link, iptables=True)
    engine.extra_args = tls.dockerd_args(engine.inner_address)
    return engine


def tcp_engine_url(engine: SecondEngine) -> str:
    return f"tcp://{engine.inner_address}:{TLS_PORT}"


# -- one more box's code location ----------------------------------------------------------


def write_workspace(path: Path, entries: list[tuple[str, int, str]]) -> Path:
    """A workspace file with one grpc_server entry per (host, port, location_name)."""
    load_from = [{"grpc_server": {"host": h, "port": p, "location_name": n}} for h, p, n in entries]
    path.write_text(yaml.safe_dump({"load_from": load_from}, sort_keys=False))
    path.chmod(0o644)
    return path


def _compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return [str(Path(os.environ.get("VIRTUAL_ENV", REPO_ROOT / ".venv")) / "bin" / "docker-compose")]


class BoxLocation:
    """compose/ops/code-location.yml on a second engine, for one settings file of that box."""

    def __init__(self, engine: SecondEngine, config_file: Path, location: str, project: str, env_file: Path):
        self.engine, self.config_file, self.location, self.project = engine, Path(config_file), location, project
        self.env_file = env_file
        self.settings = load_settings(self.config_file)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("IDP_", "COMPOSE_", "DOCKER_"))}
        self.env["DOCKER_HOST"] = engine.host

    def provision(self, central_password_file: Path) -> None:
        """What an operator does on box B: its API keys, and a copy of the central Postgres password (0600)."""
        s = self.settings
        s.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ensure_keys(s.secrets_dir, s.key_names)
        target = s.secrets_dir / POSTGRES_PASSWORD_FILE_NAME
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(central_password_file.read_bytes())
        tmp.chmod(0o600)
        os.replace(tmp, target)
        # B's runs (the service uid) use the secrets dir as A's do (up.sh does this on box A); its data and
        # logs dirs back its volumes.
        for tree in (s.data_dir, s.logs_dir):
            tree.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            for tree in (s.secrets_dir, s.data_dir, s.logs_dir):
                for root, dirs, files in os.walk(tree):
                    for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                        os.lchown(name, s.service_uid, s.service_gid)

    def write_env(self, image: str, **location_args) -> dict:
        env = platform_env_module().location_env(
            self.location, self.project, image, self.config_file.resolve(), **location_args
        )
        tmp = self.env_file.with_name(f".{self.env_file.name}.tmp")
        tmp.write_text("".join(f"{k}='{v}'\n" for k, v in env.items()))
        tmp.chmod(0o600)
        os.replace(tmp, self.env_file)
        return env

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        argv = [*_compose_command(), "--env-file", str(self.env_file), "-f", str(LOCATION_COMPOSE), "-p", self.project]
        return subprocess.run(
            [*argv, *args], cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def up(self, wait_s: int = 240) -> None:
        result = self.compose("up", "-d", "--wait", "--wait-timeout", str(wait_s), timeout=wait_s + 60)
        if result.returncode != 0:
            raise AssertionError(f"code location {self.location} on {self.engine.host} did not come up:\n"
                                 f"{result.stderr[-4000:]}\n{self.logs()}")  # fmt: skip

    def logs(self, lines: int = 60) -> str:
        if not self.env_file.exists():
            return "(no env file)"
        return self.compose("logs", "--no-color", "--tail", str(lines), timeout=60).stdout

    def run_containers(self, docker_host: str | None = None) -> list[dict]:
        """This location's run containers (its project label) on ``docker_host`` (default: its own engine)."""
        listed = subprocess.run(
            ["docker", "-H", docker_host or self.engine.host, "ps", "-a", "--no-trunc", "--format", "{{json .}}",
             "--filter", f"label={PROJECT_LABEL}={self.project}"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]

    def down(self) -> None:
        ids = [c["ID"] for c in self.run_containers()]
        if ids:
            self.engine.docker("rm", "-f", *ids, timeout=120)
        if self.env_file.exists():
            result = self.compose("down", "-v", "--remove-orphans", "--timeout", "10")
            if result.returncode != 0:
                raise AssertionError(f"compose down of {self.project} on {self.engine.host}:\n{result.stderr[-3000:]}")
            self.env_file.unlink()
