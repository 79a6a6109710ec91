"""Snapshot backups with the real rsync on real files: verification, scrub, refusal, full disk,
vanished files, retention, restore, the lock, links and files in progress."""

from __future__ import annotations

import fcntl
import filecmp
import hashlib
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from idp_ops.backup.manifest import MANIFEST_NAME, Entry, build_manifest, load_manifest
from idp_ops.backup.snapshots import (
    DATA,
    IN_PROGRESS,
    LOCK_NAME,
    SCRUB_SPLIT_BYTES,
    SNAPSHOTS,
    DestinationRefused,
    RestoreError,
    backup,
    check_destination,
    list_snapshots,
    record_backup_run,
    restore,
    scrub_ranges,
    scrub_slice_of,
)
from idp_ops.history import database as history
from idp_ops_harness.model_store import (
    EXCLUDES,
    MARKER,
    flip_bit,
    make_store,
    run_backup,
    snapshot_dir,
    verify_snapshot,
)


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
    """A real 2 MiB tmpfs: a mount point (so no marker needed) that fills up (root: CI runs as root)."""
    mount_point = tmp_path / "small-volume"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


# -- the destination ----------------------------------------------------------


def test_destination_without_marker_or_mount_is_refused_naming_both_remedies(store, tmp_path):
    bare = tmp_path / "not-mounted"
    bare.mkdir()
    with pytest.raises(DestinationRefused, match="not a mount point") as refused:
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


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root (CI runs as root)")
def test_an_rsync_failure_keeps_the_previous_snapshot_quotes_rsync_and_the_next_run_resumes(store, dest):
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


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
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


# Enough files sorted before z_gone.bin that rsync's lines for them (~220 bytes each, written by
# the sender before it sends each file) far exceed what the stdout pipe (64 KiB), run_rsync's read
# chunk (64 KiB) and rsync's own buffer can hold: while on_rsync_output runs for the first of them,
# the sender cannot get past them, so it cannot have opened z_gone.bin yet.
AHEAD_OF_THE_VANISHING_FILE = 2000


def test_a_file_vanishing_mid_run_is_the_exit_24_warning(store, dest):
    # rsync sends files in name order. z_gone.bin is in rsync's file list (the manifest has it
    # too); when rsync names the first filler, z_gone.bin is deleted: rsync cannot open it
    # afterwards, "file has vanished", exit 24. Every time: no race against the transfer.
    fillers = [f"a{i:05d}-" + "x" * 200 for i in range(AHEAD_OF_THE_VANISHING_FILE)]
    for name in fillers:
        (store / name).touch()
    (store / "z_gone.bin").write_bytes(b"here at manifest time")
    named = []

    def on_output(line: str) -> None:
        if not line.startswith(">f"):  # itemized regular files: ">f+++++++++ SIZE NAME"
            return
        named.append(line.split(" ", 2)[2])
        if named[-1] == fillers[0]:
            (store / "z_gone.bin").unlink()

    report = run_backup(store, dest, on_rsync_output=on_output)

    assert not (store / "z_gone.bin").exists() and "z_gone.bin" not in named
    assert report.rsync_exit == 24, report.message
    assert report.status == "warning" and report.ok and report.snapshot
    assert report.verification.vanished == ["z_gone.bin"]
    assert any("rsync exit 24" in w and "vanished" in w for w in report.warnings)
    snapshot_manifest = load_manifest(snapshot_dir(dest, report.snapshot) / MANIFEST_NAME)
    assert "z_gone.bin" not in snapshot_manifest.entries and set(fillers) <= set(snapshot_manifest.entries)
    assert verify_snapshot(dest, report.snapshot).ok


