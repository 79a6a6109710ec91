"""The box's own state, backed up in the same verified snapshot as the models: what cannot be downloaded again.

Inside a snapshot (see core/rsync.py for the rest of the layout)::

    <snapshot>/state/                0700: it holds the API keys
      state.json                     each part: copied / absent / failed, its source, how it was copied, modes, owners
      manifest.json, SHA256SUMS      sha256 of every file below (the models' manifest format; cd state && sha256sum -c)
      settings/<file>.yaml           the settings file in use (--config, $IDP_CONFIG or ./idp-ops.yaml), if any
      secrets/...                    settings.secrets_dir, modes and owners kept (0700 directory, 0600 keys)
      history/history.duckdb         the history, copied with DuckDB's COPY FROM DATABASE under a read-only
                                     ATTACH: one transaction's view, never a byte copy of a file being written
      dagster/...                    $DAGSTER_HOME: every *.db through SQLite's online backup API, and dagster.yaml
      postgres/dagster.dump          the ops platform's instance (compose/ops/): pg_dump --format=custom in its
                                     postgres container, read back with pg_restore (backup/postgres_dump.py)

Every part is read back from the volume after it is written (sha256 against what
was written; row counts for DuckDB, ``PRAGMA integrity_check`` for SQLite; pg_restore --list
and a full data read for the Postgres dump). A part that cannot be copied is recorded
as failed (the run fails, the models snapshot is still promoted); an absent one (no
settings file, no DAGSTER_HOME; no platform project: the embedded instance, where
Postgres does not apply) is recorded as absent. Key contents are never logged: only
file names; the Postgres password is never an argument of any process.

Restore (``restore_part``) puts a part back into place or into a chosen directory:
verified first, built under a temp name, renamed over the target; an existing
target is replaced only with ``force`` and is then kept aside as
``<target>.before-restore-<UTC time>``, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from idp_ops.backup.manifest import (
    BLOCK_SIZE,
    MANIFEST_NAME,
    Entry,
    Manifest,
    ManifestError,
    check_entries,
    load_manifest,
    utc_now_iso,
    write_manifest,
)
from idp_ops.backup.postgres_dump import (
    DUMP_NAME,
    PostgresDumpError,
    PostgresSource,
    dump_postgres,
    platform_project,
    restore_postgres,
)
from idp_ops.errors import IdpOpsError
from idp_ops.fsutil import atomic_write_json

if TYPE_CHECKING:
    from idp_ops.settings import Settings

Log = Callable[[str], None]

STATE = "state"
STATE_INFO = "state.json"
STATE_FORMAT = "idp-ops-state/1"
PARTS = ("settings", "secrets", "history", "dagster", "postgres")
# Where --into DIR puts each part (settings keeps its own file name).
INTO_NAMES = {"secrets": "secrets", "history": "history.duckdb", "dagster": "dagster_home", "postgres": DUMP_NAME}
POSTGRES_NOT_APPLICABLE = (
    "not applicable: no ops platform project (backup.platform_project, else $IDP_OPS_POSTGRES_PROJECT); the Dagster "
    "instance is the embedded one (part dagster)"
)
DUCKDB_LOCK_TIMEOUT_S = 60.0
SQLITE_BUSY_TIMEOUT_S = 60.0


class StateError(IdpOpsError, RuntimeError):
    """A part of the box's state that cannot be copied or restored; the message says which and why."""


def _quiet(_: str) -> None:
    pass


# -- where the state lives ----------------------------------------------------


@dataclass
class StateSources:
    settings_file: Path | None = None
    secrets_dir: Path | None = None
    history_file: Path | None = None
    dagster_home: Path | None = None
    # The ops platform's Postgres (compose/ops/); None: the embedded instance, nothing to dump.
    postgres: PostgresSource | None = None

    def source(self, part: str) -> Path | PostgresSource | None:
        return {
            "settings": self.settings_file,
            "secrets": self.secrets_dir,
            "history": self.history_file,
            "dagster": self.dagster_home,
            "postgres": self.postgres,
        }[part]


