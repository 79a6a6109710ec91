"""Security audit of a Docker Compose file, mapped to CIS Docker Benchmark 5.x.

The audit reads the file as written (no interpolation, no `docker compose
config`), so it works on a box without docker and never needs the secrets.
`${VAR:-default}` expressions are resolved to their default only where a
concrete value is needed to judge (the host IP of a port, the user).

Rule ids are CIS Docker Benchmark items ("CIS-5.x") or our own ("IDP-...");
RULES is the single source of truth for their severities.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

RULES: dict[str, tuple[str, str]] = {
    "CIS-5.4": ("high", "capabilities not dropped / dangerous capability added"),
    "CIS-5.5": ("high", "privileged container"),
    "CIS-5.10": ("medium", "no memory limit"),
    "CIS-5.11": ("low", "no CPU limit"),
    "CIS-5.13": ("medium", "root filesystem not read-only"),
    "CIS-5.14": ("high", "port published beyond loopback"),
    "CIS-5.16": ("high", "host PID namespace shared"),
    "CIS-5.17": ("high", "host IPC namespace shared"),
    "CIS-5.26": ("medium", "no-new-privileges not set"),
    "CIS-5.27": ("medium", "no healthcheck"),
    "CIS-5.29": ("medium", "no pids limit"),
    "CIS-5.31": ("high", "docker socket mounted"),
    "IDP-SECRET-ENV": ("high", "secret in environment or env_file"),
    "IDP-SECRET-CMD": ("high", "secret on the command line"),
    "IDP-MODEL-RW": ("high", "models volume mounted writable"),
    "IDP-ROOT": ("medium", "container runs as root"),
    "IDP-LOGGING": ("low", "no log rotation"),
}

SEVERITY_RANK = {"high": 0, "medium": 1, "low": 2}


@dataclass(frozen=True)
class Finding:
    service: str  # "" for file-level findings
    rule: str
    severity: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


class ComposeFileError(ValueError):
    """The compose file is missing, does not parse, or is not shaped like one."""


# --- loading -----------------------------------------------------------------


def load_compose_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ComposeFileError(f"compose file not found: {path}") from None
    except OSError as exc:
        raise ComposeFileError(f"cannot read compose file {path}: {exc}") from exc
    try:
        model = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ComposeFileError(f"{path}: invalid YAML{where}: {problem}") from exc
    _services(model, source=str(path))
    return model


def _services(model: Any, source: str = "compose model") -> dict[str, dict]:
    if not isinstance(model, dict):
        raise ComposeFileError(f"{source}: top level is not a mapping")
    services = model.get("services")
    if not isinstance(services, dict):
        raise ComposeFileError(f"{source}: no `services` mapping")
    result = {}
    for name, svc in services.items():
        name = str(name)
        if name.startswith("x-"):  # extension fields are not services
            continue
        if not isinstance(svc, dict):
            raise ComposeFileError(f"{source}: service {name!r} is not a mapping")
        result[name] = svc
    return result


# --- helpers -----------------------------------------------------------------

_SECRET_NAME = re.compile(
    # The trailing look-ahead keeps TOKENIZERS_PARALLELISM, KEYCLOAK_URL and the
    # like out, while API_KEY, apiKey, HF_TOKEN and SECRETS still match.
    r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)S?(?![A-Z])",
    re.IGNORECASE,
)
_SECRET_PATH = re.compile(r"(secret|key|token|password|passwd|credential)s?(?![a-z])", re.IGNORECASE)
_KEY_LITERAL = re.compile(r"(?<![\w-])sk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9]{16,}|[0-9A-Fa-f]{32,}")
_SECRET_FLAG = re.compile(
    # --api-key, --api_key, --token, --password, --hf-token, --db-password ...
    # but not --api-key-file or --tokenizer.
    r"(?<![\w-])(--(?:[a-z0-9]+[-_])*(?:api[-_]key|token|password|passwd|secret))(?![\w-])"
    r"(?:=(?P<eq>\S+)|\s+(?P<arg>[^\s-]\S*))",
    re.IGNORECASE,
)
_INTERPOLATED_NAME = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_DANGEROUS_CAPS = {"SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "SYS_MODULE", "DAC_READ_SEARCH", "NET_RAW", "ALL"}
_DOCKER_SOCKETS = {"/var/run/docker.sock", "/run/docker.sock"}


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _truthy(value: Any) -> bool:
    # Interpolated booleans arrive as strings: read_only: ${RO:-true}.
    if isinstance(value, str):
        return _resolve_defaults(value).strip().lower() in {"true", "yes", "on", "1"}
    return value is True


def _is_set(value: Any) -> bool:
    # 0 and -1 mean "unlimited" to docker.
    return value is not None and str(value).strip() not in {"", "0", "-1"}


def _limits(svc: dict) -> dict:
    deploy = svc.get("deploy")
    resources = deploy.get("resources") if isinstance(deploy, dict) else None
    limits = resources.get("limits") if isinstance(resources, dict) else None
    return limits if isinstance(limits, dict) else {}


def _mask(text: str) -> tuple[str, list[str]]:
    """Replace each `${...}` (braces balanced) by a colon-free placeholder.

    `${VAR:-default}` contains ':' and would break splitting "ip:host:container".
    """
    out, exprs, i = [], [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 0, i + 1
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            out.append(f"\0{len(exprs)}\0")
            exprs.append(text[i : j + 1])
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out), exprs


def _unmask(text: str, exprs: list[str], resolve: bool = False) -> str:
    """Put the `${...}` back, or with resolve=True their default value ("" if none)."""
    return re.sub(
        r"\0(\d+)\0",
        lambda m: _default_of(exprs[int(m.group(1))]) if resolve else exprs[int(m.group(1))],
        text,
    )


def _default_of(expr: str) -> str:
    match = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?-)(.*)\}", expr, re.DOTALL)
    if not match:
        return ""
    masked, exprs = _mask(match.group(2))
    return _unmask(masked, exprs, resolve=True)


def _resolve_defaults(text: str) -> str:
    masked, exprs = _mask(text)
    return _unmask(masked, exprs, resolve=True)


def _split_colons(text: str) -> list[str]:
    masked, exprs = _mask(text)
    return [_unmask(part, exprs) for part in masked.split(":")]


def _volume(entry: Any) -> tuple[str, str, bool] | None:
    """(source, target, read_only) for a short or long volume entry."""
    if isinstance(entry, dict):
        if entry.get("type") == "tmpfs":
            return None
        return str(entry.get("source") or ""), str(entry.get("target") or ""), _truthy(entry.get("read_only"))
    parts = _split_colons(str(entry))
    if len(parts) == 1:  # anonymous volume: target only
        return "", parts[0], False
    mode = parts[2] if len(parts) > 2 else ""
    return parts[0], parts[1], "ro" in mode.split(",")


def _port_host_ip(entry: Any) -> str:
    """The host IP a published port binds to; "" means all interfaces."""
    if isinstance(entry, dict):
        return _resolve_defaults(str(entry.get("host_ip") or "")).strip("[]")
    if isinstance(entry, int):
        return ""
    masked, exprs = _mask(str(entry))
    masked = masked.split("/", 1)[0]  # drop /tcp, /udp
    if masked.startswith("["):
        host = masked[1 : masked.find("]")]
    else:
        parts = masked.rsplit(":", 2)  # rsplit keeps an unbracketed IPv6 host whole
        host = parts[0] if len(parts) == 3 else ""
    return _unmask(host, exprs, resolve=True).strip().strip("[]")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _looks_like_key(text: str) -> bool:
    return bool(_KEY_LITERAL.search(text))


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
# Each rule takes (service name, service mapping) and yields (rule id, message).

Rule = Callable[[str, dict], Iterable[tuple[str, str]]]


def check_capabilities(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    dropped = {str(c).upper() for c in _as_list(svc.get("cap_drop"))}
    if not dropped & {"ALL", "CAP_ALL"}:
        yield "CIS-5.4", f"service {name!r} does not drop all capabilities (cap_drop lacks ALL)"
    added = {str(c).upper().removeprefix("CAP_") for c in _as_list(svc.get("cap_add"))}
    dangerous = sorted(added & _DANGEROUS_CAPS)
    if dangerous:
        yield "CIS-5.4", f"service {name!r} adds dangerous capabilities: {', '.join(dangerous)}"


def check_privileged(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    if _truthy(svc.get("privileged")):
        yield "CIS-5.5", f"service {name!r} runs privileged: true"


def check_memory_limit(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    if not (_is_set(svc.get("mem_limit")) or _is_set(_limits(svc).get("memory"))):
        yield "CIS-5.10", f"service {name!r} has no memory limit (mem_limit or deploy.resources.limits.memory)"


def check_cpu_limit(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    keys = ("cpus", "cpu_shares", "cpu_quota")
    if not (any(_is_set(svc.get(k)) for k in keys) or _is_set(_limits(svc).get("cpus"))):
        yield "CIS-5.11", f"service {name!r} has no CPU limit (cpus or deploy.resources.limits.cpus)"


def check_read_only(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    if not _truthy(svc.get("read_only")):
        yield "CIS-5.13", f"service {name!r} root filesystem is writable (read_only is not true)"


def check_ports(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    if str(svc.get("network_mode", "")).strip() == "host":
        yield "CIS-5.14", f"service {name!r} uses network_mode: host, exposing every port on the host"
    for entry in _as_list(svc.get("ports")):
        host = _port_host_ip(entry)
        if not _is_loopback(host):
            where = host or "all interfaces"
            yield "CIS-5.14", f"service {name!r} publishes port {entry!r} on {where}; bind it to 127.0.0.1"


def check_pid_host(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    if str(svc.get("pid", "")).strip() == "host":
        yield "CIS-5.16", f"service {name!r} shares the host PID namespace (pid: host)"


def check_ipc_host(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    if str(svc.get("ipc", "")).strip() == "host":
        yield "CIS-5.17", f"service {name!r} shares the host IPC namespace (ipc: host); set shm_size instead"


def check_no_new_privileges(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    accepted = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
    options = {re.sub(r"\s+", "", str(o)).lower() for o in _as_list(svc.get("security_opt"))}
    if not options & accepted:
        yield "CIS-5.26", f"service {name!r} lacks security_opt no-new-privileges:true"


def check_healthcheck(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    health = svc.get("healthcheck")
    if not isinstance(health, dict):
        yield "CIS-5.27", f"service {name!r} has no healthcheck"
    elif _truthy(health.get("disable")) or _as_list(health.get("test")) == ["NONE"]:
        yield "CIS-5.27", f"service {name!r} disables its healthcheck"


def check_pids_limit(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    if not (_is_set(svc.get("pids_limit")) or _is_set(_limits(svc).get("pids"))):
        yield "CIS-5.29", f"service {name!r} has no pids limit (pids_limit or deploy.resources.limits.pids)"


def check_docker_socket(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    for entry in _as_list(svc.get("volumes")):
        volume = _volume(entry)
        if volume is None:
            continue
        for path in volume[:2]:
            if path and "/" + posixpath.normpath(path).lstrip("/") in _DOCKER_SOCKETS:
                yield "CIS-5.31", f"service {name!r} mounts the docker socket {path}"
                break


def check_secret_env(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    for var, value in _env_items(svc.get("environment")):
        if value is None or str(value) == "":
            continue
        value = str(value)
        if _SECRET_NAME.search(var) and not _is_file_pointer(var, value):
            yield "IDP-SECRET-ENV", (
                f"service {name!r} sets secret variable {var} in environment; "
                "mount it as a compose secret instead"
            )
        elif _looks_like_key(value):
            yield "IDP-SECRET-ENV", f"service {name!r} variable {var} holds a literal that looks like an API key"
    for entry in _as_list(svc.get("env_file")):
        path = str(entry.get("path", "")) if isinstance(entry, dict) else str(entry)
        if _SECRET_PATH.search(path):
            yield "IDP-SECRET-ENV", (
                f"service {name!r} loads env_file {path}, which looks like a secrets file; "
                "its values show in docker inspect"
            )


def check_secret_cmd(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    health = svc.get("healthcheck")
    fields = {
        "command": svc.get("command"),
        "entrypoint": svc.get("entrypoint"),
        "healthcheck.test": health.get("test") if isinstance(health, dict) else None,
    }
    for field, value in fields.items():
        # `$$` is a literal `$` for the shell in the container, not interpolation.
        text = _command_text(value).replace("$$", "")
        for flag in sorted({m.group(1) for m in _SECRET_FLAG.finditer(text)}):
            yield "IDP-SECRET-CMD", (
                f"service {name!r} {field} passes a value to {flag} on the command line "
                "(visible in ps and docker inspect); use a key file"
            )
        secret_vars = sorted({v for v in _INTERPOLATED_NAME.findall(text) if _SECRET_NAME.search(v)})
        for var in secret_vars:
            yield "IDP-SECRET-CMD", f"service {name!r} {field} interpolates secret variable {var} into the command line"
        if _looks_like_key(text):
            yield "IDP-SECRET-CMD", f"service {name!r} {field} contains a literal that looks like an API key (redacted)"


def check_model_mount(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    for entry in _as_list(svc.get("volumes")):
        volume = _volume(entry)
        if volume is None:
            continue
        source, target, read_only = volume
        if not read_only and ("model" in source.lower() or "model" in target.lower()):
            yield "IDP-MODEL-RW", f"service {name!r} mounts models volume {source or target} writable; add :ro"


def check_user(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    user = svc.get("user")
    if user is None or str(user).strip() == "":
        yield "IDP-ROOT", f"service {name!r} sets no user, so it runs as the image's user (often root)"
        return
    uid = _resolve_defaults(str(user)).split(":", 1)[0].strip()
    if uid == "root" or (uid.isdigit() and int(uid) == 0):
        yield "IDP-ROOT", f"service {name!r} runs as root (user: {user})"


def check_logging(name: str, svc: dict) -> Iterator[tuple[str, str]]:
    logging = svc.get("logging")
    if not isinstance(logging, dict):
        yield "IDP-LOGGING", f"service {name!r} has no logging section, so logs are not rotated"
        return
    driver = str(logging.get("driver") or "json-file")
    options = logging.get("options") if isinstance(logging.get("options"), dict) else {}
    if driver in {"json-file", "local"} and not _is_set(options.get("max-size")):
        yield "IDP-LOGGING", f"service {name!r} logging driver {driver} has no max-size option"


CHECKS: list[Rule] = [
    check_capabilities,
    check_privileged,
    check_memory_limit,
    check_cpu_limit,
    check_read_only,
    check_ports,
    check_pid_host,
    check_ipc_host,
    check_no_new_privileges,
    check_healthcheck,
    check_pids_limit,
    check_docker_socket,
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


def audit_compose(model: dict) -> list[Finding]:
    findings = [
        Finding(service=name, rule=rule, severity=RULES[rule][0], message=message)
        for name, svc in _services(model).items()
        for check in CHECKS
        for rule, message in check(name, svc)
    ]
    return sorted(
        findings,
        key=lambda f: (SEVERITY_RANK[f.severity], f.service, _rule_key(f.rule), f.message),
    )


def audit_compose_file(path: str | Path) -> list[Finding]:
    return audit_compose(load_compose_file(path))


def has_high(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "high" for f in findings)
