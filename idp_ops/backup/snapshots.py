"""Snapshot backups of the model store with rsync: verified, scrubbed, pruned, restorable.

Layout on the backup volume (``destination``)::

    DEST/
      .idp-backup-volume        marker written when the volume was set up (not needed on a mount point)
      snapshots/
        .lock                   flock: a backup holds it exclusively, restores shared (no prune mid-restore)
        scrub-state.json        the scrub rotation's run counter (it belongs to this volume)
        .in-progress/           the snapshot being made; a failed run leaves it for the next to resume
        20250105T030000Z/       a verified snapshot (UTC start time: names sort by age)
          models/...            the store; files unchanged since the last snapshot are hard links to it;
                                symlinks are kept as links (and restored as links)
          manifest.json         exactly what this snapshot holds, with sha256 (and each link's target)
          SHA256SUMS            cd models && sha256sum -c ../SHA256SUMS
          backup.json           the run's report
          state/                what cannot be downloaded again: settings file, secrets (modes kept), a
                                consistent copy of history.duckdb, the Dagster instance's SQLite files;
                                its own manifest.json and state.json (see core/backup_state.py)

A run copies into ``.in-progress`` with ``--link-dest`` to the latest snapshot, checks
the copy, and only then renames it to its dated name: anything with a dated name
was verified, a failed run never looks like a good snapshot, and the previous
snapshot is never written to. Older snapshots are pruned only after that rename,
and only after a clean run (status ok): a warning or a failure keeps every snapshot.
Retention is restic's keep-last / keep-weekly / keep-monthly (core/backup_retention.py).

Before anything is written, the run is judged against the latest snapshot's own
manifest (core/backup_guard.py): an empty store, or one that lost more than
``max_shrink_*_fraction`` of that snapshot's files or bytes, is refused (an
unmounted models disk looks exactly like that) unless allowed for the run; so is a
symlink that leads out of the store (only the link would be kept). A file whose
sha256 differs from that snapshot's record while its size and mtime did not move is
source rot, even when the hash cache was lost and the manifest re-hashed it: the
snapshot's record stays the truth, its good copy is linked into the new snapshot,
the file is reported source-corrupt and the run fails.

Files in progress (``*.part`` downloads, ``*.incomplete``, ``*.tmp``) are neither in
the manifest nor copied (manifest.IN_PROGRESS_EXCLUDES).

Verification after rsync, cheapest first:
  * every file the manifest lists is in the snapshot with its size, and the plan's
    file-count check;
  * every file written in this run (transferred by rsync, or otherwise not a hard
    link into the previous snapshot, e.g. left by a failed run being resumed) is
    hashed at the destination and compared with the manifest;
  * the scrub: a rotating slice, ``1/scrub_runs`` of the store's bytes (a byte range
    of each big file, small files whole), re-read on both sides without any cache.
    It catches what size+mtime cannot: bit rot on the source (the manifest cache and
    rsync both trust the stat) and on the backup copy (hard-linked from snapshot to
    snapshot, never re-read by rsync). The two copies are compared byte for byte
    (memory speed); where they differ both are sha256-hashed against the manifest
    to name the rotten side. A rotten backup copy whose source is good is replaced
    in the new snapshot by a fresh verified copy and reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from idp_ops.backup import guard as backup_guard
from idp_ops.backup import state as backup_state
from idp_ops.backup.manifest import (
    MANIFEST_NAME,
    Entry,
    Manifest,
    ManifestError,
    build_manifest,
    check_links,
    hash_files,
    load_manifest,
    scan,
    write_manifest,
)
from idp_ops.backup.restore import (  # noqa: F401  (the restore is part of this module's public API)
    RestoreReport,
    StateRestoreReport,
    resolve_snapshot,
    restore,
    restore_state,
)
from idp_ops.backup.retention import SNAPSHOT_RE, retention  # noqa: F401
from idp_ops.backup.retention import snapshot_key as _snapshot_key
from idp_ops.backup.rsync import (  # noqa: F401  (part of this module's public API)
    PARTIAL_DIR,
    RSYNC_EXIT_MEANINGS,
    RSYNC_VANISHED,
    RsyncResult,
    run_rsync,
)
from idp_ops.backup.scrub import SCRUB_SPLIT_BYTES, ScrubRange, scrub_ranges, scrub_slice_of  # noqa: F401  (public API)
from idp_ops.backup.scrub import run_scrub as _scrub
from idp_ops.backup.volume import (  # noqa: F401
    DATA,
    LOCK_NAME,
    SNAPSHOTS,
    BackupError,
    BackupRefused,
    DestinationRefused,
    RestoreError,
    list_snapshots,
)
from idp_ops.backup.volume import fsync_dir as _fsync_dir
from idp_ops.backup.volume import volume_lock as _exclusive
from idp_ops.fsutil import atomic_write_json

if TYPE_CHECKING:
    from idp_ops.settings import Settings

Log = Callable[[str], None]

IN_PROGRESS = ".in-progress"
REPORT_NAME = "backup.json"
SCRUB_STATE = "scrub-state.json"
PROGRESS_INTERVAL_S = 10.0


def _quiet(_: str) -> None:
    pass


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


# -- the destination ----------------------------------------------------------


def _same_stat(path: Path, entry) -> bool:
    """Whether ``path`` exists with the entry's size and mtime (a missing file is simply not the same)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns)


