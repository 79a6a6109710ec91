"""The ops platform's Postgres (the Dagster instance of compose/ops/) in the weekly backup: pg_dump in its container.

The platform's instance (runs, event logs, schedules) lives in the ``postgres`` service of the compose project
named by ``backup.platform_project`` or $IDP_OPS_POSTGRES_PROJECT (the central platform's containers have it;
another box's location does not: the central box's backup dumps the one instance). Without either the
instance is the embedded SQLite one (copied with the "dagster" part) and there is nothing to dump here.

How a dump is taken, and why:
- ``docker exec`` into that container (found by its compose labels, through the location's Docker engine), so
  the client matches the server's version and nothing on the box needs a Postgres client or a published port.
- The password never appears on any command line: a small ``sh -c`` script inside the container reads it from
  the compose secret (/run/secrets/postgres_password) into PGPASSWORD, then execs the client. Only the secret's
  path is an argument. (Local socket auth is scram-sha-256 in that image, so a password is needed either way.)
- ``pg_dump --format=custom`` (compressed, one consistent snapshot: a repeatable-read transaction) streams to a
  temp file created 0600 beside the target, hashed while it is written, fsynced, checked, then renamed.
- The check is real, in the same container: ``pg_restore --list`` parses the archive's table of contents, and
  ``pg_restore --data-only --file=-`` decompresses every data block; the rows of each table are counted from
  its COPY block. Every TABLE DATA entry of the TOC must have its COPY block. A failed dump or check leaves
  nothing behind.

Restore (``restore_postgres``) streams a dump into a platform Postgres with ``pg_restore --single-transaction
--exit-on-error``: all of it, or nothing.

Plain Python, no Dagster.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from idp_ops.errors import IdpOpsError
from idp_ops.stack.compose import ComposeError, docker_cli
from idp_ops.stack.engine import DEFAULT_ENGINE, DockerEngine

Log = Callable[[str], None]

PROJECT_ENV = "IDP_OPS_POSTGRES_PROJECT"
SERVICE = "postgres"
DATABASE = "dagster"
USER = "postgres"
PASSWORD_FILE = "/run/secrets/postgres_password"
DUMP_NAME = "dagster.dump"
DUMP_TIMEOUT_S = 3600.0
CHECK_TIMEOUT_S = 3600.0
CHUNK = 1 << 20

# Runs inside the container as the container's user. $0 is the password file, "$@" the client command line:
# the password goes from the file into the client's environment, never into an argument.
WITH_PASSWORD = (
    'PGPASSWORD="$(head -n 1 -- "$0")" || exit 3; '
    '[ -n "$PGPASSWORD" ] || { echo "the Postgres password file $0 is empty" >&2; exit 3; }; '
    'export PGPASSWORD; exec "$@"'
)
# Every data block decompressed; the rows of each table counted from its COPY block (COPY's text format
# escapes newlines, so one line is one row). "<rows>\t<table>" per table; exit 4 on a truncated block.
COUNT_ROWS = r"""set -o pipefail
pg_restore --data-only --file=- | awk '
  /^COPY / { name = substr($0, 6); sub(/ (\(.*\) )?FROM stdin;$/, "", name); rows = 0; inside = 1; next }
  inside && $0 == "\\." { printf "%d\t%s\n", rows, name; inside = 0; next }
  inside { rows++ }
  END { if (inside) exit 4 }'
"""
_TABLE_DATA = re.compile(r"^\d+; \d+ \d+ TABLE DATA ", re.M)
_TOC_ENTRIES = re.compile(r"^;\s+TOC Entries: (\d+)", re.M)
_SERVER_VERSION = re.compile(r"^;\s+Dumped from database version: (.+)$", re.M)


class PostgresDumpError(IdpOpsError, RuntimeError):
    """The platform's Postgres could not be dumped, checked or restored; the message says why."""


class PlatformNotRunning(PostgresDumpError):
    """No running postgres container for the project: the platform is not up on that engine."""


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class PostgresSource:
    """Where the platform's Postgres runs: a compose project's ``postgres`` service on a Docker engine."""

    project: str
    engine: DockerEngine = DEFAULT_ENGINE
    service: str = SERVICE
    database: str = DATABASE
    user: str = USER
    password_file: str = PASSWORD_FILE

    def __str__(self) -> str:
        return f"service {self.service} of compose project {self.project} on {self.engine.label()}"


def platform_project(configured: str | None) -> str | None:
    """The platform's compose project: the setting, else $IDP_OPS_POSTGRES_PROJECT; None: not dumped here."""
    return (configured or "").strip() or os.environ.get(PROJECT_ENV, "").strip() or None


