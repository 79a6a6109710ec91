"""Snapshot backups with the real rsync on real files: verification, scrub, refusal, full disk,
vanished files, retention, restore."""

from __future__ import annotations

import fcntl
import filecmp
import os
import re
import subprocess
from pathlib import Path

import pytest

from idp_ops.core import history
from idp_ops.core.manifest import MANIFEST_NAME, Entry, build_manifest, load_manifest, verify
from idp_ops.core.rsync import (
    DATA,
    IN_PROGRESS,
    SCRUB_SPLIT_BYTES,
    LOCK_NAME,
    SNAPSHOTS,
    RestoreError,
    backup,
    check_destination,
    DestinationRefused,
    list_snapshots,
    record_backup_run,
    restore,
    scrub_ranges,
    scrub_slice_of,
)

from .test_manifest import flip_bit, make_store

MARKER = ".idp-backup-volume"
EXCLUDES = ["*.tmp", "cache/"]


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path / "models")


@pytest.fixture
def dest(tmp_path) -> Path:
    volume = tmp_path / "backup"
    volume.mkdir()
    (volume / MARKER).touch()
    return volume


@pytest.fixture
def small_volume(tmp_path):
    """A real 2 MiB tmpfs: a mount point (so no marker needed) that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "small-volume"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def run_backup(store: Path, dest: Path, **kwargs):
    cache = kwargs.pop("cache_file", store.parent / "history.duckdb")
    manifest = build_manifest(store, cache_file=cache, excludes=EXCLUDES).manifest
    kwargs.setdefault("excludes", EXCLUDES)
    kwargs.setdefault("marker_file", MARKER)
    return backup(store, dest, manifest, **kwargs)


def snapshot_dir(dest: Path, name: str) -> Path:
    return dest / SNAPSHOTS / name


def verify_snapshot(dest: Path, name: str):
    snap = snapshot_dir(dest, name)
    return verify(snap / DATA, snap / MANIFEST_NAME)


# -- the destination ----------------------------------------------------------


def test_destination_without_marker_or_mount_is_refused_naming_both_remedies(store, tmp_path):
    bare = tmp_path / "not-mounted"
    bare.mkdir()
    with pytest.raises(DestinationRefused) as refused:
        check_destination(bare, MARKER)
    message = str(refused.value)
    assert "not a mount point" in message and MARKER in message
    assert "mount the backup volume" in message and f"touch {bare / MARKER}" in message

    report = run_backup(store, bare)
    assert report.status == "failed" and report.snapshot is None and report.rsync_exit is None
    assert "refusing to back up" in report.message
    assert list(bare.iterdir()) == []  # nothing written on the wrong disk

    missing = run_backup(store, tmp_path / "absent")
    assert missing.status == "failed" and "does not exist" in missing.message


def test_destination_inside_the_source_is_refused(store):
    inside = store / "backup"
    inside.mkdir()
    (inside / MARKER).touch()
    report = run_backup(store, inside)
    assert report.status == "failed" and "overlap" in report.message


def test_a_second_backup_while_one_holds_the_lock_is_refused(store, dest):
    (dest / SNAPSHOTS).mkdir()
    with open(dest / SNAPSHOTS / LOCK_NAME, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        report = run_backup(store, dest)
    assert report.status == "failed" and "another backup" in report.message


# -- snapshots and verification -----------------------------------------------


def test_snapshots_link_unchanged_files_transfer_only_changes_and_pass_sha256sum(store, dest):
    first = run_backup(store, dest, scrub_runs=1)
    assert first.status == "ok", first.message
    assert first.files_transferred == 5 and first.verification.checked_files == 5
    assert first.verification.count_ok and first.destination_kind == "marker file"

    (store / "llama" / "config.json").write_bytes(b'{"a": 2}')
    (store / "notes.tmp").write_bytes(b"excluded")
    second = run_backup(store, dest, scrub_runs=1)
    assert second.status == "ok", second.message
    assert second.previous == first.snapshot
    assert second.files_transferred == 1 and second.bytes_transferred == 8
    assert second.verification.checked_files == 1
    assert [s.name for s in list_snapshots(dest)] == [first.snapshot, second.snapshot]
    assert second.snapshot > first.snapshot  # UTC timestamps: names sort by age

    old, new = snapshot_dir(dest, first.snapshot) / DATA, snapshot_dir(dest, second.snapshot) / DATA
    # Unchanged file: one inode shared by both snapshots (costs no space).
    assert (old / "qwen/weights.safetensors").stat().st_ino == (new / "qwen/weights.safetensors").stat().st_ino
    assert (old / "llama/config.json").read_bytes() == b'{"a": 1}'
    assert not (new / "notes.tmp").exists()
    assert not (dest / SNAPSHOTS / IN_PROGRESS).exists()

    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "../SHA256SUMS"], cwd=new, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_long_passes_log_progress(store, dest):
    (store / "big.gguf").write_bytes(os.urandom(8 * 1024 * 1024))
    lines: list[str] = []
    report = run_backup(store, dest, log=lines.append, progress_interval_s=0.0)
    assert report.status == "ok"
    assert any(re.match(r"rsync: \d+\.\d+ GB \(\d+%\) at ", line) for line in lines), lines
    assert any(line.startswith("hashed ") and "MB/s" in line for line in lines), lines
    assert any(line.startswith(f"snapshot {report.snapshot} verified") for line in lines)


def test_a_flipped_bit_in_a_backup_copy_is_named_and_the_scrub_replaces_it(store, dest):
    first = run_backup(store, dest, scrub_runs=1)
    rotten = snapshot_dir(dest, first.snapshot) / DATA / "qwen/weights.safetensors"
    flip_bit(rotten, 100_000)

    result = verify_snapshot(dest, first.snapshot)
    assert result.mismatched == ["qwen/weights.safetensors"] and not result.missing

    second = run_backup(store, dest, scrub_runs=1)
    v = second.verification
    assert v.repaired == ["qwen/weights.safetensors"]
    assert second.status == "warning" and "qwen/weights.safetensors" in second.message
    # The new snapshot holds a good copy (its own inode), the old one still the rotten one.
    assert verify_snapshot(dest, second.snapshot).ok
    assert not verify_snapshot(dest, first.snapshot).ok


def test_a_deleted_file_in_the_backup_is_reported_missing(store, dest):
    first = run_backup(store, dest)
    (snapshot_dir(dest, first.snapshot) / DATA / "llama/config.json").unlink()
    result = verify_snapshot(dest, first.snapshot)
    assert result.missing == ["llama/config.json"] and not result.ok
    # The next snapshot copies it again (nothing to link to) and verifies it.
    second = run_backup(store, dest)
    assert second.status == "ok" and second.files_transferred == 1
    assert verify_snapshot(dest, second.snapshot).ok


def test_bit_rot_on_the_source_with_unchanged_mtime_is_caught_by_the_scrub(store, dest):
    assert run_backup(store, dest, scrub_runs=1).status == "ok"
    flip_bit(store / "llama/model-00001.gguf", 123_456)  # size and mtime_ns put back

    # Neither the cache nor rsync can see it: the stat is unchanged.
    rebuilt = build_manifest(store, cache_file=store.parent / "history.duckdb", excludes=EXCLUDES)
    assert rebuilt.stats.hashed_files == 0
    second = backup(store, dest, rebuilt.manifest, marker_file=MARKER, excludes=EXCLUDES, scrub_runs=1)

    assert second.files_transferred == 0
    assert second.verification.source_corrupt == ["llama/model-00001.gguf"]
    assert "bit rot" in second.verification.reasons["llama/model-00001.gguf"]
    assert second.status == "failed" and not second.ok
    assert "SOURCE CORRUPT" in second.message and "llama/model-00001.gguf" in second.message
    # The snapshot itself is good: it holds the uncorrupted copy, ready to restore.
    assert second.snapshot is not None and verify_snapshot(dest, second.snapshot).ok


def test_the_scrub_finds_rot_inside_a_big_file_in_the_run_whose_slice_holds_it(store, dest):
    big = store / "big.gguf"
    with open(big, "wb") as handle:
        handle.truncate(SCRUB_SPLIT_BYTES + 4 * 1024 * 1024)  # split into 4 byte ranges, one per run
    run_backup(store, dest, scrub_runs=4)  # slice 1/4
    flip_bit(big, big.stat().st_size * 5 // 8)  # inside slice 3/4

    second = run_backup(store, dest, scrub_runs=4)  # slice 2/4: not there
    assert second.verification.scrub_slice == 1 and second.verification.source_corrupt == []
    third = run_backup(store, dest, scrub_runs=4)  # slice 3/4
    assert third.verification.scrub_slice == 2
    assert third.verification.source_corrupt == ["big.gguf"] and third.status == "failed"
    assert verify_snapshot(dest, third.snapshot).ok  # the backup still holds the good bytes


def test_a_copy_that_does_not_match_the_manifest_is_not_promoted_and_the_next_run_resumes(store, dest):
    first = run_backup(store, dest)
    manifest = build_manifest(store, excludes=EXCLUDES).manifest
    # The file changes after the manifest was taken: rsync copies content the manifest does not describe.
    (store / "qwen/tokenizer.json").write_bytes(b"[]" * 1000)
    failed = backup(store, dest, manifest, marker_file=MARKER, excludes=EXCLUDES)

    assert failed.status == "failed" and failed.snapshot is None
    assert failed.verification.mismatched == ["qwen/tokenizer.json"]
    assert "MISMATCH qwen/tokenizer.json" in failed.message
    assert f"previous snapshot {first.snapshot} is untouched" in failed.message
    assert [s.name for s in list_snapshots(dest)] == [first.snapshot]
    assert verify_snapshot(dest, first.snapshot).ok
    work = dest / SNAPSHOTS / IN_PROGRESS / DATA
    assert work.is_dir() and not (work / "qwen/tokenizer.json").exists()  # the bad copy is gone

    resumed = run_backup(store, dest)
    assert resumed.status == "ok" and resumed.resumed
    assert verify_snapshot(dest, resumed.snapshot).ok


def test_an_rsync_failure_keeps_the_previous_snapshot_quotes_rsync_and_the_next_run_resumes(store, dest):
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    first = run_backup(store, dest)
    (store / "llama/config.json").write_bytes(b'{"changed": true}')
    # A read-only file system where rsync must write llama/: it cannot (exit 23), even as root.
    blocked = dest / SNAPSHOTS / IN_PROGRESS / DATA / "llama"
    blocked.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(blocked)], check=True)
    try:
        report = run_backup(store, dest)
    finally:
        subprocess.run(["umount", "-l", str(blocked)], check=False)

    assert report.status == "failed" and report.rsync_exit == 23 and report.snapshot is None
    assert "partial transfer due to error" in report.message and "Read-only file system" in report.message
    assert f"previous snapshot {first.snapshot} is untouched" in report.message and "resumes" in report.message
    assert [s.name for s in list_snapshots(dest)] == [first.snapshot] and verify_snapshot(dest, first.snapshot).ok

    resumed = run_backup(store, dest)
    assert resumed.status == "ok" and resumed.resumed, resumed.message
    assert verify_snapshot(dest, resumed.snapshot).ok


def test_a_destination_that_fills_up_fails_cleanly_and_keeps_the_previous_snapshot(tmp_path, small_volume):
    store = make_store(tmp_path / "models")
    first = run_backup(store, small_volume)
    assert first.status == "ok" and first.destination_kind == "mount point"

    # Too big for what is left: refused before a byte is copied.
    (store / "big.gguf").write_bytes(os.urandom(3 * 1024 * 1024))
    refused = run_backup(store, small_volume)
    assert refused.status == "failed" and refused.rsync_exit is None
    assert "needs at least" in refused.message and "big.gguf" in refused.message
    (store / "big.gguf").unlink()

    # Small by bytes, big by blocks (each file takes a 4 KiB page): passes the estimate, fills the disk.
    many = store / "many"
    many.mkdir()
    for i in range(700):
        (many / f"shard-{i:04d}.json").write_bytes(b"x" * 100)
    full = run_backup(store, small_volume)

    assert full.status == "failed" and full.snapshot is None
    assert full.rsync_exit not in (None, 0, 24)
    assert "filled up" in full.message and "No space left on device" in full.message
    assert f"previous snapshot {first.snapshot} is untouched" in full.message
    assert not (small_volume / SNAPSHOTS / IN_PROGRESS).exists()  # the space was given back
    assert [s.name for s in list_snapshots(small_volume)] == [first.snapshot]
    assert verify_snapshot(small_volume, first.snapshot).ok


def test_a_file_vanishing_mid_run_is_the_exit_24_warning(store, dest):
    # rsync sends files in name order: a_big first, then z_gone. When rsync names a_big
    # (at the start of its transfer, which takes a while) z_gone is deleted, after rsync
    # listed it and before it opens it: "file has vanished", exit 24.
    with open(store / "a_big.bin", "wb") as handle:
        handle.truncate(128 * 1024 * 1024)  # sparse: instant to make, but rsync still moves 128 MB
    (store / "z_gone.bin").write_bytes(b"here at manifest time")

    def on_output(line: str) -> None:
        if "a_big.bin" in line and (store / "z_gone.bin").exists():
            (store / "z_gone.bin").unlink()

    report = run_backup(store, dest, on_rsync_output=on_output)

    assert report.rsync_exit == 24
    assert report.status == "warning" and report.ok and report.snapshot
    assert report.verification.vanished == ["z_gone.bin"]
    assert any("vanished" in w for w in report.warnings)
    assert "z_gone.bin" not in load_manifest(snapshot_dir(dest, report.snapshot) / MANIFEST_NAME).entries
    assert verify_snapshot(dest, report.snapshot).ok


def test_retention_keeps_the_last_k_verified_snapshots(store, dest):
    names = []
    for i in range(3):
        (store / "counter.txt").write_text(str(i))
        report = run_backup(store, dest, keep_snapshots=2)
        assert report.status == "ok", report.message
        names.append(report.snapshot)
    assert report.pruned == [names[0]]
    assert [s.name for s in list_snapshots(dest)] == names[1:]


def test_scrub_slices_cover_every_byte_exactly_once_per_rotation_and_weigh_the_same():
    gib = 1024**3
    entries = [Entry(f"big/part-{i}.gguf", 40 * gib + i, 0, "0" * 64) for i in range(3)]
    entries += [Entry(f"small/{i}.json", 1000 + i, 0, "0" * 64) for i in range(400)]
    covered: dict[str, list[tuple[int, int]]] = {}
    per_run = []
    for run in range(8):
        ranges = scrub_ranges(entries, run, 8)
        per_run.append(sum(r.length for r in ranges if r.path.startswith("big/")))
        for r in ranges:
            covered.setdefault(r.path, []).append((r.offset, r.offset + r.length))
    for entry in entries:
        spans = sorted(covered[entry.path])
        assert spans[0][0] == 0 and spans[-1][1] == entry.size
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no gap, no overlap
    # Big files: every run reads the same share, whatever the number of files.
    assert max(per_run) - min(per_run) <= 3
    # Small files go whole, by a stable hash of their path, spread over the runs.
    small_slices = [scrub_slice_of(e.path, 8) for e in entries if e.path.startswith("small/")]
    assert set(small_slices) == set(range(8)) and max(small_slices.count(s) for s in range(8)) < 100
    assert scrub_slice_of("a/b.gguf", 8) == scrub_slice_of("a/b.gguf", 8)


def test_a_full_rotation_of_backups_scrubs_every_file(store, dest):
    scrubbed = 0
    for _ in range(4):
        report = run_backup(store, dest, scrub_runs=4)
        assert report.status == "ok", report.message
        scrubbed += report.verification.scrubbed_files
    assert scrubbed == 5


def test_backup_runs_are_recorded_in_duckdb(store, dest, tmp_path):
    db = tmp_path / "history.duckdb"
    good = run_backup(store, dest)
    refused = run_backup(store, tmp_path / "absent")
    record_backup_run(db, good, "run-good")
    record_backup_run(db, refused, "run-refused")
    with history.connect(db) as con:
        rows = con.execute(
            "SELECT run_id, status, snapshot, rsync_exit, files_transferred, verified_files, mismatched, ok "
            "FROM backup_runs ORDER BY run_id"
        ).fetchall()
    assert rows[0] == ("run-good", "ok", good.snapshot, 0, 5, 5, [], True)
    assert rows[1][:4] == ("run-refused", "failed", None, None) and rows[1][-1] is False


# -- restore ------------------------------------------------------------------


def test_restore_brings_back_a_deleted_model_byte_identical(store, dest):
    report = run_backup(store, dest)
    original = snapshot_dir(dest, report.snapshot) / DATA / "llama/model-00001.gguf"
    (store / "llama/model-00001.gguf").unlink()
    (store / "llama/config.json").unlink()

    restored = restore(dest, store, path="llama")

    assert restored.snapshot == report.snapshot
    assert restored.restored == ["llama/config.json", "llama/model-00001.gguf"]
    assert filecmp.cmp(original, store / "llama/model-00001.gguf", shallow=False)
    assert (store / "llama/model-00001.gguf").stat().st_mtime_ns == original.stat().st_mtime_ns
    assert not list(store.rglob("*.tmp"))

    whole = restore(dest, store)  # everything else is already identical: nothing is rewritten
    assert whole.restored == [] and len(whole.unchanged) == 5


def test_restore_refuses_a_bad_snapshot_copy_before_replacing_anything(store, dest):
    first = run_backup(store, dest)
    (store / "qwen/tokenizer.json").write_bytes(b"[]" * 1000)  # changed since: a good target for restore
    second = run_backup(store, dest)
    flip_bit(snapshot_dir(dest, second.snapshot) / DATA / "qwen/tokenizer.json", 10)
    (store / "qwen/tokenizer.json").write_bytes(b"local edit")

    with pytest.raises(RestoreError) as refused:
        restore(dest, store, path="qwen/tokenizer.json")
    assert "qwen/tokenizer.json" in str(refused.value) and "nothing was replaced" in str(refused.value)
    assert first.snapshot in str(refused.value)  # points at the older snapshot
    assert (store / "qwen/tokenizer.json").read_bytes() == b"local edit"

    older = restore(dest, store, path="qwen/tokenizer.json", snapshot=first.snapshot)
    assert older.restored == ["qwen/tokenizer.json"]
    assert (store / "qwen/tokenizer.json").read_bytes() == b"{}" * 1000


def test_restore_errors_are_clear(store, dest, tmp_path):
    with pytest.raises(RestoreError, match="no verified snapshots"):
        restore(dest, store)
    run_backup(store, dest)
    with pytest.raises(RestoreError, match="no snapshot named 'nope'; available"):
        restore(dest, store, snapshot="nope")
    with pytest.raises(RestoreError, match="holds no file or directory 'llama/absent.gguf'"):
        restore(dest, store, path="llama/absent.gguf")
    with pytest.raises(RestoreError, match="may not contain"):
        restore(dest, store, path="../etc")
    with pytest.raises(RestoreError, match="not inside the model store"):
        restore(dest, store, path=str(tmp_path / "elsewhere"))