def check_destination(destination: Path, marker_file: str) -> str:
    """Return why ``destination`` is trusted as the backup volume ("mount point" or
    "marker file"), or raise DestinationRefused. Never fill the root disk because
    the external drive was not mounted."""
    destination = Path(destination)
    marker = destination / marker_file
    how_to = (
        f"mount the backup volume at {destination}, or, if {destination} already is the backup volume "
        f"(a directory on a separate disk), mark it once with: touch {marker}"
    )
    if not destination.is_dir():
        raise DestinationRefused(f"backup destination {destination} does not exist: {how_to}")
    if os.path.ismount(destination):
        return "mount point"
    if marker.is_file():
        return "marker file"
    raise DestinationRefused(
        f"refusing to back up to {destination}: it is not a mount point and holds no marker file "
        f"{marker_file} (an unmounted drive would fill the disk underneath): {how_to}"
    )


def _refuse_overlap(source: Path, destination: Path) -> None:
    if source == destination or source in destination.parents or destination in source.parents:
        raise DestinationRefused(f"backup destination {destination} and source {source} overlap: use a separate volume")


def _new_snapshot_name(root: Path, started: datetime, latest: Path | None) -> str:
    base = started.strftime("%Y%m%dT%H%M%SZ")
    seq = 1
    if latest is not None:
        latest_base, latest_seq = _snapshot_key(latest.name)
        # Two runs in one second, or a clock that went back: still sort after the latest.
        if (base, seq) <= (latest_base, latest_seq):
            base, seq = latest_base, latest_seq + 1
    while True:
        name = base if seq == 1 else f"{base}-{seq}"
        if not (root / name).exists():
            return name
        seq += 1


# -- backup -------------------------------------------------------------------


@dataclass
class Verification:
    # Files written at the destination in this run, hashed there.
    checked_files: int = 0
    checked_bytes: int = 0
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    # Gone from the source during the run (rsync exit 24): dropped from the snapshot, not a failure.
    vanished: list[str] = field(default_factory=list)
    # Appeared on the source during the run: kept when source and copy agree.
    added: list[str] = field(default_factory=list)
    scrub_slice: int = 0
    scrub_slices: int = 1
    scrubbed_files: int = 0
    scrubbed_bytes: int = 0
    # Source differs from its manifest hash while its size and mtime did not move: bit rot.
    source_corrupt: list[str] = field(default_factory=list)
    # Backup copy differed from the manifest, source was good: a fresh copy went into this snapshot.
    repaired: list[str] = field(default_factory=list)
    files_expected: int = 0
    files_in_snapshot: int = 0

    @property
    def count_ok(self) -> bool:
        return self.files_expected == self.files_in_snapshot

    @property
    def ok(self) -> bool:
        """The snapshot holds exactly the manifest's content (source rot does not make the copy bad)."""
        return not self.mismatched and not self.missing and self.count_ok