def settings_file_in_use(explicit: str | Path | None = None) -> Path | None:
    """The settings file load_settings reads: the one given, else $IDP_CONFIG, else ./idp-ops.yaml if present."""
    from idp_ops.settings import DEFAULT_CONFIG_FILE

    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get("IDP_CONFIG"):
        return Path(os.environ["IDP_CONFIG"]).expanduser().resolve()
    default = Path(DEFAULT_CONFIG_FILE)
    return default.resolve() if default.is_file() else None


def state_sources(
    settings: Settings, *, config_file: str | Path | None = None, dagster_home: str | Path | None = None
) -> StateSources:
    home = dagster_home if dagster_home is not None else os.environ.get("DAGSTER_HOME")
    project = platform_project(settings.backup.platform_project)
    return StateSources(
        settings_file=settings_file_in_use(config_file),
        secrets_dir=settings.secrets_dir,
        history_file=settings.history_file,
        dagster_home=Path(home).expanduser().resolve() if home else None,
        postgres=PostgresSource(project, settings.docker_engine) if project else None,
    )


# -- capture ------------------------------------------------------------------


@dataclass
class StateCapture:
    parts: dict[str, dict] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    # The Postgres dump's figures when one was taken (bytes, tables, rows, toc_entries, seconds).
    postgres: dict | None = None

    def summary(self) -> dict:
        return {
            "parts": {part: info["status"] for part, info in self.parts.items()},
            "files": self.files,
            "bytes": self.bytes,
            "errors": self.errors,
            "postgres": self.postgres,
        }


def capture_state(sources: StateSources, state_dir: Path, *, log: Log = _quiet) -> StateCapture:
    """Copy every part into ``state_dir`` (emptied first), read each back, write the manifest and state.json."""
    state_dir = Path(state_dir)
    if state_dir.exists():
        shutil.rmtree(state_dir)  # a resumed run's stale copy: state is taken fresh every run
    state_dir.mkdir(mode=0o700, parents=True)
    os.chmod(state_dir, 0o700)  # umask may have narrowed it; never widened
    capture = StateCapture()
    entries: list[Entry] = []
    for part in PARTS:
        source = sources.source(part)
        if source is None or (isinstance(source, Path) and not os.path.lexists(source)):
            capture.parts[part] = {"status": "absent", "source": str(source) if source else None}
            if part == "postgres":
                capture.parts[part]["reason"] = POSTGRES_NOT_APPLICABLE
            continue
        try:
            if isinstance(source, PostgresSource):
                info, written = _capture_postgres(source, state_dir, part, log)
            else:
                info, written = _CAPTURE[part](Path(source), state_dir, part)
            readback = check_entries(state_dir, written, drop_cache=True)
            if not readback.ok:
                bad = readback.mismatched + readback.missing
                raise StateError(f"the copy does not read back from the backup volume: {', '.join(bad)}")
        except (OSError, sqlite3.Error, StateError, _duckdb_error()) as exc:
            shutil.rmtree(state_dir / part, ignore_errors=True)
            capture.parts[part] = {"status": "failed", "source": str(source), "error": str(exc)}
            capture.errors.append(f"{part} ({source}): {exc}")
            log(f"state: {part} could not be backed up: {exc}")
            continue
        capture.parts[part] = {"status": "copied", "source": str(source), **info}
        entries += written
        capture.files += len(written)
        capture.bytes += sum(e.size for e in written)
        if part == "postgres":
            capture.postgres = {k: info[k] for k in ("bytes", "tables", "rows", "toc_entries", "seconds")}
            capture.postgres["tables"] = len(info["tables"])
        log(f"state: {part} copied ({len(written)} file(s)) from {source}")
    write_manifest(Manifest(state_dir, {}, utc_now_iso()).with_entries(entries), state_dir)
    atomic_write_json(state_dir / STATE_INFO, {"format": STATE_FORMAT, "parts": capture.parts})
    return capture


