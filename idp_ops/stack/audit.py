"""Security audit of a Docker Compose file, numbered after CIS Docker Benchmark v1.6.0.

Rule ids are section 5 ("Container Runtime") items of CIS Docker Benchmark
v1.6.0, numbered as docker-bench-security's tests/5_container_runtime.sh
numbers them (5.1 swarm mode, 5.2 AppArmor ... 5.32 docker socket), or our own
("IDP-...") where no item fits. RULES is the single source of truth for ids and
severities.

The audit judges what compose will run, without docker and without the secrets:
audit_load assembles the file (include, extends) and every rule except the
secret rules reads it interpolated with the environment the deploy will use
(`deploy_environment`). The secret rules read it as written, because there a
`${HF_TOKEN}` is the finding.

`audit_gate` is the deploy gate, shared by the `compose_audit` asset and
`idp-ops deploy`: a high finding stops the deploy before anything starts.

A service may accept one rule for itself, with a reason, in the compose file
(`x-idp-audit-accept`, see audit_accept): the finding is then listed apart as
accepted and does not block. Nothing switches a rule off for the whole file.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idp_ops.errors import ProblemFound
from idp_ops.stack.audit_accept import (
    ACCEPT_KEY,
    INVALID_RULE,
    UNUSED_RULE,
    Accepted,
    read_acceptances,
    split_findings,
    top_level_problems,
)
from idp_ops.stack.audit_load import (
    ComposeFileError,
    assemble,
    interpolate_values,
    is_host_path,
    load_compose,
    read_env_file,
    services_of,
    split_short_volume,
)

if TYPE_CHECKING:
    from idp_ops.settings import Settings

__all__ = [
    "ACCEPT_KEY",
    "BENCHMARK",
    "RULES",
    "Accepted",
    "AuditGateError",
    "AuditResult",
    "ComposeFileError",
    "Finding",
    "audit_compose",
    "audit_compose_file",
    "audit_compose_file_result",
    "audit_compose_result",
    "audit_gate",
    "audit_gate_result",
    "deploy_environment",
    "has_high",
    "load_compose_file",
]

BENCHMARK = "CIS Docker Benchmark v1.6.0"

RULES: dict[str, tuple[str, str]] = {
    "CIS-5.2": ("high", "AppArmor profile disabled (apparmor:unconfined)"),
    "CIS-5.3": ("high", "SELinux separation disabled (label:disable)"),
    "CIS-5.4": ("high", "capabilities not dropped / dangerous capability added"),
    "CIS-5.5": ("high", "privileged container"),
    "CIS-5.6": ("high", "sensitive host directory mounted"),
    "CIS-5.10": ("high", "host network namespace shared"),
    "CIS-5.11": ("medium", "no memory limit"),
    "CIS-5.12": ("low", "no CPU limit"),
    "CIS-5.13": ("medium", "root filesystem not read-only"),
    "CIS-5.14": ("high", "port published beyond loopback"),
    "CIS-5.16": ("high", "host PID namespace shared"),
    "CIS-5.17": ("high", "host IPC namespace shared"),
    "CIS-5.18": ("high", "host devices exposed"),
    "CIS-5.20": ("high", "mount propagation shared"),
    "CIS-5.21": ("high", "host UTS namespace shared"),
    "CIS-5.22": ("high", "seccomp profile disabled"),
    "CIS-5.26": ("medium", "no-new-privileges not set"),
    "CIS-5.27": ("medium", "no healthcheck"),
    "CIS-5.29": ("medium", "no pids limit"),
    "CIS-5.31": ("high", "host user namespace shared"),
    "CIS-5.32": ("high", "docker socket mounted"),
    "IDP-CGROUP-HOST": ("high", "host cgroup namespace shared"),
    "IDP-SYSTEMPATHS": ("high", "masked /proc and /sys paths exposed (systempaths=unconfined)"),
    "IDP-SECRET-ENV": ("high", "secret in environment or env_file"),
    "IDP-SECRET-CMD": ("high", "secret on the command line"),
    "IDP-MODEL-RW": ("high", "models volume mounted writable"),
    "IDP-ROOT": ("medium", "container runs as root"),
    "IDP-LOGGING": ("low", "no log rotation"),
    # About the service's own x-idp-audit-accept entries (audit_accept).
    INVALID_RULE: ("high", "audit acceptance without a reason, of an unknown rule, or not on a service"),
    UNUSED_RULE: ("note", "audit acceptance that matches no finding"),
}

# "note" is below low: worth reading, never a problem in itself.
SEVERITY_RANK = {"high": 0, "medium": 1, "low": 2, "note": 3}


@dataclass(frozen=True)
class Finding:
    service: str  # "" for file-level findings
    rule: str
    severity: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Service:
    """One service as the rules see it."""

    name: str
    raw: dict  # as written (extends/include merged): the secret rules and messages read this
    resolved: dict  # interpolated with the deploy environment: what compose will run
    named_volumes: dict  # the top-level `volumes`, resolved
    base_dir: Path | None  # the project directory relative host paths resolve against

    def get(self, key: str, default: Any = None) -> Any:
        return self.resolved.get(key, default)

    def pairs(self, key: str) -> list[tuple[Any, Any]]:
        """(as written, resolved) for each entry of a list-valued setting."""
        return list(zip(_as_list(self.raw.get(key)), _as_list(self.resolved.get(key))))


# --- loading -----------------------------------------------------------------


def load_compose_file(path: str | Path, environment: Mapping[str, str] | None = None) -> dict:
    """The file as compose will assemble it (include, extends), not yet interpolated."""
    return load_compose(path, environment)


def deploy_environment(settings: Settings, compose_file: str | Path | None = None) -> dict[str, str]:
    """The variables `docker compose` interpolates when idp-ops runs the stack.

    Lowest first: the `.env` beside the compose file (compose reads it), the
    process environment, then the settings' values (ComposeProject passes
    them over os.environ).
    """
    path = Path(compose_file or settings.compose_file)
    env = read_env_file(path.parent / ".env")
    env.update(os.environ)
    env.update(settings.compose_environment())
    return env


# --- helpers -----------------------------------------------------------------

_SECRET_NAME = re.compile(
    # The trailing look-ahead keeps TOKENIZERS_PARALLELISM, KEYCLOAK_URL and the
    # like out, while API_KEY, apiKey, HF_TOKEN and SECRETS still match.
    r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)S?(?![A-Z])",
    re.IGNORECASE,
)
# Token *counts* (MAX_TOKENS, max-new-tokens, MAX_NUM_BATCHED_TOKENS) are not secrets.
# The look-behind keeps ADMIN_TOKEN and LOGIN_TOKEN secrets (MIN, N are count words).
_TOKEN_COUNT = re.compile(
    r"(?<![A-Z0-9])(?:MAX|MIN|NUM|N|TOTAL|CONTEXT|CTX|BATCH|BATCHED|PREFILL|PROMPT|INPUT|OUTPUT|NEW|GENERATED)"
    r"[_-]?TOKENS?(?![A-Z])|TOKENS?[_-]?(?:PER|LIMIT|COUNT|BUDGET)(?![A-Z])",
    re.IGNORECASE,
)
_SECRET_PATH = re.compile(r"(secret|key|token|password|passwd|credential)s?(?![a-z])", re.IGNORECASE)
_SK_KEY = re.compile(r"(?<![\w-])sk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9]{16,}")
_HEX_RUN = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32,}(?![0-9A-Fa-f])")
_REVISION_HEX_LEN = 40  # a git / Hugging Face commit id, pinned on purpose: not a key
_SECRET_FLAG = re.compile(
    # --api-key, --api_key, --token, --password, --hf-token, --db-password ...
    # but not --api-key-file or --tokenizer.
    r"(?<![\w-])(--(?:[a-z0-9]+[-_])*(?:api[-_]key|token|password|passwd|secret))(?![\w-])"
    r"(?:=(?P<eq>\S+)|\s+(?P<arg>[^\s-]\S*))",
    re.IGNORECASE,
)
_INTERPOLATED_NAME = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")

# Each of these makes a container root-equivalent on the host or lets it read
# or forge any file / packet / kernel state (ALL includes them all).
_DANGEROUS_CAPS = {
    "SYS_ADMIN", "SYS_PTRACE", "SYS_MODULE", "SYS_RAWIO", "SYS_TIME", "NET_ADMIN", "NET_RAW",
    "BPF", "PERFMON", "DAC_READ_SEARCH", "DAC_OVERRIDE", "MKNOD", "ALL",
}  # fmt: skip

# CIS 5.6 names /, /boot, /dev, /etc, /lib, /proc, /sys and /usr; we add the
# host's runtime state (/run, where docker.sock lives). The directory or anything
# beneath it counts (/etc/shadow is as bad as /etc).
_SENSITIVE_DIRS = ("/boot", "/dev", "/etc", "/lib", "/proc", "/sys", "/usr", "/run", "/var/run")
# Homes: /root, /home and each /home/<user> themselves, and any dot-path inside a home
# (.ssh, .docker, .aws hold credentials). A plain folder in a home (/home/alice/models,
# where a clone's default ./.idp-data lives) is an ordinary data directory.
_HOME_ROOTS = ("/root", "/home")

# security_opt values that switch a confinement off: option -> (value, rule, what it disables).
_UNCONFINED = {
    "seccomp": ({"unconfined"}, "CIS-5.22", "the seccomp profile"),
    "apparmor": ({"unconfined"}, "CIS-5.2", "the AppArmor profile"),
    "label": ({"disable", "type:spc_t", "type:unconfined_t"}, "CIS-5.3", "SELinux separation"),
    "systempaths": ({"unconfined"}, "IDP-SYSTEMPATHS", "the masking of /proc and /sys paths"),
}

# Namespace settings where "host" shares the host's: key -> (rule, namespace, advice).
_HOST_NAMESPACES = {
    "network_mode": ("CIS-5.10", "network namespace", "; every port it opens is open on the host"),
    "pid": ("CIS-5.16", "PID namespace", ""),
    "ipc": ("CIS-5.17", "IPC namespace", "; set shm_size instead"),
    "uts": ("CIS-5.21", "UTS namespace", ""),
    "userns_mode": ("CIS-5.31", "user namespace", ""),
    "cgroup": ("IDP-CGROUP-HOST", "cgroup namespace", ""),
}


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _truthy(value: Any) -> bool:
    # Interpolated booleans arrive as strings: read_only: ${RO:-true}.
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "on", "1"}
    return value is True


def _is_set(value: Any) -> bool:
    # 0 and -1 mean "unlimited" to docker.
    return value is not None and str(value).strip() not in {"", "0", "-1"}


def _limits(svc: Service) -> dict:
    deploy = svc.get("deploy")
    resources = deploy.get("resources") if isinstance(deploy, dict) else None
    limits = resources.get("limits") if isinstance(resources, dict) else None
    return limits if isinstance(limits, dict) else {}


def _written(raw: Any, resolved: Any) -> str:
    """A setting as written, with what it resolves to when interpolation changed it."""
    text = _entry_text(raw)
    return text if raw == resolved else f"{text} (resolves to {_entry_text(resolved)})"


def _entry_text(entry: Any) -> str:
    if isinstance(entry, dict) and "target" in entry:  # a long-syntax volume or device
        kind = f"{entry['type']} " if entry.get("type") else ""
        return f"{kind}{entry.get('source') or '(anonymous)'} -> {entry.get('target')}"
    return repr(entry) if isinstance(entry, str) else str(entry)


_PROPAGATION_MODES = {"shared", "rshared", "slave", "rslave", "private", "rprivate"}


@dataclass(frozen=True)
class _Mount:
    written: str  # the entry as written (and resolved), for messages
    source: str
    target: str
    read_only: bool
    propagation: str
    host_path: str | None  # the absolute host path for a bind (or bind-backed volume), else None


def _host_path(source: str, base_dir: Path | None) -> str:
    if source.startswith("~"):
        return source  # compose expands it to $HOME; judged as a home directory
    if not source.startswith("/") and base_dir is not None:
        source = posixpath.join(base_dir.as_posix(), source)
    # normpath keeps a leading "//"; one slash is the same directory to the kernel.
    return "/" + posixpath.normpath(source).lstrip("/") if source.startswith("/") else posixpath.normpath(source)


def _mounts(svc: Service) -> Iterator[_Mount]:
    for raw, entry in svc.pairs("volumes"):
        written = _written(raw, entry)
        if isinstance(entry, dict):
            kind = str(entry.get("type") or "volume")
            if kind == "tmpfs":
                continue
            source, target = str(entry.get("source") or ""), str(entry.get("target") or "")
            bind = entry.get("bind") if isinstance(entry.get("bind"), dict) else {}
            propagation = str(bind.get("propagation") or "").strip().lower()
            read_only = _truthy(entry.get("read_only"))
            # `type` is required in long syntax; without one, judge a path-like source as a bind.
            is_bind = kind == "bind" or (not entry.get("type") and is_host_path(source))
        else:
            source, target, mode = split_short_volume(str(entry))
            options = [o.strip().lower() for o in mode.split(",")]
            propagation = next((o for o in options if o in _PROPAGATION_MODES), "")
            read_only = "ro" in options
            is_bind = is_host_path(source)
        host = _host_path(source, svc.base_dir) if is_bind and source else _volume_device(svc, source)
        yield _Mount(written, source, target, read_only, propagation, host)


def _volume_device(svc: Service, name: str) -> str | None:
    """The host directory behind a named volume declared as a bind (driver_opts o: bind, device: /path)."""
    volume = svc.named_volumes.get(name) if name else None
    options = volume.get("driver_opts") if isinstance(volume, dict) else None
    if isinstance(options, dict) and options.get("device") and "bind" in str(options.get("o", "")).split(","):
        return _host_path(str(options["device"]), svc.base_dir)
    return None


def _sensitive(path: str) -> str | None:
    """None when a host path is fine to mount, else what makes it sensitive ("" if it is a listed directory)."""
    if path.startswith("~"):
        rest = [part for part in path[1:].split("/") if part]
        if not rest or rest[0].startswith(".") or (path.startswith("~") and not path.startswith("~/")):
            return " (a home directory: compose expands ~ to /root or /home/<user>)"
        if any(part.startswith(".") for part in rest):
            return " (a dot-directory in a home: credentials live there)"
        return None
    if path == "/":
        return " (the host's root filesystem)"
    for directory in _SENSITIVE_DIRS:
        if path == directory:
            return ""
        if path.startswith(directory + "/"):
            return f" (beneath {directory})"
        if directory.startswith(path + "/"):  # a parent, e.g. /var holds /var/run
            return f" (it holds {directory})"
    for home in _HOME_ROOTS:
        if path == home:
            return ""
        if path.startswith(home + "/"):
            parts = path[len(home) + 1 :].split("/")
            if home == "/home" and len(parts) == 1:
                return " (a user's home directory)"
            if any(part.startswith(".") for part in parts):
                return f" (a dot-directory beneath {home}: credentials live there)"
    return None


def _port_host_ip(entry: Any) -> str:
    """The host IP a published port binds to; "" means all interfaces."""
    if isinstance(entry, dict):
        return str(entry.get("host_ip") or "").strip().strip("[]")
    if isinstance(entry, int):
        return ""
    text = str(entry).split("/", 1)[0]  # drop /tcp, /udp
    if text.startswith("["):
        host = text[1 : text.find("]")]
    else:
        parts = text.rsplit(":", 2)  # rsplit keeps an unbracketed IPv6 host whole
        host = parts[0] if len(parts) == 3 else ""
    return host.strip().strip("[]")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(_TOKEN_COUNT.sub("", name)))


def _looks_like_key(text: str) -> bool:
    if _SK_KEY.search(text):
        return True
    return any(len(run.group(0)) != _REVISION_HEX_LEN for run in _HEX_RUN.finditer(text))


def _command_text(value: Any) -> str:
    return " ".join(str(v) for v in _as_list(value))


def _env_items(environment: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(environment, dict):
        yield from ((str(k), v) for k, v in environment.items())
        return
    for item in _as_list(environment):
        name, sep, value = str(item).partition("=")
        yield name.strip(), value if sep else None


def _is_file_pointer(name: str, value: str) -> bool:
    # API_KEY_FILE=/run/secrets/key names where the secret is, not the secret.
    return name.upper().endswith(("_FILE", "_PATH", "_DIR")) and "/" in value


# --- rules -------------------------------------------------------------------
# Each rule takes a Service and yields (rule id, message). Messages name the
# setting as written so the operator can find it in the file.

Rule = Callable[[Service], Iterable[tuple[str, str]]]


def check_capabilities(svc: Service) -> Iterator[tuple[str, str]]:
    dropped = {str(c).strip().upper().removeprefix("CAP_") for c in _as_list(svc.get("cap_drop"))}
    if "ALL" not in dropped:
        yield "CIS-5.4", f"service {svc.name!r} does not drop all capabilities (cap_drop lacks ALL)"
    for raw, cap in svc.pairs("cap_add"):
        canonical = str(cap).strip().upper().removeprefix("CAP_")
        if canonical in _DANGEROUS_CAPS:
            written = _written(raw, cap)
            yield "CIS-5.4", f"service {svc.name!r} adds dangerous capability {canonical} (cap_add: {written})"


def check_privileged(svc: Service) -> Iterator[tuple[str, str]]:
    if _truthy(svc.get("privileged")):
        yield "CIS-5.5", f"service {svc.name!r} runs privileged: true"


def check_sensitive_mounts(svc: Service) -> Iterator[tuple[str, str]]:
    for mount in _mounts(svc):
        paths = [p for p in (mount.host_path, mount.target) if p]
        sockets = [p for p in paths if p.rstrip("/").endswith("docker.sock")]
        if sockets:  # CIS 5.32 is the more specific item for the socket itself
            yield (
                "CIS-5.32",
                (f"service {svc.name!r} mounts the docker socket {sockets[0]} (volumes entry {mount.written})"),
            )
            continue
        detail = _sensitive(mount.host_path) if mount.host_path else None
        if detail is not None:
            yield (
                "CIS-5.6",
                (
                    f"service {svc.name!r} mounts sensitive host path {mount.host_path}{detail} "
                    f"via volumes entry {mount.written}"
                ),
            )


def check_propagation(svc: Service) -> Iterator[tuple[str, str]]:
    for mount in _mounts(svc):
        if mount.propagation in {"shared", "rshared"}:
            yield (
                "CIS-5.20",
                (
                    f"service {svc.name!r} mounts volumes entry {mount.written} with {mount.propagation} propagation; "
                    "host mounts would follow it"
                ),
            )


def check_devices(svc: Service) -> Iterator[tuple[str, str]]:
    for raw, device in svc.pairs("devices"):
        yield "CIS-5.18", f"service {svc.name!r} exposes a host device (devices: {_written(raw, device)})"
    for raw, rule in svc.pairs("device_cgroup_rules"):
        yield "CIS-5.18", f"service {svc.name!r} allows host devices (device_cgroup_rules: {_written(raw, rule)})"


def check_security_opt(svc: Service) -> Iterator[tuple[str, str]]:
    for raw, option in svc.pairs("security_opt"):
        text = re.sub(r"\s+", "", str(option)).lower()
        # Both "seccomp:unconfined" and "seccomp=unconfined" are accepted by docker.
        key, _, value = text.replace("=", ":", 1).partition(":")
        values, rule, what = _UNCONFINED.get(key, (set(), "", ""))
        if value in values:
            yield rule, f"service {svc.name!r} disables {what} (security_opt: {_written(raw, option)})"


def check_host_namespaces(svc: Service) -> Iterator[tuple[str, str]]:
    for key, (rule, namespace, advice) in _HOST_NAMESPACES.items():
        value = svc.get(key)
        if value is not None and str(value).strip().lower() == "host":
            raw = svc.raw.get(key)
            written = f"{key}: {value}" if raw == value else f"{key}: {raw} (resolves to {value})"
            yield rule, f"service {svc.name!r} shares the host {namespace} ({written}){advice}"


def check_memory_limit(svc: Service) -> Iterator[tuple[str, str]]:
    if not (_is_set(svc.get("mem_limit")) or _is_set(_limits(svc).get("memory"))):
        yield "CIS-5.11", f"service {svc.name!r} has no memory limit (mem_limit or deploy.resources.limits.memory)"


def check_cpu_limit(svc: Service) -> Iterator[tuple[str, str]]:
    keys = ("cpus", "cpu_shares", "cpu_quota")
    if not (any(_is_set(svc.get(k)) for k in keys) or _is_set(_limits(svc).get("cpus"))):
        yield "CIS-5.12", f"service {svc.name!r} has no CPU limit (cpus or deploy.resources.limits.cpus)"


def check_read_only(svc: Service) -> Iterator[tuple[str, str]]:
    if not _truthy(svc.get("read_only")):
        yield "CIS-5.13", f"service {svc.name!r} root filesystem is writable (read_only is not true)"


def check_ports(svc: Service) -> Iterator[tuple[str, str]]:
    for raw, entry in svc.pairs("ports"):
        host = _port_host_ip(entry)
        if not _is_loopback(host):
            where = host or "all interfaces"
            yield "CIS-5.14", f"service {svc.name!r} publishes port {raw!r} on {where}; bind it to 127.0.0.1"


def check_no_new_privileges(svc: Service) -> Iterator[tuple[str, str]]:
    accepted = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
    options = {re.sub(r"\s+", "", str(o)).lower() for o in _as_list(svc.get("security_opt"))}
    if not options & accepted:
        yield "CIS-5.26", f"service {svc.name!r} lacks security_opt no-new-privileges:true"


def check_healthcheck(svc: Service) -> Iterator[tuple[str, str]]:
    health = svc.get("healthcheck")
    if not isinstance(health, dict):
        yield "CIS-5.27", f"service {svc.name!r} has no healthcheck"
    elif _truthy(health.get("disable")) or _as_list(health.get("test")) == ["NONE"]:
        yield "CIS-5.27", f"service {svc.name!r} disables its healthcheck"


def check_pids_limit(svc: Service) -> Iterator[tuple[str, str]]:
    if not (_is_set(svc.get("pids_limit")) or _is_set(_limits(svc).get("pids"))):
        yield "CIS-5.29", f"service {svc.name!r} has no pids limit (pids_limit or deploy.resources.limits.pids)"


def check_secret_env(svc: Service) -> Iterator[tuple[str, str]]:
    name = svc.name
    for var, value in _env_items(svc.raw.get("environment")):
        if value is None or str(value) == "":
            continue
        value = str(value)
        if _is_secret_name(var) and not _is_file_pointer(var, value):
            yield (
                "IDP-SECRET-ENV",
                (f"service {name!r} sets secret variable {var} in environment; mount it as a compose secret instead"),
            )
        elif _looks_like_key(value):
            yield "IDP-SECRET-ENV", f"service {name!r} variable {var} holds a literal that looks like an API key"
    for entry in _as_list(svc.raw.get("env_file")):
        path = str(entry.get("path", "")) if isinstance(entry, dict) else str(entry)
        if _SECRET_PATH.search(path):
            yield (
                "IDP-SECRET-ENV",
                (
                    f"service {name!r} loads env_file {path}, which looks like a secrets file; "
                    "its values show in docker inspect"
                ),
            )


def check_secret_cmd(svc: Service) -> Iterator[tuple[str, str]]:
    name = svc.name
    health = svc.raw.get("healthcheck")
    fields = {
        "command": svc.raw.get("command"),
        "entrypoint": svc.raw.get("entrypoint"),
        "healthcheck.test": health.get("test") if isinstance(health, dict) else None,
    }
    for field, value in fields.items():
        # `$$` is a literal `$` for the shell in the container, not interpolation.
        text = _command_text(value).replace("$$", "")
        flags = {m.group(1) for m in _SECRET_FLAG.finditer(text) if not _TOKEN_COUNT.search(m.group(1))}
        for flag in sorted(flags):
            yield (
                "IDP-SECRET-CMD",
                (
                    f"service {name!r} {field} passes a value to {flag} on the command line "
                    "(visible in ps and docker inspect); use a key file"
                ),
            )
        secret_vars = sorted({v for v in _INTERPOLATED_NAME.findall(text) if _is_secret_name(v)})
        for var in secret_vars:
            yield "IDP-SECRET-CMD", f"service {name!r} {field} interpolates secret variable {var} into the command line"
        if _looks_like_key(text):
            yield "IDP-SECRET-CMD", f"service {name!r} {field} contains a literal that looks like an API key (redacted)"


def check_model_mount(svc: Service) -> Iterator[tuple[str, str]]:
    for mount in _mounts(svc):
        if not mount.read_only and ("model" in mount.source.lower() or "model" in mount.target.lower()):
            yield "IDP-MODEL-RW", f"service {svc.name!r} mounts models volume {mount.written} writable; add :ro"


def check_user(svc: Service) -> Iterator[tuple[str, str]]:
    raw, user = svc.raw.get("user"), svc.get("user")
    if user is None or str(user).strip() == "":
        yield "IDP-ROOT", f"service {svc.name!r} sets no user, so it runs as the image's user (often root)"
        return
    uid = str(user).split(":", 1)[0].strip()
    if uid == "root" or (uid.isdigit() and int(uid) == 0):
        yield "IDP-ROOT", f"service {svc.name!r} runs as root (user: {_written(raw, user)})"


def check_logging(svc: Service) -> Iterator[tuple[str, str]]:
    logging = svc.get("logging")
    if not isinstance(logging, dict):
        yield "IDP-LOGGING", f"service {svc.name!r} has no logging section, so logs are not rotated"
        return
    driver = str(logging.get("driver") or "json-file")
    options = logging.get("options") if isinstance(logging.get("options"), dict) else {}
    if driver in {"json-file", "local"} and not _is_set(options.get("max-size")):
        yield "IDP-LOGGING", f"service {svc.name!r} logging driver {driver} has no max-size option"


CHECKS: list[Rule] = [
    check_capabilities,
    check_privileged,
    check_sensitive_mounts,
    check_propagation,
    check_devices,
    check_security_opt,
    check_host_namespaces,
    check_memory_limit,
    check_cpu_limit,
    check_read_only,
    check_ports,
    check_no_new_privileges,
    check_healthcheck,
    check_pids_limit,
    check_secret_env,
    check_secret_cmd,
    check_model_mount,
    check_user,
    check_logging,
]


# --- entry points ------------------------------------------------------------


def _rule_key(rule: str) -> list:
    # Natural order: CIS-5.4 before CIS-5.10.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", rule)]


@dataclass(frozen=True)
class AuditResult:
    """The open findings (what the gate judges) and, apart, the findings a service accepted."""

    findings: list[Finding]
    accepted: list[Accepted]


def _finding(service: str, rule: str, message: str) -> Finding:
    return Finding(service=service, rule=rule, severity=RULES[rule][0], message=message)


def _sort_key(f: Finding | Accepted) -> tuple:
    return (SEVERITY_RANK[f.severity], f.service, _rule_key(f.rule), f.message)


def audit_compose_result(
    model: dict, environment: Mapping[str, str] | None = None, *, base_dir: str | Path | None = None
) -> AuditResult:
    """Findings for a compose model, judged with `environment` (unset variables take their defaults),
    with the ones each service accepts (x-idp-audit-accept) set apart.

    `base_dir` is the project directory relative host paths resolve against.
    """
    env = dict(environment or {})
    assembled = assemble(model, env=env)
    resolved = interpolate_values(assembled, env)
    named_volumes = resolved.get("volumes") if isinstance(resolved.get("volumes"), dict) else {}
    resolved_services = services_of(resolved)
    findings, acceptances = [], []
    for name, raw in services_of(assembled).items():
        svc = Service(name, raw, resolved_services[name], named_volumes, Path(base_dir) if base_dir else None)
        findings += [_finding(name, rule, message) for check in CHECKS for rule, message in check(svc)]
        # Read as written: the rule id and the reason are not interpolated.
        valid, problems = read_acceptances(name, raw, RULES)
        acceptances += valid
        findings += [_finding(name, rule, message) for rule, message in problems]
    findings += [_finding("", rule, message) for rule, message in top_level_problems(assembled)]
    split = split_findings(findings, acceptances)
    findings = split.open + [_finding(service, UNUSED_RULE, message) for service, _, message in split.unused]
    return AuditResult(sorted(findings, key=_sort_key), sorted(split.accepted, key=_sort_key))


def audit_compose(
    model: dict, environment: Mapping[str, str] | None = None, *, base_dir: str | Path | None = None
) -> list[Finding]:
    """The open findings of audit_compose_result: accepted ones are not among them."""
    return audit_compose_result(model, environment, base_dir=base_dir).findings


def audit_compose_file_result(path: str | Path, environment: Mapping[str, str] | None = None) -> AuditResult:
    path = Path(path)
    model = load_compose_file(path, environment)
    return audit_compose_result(model, environment, base_dir=path.absolute().parent)


def audit_compose_file(path: str | Path, environment: Mapping[str, str] | None = None) -> list[Finding]:
    return audit_compose_file_result(path, environment).findings


def has_high(findings: Iterable[Finding]) -> bool:
    """A high finding that blocks. Accepted findings never reach here: they are kept apart."""
    return any(f.severity == "high" for f in findings)


# --- the deploy gate ---------------------------------------------------------


class AuditGateError(ProblemFound, RuntimeError):
    """High findings in the compose file: the deploy must not start. Carries every finding."""

    def __init__(self, compose_file: Path, findings: list[Finding], accepted: list[Accepted] | None = None):
        self.compose_file = compose_file
        self.findings = findings
        self.accepted = list(accepted or [])
        self.high = [f for f in findings if f.severity == "high"]
        lines = "\n".join(f"  - {f.service}: {f.rule} {f.message}" for f in self.high)
        super().__init__(
            f"deploy refused: {compose_file} has {len(self.high)} high finding(s) against {BENCHMARK}:\n{lines}"
        )


def audit_gate_result(settings: Settings) -> AuditResult:
    """Audit the compose file the deploy will run, with the values the deploy will give it.

    Returns the result when no open finding is high (accepted ones do not
    count); raises AuditGateError (carrying every finding, accepted ones
    included) when one is; ComposeFileError when the file cannot be judged.
    """
    result = audit_compose_file_result(settings.compose_file, deploy_environment(settings))
    if has_high(result.findings):
        raise AuditGateError(settings.compose_file, result.findings, result.accepted)
    return result


def audit_gate(settings: Settings) -> list[Finding]:
    """audit_gate_result's open findings."""
    return audit_gate_result(settings).findings
