"""Restore from a snapshot: models (a file, a directory or the whole store) and the box's state.

Every copy is checked against its snapshot's manifest before anything is replaced,
then copied to a temp name, hashed again while copying, and renamed into place.
The volume's lock is held shared throughout, so a backup cannot prune the snapshot
being read. Without a named snapshot the latest one that holds files (and the path
asked for) is used, never blindly an empty one; the report says which and why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from idp_ops.backup import state as backup_state
from idp_ops.backup.manifest import (
    MANIFEST_NAME,
    Entry,
    Manifest,
    ManifestError,
    check_entries,
    check_links,
    load_manifest,
)
from idp_ops.backup.volume import DATA, SNAPSHOTS, RestoreError, copy_verified, list_snapshots, volume_lock

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


@dataclass
class RestoreReport:
    snapshot: str
    target: str
    path: str | None
    restored: list[str]
    unchanged: list[str]
    bytes_restored: int
    seconds: float
    # Why this snapshot was used, and the newer ones passed over (name -> why).
    chosen_because: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    links_restored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class _NotHeld(RestoreError):
    """The snapshot does not hold the path asked for."""


def resolve_snapshot(destination: Path, name: str | None) -> Path:
    snapshots = list_snapshots(destination)
    if not snapshots:
        raise RestoreError(f"no verified snapshots in {Path(destination) / SNAPSHOTS} (is the backup volume mounted?)")
    if not name:
        return snapshots[-1]
    for snap in snapshots:
        if snap.name == name:
            return snap
    raise RestoreError(f"no snapshot named {name!r}; available: {', '.join(s.name for s in snapshots)}")


def _choose_snapshot(
    destination: Path, name: str | None, path: str | None, target_root: Path
) -> tuple[Path, list[Entry], dict[str, str], str, dict[str, str]]:
    """The snapshot to restore from, what it holds under ``path`` (files, links), why it was chosen,
    and the newer snapshots passed over. Without a name: the latest that holds files (and ``path``),
    never blindly an empty one."""
    if name:
        snap = resolve_snapshot(destination, name)
        files, links = _select(_load_snapshot_manifest(snap), path, target_root, snap.name)
        return snap, files, links, "named with --snapshot", {}
    resolve_snapshot(destination, None)  # there is at least one, or a clear error
    snapshots = list_snapshots(destination)
    skipped: dict[str, str] = {}
    first_miss: _NotHeld | None = None
    for snap in reversed(snapshots):
        try:
            manifest = load_manifest(snap / MANIFEST_NAME)
        except ManifestError as exc:
            skipped[snap.name] = f"its manifest cannot be read: {exc}"
            continue
        if not manifest.entries and not manifest.links:
            skipped[snap.name] = "it holds no files (made while the store was empty or unmounted?)"
            continue
        try:
            files, links = _select(manifest, path, target_root, snap.name)
        except _NotHeld as exc:
            first_miss = first_miss or exc
            skipped[snap.name] = f"it holds no {path!r}"
            continue
        if not skipped:
            return snap, files, links, "the latest snapshot", {}
        held = f"{path!r}" if path else "files"
        return snap, files, links, f"the latest snapshot that holds {held} (newer ones passed over)", skipped
    if first_miss is not None:
        raise RestoreError(f"{first_miss}, nor does any older snapshot")
    raise RestoreError("no snapshot can be restored from: " + "; ".join(f"{n}: {why}" for n, why in skipped.items()))


def _load_snapshot_manifest(snap: Path) -> Manifest:
    try:
        return load_manifest(snap / MANIFEST_NAME)
    except ManifestError as exc:
        raise RestoreError(f"snapshot {snap.name} cannot be used: {exc}") from None


@contextmanager
def _restore_lock(destination: Path) -> Iterator[None]:
    root = destination / SNAPSHOTS
    if not root.is_dir():
        yield  # no snapshots: the restore fails on its own, with the clearer message
        return
    with volume_lock(root, shared=True):
        yield


def restore(
    destination: Path,
    target_root: Path,
    *,
    snapshot: str | None = None,
    path: str | None = None,
    workers: int = 0,
    log: Log = _quiet,
) -> RestoreReport:
    """Copy one file or directory (``path``, relative to the store) or the whole store
    back from a snapshot (default: the latest that holds files, and ``path`` when given;
    the report says which and why).

    The volume's lock is held shared throughout, so a backup cannot prune the snapshot
    being read. Every snapshot copy to be restored is hashed against that snapshot's
    manifest before anything is replaced; a single bad copy stops the restore with
    nothing touched. Each file is then copied to a temp name, hashed again while
    copying, and renamed over its target; symlinks come back as links. Files already
    identical are left alone, and files the snapshot does not hold are never deleted.
    """
    started = time.monotonic()
    destination = Path(destination).resolve()
    target_root = Path(target_root).resolve()
    with _restore_lock(destination):
        snap, selected, links, because, skipped = _choose_snapshot(destination, snapshot, path, target_root)
        log(f"restoring from snapshot {snap.name}: {because}")
        report = _restore_from(snap, selected, links, target_root, workers=workers, log=log)
    report.path, report.chosen_because, report.skipped = path, because, skipped
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _restore_from(
    snap: Path, selected: list[Entry], links: dict[str, str], target_root: Path, *, workers: int, log: Log
) -> RestoreReport:
    data = snap / DATA
    # Nothing is written through a symlink that leads out of the store (a link where the snapshot has a directory).
    real_root = os.path.realpath(target_root)
    parents = {os.path.dirname(rel) for rel in [e.path for e in selected] + list(links)}
    for rel_dir in sorted(parents):
        parent = os.path.realpath(target_root / rel_dir)
        if os.path.commonpath([real_root, parent]) != real_root:
            raise RestoreError(
                f"{target_root / rel_dir}: a symlink in its path leads to {parent}, outside the store; "
                "nothing was replaced"
            )

    # Targets that already hold the right bytes need no copy.
    same_size = []
    for entry in selected:
        try:
            st = os.stat(target_root / entry.path)
        except OSError:
            continue
        if st.st_size == entry.size:
            same_size.append(entry)
    current = check_entries(target_root, same_size, workers=workers)
    differing = set(current.mismatched) | set(current.missing)
    unchanged = sorted(e.path for e in same_size if e.path not in differing)
    to_restore = [e for e in selected if e.path not in set(unchanged)]
    same_links = [rel for rel, target in links.items() if _readlink(target_root / rel) == target]

    log(f"checking {len(to_restore)} file(s) in snapshot {snap.name} against its manifest before replacing anything")
    checked = check_entries(data, to_restore, workers=workers, drop_cache=True, progress=lambda p: log(p.describe()))
    link_missing, link_bad, link_reasons = check_links(data, {r: t for r, t in links.items() if r not in same_links})
    if not checked.ok or link_missing or link_bad:
        problems = [f"  MISMATCH {rel}: {checked.reasons.get(rel, '')}" for rel in checked.mismatched]
        problems += [f"  MISMATCH {rel}: {link_reasons.get(rel, '')}" for rel in link_bad]
        problems += [f"  MISSING  {rel}" for rel in checked.missing + link_missing]
        others = [s.name for s in list_snapshots(snap.parent.parent) if s.name != snap.name]
        raise RestoreError(
            f"snapshot {snap.name} does not hold good copies of {len(problems)} file(s); nothing was replaced:\n"
            + "\n".join(problems)
            + (f"\nTry an older snapshot (--snapshot NAME): {', '.join(others)}" if others else "")
        )

    restored, restored_bytes = [], 0
    for entry in to_restore:
        target = target_root / entry.path
        if target.is_dir() and not target.is_symlink():
            raise RestoreError(f"{target} is a directory where the snapshot has a file; restored so far: {restored}")
        if not copy_verified(data / entry.path, target, entry.sha256):
            raise RestoreError(
                f"{entry.path} in snapshot {snap.name} changed while it was being restored; it was not replaced. "
                f"Restored so far: {restored}"
            )
        restored.append(entry.path)
        restored_bytes += entry.size
        log(f"restored {entry.path} ({_gb(entry.size)})")
    links_restored = []
    for rel, link_target in sorted(links.items()):
        if rel in same_links:
            continue
        target = target_root / rel
        if target.is_dir() and not target.is_symlink():
            raise RestoreError(f"{target} is a directory where the snapshot has a symlink; restored so far: {restored}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.idp-link-{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(link_target, tmp)
        os.replace(tmp, target)  # a link appears whole, as files do
        links_restored.append(rel)
        log(f"restored link {rel} -> {link_target}")
    return RestoreReport(
        snap.name,
        str(target_root),
        None,
        restored,
        sorted(unchanged + same_links),
        restored_bytes,
        0.0,
        links_restored=links_restored,
    )


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _select(
    manifest: Manifest, path: str | None, target_root: Path, snapshot: str
) -> tuple[list[Entry], dict[str, str]]:
    if not path:
        return list(manifest.entries.values()), dict(manifest.links)
    given = Path(path)
    if given.is_absolute():
        try:
            given = given.relative_to(target_root)
        except ValueError:
            raise RestoreError(f"{path} is not inside the model store {target_root}") from None
    rel = PurePosixPath(given.as_posix())
    if ".." in rel.parts:
        raise RestoreError(f"{path}: a path inside the model store may not contain '..'")
    wanted = str(rel).strip("/")
    if wanted in ("", "."):
        return list(manifest.entries.values()), dict(manifest.links)

    def under(p: str) -> bool:
        return p == wanted or p.startswith(wanted + "/")

    selected = [e for p, e in manifest.entries.items() if under(p)]
    links = {p: t for p, t in manifest.links.items() if under(p)}
    if not selected and not links:
        raise _NotHeld(f"snapshot {snapshot} holds no file or directory {wanted!r}")
    return selected, links


@dataclass
class StateRestoreReport:
    snapshot: str
    chosen_because: str
    parts: list[dict]
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _restore_database(state_dir: Path, source, force: bool, log: Log) -> dict:
    done = backup_state.restore_postgres_part(state_dir, source, clean=force, log=log)
    target = f"database {done['database']} in {done['container']}"
    return {"part": "postgres", "target": target, "files": [done["dump"]], "kept_aside": None, **done}


def restore_state(
    destination: Path,
    targets: dict[str, Path | None],
    *,
    snapshot: str | None = None,
    force: bool = False,
    into: Path | None = None,
    postgres: backup_state.PostgresSource | None = None,
    log: Log = _quiet,
) -> StateRestoreReport:
    """Bring parts of the box's state (``targets``: part -> where it goes) back from a snapshot;
    default: the latest whose state holds every part asked for. With ``into``, every part goes
    into that directory instead (backup_state.default_into). See backup_state.restore_part.

    The "postgres" part in place goes into the platform's database (``postgres``; its target is None):
    pg_restore in one transaction, into an empty database, or over the instance with ``force``."""
    started = time.monotonic()
    destination = Path(destination).resolve()
    parts = list(targets)
    try:
        with _restore_lock(destination):
            if snapshot:
                snap, because = resolve_snapshot(destination, snapshot), "named with --snapshot"
            else:
                resolve_snapshot(destination, None)  # there is at least one, or a clear error
                snapshots = list_snapshots(destination)
                holding = [
                    s
                    for s in snapshots
                    if all(backup_state.part_status(s / backup_state.STATE, p) == "copied" for p in parts)
                ]
                if not holding:
                    latest = snapshots[-1]
                    statuses = ", ".join(
                        f"{p} {backup_state.part_status(latest / backup_state.STATE, p)}" for p in parts
                    )
                    raise RestoreError(f"no snapshot holds {', '.join(parts)} (latest, {latest.name}: {statuses})")
                snap = holding[-1]
                because = (
                    "the latest snapshot"
                    if snap == snapshots[-1]
                    else (f"the latest snapshot that holds {', '.join(parts)} (newer ones do not)")
                )
            log(f"restoring {', '.join(parts)} from snapshot {snap.name}: {because}")
            into_database = "postgres" in parts and into is None
            if into_database and postgres is None:
                raise RestoreError(
                    "no ops platform to restore the postgres part into (backup.platform_project or "
                    "$IDP_OPS_POSTGRES_PROJECT), or restore the dump file with --into DIR"
                )
            files = [p for p in parts if not (into_database and p == "postgres")]
            if into is not None:
                targets = {p: backup_state.default_into(snap / backup_state.STATE, p, into) for p in parts}
            elif any(targets[p] is None for p in files):
                raise RestoreError("give a target for every part, or a directory to restore into")
            if not force:  # every target checked before any is replaced
                present = [f"{targets[p]}" for p in files if os.path.lexists(targets[p])]
                if present:
                    raise RestoreError(
                        f"{', '.join(present)} exist(s); nothing was replaced. Restore into another directory "
                        "(--into DIR), or pass --force to replace (what is there is kept aside as "
                        "NAME.before-restore-<time>)"
                    )
            for p in parts:  # every part verified before any is replaced
                backup_state.check_part(snap / backup_state.STATE, p)
            restored = [
                _restore_database(snap / backup_state.STATE, postgres, force, log)
                if into_database and p == "postgres"
                else backup_state.restore_part(snap / backup_state.STATE, p, targets[p], force=force, log=log)
                for p in parts
            ]
    except backup_state.StateError as exc:
        raise RestoreError(str(exc)) from None
    return StateRestoreReport(snap.name, because, restored, round(time.monotonic() - started, 3))