def test_a_file_gone_between_the_manifest_and_the_copy_is_left_out_as_vanished(store, dest):
    # Deleted after the manifest listed it and before rsync started: rsync never sees it
    # (exit 0), the verification finds it neither in the copy nor on the store.
    (store / "z_gone.bin").write_bytes(b"here at manifest time")
    manifest = build_manifest(store, cache_file=store.parent / "history.duckdb", excludes=EXCLUDES).manifest
    assert "z_gone.bin" in manifest.entries
    (store / "z_gone.bin").unlink()

    report = backup(store, dest, manifest, excludes=EXCLUDES, marker_file=MARKER)

    assert report.rsync_exit == 0
    assert report.status == "warning" and report.ok and report.snapshot
    assert report.verification.vanished == ["z_gone.bin"] and not report.verification.missing
    assert "vanished during the run: z_gone.bin" in report.message
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

    with pytest.raises(RestoreError, match="nothing was replaced") as refused:
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


# -- source rot when the hash cache is lost -------------------------------------


@pytest.mark.parametrize("scrub_runs", [1, 1000], ids=["in-the-scrub-slice", "not-scrubbed-this-run"])
def test_source_rot_after_the_hash_cache_is_lost_keeps_the_good_copy_and_fails_naming_the_file(
    store, dest, tmp_path, scrub_runs
):
    rel = "llama/model-00001.gguf"
    cache = tmp_path / "history.duckdb"
    first = run_backup(store, dest, cache_file=cache, scrub_runs=scrub_runs)
    assert first.status == "ok", first.message
    good = (store / rel).read_bytes()
    flip_bit(store / rel, 4242)  # size and mtime_ns put back
    cache.unlink()  # the hash cache is gone: the manifest re-hashes the rotten file as if it were the truth
    if scrub_runs == 1000:
        assert scrub_slice_of(rel, 1000) != 1  # the second run's slice: only the manifest comparison can see it

    second = run_backup(store, dest, cache_file=cache, scrub_runs=scrub_runs)

    assert second.status == "failed" and not second.ok and second.snapshot is not None
    assert second.verification.source_corrupt == [rel] and second.verification.repaired == []
    assert f"snapshot {first.snapshot}'s record with size and mtime unchanged" in second.verification.reasons[rel]
    assert "SOURCE CORRUPT" in second.message and rel in second.message
    snap = snapshot_dir(dest, second.snapshot)
    # The new snapshot holds the good bytes and records their hash; nothing overwrote the old copy.
    assert (snap / DATA / rel).read_bytes() == good
    assert load_manifest(snap / MANIFEST_NAME).entries[rel].sha256 == hashlib.sha256(good).hexdigest()
    assert (snapshot_dir(dest, first.snapshot) / DATA / rel).read_bytes() == good
    assert verify_snapshot(dest, second.snapshot).ok

    # The cache now holds the rotten hash: the next run still compares with the snapshot's record.
    third = run_backup(store, dest, cache_file=cache, scrub_runs=scrub_runs)
    assert third.verification.source_corrupt == [rel] and third.status == "failed"
    # And the good copy comes back with a plain restore; after it the store backs up clean.
    assert restore(dest, store, path=rel).restored == [rel]
    assert (store / rel).read_bytes() == good
    assert run_backup(store, dest, cache_file=cache, scrub_runs=scrub_runs).status == "ok"


# -- pruning ------------------------------------------------------------------


def test_nothing_is_pruned_after_a_failed_or_warning_run_and_a_clean_run_prunes_again(store, dest):
    keep = {"keep_snapshots": 1, "keep_weekly": 0, "keep_monthly": 0, "scrub_runs": 1}
    first = run_backup(store, dest, **keep)
    second = run_backup(store, dest, **keep)
    assert second.pruned == [first.snapshot] and second.retention == {second.snapshot: ["last 1"]}

    # Failed: bit rot on the store.
    flip_bit(store / "qwen/tokenizer.json", 3)
    failed = run_backup(store, dest, **keep)
    assert failed.status == "failed" and failed.pruned == []
    assert failed.prune_skipped == "this run's status is failed: every snapshot is kept"
    assert "nothing pruned" in failed.message
    restore(dest, store, path="qwen/tokenizer.json")

    # Warning: a rotten backup copy, replaced in the new snapshot.
    flip_bit(snapshot_dir(dest, failed.snapshot) / DATA / "qwen/weights.safetensors", 9)
    warning = run_backup(store, dest, **keep)
    assert warning.status == "warning" and warning.verification.repaired == ["qwen/weights.safetensors"]
    assert warning.pruned == []
    assert [s.name for s in list_snapshots(dest)] == [second.snapshot, failed.snapshot, warning.snapshot]

    clean = run_backup(store, dest, **keep)
    assert clean.status == "ok" and clean.pruned == [second.snapshot, failed.snapshot, warning.snapshot]