@dataclass
class BackupReport:
    source: str
    destination: str
    started_at: str
    finished_at: str = ""
    duration_s: float = 0.0
    destination_kind: str | None = None
    snapshot: str | None = None  # set only once a verified snapshot carries its dated name
    previous: str | None = None
    resumed: bool = False
    status: str = "failed"  # ok | warning | failed
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    files_total: int = 0
    bytes_total: int = 0
    rsync_exit: int | None = None
    rsync_seconds: float = 0.0
    rsync_stats: dict[str, int] = field(default_factory=dict)
    files_transferred: int = 0
    bytes_transferred: int = 0
    verification: Verification | None = None
    pruned: list[str] = field(default_factory=list)
    manifest_stats: dict | None = None
    # Refused before anything was written (shrunken or empty store, links leaving it).
    refused: bool = False
    shrink: dict | None = None  # the comparison with the latest snapshot (backup_guard.ShrinkCheck)
    # Kept snapshots and the rules that keep them; why nothing was pruned, when it was not.
    retention: dict[str, list[str]] = field(default_factory=dict)
    prune_skipped: str | None = None
    state: dict | None = None  # the box's state copied into the snapshot (backup_state.StateCapture)
    links: int = 0

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def as_dict(self) -> dict:
        return asdict(self)


def backup(
    source: Path,
    destination: Path,
    manifest: Manifest,
    *,
    marker_file: str = ".idp-backup-volume",
    keep_snapshots: int = 4,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
    scrub_runs: int = 8,
    excludes: Iterable[str] = (),
    workers: int = 0,
    allow_shrink: bool = False,
    max_shrink_files_fraction: float = 0.1,
    max_shrink_bytes_fraction: float = 0.1,
    state: backup_state.StateSources | None = None,
    log: Log = _quiet,
    on_rsync_output: Callable[[str], None] | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
) -> BackupReport:
    """Make one verified snapshot of ``source`` (described by ``manifest``) on ``destination``,
    with the box's ``state`` beside the models when given.

    Never raises for a run that went wrong: the report's ``status`` is "failed" and
    its ``message`` says what happened, what was kept and what to do, so every run,
    refused ones included, can be recorded.
    """
    source = Path(source).resolve()
    destination = Path(destination).resolve()
    started = datetime.now(UTC)
    clock = time.monotonic()
    report = BackupReport(
        str(source),
        str(destination),
        started.isoformat(timespec="seconds"),
        files_total=len(manifest.entries),
        bytes_total=manifest.total_bytes,
    )
    try:
        report.destination_kind = check_destination(destination, marker_file)
        _refuse_overlap(source, destination)
        # Judged before the volume is touched: a refused run writes nothing there.
        _guard(
            report,
            source,
            destination,
            manifest,
            allow_shrink=allow_shrink,
            max_files=max_shrink_files_fraction,
            max_bytes=max_shrink_bytes_fraction,
            log=log,
        )
        root = destination / SNAPSHOTS
        root.mkdir(exist_ok=True)
        with _exclusive(root):
            _make_snapshot(
                report,
                source,
                root,
                manifest,
                started,
                keep=(keep_snapshots, keep_weekly, keep_monthly),
                scrub_runs=scrub_runs,
                excludes=list(excludes),
                workers=workers,
                state=state,
                log=log,
                on_rsync_output=on_rsync_output,
                progress_interval_s=progress_interval_s,
            )
    except (BackupError, ManifestError) as exc:
        report.status = "failed"
        report.message = str(exc)
    except OSError as exc:
        report.status = "failed"
        report.message = f"backup to {destination} failed: {exc}"
    report.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    report.duration_s = round(time.monotonic() - clock, 3)
    return report


def _guard(
    report: BackupReport,
    source: Path,
    destination: Path,
    manifest: Manifest,
    *,
    allow_shrink: bool,
    max_files: float,
    max_bytes: float,
    log: Log,
) -> None:
    leaving = backup_guard.links_leaving(source, manifest.links)
    if leaving:
        report.refused = True
        raise BackupRefused(
            f"refusing to back up: {len(leaving)} symlink(s) in {source} lead out of the store, so only the link "
            f"would be kept, not what it points to: {', '.join(leaving[:10])}. Move the files into the store (or add "
            f"the links to backup.excludes). Nothing was written to {destination}."
        )
    latest = list_snapshots(destination)[-1:]
    previous = None
    if latest:
        try:
            previous = load_manifest(latest[0] / MANIFEST_NAME)
        except ManifestError as exc:
            report.warnings.append(f"latest snapshot's manifest is unreadable ({exc}); only emptiness was checked")
    check = backup_guard.check_shrink(
        previous,
        manifest,
        previous_name=latest[0].name if latest else None,
        max_files_fraction=max_files,
        max_bytes_fraction=max_bytes,
    )
    report.shrink = check.as_dict()
    if check.refused and not allow_shrink:
        report.refused = True
        raise BackupRefused(backup_guard.refusal_message(check, destination))
    if check.refused:
        # Allowed by a person for this run; still not a clean run, so nothing is pruned after it.
        report.warnings.append(f"allowed for this run (allow_shrink): {check.reason}")
        log(f"shrink allowed for this run: {check.reason}")


