"""The ops platform's Postgres in the weekly backup: pg_dump in its container, checked, restored into a fresh one.

Real parts: `idp-ops/postgres:15` containers started the way compose/ops runs the platform's postgres service
(its compose labels, the service uid, read-only root with tmpfs, no capabilities, the password as a 0600 file
mounted at /run/secrets/postgres_password), real pg_dump / pg_restore / psql in them, the real weekly_backup_job.
The data dir is a tmpfs rather than a named volume: nothing is left on the host if a run dies.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from idp_ops.backup.manifest import MANIFEST_NAME, verify
from idp_ops.backup.postgres_dump import (
    DUMP_NAME,
    PASSWORD_FILE,
    WITH_PASSWORD,
    PlatformNotRunning,
    PostgresDumpError,
    PostgresSource,
    _count_rows,
    dump_postgres,
)
from idp_ops.backup.snapshots import SNAPSHOTS
from idp_ops.backup.state import (
    POSTGRES_NOT_APPLICABLE,
    STATE,
    STATE_INFO,
    StateError,
    StateSources,
    capture_state,
    restore_postgres_part,
    state_sources,
)
from idp_ops.cli.main import main as cli_main
from idp_ops.definitions import defs
from idp_ops.resources import SettingsResource
from idp_ops.settings import load_settings
from idp_ops_harness.projects import unique_project
from idp_ops_harness.settings_files import write_settings

PG_IMAGE = "idp-ops/postgres:15"
ROWS = 20_000
HANG_GUARD_S = 120.0
PSQL = ("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "--no-password", "-h", "127.0.0.1", "-U", "postgres")
PSQL += ("-d", "dagster")
# What the platform's instance looks like to pg_dump: a table with text that COPY must escape (newlines, tabs,
# backslashes, quotes), a quoted name, an empty table, a sequence.
SEED = f"""
CREATE TABLE runs (id serial PRIMARY KEY, run_id text NOT NULL, body jsonb, note text);
INSERT INTO runs (run_id, body, note)
  SELECT 'run-' || i, jsonb_build_object('i', i, 'tags', jsonb_build_array('a', 'b')),
         E'line one\\nline two\\ttab \\\\ backslash '' quote ' || i
  FROM generate_series(1, {ROWS}) i;
CREATE TABLE "Odd Name" (x text);
INSERT INTO "Odd Name" VALUES (E'a\\nb'), ('c'), (NULL);
CREATE TABLE empty_t (x int);
"""
CONTENTS = """
SELECT 'runs', count(*), md5(string_agg(r::text, '|' ORDER BY id)) FROM runs r;
SELECT 'odd', count(*), md5(string_agg(coalesce(x, '<null>'), '|' ORDER BY x NULLS FIRST)) FROM "Odd Name";
SELECT 'empty', count(*), '' FROM empty_t;
SELECT 'seq', last_value, '' FROM runs_id_seq;
"""

pytestmark = pytest.mark.timeout(600)


# -- a platform-like postgres container -------------------------------------------


@pytest.fixture(scope="module")
def pg_image(docker_ready) -> str:
    if subprocess.run(["docker", "image", "inspect", PG_IMAGE], capture_output=True).returncode != 0:
        pytest.fail(f"{PG_IMAGE} is missing: build it with compose/images/postgres/build.sh (or compose/setup.sh)")
    return PG_IMAGE


class Postgres:
    """One container labelled as compose project ``project``'s postgres service, as compose/ops runs it."""

    def __init__(self, tmp_path: Path, name: str, password: str, image: str):
        self.project = unique_project(name)
        self.container = f"{self.project}-postgres-1"
        uid = os.getuid() or 65534  # the platform runs it as the box's service uid, never root
        gid = os.getgid() if os.getuid() else 65534
        password_file = tmp_path / f"{name}-postgres_password"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, f"{password}\n".encode())
        os.close(fd)
        if os.geteuid() == 0:
            os.chown(password_file, uid, gid)
        self.argv = [
            "docker", "run", "--detach", "--name", self.container,
            "--label", f"com.docker.compose.project={self.project}",
            "--label", "com.docker.compose.service=postgres",
            "--user", f"{uid}:{gid}", "--read-only",
            "--tmpfs", "/tmp:size=64m,mode=1777",
            "--tmpfs", "/run/postgresql:size=1m,mode=1777",
            "--tmpfs", "/var/lib/idp-postgres:size=256m,mode=1777",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
            "--shm-size", "128m", "--memory", "512m", "--pids-limit", "256",
            "--volume", f"{password_file}:{PASSWORD_FILE}:ro",
            "--env", f"POSTGRES_PASSWORD_FILE={PASSWORD_FILE}", "--env", "POSTGRES_DB=dagster",
            image, "postgres",
        ]  # fmt: skip

    def start(self) -> Postgres:
        started = subprocess.run(self.argv, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + HANG_GUARD_S
        while True:  # ready on TCP: the entrypoint's init-time server listens on no TCP port
            ready = subprocess.run(
                ["docker", "exec", self.container, "pg_isready", "-q", "-h", "127.0.0.1", "-d", "dagster"],
                capture_output=True,
                timeout=60,
            )
            if ready.returncode == 0:
                return self
            assert time.monotonic() < deadline, subprocess.run(
                ["docker", "logs", self.container], capture_output=True, text=True
            ).stderr
            time.sleep(0.3)

    def psql(self, sql: str) -> str:
        out = subprocess.run(
            ["docker", "exec", "-i", self.container, "sh", "-c", WITH_PASSWORD, PASSWORD_FILE, *PSQL],
            input=sql,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "--force", "--volumes", self.container], capture_output=True, timeout=120)