def test_retention_keeps_the_newest_snapshot_of_each_month_on_the_volume(store, dest):
    made = [run_backup(store, dest, keep_snapshots=10).snapshot for _ in range(4)]
    root = dest / SNAPSHOTS
    # Age three of them: two in February 2024, one in January 2024 (real snapshot directories, renamed).
    for old, new in zip(made[:3], ["20240105T030000Z", "20240210T030000Z", "20240220T030000Z"]):
        os.rename(root / old, root / new)

    report = run_backup(store, dest, keep_snapshots=1, keep_weekly=0, keep_monthly=12)

    assert report.status == "ok", report.message
    assert report.pruned == ["20240210T030000Z", made[3]]  # each is older than its month's newest
    assert report.retention == {
        report.snapshot: ["last 1", f"monthly {report.snapshot[:4]}-{report.snapshot[4:6]}"],
        "20240220T030000Z": ["monthly 2024-02"],
        "20240105T030000Z": ["monthly 2024-01"],
    }
    assert [s.name for s in list_snapshots(dest)] == ["20240105T030000Z", "20240220T030000Z", report.snapshot]
    assert all(verify_snapshot(dest, name).ok for name in ("20240105T030000Z", "20240220T030000Z"))


# -- the lock -----------------------------------------------------------------


def test_a_restore_holds_the_lock_so_a_backup_cannot_prune_the_snapshot_it_reads(store, dest):
    first = run_backup(store, dest)
    (store / "llama/config.json").write_bytes(b'{"a": 3}')
    run_backup(store, dest)
    reading, release = threading.Event(), threading.Event()
    outcome: dict = {}

    def log(line: str) -> None:
        if line.startswith("checking"):  # the restore holds the lock and is reading the snapshot
            reading.set()
            release.wait(120)

    def restore_old() -> None:
        try:
            outcome["report"] = restore(dest, store, snapshot=first.snapshot, path="llama/config.json", log=log)
        except Exception as exc:  # surfaced below
            outcome["error"] = exc

    worker = threading.Thread(target=restore_old)
    worker.start()
    try:
        assert reading.wait(120)
        # keep 1 would prune the snapshot being restored.
        blocked = run_backup(store, dest, keep_snapshots=1, keep_weekly=0, keep_monthly=0)
    finally:
        release.set()
        worker.join(120)

    assert blocked.status == "failed" and blocked.snapshot is None
    assert "a restore is reading from" in blocked.message
    assert first.snapshot in [s.name for s in list_snapshots(dest)]
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].restored == ["llama/config.json"]
    assert (store / "llama/config.json").read_bytes() == b'{"a": 1}'


def test_a_restore_while_a_backup_runs_is_refused_clearly(store, dest):
    run_backup(store, dest)
    (store / "extra.bin").write_bytes(b"new file: rsync has something to say")
    copying, release = threading.Event(), threading.Event()

    def on_output(_: str) -> None:
        copying.set()
        release.wait(120)

    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(report=run_backup(store, dest, on_rsync_output=on_output)))
    worker.start()
    try:
        assert copying.wait(120)
        with pytest.raises(RestoreError, match="a backup is using .* restore when it has finished"):
            restore(dest, store, path="llama")
    finally:
        release.set()
        worker.join(120)
    assert outcome["report"].status == "ok", outcome["report"].message


# -- files in progress, symlinks ----------------------------------------------