def _make_snapshot(
    report: BackupReport,
    source: Path,
    root: Path,
    manifest: Manifest,
    started: datetime,
    *,
    keep: tuple[int, int, int],
    scrub_runs: int,
    excludes: list[str],
    workers: int,
    state: backup_state.StateSources | None,
    log: Log,
    on_rsync_output: Callable[[str], None] | None,
    progress_interval_s: float,
) -> None:
    snapshots = list_snapshots(root.parent)
    previous = snapshots[-1] if snapshots else None
    report.previous = previous.name if previous else None
    report.links = len(manifest.links)
    previous_manifest = None
    if previous is not None:
        try:
            previous_manifest = load_manifest(previous / MANIFEST_NAME)
        except ManifestError as exc:
            report.warnings.append(f"previous snapshot's manifest is unreadable ({exc}); space estimate skipped")
    # Same size and mtime as the previous snapshot's record but another hash: rot or tampering
    # on the store, not a change. That record stays the truth, so its good copy is what this
    # snapshot holds and lists (rsync hard-links it: the stat matches).
    rotten = backup_guard.source_rot(previous_manifest, manifest)
    if rotten:
        manifest = manifest.with_entries([rotten.get(p, e) for p, e in manifest.entries.items()])
        log(
            f"{len(rotten)} file(s) differ from snapshot {previous.name}'s record with size and mtime unchanged: "
            + ", ".join(sorted(rotten))
        )
    work = root / IN_PROGRESS
    report.resumed = work.is_dir()
    if report.resumed:
        log(f"resuming the incomplete snapshot {work} left by an earlier failed run")
    work_data = work / DATA
    _check_space(root, manifest, previous_manifest, work_data if report.resumed else None, previous)
    work_data.mkdir(parents=True, exist_ok=True)

    log(f"rsync {source}/ -> {work_data}/" + (f" (unchanged files hard-linked to {previous.name})" if previous else ""))
    result = run_rsync(
        source,
        work_data,
        link_dest=(previous / DATA) if previous else None,
        excludes=excludes,
        log=log,
        on_output=on_rsync_output,
        progress_interval_s=progress_interval_s,
    )
    report.rsync_exit = result.exit_code
    report.rsync_seconds = round(result.seconds, 3)
    report.rsync_stats = result.stats
    report.files_transferred = len(result.transferred)
    report.bytes_transferred = sum(result.transferred.values())
    log(
        f"rsync exit {result.exit_code}: {report.files_transferred} files, {_gb(report.bytes_transferred)} "
        f"transferred in {result.seconds:.1f} s"
    )
    kept = f"the previous snapshot {previous.name} is untouched" if previous else "there is no earlier snapshot"
    if result.exit_code not in (0, RSYNC_VANISHED):
        tail = "\n".join(result.stderr.splitlines()[-12:]) or "(rsync printed nothing on stderr)"
        if result.out_of_space:
            # A full volume stays full: give the space back rather than keep a partial copy
            # nobody can finish. (Other failures keep it, so the next run resumes.)
            shutil.rmtree(work, ignore_errors=True)
            raise BackupError(
                f"the backup volume {root.parent} filled up during the transfer (rsync exit {result.exit_code}, "
                f"{result.meaning}); the incomplete snapshot was removed to give the space back and {kept}. "
                f"Free space on the volume (or lower backup.keep_snapshots) and run again.\nrsync said:\n{tail}"
            )
        raise BackupError(
            f"rsync failed with exit {result.exit_code} ({result.meaning}); nothing was promoted and {kept}; "
            f"the next run resumes the incomplete copy in {work}.\nrsync said:\n{tail}"
        )
    if result.exit_code == RSYNC_VANISHED:
        report.warnings.append(
            "rsync exit 24: files vanished from the source while it ran (they are left out of this snapshot)"
        )
    for rel in rotten:
        _keep_previous_copy(previous / DATA / rel, work_data / rel)

    scrub_state = _read_scrub_state(root)
    verification, added_entries = _verify(
        source,
        work_data,
        manifest,
        result,
        previous,
        excludes=excludes,
        scrub_slice=scrub_state["runs"] % scrub_runs,
        scrub_slices=scrub_runs,
        workers=workers,
        log=log,
        progress_interval_s=progress_interval_s,
        source_rot={
            rel: f"sha256 on the store differs from snapshot {previous.name}'s record with size and mtime unchanged "
            "(bit rot or tampering); the backup keeps the good copy"
            for rel in rotten
        },
    )
    report.verification = verification
    if not verification.ok:
        # A bad copy with the source's size and mtime would be skipped by rsync next time:
        # delete it so the next run copies it again.
        for rel in verification.mismatched:
            (work_data / rel).unlink(missing_ok=True)
        raise BackupError(_verification_failure(verification, kept, work))

    if state is not None:
        captured = backup_state.capture_state(state, work / backup_state.STATE, log=log)
        report.state = captured.summary()

    # The snapshot's own manifest: what it really holds, for verify and restore later.
    snapshot_manifest = manifest.with_entries(
        [e for p, e in manifest.entries.items() if p not in set(verification.vanished)] + added_entries
    )
    for rel in verification.vanished:
        snapshot_manifest.links.pop(rel, None)
    name = _new_snapshot_name(root, started, previous)
    report.snapshot = name
    report.status = "warning" if report.warnings or verification.repaired or verification.vanished else "ok"
    if verification.source_corrupt or (report.state and report.state["errors"]):
        report.status = "failed"
    write_manifest(snapshot_manifest, work)
    report.message = _summary(report)
    atomic_write_json(work / REPORT_NAME, report.as_dict())
    os.rename(work, root / name)
    _fsync_dir(root)
    log(f"snapshot {name} verified and in place")
    atomic_write_json(
        root / SCRUB_STATE,
        {"runs": scrub_state["runs"] + 1, "last_slice": verification.scrub_slice, "slices": scrub_runs},
    )
    _prune(report, root, keep, log)
    report.message = _summary(report)