@pytest.fixture
def platform_pg(tmp_path, pg_image):
    """The platform's Postgres, holding a small instance; and its password."""
    password = f"pw-{secrets.token_hex(16)}"
    pg = Postgres(tmp_path, "pgdump", password, pg_image)
    try:
        pg.start().psql(SEED)
        yield pg, password
    finally:
        pg.remove()


@pytest.fixture
def fresh_pg(tmp_path, pg_image):
    """A second platform Postgres, fresh (its own project and password): where a dump is restored."""
    pg = Postgres(tmp_path, "pgrestore", f"pw-{secrets.token_hex(16)}", pg_image)
    try:
        yield pg.start()
    finally:
        pg.remove()


class TableLock:
    """An open transaction holding ACCESS EXCLUSIVE on ``runs``: a pg_dump started meanwhile waits for it."""

    def __init__(self, pg: Postgres):
        self.proc = subprocess.Popen(
            ["docker", "exec", "-i", pg.container, "sh", "-c", WITH_PASSWORD, PASSWORD_FILE, *PSQL],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write("BEGIN;\nLOCK TABLE runs IN ACCESS EXCLUSIVE MODE;\n")
        self.proc.stdin.flush()
        held = (
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'runs' AND l.mode = 'AccessExclusiveLock' AND l.granted;"
        )
        deadline = time.monotonic() + HANG_GUARD_S
        while pg.psql(held).strip() != "1":
            assert time.monotonic() < deadline, "the lock was never granted"
            time.sleep(0.1)

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("COMMIT;\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ArgvWatch(threading.Thread):
    """Reads every process's argv (/proc/*/cmdline: the host sees the containers' processes too) until
    stopped, noting any that holds ``secret``; once it sees pg_dump waiting, it releases ``lock``."""

    def __init__(self, secret: str, lock: TableLock):
        super().__init__(daemon=True)
        self.secret = secret.encode()
        self.lock = lock
        self.stop = threading.Event()
        self.pg_dump_argv: list[str] | None = None
        self.leaks: list[str] = []
        self.scans = 0

    def run(self) -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        try:
            while not self.stop.is_set():
                for cmdline in _all_cmdlines():
                    if self.secret in cmdline:
                        self.leaks.append(cmdline.decode("utf-8", "replace"))
                    argv = cmdline.split(b"\0")
                    if self.pg_dump_argv is None and os.path.basename(argv[0]) == b"pg_dump":
                        self.pg_dump_argv = [a.decode() for a in argv if a]
                self.scans += 1
                if self.pg_dump_argv is not None or time.monotonic() > deadline:
                    self.lock.release()  # seen (or the hang guard): let the dump go on
                time.sleep(0.02)
        finally:
            self.lock.release()


def _all_cmdlines() -> list[bytes]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    found.append(handle.read())
            except OSError:
                pass  # gone meanwhile
    return found


def _dagster_logs(instance: DagsterInstance, run_id: str) -> str:
    return "\n".join(entry.user_message or "" for entry in instance.all_logs(run_id))


def _metadata(result, key: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(key)]
    assert events, f"no materialization of {key}"
    return {k: getattr(v, "value", v) for k, v in events[-1].materialization.metadata.items()}


def _leftovers(state_dir: Path) -> list[str]:
    return sorted(p.relative_to(state_dir).as_posix() for p in state_dir.rglob("*"))


# -- the weekly job dumps the platform's Postgres, and the dump restores ---------------


@pytest.mark.docker
def test_the_weekly_backup_dumps_the_platform_postgres_verified_and_it_restores_into_a_fresh_one(
    tmp_path, platform_pg, fresh_pg, capsys
):
    pg, password = platform_pg
    models, backups = tmp_path / "models", tmp_path / "backup"
    models.mkdir()
    (models / "config.json").write_text('{"architectures": ["Gemma3ForCausalLM"]}')
    backups.mkdir()
    (backups / ".idp-backup-volume").touch()
    config = write_settings(
        tmp_path / "idp-ops.yaml",
        home=tmp_path / "home",
        models_dir=models,
        backups_dir=backups,
        backup={"scrub_runs": 1, "platform_project": pg.project},
    )
    before = pg.psql(CONTENTS)
    (instance_dir := tmp_path / "dagster-home").mkdir()
    instance = DagsterInstance.local_temp(tempdir=str(instance_dir))

    # pg_dump waits on a lock until the watch has read its argv (and every other process's) from /proc.
    watch = ArgvWatch(password, TableLock(pg))
    watch.start()
    try:
        result = defs.resolve_job_def("weekly_backup_job").execute_in_process(
            instance=instance,
            resources={"settings": SettingsResource(config_file=str(config))},
            raise_on_error=False,
        )
    finally:
        watch.stop.set()
        watch.join(timeout=HANG_GUARD_S)

    assert result.success, _dagster_logs(instance, result.run_id)
    # The password was on no process's argv, pg_dump's included: only the secret's path is.
    assert watch.pg_dump_argv is not None, f"pg_dump never seen in {watch.scans} scans of /proc"
    assert watch.pg_dump_argv[:2] == ["pg_dump", "--format=custom"] and watch.leaks == []
    logs = _dagster_logs(instance, result.run_id)
    assert "postgres: dumping database dagster in container" in logs and password not in logs

    meta = _metadata(result, "model_backup")
    assert meta["state_parts"]["postgres"] == "copied" and meta["state_errors"] == []
    state = backups / SNAPSHOTS / meta["snapshot"] / STATE
    dump = state / "postgres" / DUMP_NAME
    info = json.loads((state / STATE_INFO).read_text())["parts"]["postgres"]
    assert info["tables"] == {"public.runs": ROWS, 'public."Odd Name"': 3, "public.empty_t": 0}
    assert info["rows"] == ROWS + 3 and info["container"] == pg.container and info["database"] == "dagster"
    assert info["server_version"].startswith("15.") and info["toc_entries"] >= 8
    assert meta["postgres_dump_bytes"] == dump.stat().st_size == info["bytes"]
    assert meta["postgres_dump_rows"] == ROWS + 3 and meta["postgres_dump_tables"] == 3
    assert meta["postgres_dump_toc_entries"] == info["toc_entries"] and meta["postgres_dump_seconds"] > 0
    # Covered by the state's manifest like every other state file: verify and sha256sum accept it.
    assert verify(state, state / MANIFEST_NAME).ok
    sums = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=state, capture_output=True)
    assert sums.returncode == 0 and b"postgres/dagster.dump: OK" in sums.stdout
    assert oct(dump.stat().st_mode & 0o777) == "0o600" and not list(state.glob("postgres/.*"))
    assert password.encode() not in dump.read_bytes()
    assert password not in (state / STATE_INFO).read_text()
    assert password not in (backups / SNAPSHOTS / meta["snapshot"] / "backup.json").read_text()

    # Restore into a fresh platform Postgres as an operator would, `idp-ops restore --state postgres` on a box
    # whose settings name that platform: the same rows, byte for byte, and the sequence where it was.
    fresh_config = write_settings(
        tmp_path / "fresh.yaml",
        home=tmp_path / "home",
        models_dir=models,
        backups_dir=backups,
        backup={"platform_project": fresh_pg.project},
    )
    restore_cli = ["--config", str(fresh_config), "restore", "--state", "postgres", "--json"]
    assert cli_main(restore_cli) == 0
    restored = json.loads(capsys.readouterr().out)
    assert restored["snapshot"] == meta["snapshot"] and restored["parts"][0]["container"] == fresh_pg.container
    after = fresh_pg.psql(CONTENTS)
    assert after == before and f"runs|{ROWS}|" in after
    # Loading it again over the restored instance fails as one transaction: nothing changed (exit 2, as any
    # restore that would replace what is there without --force).
    assert cli_main(restore_cli) == 2
    assert "nothing was changed" in capsys.readouterr().err
    with pytest.raises(StateError, match="nothing was changed"):
        restore_postgres_part(state, PostgresSource(fresh_pg.project))
    assert fresh_pg.psql(CONTENTS) == before
    assert cli_main([*restore_cli, "--force"]) == 0  # --force: pg_restore --clean, over the instance
    assert fresh_pg.psql(CONTENTS) == before

    # The read-back is a real check: a truncated archive does not pass it.
    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    with pytest.raises(PostgresDumpError, match="does not read back"):
        _count_rows(PostgresSource(pg.project), pg.container, truncated, 120)


# -- failures are loud, and leave nothing behind -----------------------------------


@pytest.mark.docker
def test_a_platform_that_is_not_up_or_a_failing_pg_dump_fails_the_part_and_leaves_nothing(
    tmp_path, platform_pg, pg_image
):
    pg, password = platform_pg
    lines: list[str] = []

    def capture(source: PostgresSource, name: str):
        state_dir = tmp_path / name
        captured = capture_state(StateSources(postgres=source), state_dir, log=lines.append)
        return captured, json.loads((state_dir / STATE_INFO).read_text())["parts"]["postgres"], state_dir

    # Nothing of that project on the engine: the platform is not up.
    down = PostgresSource(unique_project("pgdown"))
    captured, info, state_dir = capture(down, "not-up")
    assert info["status"] == "failed" and captured.summary()["parts"]["postgres"] == "failed"
    assert "the ops platform is not up" in info["error"] and "./compose/ops/up.sh" in info["error"]
    assert down.project in captured.errors[0] and captured.postgres is None
    assert _leftovers(state_dir) == sorted([MANIFEST_NAME, "SHA256SUMS", STATE_INFO])

    # Its container exists but is not running.
    stopped = Postgres(tmp_path, "pgstopped", "unused", pg_image)
    created = subprocess.run(["docker", "create", *stopped.argv[3:]], capture_output=True, text=True, timeout=120)
    try:
        assert created.returncode == 0, created.stderr
        with pytest.raises(PlatformNotRunning, match=f"{stopped.container} is created"):
            dump_postgres(PostgresSource(stopped.project), tmp_path / "stopped.dump")
        assert not list(tmp_path.glob("*stopped.dump*"))
    finally:
        stopped.remove()

    # pg_dump itself fails: its own words in the error, no part of a dump kept.
    captured, info, state_dir = capture(PostgresSource(pg.project, database="no_such_db"), "pg-dump-fails")
    assert info["status"] == "failed" and "pg_dump in" in info["error"]
    assert 'database "no_such_db" does not exist' in info["error"]
    assert _leftovers(state_dir) == sorted([MANIFEST_NAME, "SHA256SUMS", STATE_INFO])

    # A pg_dump that hangs (waiting on a lock) is stopped at the timeout; the partial file goes.
    lock = TableLock(pg)
    try:
        target = tmp_path / "hung" / DUMP_NAME
        target.parent.mkdir()
        with pytest.raises(PostgresDumpError, match="did not finish within 2 s"):
            dump_postgres(PostgresSource(pg.project), target, timeout_s=2)
        assert list(target.parent.iterdir()) == []
    finally:
        lock.release()
    assert not any(password in line for line in lines)


# -- where the project comes from; the embedded instance --------------------------


def test_postgres_is_not_applicable_to_the_embedded_instance_and_the_project_comes_from_settings_else_env(
    tmp_path, monkeypatch
):
    config = write_settings(tmp_path / "idp-ops.yaml", home=tmp_path / "home")
    settings = load_settings(config)
    assert state_sources(settings).postgres is None  # no IDP_OPS_POSTGRES_PROJECT (conftest clears IDP_*): embedded

    captured = capture_state(StateSources(), tmp_path / "state")
    info = json.loads((tmp_path / "state" / STATE_INFO).read_text())["parts"]["postgres"]
    assert info == {"status": "absent", "source": None, "reason": POSTGRES_NOT_APPLICABLE}
    assert captured.errors == [] and captured.summary()["postgres"] is None

    monkeypatch.setenv("IDP_OPS_POSTGRES_PROJECT", "ops-from-env")
    source = state_sources(settings).postgres
    assert source is not None and source.project == "ops-from-env" and source.engine == settings.docker_engine
    configured = load_settings(
        write_settings(
            tmp_path / "platform.yaml",
            home=tmp_path / "home",
            docker_host="unix:///run/box-b.sock",
            backup={"platform_project": "ops-from-settings"},
        )
    )
    source = state_sources(configured).postgres
    assert source.project == "ops-from-settings" and source.engine.host == "unix:///run/box-b.sock"
    assert "compose project ops-from-settings on unix:///run/box-b.sock" in str(source)