@dataclass
class PostgresDump:
    """A checked dump: what it holds and what it took."""

    container: str
    database: str
    path: str
    bytes: int
    sha256: str
    server_version: str
    toc_entries: int
    tables: dict[str, int] = field(default_factory=dict)  # rows per table, counted from the dump itself
    rows: int = 0
    dump_seconds: float = 0.0
    check_seconds: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


# -- the container ---------------------------------------------------------------


def find_postgres_container(source: PostgresSource) -> str:
    """The name of the running postgres container of ``source.project``; PlatformNotRunning when none is."""
    out = _docker(
        source.engine,
        "ps",
        "--all",
        "--filter",
        f"label=com.docker.compose.project={source.project}",
        "--filter",
        f"label=com.docker.compose.service={source.service}",
        "--format",
        "{{.Names}}\t{{.State}}",
    )
    found = [line.split("\t", 1) for line in out.splitlines() if "\t" in line]
    running = sorted(name for name, state in found if state == "running")
    if len(running) == 1:
        return running[0]
    if len(running) > 1:
        raise PostgresDumpError(
            f"{len(running)} running {source.service} containers in compose project {source.project} "
            f"({', '.join(running)}): which one holds the instance is not clear"
        )
    if found:
        states = ", ".join(f"{name} is {state}" for name, state in sorted(found))
        raise PlatformNotRunning(
            f"the ops platform's Postgres is not running ({states}, compose project {source.project} on "
            f"{source.engine.label()}): start the platform (./compose/ops/up.sh) and run the backup again"
        )
    raise PlatformNotRunning(
        f"the ops platform is not up: no {source.service} container of compose project {source.project} on "
        f"{source.engine.label()}. Start it (./compose/ops/up.sh), or fix backup.platform_project / "
        f"${PROJECT_ENV} if it names another project"
    )


def _docker(engine: DockerEngine, *args: str) -> str:
    try:
        out = docker_cli(*args, engine=engine)
    except ComposeError as exc:
        raise PostgresDumpError(str(exc)) from None
    except OSError as exc:
        raise PostgresDumpError(f"the docker CLI cannot be run: {exc}") from None
    if out.returncode != 0:
        raise PostgresDumpError(f"`docker {args[0]}` failed at {engine.label()}: {_trim(out.stderr)}")
    return out.stdout


def _exec_argv(container: str, *command: str, stdin: bool = False) -> list[str]:
    return ["docker", "exec", *(["--interactive"] if stdin else []), container, *command]


def _with_password(source: PostgresSource, *client: str) -> tuple[str, ...]:
    return ("sh", "-c", WITH_PASSWORD, source.password_file, *client)


def _client_args(source: PostgresSource) -> tuple[str, ...]:
    # TCP on the container's loopback: listening there is what the service's healthcheck proves.
    return (
        "--no-password",
        "--host=127.0.0.1",
        "--port=5432",
        f"--username={source.user}",
        f"--dbname={source.database}",
    )


def _trim(text: str | bytes, limit: int = 1500) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


# -- dump ------------------------------------------------------------------------


def dump_postgres(
    source: PostgresSource,
    dst: Path,
    *,
    timeout_s: float = DUMP_TIMEOUT_S,
    check_timeout_s: float = CHECK_TIMEOUT_S,
    log: Log = _quiet,
) -> PostgresDump:
    """Dump the platform's database to ``dst`` (custom format, 0600), checked before it is renamed into place.

    PlatformNotRunning when the container is not up; PostgresDumpError when pg_dump or the check fails.
    Either way nothing is left at ``dst`` or beside it."""
    dst = Path(dst)
    started = time.monotonic()
    container = find_postgres_container(source)
    log(f"postgres: dumping database {source.database} in container {container} (pg_dump --format=custom)")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        sha256, size = _stream_dump(source, container, tmp, timeout_s)
        dumped = time.monotonic()
        toc = _check_list(source, container, tmp, check_timeout_s)
        tables = _count_rows(source, container, tmp, check_timeout_s)
        if len(tables) != toc["table_data"]:
            raise PostgresDumpError(
                f"the dump's table of contents lists {toc['table_data']} tables with data, but {len(tables)} "
                "data blocks read back: the archive is damaged"
            )
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finished = time.monotonic()
    result = PostgresDump(
        container=container,
        database=source.database,
        path=str(dst),
        bytes=size,
        sha256=sha256,
        server_version=toc["server_version"],
        toc_entries=toc["toc_entries"],
        tables=tables,
        rows=sum(tables.values()),
        dump_seconds=round(dumped - started, 3),
        check_seconds=round(finished - dumped, 3),
        seconds=round(finished - started, 3),
    )
    log(
        f"postgres: {result.bytes} bytes, {len(tables)} tables, {result.rows} rows, {result.toc_entries} TOC "
        f"entries; dumped in {result.dump_seconds:.2f} s, read back with pg_restore in {result.check_seconds:.2f} s"
    )
    return result


