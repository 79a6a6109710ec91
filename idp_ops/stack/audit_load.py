"""Assemble a compose file the way `docker compose` will, without docker.

The audit must judge what compose actually runs, so before any rule looks at
it the file is assembled here:

- top-level `include` files are merged in (paths relative to the including file);
- `extends` is followed (same file, or file + service; chains; cycles refused)
  and merged with compose's rules (command/entrypoint replaced, volumes and
  devices merged by target, environment by name, other lists appended);
- relative bind-mount sources that come from another file's directory are made
  absolute, because compose resolves them against the file that wrote them;
- `interpolate` resolves `${VAR}` with compose's operators over an environment.

The assembled model stays uninterpolated: the secret rules need to see
`${HF_TOKEN}` as written. `interpolate_values` gives the resolved view.

Not modelled: an include entry's own `project_directory` and `env_file` (its
paths resolve against the included file, its variables come from the one
environment the audit is given), and `profiles` (every service is judged,
whichever profile would start it).
"""

from __future__ import annotations

import copy
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from idp_ops.errors import IdpOpsError


class ComposeFileError(IdpOpsError, ValueError):
    """The compose file is missing, does not parse, or is not shaped like one."""


# --- reading -------------------------------------------------------------------


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ComposeFileError(f"compose file not found: {path}") from None
    except OSError as exc:
        raise ComposeFileError(f"cannot read compose file {path}: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ComposeFileError(f"{path}: invalid YAML{where}: {problem}") from exc


def services_of(model: Any, source: str = "compose model") -> dict[str, dict]:
    """The service mappings of a model, refusing anything not shaped like compose."""
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


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a `.env` file (compose reads the one beside the compose file)."""
    env: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return env
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[name.strip()] = value
    return env


# --- interpolation -----------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)


def _closing_brace(text: str, opening: int) -> int:
    depth = 0
    for j in range(opening, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return j
    return -1


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """`text` with `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:+r}`, `${VAR+r}`,
    `${VAR:?e}`, `${VAR?e}` resolved as compose does, and `$$` as a literal `$`.

    An unset `${VAR:?e}` resolves to "" (compose would refuse to start: nothing to judge).
    """
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 1)
            if end < 0:  # unterminated: compose refuses it; keep the text as written
                out.append(text[i:])
                break
            out.append(_expand(text[i + 2 : end], env))
            i = end + 1
        elif text[i] == "$" and (name := _NAME.match(text, i + 1)):
            out.append(env.get(name.group(0), ""))
            i = name.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _expand(body: str, env: Mapping[str, str]) -> str:
    match = _BRACED.fullmatch(body)
    if not match:
        return "${" + body + "}"
    name, op, arg = match.groups()
    value = env.get(name)
    if op == ":-":
        return value if value else interpolate(arg, env)
    if op == "-":
        return value if value is not None else interpolate(arg, env)
    if op == ":+":
        return interpolate(arg, env) if value else ""
    if op == "+":
        return interpolate(arg, env) if value is not None else ""
    return value or ""  # plain ${VAR}, ${VAR:?err}, ${VAR?err}


def interpolate_values(node: Any, env: Mapping[str, str]) -> Any:
    """A deep copy of `node` with every string value interpolated (keys are not, as in compose)."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolate_values(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_values(value, env) for value in node]
    return node


# --- volumes -------------------------------------------------------------------


def split_short_volume(entry: str) -> tuple[str, str, str]:
    """(source, target, mode) of "src:dst:mode", "src:dst" or "dst" (anonymous volume)."""
    parts = entry.split(":")
    if len(parts) == 1:
        return "", parts[0], ""
    return parts[0], parts[1], ":".join(parts[2:])


def is_host_path(source: str) -> bool:
    # Compose reads a short-syntax source as a host path when it starts like one;
    # anything else names a volume.
    return source.startswith(("/", ".", "~"))


def _absolute(source: str, base_dir: Path) -> str:
    if source.startswith("."):
        return posixpath.normpath(posixpath.join(base_dir.as_posix(), source))
    return source


def _absolutize_volumes(svc: dict, base_dir: Path) -> None:
    """Make relative bind sources absolute against `base_dir` (the file that wrote them)."""
    volumes = svc.get("volumes")
    if not isinstance(volumes, list):
        return
    for index, entry in enumerate(volumes):
        if isinstance(entry, str):
            source, target, mode = split_short_volume(entry)
            if source.startswith("."):
                volumes[index] = ":".join(p for p in (_absolute(source, base_dir), target, mode) if p)
        elif isinstance(entry, dict) and isinstance(entry.get("source"), str) and entry.get("type", "bind") == "bind":
            entry["source"] = _absolute(entry["source"], base_dir)


# --- merging (extends) -----------------------------------------------------------

_REPLACED = {"command", "entrypoint"}  # compose replaces these whole
_BY_NAME = {"environment", "labels", "annotations", "sysctls"}  # merged by variable/label name


def _as_mapping(value: Any) -> dict:
    if isinstance(value, dict):
        return dict(value)
    mapping = {}
    for item in value if isinstance(value, list) else [value]:
        name, sep, rest = str(item).partition("=")
        mapping[name.strip()] = rest if sep else None
    return mapping


def _target(entry: Any) -> str:
    """The container path a volume or device entry mounts on (what compose merges by)."""
    if isinstance(entry, dict):
        return str(entry.get("target") or entry.get("source") or "")
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _listed(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _append_unique(base: list, extra: list) -> list:
    merged = list(base)
    merged += [item for item in extra if item not in merged]
    return merged


def merge_service(base: dict, override: dict) -> dict:
    """`override` (the extending service) laid over `base` (the extended one)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        old = merged.get(key)
        if key in _REPLACED or old is None:
            merged[key] = copy.deepcopy(value)
        elif key in _BY_NAME:
            merged[key] = {**_as_mapping(old), **_as_mapping(value)}
        elif key in {"volumes", "devices"} and isinstance(old, list) and isinstance(value, list):
            replaced = {_target(entry) for entry in value}
            merged[key] = [e for e in old if _target(e) not in replaced] + copy.deepcopy(value)
        elif key == "healthcheck" and isinstance(old, dict) and isinstance(value, dict):
            merged[key] = {**old, **copy.deepcopy(value)}  # `test` is replaced, not appended
        elif isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge_service(old, value)
        elif isinstance(old, list) or isinstance(value, list):  # e.g. `env_file: a.env` over a list
            merged[key] = _append_unique(_listed(old), copy.deepcopy(_listed(value)))
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --- assembling --------------------------------------------------------------


class _Assembler:
    def __init__(self, env: Mapping[str, str], project_dir: Path | None):
        self.env = env
        self.project_dir = project_dir
        self.docs: dict[Path, Any] = {}

    def doc(self, path: Path) -> Any:
        if path not in self.docs:
            self.docs[path] = read_yaml(path)
        return self.docs[path]

    def path(self, written: Any, relative_to: Path | None) -> Path:
        path = Path(interpolate(str(written), self.env)).expanduser()
        if not path.is_absolute():
            path = (relative_to or Path.cwd()) / path
        return Path(posixpath.normpath(path.as_posix()))

    def service(self, doc: Any, source: Path | None, name: str, chain: tuple = ()) -> dict:
        where = str(source) if source else "compose model"
        if (source, name) in chain:
            loop = " -> ".join(f"{n} ({s or 'model'})" for s, n in (*chain, (source, name)))
            raise ComposeFileError(f"extends loop: {loop}")
        services = services_of(doc, where)
        if name not in services:
            raise ComposeFileError(f"{where}: extends names service {name!r}, which it does not define")
        svc = copy.deepcopy(services[name])
        base_dir = source.parent if source else None
        if base_dir is not None and base_dir != self.project_dir:
            _absolutize_volumes(svc, base_dir)
        extends = svc.pop("extends", None)
        if extends is None:
            return svc
        if isinstance(extends, str):
            base_doc, base_source, base_name = doc, source, extends
        elif isinstance(extends, dict) and extends.get("service"):
            base_name = str(extends["service"])
            base_doc, base_source = doc, source
            if extends.get("file"):
                base_source = self.path(extends["file"], base_dir)
                base_doc = self.doc(base_source)
        else:
            raise ComposeFileError(f"{where}: service {name!r} has an `extends` without a service")
        base = self.service(base_doc, base_source, base_name, (*chain, (source, name)))
        return merge_service(base, svc)

    def project(self, doc: Any, source: Path | None, chain: tuple = ()) -> dict:
        where = str(source) if source else "compose model"
        if not isinstance(doc, dict):
            raise ComposeFileError(f"{where}: top level is not a mapping")
        includes = doc.get("include") or []
        model = {key: value for key, value in doc.items() if key != "include"}
        # An included file may define no services (networks only, or includes only).
        names = services_of(doc, where) if "services" in doc else {}
        model["services"] = {name: self.service(doc, source, name) for name in names}
        for entry in includes if isinstance(includes, list) else [includes]:
            for path in self.include_paths(entry, source):
                if path in chain or path == source:
                    raise ComposeFileError(f"include loop: {' -> '.join(map(str, (*chain, source, path)))}")
                self.merge_included(model, self.project(self.doc(path), path, (*chain, source)), path)
        return model

    def include_paths(self, entry: Any, source: Path | None) -> list[Path]:
        base_dir = source.parent if source else None
        written = entry.get("path") if isinstance(entry, dict) else entry
        if not written:
            raise ComposeFileError(f"{source or 'compose model'}: include entry without a path: {entry!r}")
        return [self.path(p, base_dir) for p in (written if isinstance(written, list) else [written])]

    @staticmethod
    def merge_included(model: dict, included: dict, path: Path) -> None:
        for section in ("services", "volumes", "networks", "secrets", "configs"):
            theirs = included.get(section)
            if not isinstance(theirs, dict):
                continue
            ours = model.get(section)
            if not isinstance(ours, dict):
                ours = model[section] = {}
            clash = sorted(set(ours) & set(theirs)) if section == "services" else []
            if clash:
                raise ComposeFileError(f"{path}: included file defines service(s) {clash} already defined")
            for name, value in theirs.items():
                ours.setdefault(name, value)


def assemble(model: Any, source: Path | None = None, env: Mapping[str, str] | None = None) -> dict:
    """The model compose will run: includes merged, extends followed (still uninterpolated)."""
    source = Path(posixpath.normpath(Path(source).absolute().as_posix())) if source else None
    where = str(source) if source else "compose model"
    if isinstance(model, dict) and "services" not in model and not model.get("include"):
        services_of(model, where)  # the top file needs services (or includes that bring them)
    assembler = _Assembler(env or {}, source.parent if source else None)
    if source is not None:
        assembler.docs[source] = model
    return assembler.project(model, source)


def load_compose(path: str | Path, env: Mapping[str, str] | None = None) -> dict:
    path = Path(path)
    return assemble(read_yaml(path), path, env)