def _owner_mode(st: os.stat_result) -> dict:
    return {"mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid, "gid": st.st_gid}


def _apply_owner_mode(path: Path, meta: dict) -> None:
    if os.geteuid() == 0:
        os.chown(path, meta["uid"], meta["gid"], follow_symlinks=False)
    os.chmod(path, int(meta["mode"], 8))


def _copy_file(src: Path, dst: Path, *, mode: int = 0o600) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` (a new file, created ``mode``, fsynced), hashing the bytes written."""
    digest, size = hashlib.sha256(), 0
    buf = bytearray(BLOCK_SIZE)
    view = memoryview(buf)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with open(src, "rb", buffering=0) as reader, os.fdopen(fd, "wb", buffering=0) as writer:
            fd = -1
            while n := reader.readinto(buf):
                digest.update(view[:n])
                writer.write(view[:n])
                size += n
            os.fsync(writer.fileno())
    except BaseException:
        if fd >= 0:
            os.close(fd)
        dst.unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


def _entry(path: Path, rel: str, sha256: str) -> Entry:
    st = os.stat(path)
    return Entry(rel, st.st_size, st.st_mtime_ns, sha256)


def _capture_settings(source: Path, state_dir: Path, part: str) -> tuple[dict, list[Entry]]:
    (state_dir / part).mkdir(mode=0o700)
    st = os.stat(source)  # a linked settings file is copied as its content
    rel = f"{part}/{source.name}"
    sha, _ = _copy_file(source, state_dir / rel)
    shutil.copystat(source, state_dir / rel)
    _apply_owner_mode(state_dir / rel, _owner_mode(st))
    return {"kind": "file", "name": source.name, "meta": _owner_mode(st)}, [_entry(state_dir / rel, rel, sha)]


def _capture_secrets(source: Path, state_dir: Path, part: str) -> tuple[dict, list[Entry]]:
    if not source.is_dir():
        raise StateError(f"{source} is not a directory")
    dirs: dict[str, dict] = {}
    files: dict[str, dict] = {}
    entries: list[Entry] = []
    for current, subdirs, names in os.walk(source):
        rel_dir = os.path.relpath(current, source)
        rel_dir = "" if rel_dir == "." else rel_dir
        dst_dir = state_dir / part / rel_dir
        dst_dir.mkdir(mode=0o700)
        dirs[rel_dir] = _owner_mode(os.stat(current))
        for name in sorted(names) + sorted(d for d in subdirs if os.path.islink(os.path.join(current, d))):
            path = Path(current) / name
            rel = f"{rel_dir}/{name}" if rel_dir else name
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                raise StateError(
                    f"{path} is a symlink: only the link would be kept, not the key it points to; "
                    "replace it with the file itself"
                )
            if not stat.S_ISREG(st.st_mode):
                continue
            # Created 0600 from the start: a key is never readable by others, not even for a moment.
            sha, _ = _copy_file(path, dst_dir / name)
            shutil.copystat(path, dst_dir / name)
            files[rel] = _owner_mode(st)
            _apply_owner_mode(dst_dir / name, files[rel])
            entries.append(_entry(dst_dir / name, f"{part}/{rel}", sha))
    for rel_dir, meta in sorted(dirs.items(), reverse=True):  # deepest first: a 0500 parent stays writable till last
        _apply_owner_mode(state_dir / part / rel_dir, meta)
    return {"kind": "dir", "dirs": dirs, "files": files}, entries


def _capture_history(source: Path, state_dir: Path, part: str) -> tuple[dict, list[Entry]]:
    import duckdb

    (state_dir / part).mkdir(mode=0o700)
    rel = f"{part}/{source.name}"
    dst = state_dir / rel
    st = os.stat(source)
    con = duckdb.connect()  # in memory: the history is only ATTACHed, read-only
    try:
        _attach_read_only(con, source)
        con.execute(f"ATTACH {_sql_string(str(dst))} AS dst")
        con.execute("COPY FROM DATABASE src TO dst")
        counts = {}
        tables = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'src' ORDER BY ALL"
        ).fetchall()
        for schema, table in tables:
            name = f"{_sql_ident(schema)}.{_sql_ident(table)}"
            before = con.execute(f"SELECT count(*) FROM src.{name}").fetchone()[0]
            after = con.execute(f"SELECT count(*) FROM dst.{name}").fetchone()[0]
            if before != after:
                raise StateError(f"table {schema}.{table}: {before} rows in the history, {after} in the copy")
            counts[f"{schema}.{table}"] = before
        con.execute("DETACH dst")  # checkpoints: the copy is one self-contained file
    finally:
        con.close()
    if os.path.exists(f"{dst}.wal"):
        raise StateError(f"the copy {dst} kept a write-ahead log after it was closed")
    with open(dst, "rb") as handle:
        os.fsync(handle.fileno())
    meta = _owner_mode(st)
    _apply_owner_mode(dst, meta)
    sha = _sha256(dst)
    return (
        {"kind": "file", "name": source.name, "meta": meta, "method": "duckdb COPY FROM DATABASE", "tables": counts},
        [_entry(dst, rel, sha)],
    )


def _attach_read_only(con, source: Path) -> None:
    """ATTACH the history read-only, waiting (with backoff, as history.connect does) while a writer holds it."""
    import duckdb

    deadline = time.monotonic() + DUCKDB_LOCK_TIMEOUT_S
    delay = 0.05
    while True:
        try:
            con.execute(f"ATTACH {_sql_string(str(source))} AS src (READ_ONLY)")
            return
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() + delay > deadline:
                raise StateError(f"cannot read the history {source}: {exc}") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _capture_dagster(source: Path, state_dir: Path, part: str) -> tuple[dict, list[Entry]]:
    if not source.is_dir():
        raise StateError(f"DAGSTER_HOME {source} is not a directory")
    root = state_dir / part
    root.mkdir(mode=0o700)
    files: dict[str, dict] = {}
    entries: list[Entry] = []
    databases = sorted(p for p in source.rglob("*.db") if p.is_file() and not p.is_symlink())
    for db in databases:
        rel = db.relative_to(source).as_posix()
        dst = root / rel
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _sqlite_backup(db, dst)
        meta = _owner_mode(os.stat(db))
        _apply_owner_mode(dst, meta)
        files[rel] = meta
        entries.append(_entry(dst, f"{part}/{rel}", _sha256(dst)))
    instance_yaml = source / "dagster.yaml"
    linked_from = None
    if instance_yaml.exists():  # setup.sh links it into the home: the content is what matters
        linked_from = os.readlink(instance_yaml) if instance_yaml.is_symlink() else None
        sha, _ = _copy_file(instance_yaml, root / "dagster.yaml")
        shutil.copystat(instance_yaml, root / "dagster.yaml")
        files["dagster.yaml"] = _owner_mode(os.stat(instance_yaml))
        _apply_owner_mode(root / "dagster.yaml", files["dagster.yaml"])
        entries.append(_entry(root / "dagster.yaml", f"{part}/dagster.yaml", sha))
    dirs = {"": _owner_mode(os.stat(source))}
    for rel in files:
        parent = os.path.dirname(rel)
        while parent and parent not in dirs:
            dirs[parent] = _owner_mode(os.stat(source / parent))
            parent = os.path.dirname(parent)
    info = {"kind": "dir", "dirs": dirs, "files": files, "method": "sqlite3 backup API for *.db"}
    if linked_from:
        info["dagster_yaml_was_a_link_to"] = linked_from
    return info, entries


def _capture_postgres(source: PostgresSource, state_dir: Path, part: str, log: Log) -> tuple[dict, list[Entry]]:
    (state_dir / part).mkdir(mode=0o700)
    rel = f"{part}/{DUMP_NAME}"
    try:
        dump = dump_postgres(source, state_dir / rel, log=log)
    except PostgresDumpError as exc:
        raise StateError(str(exc)) from None
    st = os.stat(state_dir / rel)
    info = {
        "kind": "file",
        "name": DUMP_NAME,
        "meta": _owner_mode(st),
        "method": "pg_dump --format=custom in the platform's postgres container; read back with pg_restore",
        "project": source.project,
        "engine": source.engine.describe()["host"],
        "container": dump.container,
        "database": dump.database,
        "server_version": dump.server_version,
        "toc_entries": dump.toc_entries,
        "tables": dump.tables,
        "rows": dump.rows,
        "bytes": dump.bytes,
        "seconds": dump.seconds,
        "dump_seconds": dump.dump_seconds,
        "check_seconds": dump.check_seconds,
    }
    return info, [Entry(rel, st.st_size, st.st_mtime_ns, dump.sha256)]


def _sqlite_backup(source: Path, dst: Path) -> None:
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
    try:
        target = sqlite3.connect(dst)
        try:
            src.backup(target)  # one step: a consistent copy even while Dagster writes
            # A WAL-mode source makes a WAL-mode copy; one self-contained file is what a backup wants.
            target.execute("PRAGMA journal_mode=DELETE").fetchone()
            result = target.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                raise StateError(f"the copy of {source} fails PRAGMA integrity_check: {result}")
        finally:
            target.close()
    finally:
        src.close()
    with open(dst, "rb") as handle:
        os.fsync(handle.fileno())


_CAPTURE = {
    "settings": _capture_settings,
    "secrets": _capture_secrets,
    "history": _capture_history,
    "dagster": _capture_dagster,
}


def _duckdb_error() -> type[Exception]:
    import duckdb

    return duckdb.Error


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(BLOCK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


# -- restore ------------------------------------------------------------------


def read_state_info(state_dir: Path) -> dict:
    """state.json of a snapshot; {} when the snapshot was made before state was backed up."""
    try:
        data = json.loads((Path(state_dir) / STATE_INFO).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StateError(f"{Path(state_dir) / STATE_INFO} cannot be read: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or not isinstance(data.get("parts"), dict):
        raise StateError(f"{Path(state_dir) / STATE_INFO} is not an idp-ops state record")
    return data


def part_status(state_dir: Path, part: str) -> str:
    """copied / absent / failed, or "not recorded" for a snapshot older than state backups."""
    info = read_state_info(state_dir).get("parts", {}).get(part)
    return info["status"] if isinstance(info, dict) and "status" in info else "not recorded"


def default_into(state_dir: Path, part: str, into: Path) -> Path:
    """Where ``--into DIR`` puts a part."""
    if part == "settings":
        info = read_state_info(state_dir).get("parts", {}).get("settings") or {}
        return Path(into) / str(info.get("name") or "idp-ops.yaml")
    return Path(into) / INTO_NAMES[part]


def check_part(state_dir: Path, part: str) -> tuple[dict, list[Entry]]:
    """What the snapshot records for ``part`` and its files, each hashed against the state manifest;
    StateError when the part is not there or any copy is bad."""
    state_dir = Path(state_dir)
    info = read_state_info(state_dir).get("parts", {}).get(part)
    if not isinstance(info, dict) or info.get("status") != "copied":
        status = info.get("status") if isinstance(info, dict) else "not recorded"
        detail = f": {info['error']}" if isinstance(info, dict) and info.get("error") else ""
        raise StateError(f"snapshot {state_dir.parent.name} holds no {part} ({status}{detail})")
    try:
        manifest = load_manifest(state_dir / MANIFEST_NAME)
    except ManifestError as exc:
        raise StateError(f"snapshot {state_dir.parent.name}: {exc}") from None
    entries = [e for e in manifest.entries.values() if e.path.startswith(part + "/")]
    checked = check_entries(state_dir, entries, drop_cache=True)
    if not checked.ok:
        bad = [f"{p} ({checked.reasons.get(p, 'missing')})" for p in checked.mismatched + checked.missing]
        raise StateError(
            f"snapshot {state_dir.parent.name} does not hold a good copy of {part}: {', '.join(bad)}; nothing was "
            "replaced. Try an older snapshot (--snapshot NAME)."
        )
    return info, entries


def restore_part(state_dir: Path, part: str, target: Path, *, force: bool = False, log: Log = _quiet) -> dict:
    """Put ``part`` from a snapshot's state dir at ``target``: verified first, atomically, modes and owners kept."""
    state_dir = Path(state_dir)
    target = Path(target).expanduser().absolute()
    info, entries = check_part(state_dir, part)
    if os.path.lexists(target) and not force:
        raise StateError(
            f"{target} exists; nothing was replaced. Restore into another directory (--into DIR), or pass --force "
            f"to replace it (the current one is kept aside as {target.name}.before-restore-<time>)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.idp-restore-{os.getpid()}.tmp")
    _remove(tmp)
    try:
        if info["kind"] == "file":
            (entry,) = entries
            sha, _ = _copy_file(state_dir / entry.path, tmp)
            if sha != entry.sha256:
                raise StateError(f"{entry.path} changed while it was being restored; nothing was replaced")
            shutil.copystat(state_dir / entry.path, tmp)
            _apply_owner_mode(tmp, info["meta"])
            restored = [entry.path]
        else:
            restored = _build_dir(state_dir, part, entries, info, tmp)
        aside = _swap_in(tmp, target, companions=(".wal",) if part == "history" else ())
    except BaseException:
        _remove(tmp)
        raise
    log(f"restored {part} into {target}" + (f" (the one it replaced is kept as {aside})" if aside else ""))
    return {"part": part, "target": str(target), "files": restored, "kept_aside": str(aside) if aside else None}


def restore_postgres_part(state_dir: Path, source: PostgresSource, *, clean: bool = False, log: Log = _quiet) -> dict:
    """Load a snapshot's Postgres dump into the platform's database (``source``): the dump is hashed against
    the state manifest first, then restored in one transaction (postgres_dump.restore_postgres)."""
    _, entries = check_part(Path(state_dir), "postgres")
    (entry,) = entries
    try:
        return restore_postgres(source, Path(state_dir) / entry.path, clean=clean, log=log)
    except PostgresDumpError as exc:
        raise StateError(str(exc)) from None


def _build_dir(state_dir: Path, part: str, entries: list[Entry], info: dict, tmp: Path) -> list[str]:
    tmp.mkdir(mode=0o700)
    dirs = info.get("dirs") or {}
    for rel in sorted(dirs):
        if rel:
            (tmp / rel).mkdir(mode=0o700, parents=True, exist_ok=True)
    restored = []
    for entry in entries:
        rel = entry.path[len(part) + 1 :]
        dst = tmp / rel
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sha, _ = _copy_file(state_dir / entry.path, dst)
        if sha != entry.sha256:
            raise StateError(f"{entry.path} changed while it was being restored; nothing was replaced")
        shutil.copystat(state_dir / entry.path, dst)
        meta = (info.get("files") or {}).get(rel)
        if meta:
            _apply_owner_mode(dst, meta)
        restored.append(entry.path)
    for rel, meta in sorted(dirs.items(), reverse=True):
        _apply_owner_mode(tmp / rel if rel else tmp, meta)
    return restored


def _swap_in(tmp: Path, target: Path, *, companions: tuple[str, ...] = ()) -> Path | None:
    """Rename ``tmp`` over ``target``; an existing target is kept aside, never deleted.

    A file is swapped in one rename (the old one stays reachable through a hard link
    made first). A directory takes two renames: between them the target is briefly
    absent, never half-written. ``companions`` (a DuckDB ``.wal``) move aside with the
    old file: a stale log replayed onto the restored database would corrupt it.
    """
    aside = None
    if os.path.lexists(target):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = target.with_name(f"{target.name}.before-restore-{stamp}")
        n = 1
        while os.path.lexists(aside):
            n += 1
            aside = target.with_name(f"{target.name}.before-restore-{stamp}-{n}")
        if tmp.is_dir() or target.is_dir() or target.is_symlink():
            os.rename(target, aside)
        else:
            os.link(target, aside)
        for suffix in companions:
            old = Path(f"{target}{suffix}")
            if os.path.lexists(old):
                os.rename(old, f"{aside}{suffix}")
    os.replace(tmp, target)
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return aside


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()