def _stream_dump(source: PostgresSource, container: str, tmp: Path, timeout_s: float) -> tuple[str, int]:
    """pg_dump's output into ``tmp`` (created 0600, fsynced), hashed on the way; (sha256, size)."""
    argv = _exec_argv(container, *_with_password(source, "pg_dump", "--format=custom", *_client_args(source)))
    digest, size = hashlib.sha256(), 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb", buffering=0) as writer, tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, env=source.engine.environment()
            )
        except OSError as exc:
            raise PostgresDumpError(f"the docker CLI cannot be run: {exc}") from None
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout_s, _kill)
        timer.start()
        try:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(CHUNK):
                digest.update(chunk)
                writer.write(chunk)
                size += len(chunk)
            returncode = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if timed_out.is_set():
            raise PostgresDumpError(f"pg_dump in {container} did not finish within {timeout_s:.0f} s")
        if returncode != 0:
            errors.seek(0)
            raise PostgresDumpError(f"pg_dump in {container} failed (exit {returncode}): {_trim(errors.read())}")
        if size == 0:
            raise PostgresDumpError(f"pg_dump in {container} wrote nothing")
        os.fsync(writer.fileno())
    return digest.hexdigest(), size


def _run_with_dump(argv: list[str], dump: Path, engine: DockerEngine, timeout_s: float, what: str):
    try:
        with open(dump, "rb") as stdin:
            return subprocess.run(argv, stdin=stdin, capture_output=True, timeout=timeout_s, env=engine.environment())
    except subprocess.TimeoutExpired:
        raise PostgresDumpError(f"{what} did not finish within {timeout_s:.0f} s") from None
    except OSError as exc:
        raise PostgresDumpError(f"{what} cannot be run: {exc}") from None


def _check_list(source: PostgresSource, container: str, dump: Path, timeout_s: float) -> dict:
    """``pg_restore --list`` of the dump, in the container: its TOC parses; the counts it holds."""
    argv = _exec_argv(container, "pg_restore", "--list", stdin=True)
    out = _run_with_dump(argv, dump, source.engine, timeout_s, f"pg_restore --list in {container}")
    text = out.stdout.decode("utf-8", "replace")
    entries = _TOC_ENTRIES.search(text)
    if out.returncode != 0 or entries is None:
        raise PostgresDumpError(
            f"the dump does not read back: pg_restore --list failed (exit {out.returncode}): {_trim(out.stderr)}"
        )
    version = _SERVER_VERSION.search(text)
    return {
        "toc_entries": int(entries.group(1)),
        "table_data": len(_TABLE_DATA.findall(text)),
        "server_version": version.group(1).strip() if version else "unknown",
    }


def _count_rows(source: PostgresSource, container: str, dump: Path, timeout_s: float) -> dict[str, int]:
    """Rows per table, read from every data block of the dump (pg_restore in the container decompresses all)."""
    argv = _exec_argv(container, "bash", "-c", COUNT_ROWS, stdin=True)
    out = _run_with_dump(argv, dump, source.engine, timeout_s, f"pg_restore --data-only in {container}")
    if out.returncode != 0:
        raise PostgresDumpError(
            f"the dump's data does not read back: pg_restore --data-only failed (exit {out.returncode}): "
            f"{_trim(out.stderr)}"
        )
    tables: dict[str, int] = {}
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        rows, _, name = line.partition("\t")
        tables[name] = tables.get(name, 0) + int(rows)
    return tables


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- restore ---------------------------------------------------------------------


def restore_postgres(
    source: PostgresSource,
    dump: Path,
    *,
    clean: bool = False,
    timeout_s: float = DUMP_TIMEOUT_S,
    log: Log = _quiet,
) -> dict:
    """Load ``dump`` into the platform's database in one transaction: all of it, or nothing (then
    PostgresDumpError with pg_restore's message). Into a fresh platform Postgres, before the code location,
    webserver and daemon first start; ``clean`` drops what the dump holds first (an instance in use)."""
    started = time.monotonic()
    container = find_postgres_container(source)
    client = ["pg_restore", *_client_args(source), "--single-transaction", "--exit-on-error"]
    if clean:
        client += ["--clean", "--if-exists"]
    argv = _exec_argv(container, *_with_password(source, *client), stdin=True)
    log(f"postgres: restoring {Path(dump).name} into database {source.database} in container {container}")
    out = _run_with_dump(argv, Path(dump), source.engine, timeout_s, f"pg_restore in {container}")
    if out.returncode != 0:
        raise PostgresDumpError(
            f"pg_restore into {source.database} in {container} failed (exit {out.returncode}); nothing was "
            f"changed: {_trim(out.stderr)}"
        )
    seconds = round(time.monotonic() - started, 3)
    log(f"postgres: restored into {container} in {seconds:.2f} s")
    return {"container": container, "database": source.database, "dump": str(dump), "seconds": seconds}