def _prune(report: BackupReport, root: Path, keep: tuple[int, int, int], log: Log) -> None:
    """Retention, after a clean run only: a warning or a failure may mean the store is not what it
    should be, and the older snapshots are then exactly what must survive."""
    if report.status != "ok":
        report.prune_skipped = f"this run's status is {report.status}: every snapshot is kept"
        log(f"not pruning: {report.prune_skipped}")
        return
    last, weekly, monthly = keep
    snapshots = list_snapshots(root.parent)
    report.retention = retention([s.name for s in snapshots], last=last, weekly=weekly, monthly=monthly)
    for old in snapshots:
        if old.name in report.retention:
            continue
        try:
            shutil.rmtree(old)
            report.pruned.append(old.name)
            log(f"pruned snapshot {old.name} (keeping the last {last}, {weekly} weekly, {monthly} monthly)")
        except OSError as exc:
            report.warnings.append(f"could not prune {old.name}: {exc}")


def _keep_previous_copy(good: Path, copy: Path) -> None:
    """Make ``copy`` (in the new snapshot) the previous snapshot's copy, whatever rsync left there
    (a resumed run may hold the rotten bytes): a hard link, swapped in by one rename. Without a
    previous copy the rotten one is removed, and verification reports the file missing."""
    # Either side may be missing (no previous copy, or rsync left none): then there is no
    # shared inode to find, and the checks below handle both cases.
    with contextlib.suppress(FileNotFoundError):
        if os.stat(good).st_ino == os.stat(copy).st_ino:
            return
    if not good.is_file():
        copy.unlink(missing_ok=True)
        return
    copy.parent.mkdir(parents=True, exist_ok=True)
    tmp = copy.with_name(f".{copy.name}.idp-link-{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.link(good, tmp)
    os.replace(tmp, copy)


def _check_space(
    root: Path, manifest: Manifest, previous: Manifest | None, resumed_data: Path | None, previous_dir: Path | None
) -> None:
    """Refuse before copying anything when the volume cannot hold the new and changed files.

    A lower bound (file systems round up to blocks), so rsync can still run out:
    that is handled too. But a 40 GB model that cannot fit fails here in a second
    rather than after an hour of copying.
    """
    needed, files, largest = 0, 0, None
    for entry in manifest.entries.values():
        before = previous.entries.get(entry.path) if previous else None
        if before and (before.size, before.mtime_ns) == (entry.size, entry.mtime_ns):
            continue  # rsync hard-links it
        if resumed_data is not None and _same_stat(resumed_data / entry.path, entry):
            continue  # already copied by the run being resumed
        needed += entry.size
        files += 1
        if largest is None or entry.size > largest.size:
            largest = entry
    free = shutil.disk_usage(root).free
    if needed > free:
        kept = f"the previous snapshot {previous_dir.name} is untouched" if previous_dir else "nothing was written"
        raise BackupError(
            f"the backup volume {root.parent} has {_gb(free)} free but this snapshot needs at least {_gb(needed)} "
            f"for {files} new or changed file(s) (largest: {largest.path}, {_gb(largest.size)}); nothing was copied "
            f"and {kept}. Free space on the volume (or lower backup.keep_snapshots) or use a larger one."
        )


def _read_scrub_state(root: Path) -> dict:
    try:
        state = json.loads((root / SCRUB_STATE).read_text())
        return {"runs": int(state["runs"])}
    except FileNotFoundError:
        return {"runs": 0}
    except (OSError, ValueError, KeyError, TypeError):
        # A damaged counter only shifts the rotation; start it again rather than stop backups.
        return {"runs": 0}


def _verify(
    source: Path,
    work_data: Path,
    manifest: Manifest,
    result: RsyncResult,
    previous: Path | None,
    *,
    excludes: list[str],
    scrub_slice: int,
    scrub_slices: int,
    workers: int,
    log: Log,
    progress_interval_s: float,
    source_rot: dict[str, str] | None = None,
) -> tuple[Verification, list[Entry]]:
    """Check the copy in ``work_data``; also return manifest entries for files that
    appeared on the source during the run and were copied intact. ``source_rot`` names
    files whose store copy is known bad (path -> why): their backup copy is hashed too,
    since it is now the only good one."""
    source_rot = source_rot or {}
    v = Verification(scrub_slice=scrub_slice, scrub_slices=scrub_slices)
    v.source_corrupt = sorted(source_rot)
    v.reasons.update(source_rot)
    held = {f.path: f for f in scan(work_data, excludes)}
    linked = {f.path: f.inode for f in scan(previous / DATA, excludes)} if previous else {}
    expected: dict[str, Entry] = {}
    for rel, entry in manifest.entries.items():
        copy = held.get(rel)
        if copy is None:
            if os.path.lexists(source / rel):
                v.missing.append(rel)
                expected[rel] = entry
            else:
                v.vanished.append(rel)
            continue
        expected[rel] = entry
        if copy.size != entry.size:
            v.mismatched.append(rel)
            v.reasons[rel] = f"size {copy.size} in the backup, manifest says {entry.size}"
    v.added = sorted(rel for rel in held if rel not in manifest.entries)
    bad = set(v.mismatched) | set(v.missing)
    # Written in this run: everything rsync transferred, and anything that is not a hard
    # link into the previous snapshot (a resumed run's earlier copies: rsync skips those).
    written = sorted(
        rel
        for rel in expected
        if rel not in bad and (rel in result.transferred or linked.get(rel) != held[rel].inode or rel in source_rot)
    )
    scrub = scrub_ranges([e for rel, e in expected.items() if rel not in bad], scrub_slice, scrub_slices)
    log(
        f"verifying: {len(written)} files written this run, {len(v.added)} new during the run; scrub slice "
        f"{scrub_slice + 1}/{scrub_slices}: {_gb(sum(r.length for r in scrub))} of {len({r.path for r in scrub})} files"
    )

    def progress(p) -> None:
        log(p.describe())

    # Backup copies are hashed with drop_cache: they are never needed in memory again.
    at_dest = hash_files(
        work_data,
        [(rel, held[rel].size) for rel in sorted(set(written) | set(v.added))],
        workers=workers,
        progress=progress,
        progress_interval_s=progress_interval_s,
        drop_cache=True,
    )
    at_source = hash_files(source, [(rel, held[rel].size) for rel in v.added], workers=workers)
    dest_sha = {rel: sha for rel, (sha, _) in at_dest.hashes.items()}
    for rel, why in at_dest.errors.items():
        v.mismatched.append(rel)
        v.reasons[rel] = f"backup copy {why}"
    for rel in at_dest.vanished:
        v.missing.append(rel)

    for rel in written:
        if rel in dest_sha:
            v.checked_files += 1
            v.checked_bytes += held[rel].size
            if dest_sha[rel] != expected[rel].sha256:
                v.mismatched.append(rel)
                v.reasons[rel] = "sha256 of the copy differs from the manifest"

    for rel in v.added[:]:
        src = at_source.hashes.get(rel)
        if src is None or dest_sha.get(rel) != src[0]:
            v.added.remove(rel)
            v.mismatched.append(rel)
            v.reasons[rel] = "appeared on the source during the backup and its copy does not match it"

    _scrub(source, work_data, expected, scrub, v, dest_sha=dest_sha, written=set(written), workers=workers, log=log)

    # Links: each one as the manifest records it (a link that vanished from the source is left out).
    link_missing, link_bad, link_reasons = check_links(work_data, manifest.links)
    v.vanished += [rel for rel in link_missing if not os.path.lexists(source / rel)]
    v.missing += [rel for rel in link_missing if os.path.lexists(source / rel)]
    v.mismatched += link_bad
    v.reasons.update(link_reasons)

    v.files_expected = len(expected) + len(v.added)
    v.files_in_snapshot = len(held)
    v.source_corrupt = sorted(set(v.source_corrupt))
    for listed in (v.missing, v.vanished, v.repaired):
        listed.sort()
    v.mismatched = sorted(set(v.mismatched))
    added_entries = [
        Entry(rel, st.st_size, st.st_mtime_ns, sha) for rel in v.added for sha, st in [at_dest.hashes[rel]]
    ]
    return v, added_entries


def _verification_failure(v: Verification, kept: str, work: Path) -> str:
    lines = [f"verification failed, so the snapshot was not promoted and {kept}:"]
    lines += [f"  MISMATCH {rel}: {v.reasons.get(rel, '')}" for rel in v.mismatched]
    lines += [f"  MISSING  {rel}: in the manifest and on the source, not in the backup" for rel in v.missing]
    if not v.count_ok:
        lines.append(f"  COUNT    {v.files_in_snapshot} files in the backup, {v.files_expected} expected")
    lines.append(f"Bad copies were deleted from {work}; the next run copies them again.")
    return "\n".join(lines)


def _summary(report: BackupReport) -> str:
    v = report.verification
    parts = [
        f"snapshot {report.snapshot}: {report.files_transferred} files ({_gb(report.bytes_transferred)}) transferred "
        f"of {report.files_total} ({_gb(report.bytes_total)})"
    ]
    if v:
        parts.append(
            f"{v.checked_files} written files verified, scrub slice {v.scrub_slice + 1}/{v.scrub_slices}: "
            f"{v.scrubbed_files} files ({_gb(v.scrubbed_bytes)}) re-read on both sides, "
            f"count {v.files_in_snapshot}/{v.files_expected}"
        )
        if v.source_corrupt:
            parts.append(
                "SOURCE CORRUPT (bit rot on the model store; the snapshot holds the good copy, restore with "
                "`idp-ops restore PATH`): " + ", ".join(v.source_corrupt)
            )
        if v.repaired:
            parts.append(
                "rotten backup copies replaced in this snapshot (older snapshots share the damaged copy): "
                + ", ".join(v.repaired)
            )
        if v.vanished:
            parts.append("vanished during the run: " + ", ".join(v.vanished))
    if report.state:
        parts.append("state: " + ", ".join(f"{part} {status}" for part, status in report.state["parts"].items()))
        if report.state["errors"]:
            parts.append("STATE NOT BACKED UP: " + "; ".join(report.state["errors"]))
    if report.pruned:
        parts.append("pruned " + ", ".join(report.pruned))
    if report.prune_skipped:
        parts.append("nothing pruned: " + report.prune_skipped)
    parts += report.warnings
    return "; ".join(parts)


# -- settings-level entry points (the asset and the CLI share them) -----------


def manifest_dir(settings: Settings) -> Path:
    """Where the model store's current manifest.json and SHA256SUMS live (outside the store)."""
    return settings.data_dir / "manifest"


def backup_store(
    settings: Settings,
    *,
    run_id: str | None = None,
    log: Log = _quiet,
    on_rsync_output: Callable[[str], None] | None = None,
    allow_shrink: bool = False,
    config_file: str | Path | None = None,
    dagster_home: str | Path | None = None,
) -> BackupReport:
    """The weekly run: refresh the manifest (incremental: near free when nothing changed),
    snapshot the store and the box's state (settings file: ``config_file``, else the one
    load_settings finds; Dagster instance: ``dagster_home``, else $DAGSTER_HOME), verify,
    prune, and record the run in history whatever its outcome."""
    cfg = settings.backup
    source = settings.models_dir
    try:
        built = build_manifest(
            source,
            cache_file=settings.history_file,
            excludes=cfg.excludes,
            workers=cfg.hash_workers,
            progress=lambda p: log(p.describe()),
        )
        write_manifest(built.manifest, manifest_dir(settings))
        log(
            f"manifest: {built.stats.files} files, {built.stats.hashed_files} hashed, "
            f"{built.stats.reused_files} unchanged (cached) in {built.stats.seconds:.2f} s"
        )
    except ManifestError as exc:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        report = BackupReport(
            str(source), str(cfg.destination), now, finished_at=now, message=f"manifest failed: {exc}"
        )
    else:
        state = None
        if cfg.include_state:
            state = backup_state.state_sources(settings, config_file=config_file, dagster_home=dagster_home)
        report = backup(
            source,
            cfg.destination,
            built.manifest,
            marker_file=cfg.marker_file,
            keep_snapshots=cfg.keep_snapshots,
            keep_weekly=cfg.keep_weekly,
            keep_monthly=cfg.keep_monthly,
            scrub_runs=cfg.scrub_runs,
            excludes=cfg.excludes,
            workers=cfg.hash_workers,
            allow_shrink=allow_shrink,
            max_shrink_files_fraction=cfg.max_shrink_files_fraction,
            max_shrink_bytes_fraction=cfg.max_shrink_bytes_fraction,
            state=state,
            log=log,
            on_rsync_output=on_rsync_output,
        )
        report.manifest_stats = built.stats.as_dict()
    record_backup_run(settings.history_file, report, run_id or uuid.uuid4().hex)
    return report


def record_backup_run(history_file: Path, report: BackupReport, run_id: str) -> None:
    """One row in ``backup_runs`` per run, whatever its outcome (a re-executed run replaces its row)."""
    from idp_ops.history import database as history

    v = report.verification or Verification()
    verified = report.verification is not None
    row = {
        "run_id": run_id,
        "started_at": report.started_at,
        "finished_at": report.finished_at or report.started_at,
        "source": report.source,
        "destination": report.destination,
        "snapshot": report.snapshot,
        "status": report.status,
        "message": report.message,
        "rsync_exit": report.rsync_exit,
        "files_total": report.files_total,
        "bytes_total": report.bytes_total,
        "files_transferred": report.files_transferred,
        "bytes_transferred": report.bytes_transferred,
        "duration_s": report.duration_s,
        "verified_files": v.checked_files,
        "verified_bytes": v.checked_bytes,
        "scrub_slice": v.scrub_slice if verified else None,
        "scrub_slices": v.scrub_slices if verified else None,
        "scrubbed_files": v.scrubbed_files,
        "scrub_bytes": v.scrubbed_bytes,
        "mismatched": v.mismatched,
        "missing": v.missing,
        "source_corrupt": v.source_corrupt,
        "repaired": v.repaired,
        "vanished": v.vanished,
        "pruned": report.pruned,
        "ok": report.ok,
    }
    with history.connect(history_file) as con:
        con.execute(
            f"INSERT OR REPLACE INTO backup_runs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
            list(row.values()),
        )