def test_downloads_in_progress_are_neither_in_the_manifest_nor_copied(store, dest):
    (store / "llama" / ".model-00002.gguf.part").write_bytes(os.urandom(50_000))  # models/downloads.py's partial
    (store / "qwen" / "blob.incomplete").write_bytes(b"huggingface_hub's partial")
    manifest = build_manifest(store, excludes=[]).manifest  # nothing configured: excluded all the same

    report = backup(store, dest, manifest, marker_file=MARKER, excludes=[])

    assert report.status == "ok", report.message
    assert report.files_total == 5 and report.verification.count_ok
    data = snapshot_dir(dest, report.snapshot) / DATA
    assert not (data / "llama" / ".model-00002.gguf.part").exists() and not (data / "qwen" / "blob.incomplete").exists()


def test_symlinks_are_kept_as_links_verified_and_restored_as_links(store, dest):
    (store / "llama" / "latest.gguf").symlink_to("model-00001.gguf")
    (store / "current").symlink_to("qwen")  # a link to a directory inside the store
    (store / "dangling").symlink_to("gone.gguf")  # points at nothing: kept as exactly that

    report = run_backup(store, dest)

    assert report.status == "ok", report.message
    assert report.links == 3 and report.verification.files_in_snapshot == 5
    data = snapshot_dir(dest, report.snapshot) / DATA
    assert os.readlink(data / "llama/latest.gguf") == "model-00001.gguf" and os.readlink(data / "current") == "qwen"
    assert load_manifest(snapshot_dir(dest, report.snapshot) / MANIFEST_NAME).links == {
        "current": "qwen",
        "dangling": "gone.gguf",
        "llama/latest.gguf": "model-00001.gguf",
    }
    assert verify_snapshot(dest, report.snapshot).ok

    (store / "llama/latest.gguf").unlink()
    (store / "current").unlink()
    (store / "current").write_text("a file where the link was")
    restored = restore(dest, store)
    assert restored.links_restored == ["current", "llama/latest.gguf"] and restored.restored == []
    assert os.readlink(store / "current") == "qwen" and os.readlink(store / "llama/latest.gguf") == "model-00001.gguf"
    assert "dangling" in restored.unchanged

    # A link changed in the snapshot is caught before anything is replaced.
    os.unlink(data / "current")
    os.symlink("/etc", data / "current")
    os.unlink(store / "current")
    with pytest.raises(RestoreError, match="nothing was replaced") as refused:
        restore(dest, store, path="current")
    assert "MISMATCH current: symlink points to '/etc', manifest says 'qwen'" in str(refused.value)
    assert not os.path.lexists(store / "current")


def test_restore_never_writes_through_a_symlink_that_leads_out_of_the_store(store, dest, tmp_path):
    run_backup(store, dest)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(store / "llama")
    (store / "llama").symlink_to(outside)  # where the snapshot has a directory

    with pytest.raises(RestoreError, match="a symlink in its path leads to .*outside the store; nothing was replaced"):
        restore(dest, store, path="llama")
    assert list(outside.iterdir()) == []


# -- which snapshot a restore uses ----------------------------------------------


def test_restore_without_a_name_passes_over_an_empty_snapshot_and_says_which_it_used(store, dest, tmp_path):
    good = run_backup(store, dest)
    unmounted = tmp_path / "mnt-models"
    unmounted.mkdir()
    # Made before the guard existed, or allowed by a person: an empty snapshot at the top.
    empty = backup(unmounted, dest, build_manifest(unmounted).manifest, marker_file=MARKER, allow_shrink=True)
    assert empty.snapshot and empty.status == "warning" and empty.pruned == []
    (store / "llama/config.json").unlink()

    report = restore(dest, store, path="llama/config.json")

    assert report.snapshot == good.snapshot and report.restored == ["llama/config.json"]
    assert report.skipped == {empty.snapshot: "it holds no files (made while the store was empty or unmounted?)"}
    assert report.chosen_because == "the latest snapshot that holds 'llama/config.json' (newer ones passed over)"
    named = restore(dest, store, snapshot=good.snapshot, path="llama")
    assert named.chosen_because == "named with --snapshot" and named.skipped == {}
