"""A store that shrank is not a new truth: the guard against the latest snapshot's own manifest,
on real files, real rsync, a real tmpfs mount point and the real `idp-ops backup` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from idp_ops.backup.guard import check_shrink, links_leaving, source_rot
from idp_ops.backup.manifest import Entry, Manifest, build_manifest
from idp_ops.backup.snapshots import SNAPSHOTS, list_snapshots
from idp_ops_harness.model_store import MARKER, make_store, run_backup, verify_snapshot
from idp_ops_harness.settings_files import write_settings


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path / "models")


@pytest.fixture
def dest(tmp_path) -> Path:
    volume = tmp_path / "backup"
    volume.mkdir()
    (volume / MARKER).touch()
    return volume


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: equal before and after means nothing was written."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def manifest(*entries: tuple[str, int, str]) -> Manifest:
    return Manifest(Path("/mnt/models"), {}, "now").with_entries(
        Entry(path, size, 1, sha * 64) for path, size, sha in entries
    )


# -- the comparison, pure ---------------------------------------------------------------------------


def test_shrink_counts_files_whose_content_is_gone_not_files_that_moved():
    before = manifest(("a.gguf", 600, "a"), ("b.gguf", 300, "b"), ("c.json", 100, "c"))
    renamed = manifest(("models/a.gguf", 600, "a"), ("b.gguf", 300, "b"), ("c.json", 100, "c"))
    assert not check_shrink(before, renamed, previous_name="S").refused

    lost_one = manifest(("a.gguf", 600, "a"), ("c.json", 100, "c"))
    check = check_shrink(before, lost_one, previous_name="S", max_files_fraction=0.5, max_bytes_fraction=0.5)
    assert (check.files_lost, check.bytes_lost, check.lost) == (1, 300, ["b.gguf"]) and not check.refused
    strict = check_shrink(before, lost_one, previous_name="S", max_files_fraction=0.5, max_bytes_fraction=0.25)
    assert strict.refused and "lost 1 of the 3 files (33%)" in strict.reason and "(30%)" in strict.reason
    assert "gone: b.gguf" in strict.reason and "max_shrink_bytes_fraction=0.25" in strict.reason

    # A file truncated in place loses bytes without losing its path.
    truncated = manifest(("a.gguf", 0, "d"), ("b.gguf", 300, "b"), ("c.json", 100, "c"))
    cut = check_shrink(before, truncated, previous_name="S")
    assert cut.files_lost == 0 and cut.bytes_lost == 600 and cut.refused

    empty = check_shrink(before, manifest(), previous_name="S")
    assert empty.refused and "holds no files" in empty.reason and "is the models disk mounted" in empty.reason
    assert check_shrink(None, manifest(), previous_name=None).refused  # even the very first run
    assert not check_shrink(None, renamed).refused


def test_same_size_and_mtime_with_another_hash_is_rot_not_a_change():
    before = manifest(("a.gguf", 600, "a"), ("b.gguf", 300, "b"))
    after = Manifest(Path("/mnt/models"), {}, "now").with_entries(
        [Entry("a.gguf", 600, 1, "f" * 64), Entry("b.gguf", 300, 2, "e" * 64)]  # b's mtime moved: a change
    )
    assert source_rot(before, after) == {"a.gguf": before.entries["a.gguf"]}
    assert source_rot(None, after) == {}


# -- refused runs write nothing and keep every snapshot ------------------------------------------------


def test_an_emptied_store_is_refused_nothing_is_written_and_every_snapshot_is_kept(store, dest):
    names = [run_backup(store, dest, keep_snapshots=1, keep_weekly=0, keep_monthly=0).snapshot for _ in range(2)]
    before = tree(dest)
    for child in store.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()

    for _ in range(3):  # weeks of an unmounted disk
        report = run_backup(store, dest, keep_snapshots=1, keep_weekly=0, keep_monthly=0)
        assert report.status == "failed" and report.refused and report.snapshot is None and report.pruned == []
        assert report.rsync_exit is None
        assert "refusing to back up: the model store" in report.message and "holds no files" in report.message
        assert "is the models disk mounted" in report.message and "--allow-shrink" in report.message

    assert tree(dest) == before
    assert [s.name for s in list_snapshots(dest)] == names[1:]
    assert verify_snapshot(dest, names[1]).ok


def test_losing_more_than_the_share_is_refused_unless_allowed_and_an_allowed_run_prunes_nothing(store, dest):
    first = run_backup(store, dest)
    (store / "llama" / "model-00001.gguf").unlink()  # 1 of 5 files, 67% of the bytes
    before = tree(dest)

    refused = run_backup(store, dest)
    assert refused.refused and refused.status == "failed"
    assert refused.shrink["files_lost"] == 1 and refused.shrink["lost"] == ["llama/model-00001.gguf"]
    assert refused.shrink["bytes_lost_fraction"] > 0.6 and refused.shrink["previous"] == first.snapshot
    assert "gone: llama/model-00001.gguf" in refused.message
    assert tree(dest) == before

    # A person removed it on purpose: allowed for one run, reported, and nothing pruned after it.
    allowed = run_backup(store, dest, allow_shrink=True, keep_snapshots=1, keep_weekly=0, keep_monthly=0)
    assert allowed.status == "warning" and allowed.ok and allowed.snapshot and not allowed.refused
    assert any("allowed for this run" in w for w in allowed.warnings) and allowed.pruned == []
    assert [s.name for s in list_snapshots(dest)] == [first.snapshot, allowed.snapshot]
    # The next run compares with the allowed snapshot: nothing lost since, a clean run that prunes.
    clean = run_backup(store, dest, keep_snapshots=1, keep_weekly=0, keep_monthly=0)
    assert clean.status == "ok" and clean.pruned == [first.snapshot, allowed.snapshot]


def test_a_symlink_leading_out_of_the_store_is_refused_with_a_clear_error(store, dest, tmp_path):
    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    (elsewhere / "big.gguf").write_bytes(b"content that a link would not back up")
    (store / "big.gguf").symlink_to(elsewhere / "big.gguf")
    (store / "escape").symlink_to("../other-disk")
    (store / "llama" / "latest.gguf").symlink_to("model-00001.gguf")  # inside: fine
    assert links_leaving(store, build_manifest(store).manifest.links) == [
        f"big.gguf -> {elsewhere / 'big.gguf'}",
        "escape -> ../other-disk",
    ]

    report = run_backup(store, dest)

    assert report.refused and report.status == "failed" and report.snapshot is None
    assert "2 symlink(s)" in report.message and "only the link would be kept" in report.message
    assert "big.gguf ->" in report.message and "escape -> ../other-disk" in report.message
    assert tree(dest) == {MARKER: ((dest / MARKER).stat().st_size, (dest / MARKER).stat().st_mtime_ns)}


# -- the real command on a real unmounted disk ------------------------------------------------------


def cli(*args: str, config: Path) -> subprocess.CompletedProcess:
    # Hermetic: no IDP_* or DAGSTER_HOME from the caller's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_") and k != "DAGSTER_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "idp_ops.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_idp_ops_backup_on_an_unmounted_models_disk_exits_1_and_keeps_every_snapshot(tmp_path, dest):
    models = tmp_path / "mnt-models"
    models.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(models)], check=True)
    mounted = True
    try:
        make_store(models)
        config = write_settings(
            tmp_path / "idp-ops.yaml",
            home=tmp_path / "home",
            models_dir=models,
            backups_dir=dest,
            backup={"keep_snapshots": 1, "keep_weekly": 0, "keep_monthly": 0},
        )
        made = []
        for _ in range(2):
            ran = cli("backup", "--json", config=config)
            assert ran.returncode == 0, ran.stderr
            made.append(json.loads(ran.stdout)["snapshot"])
        assert [s.name for s in list_snapshots(dest)] == made[1:]  # keep 1: the first was pruned
        subprocess.run(["umount", str(models)], check=True)
        mounted = False
        assert list(models.iterdir()) == []  # the mount point, as an unmounted disk leaves it
        before = tree(dest)

        for _ in range(3):
            refused = cli("backup", "--json", config=config)
            assert refused.returncode == 1, refused.stderr
            data = json.loads(refused.stdout)
            assert data["refused"] is True and data["snapshot"] is None and data["pruned"] == []
            assert "holds no files" in data["message"] and "is the models disk mounted" in data["message"]
            human = cli("backup", config=config)
            assert human.returncode == 1 and human.stdout.startswith("backup REFUSED")

        assert tree(dest) == before
        assert [s.name for s in list_snapshots(dest)] == made[1:]

        # A restore with no --snapshot uses the last real snapshot and says so.
        restored = cli("restore", "--json", config=config)
        assert restored.returncode == 0, restored.stderr
        out = json.loads(restored.stdout)
        assert out["snapshot"] == made[1] and out["chosen_because"] == "the latest snapshot"
        assert len(out["restored"]) == 5 and (models / "llama" / "config.json").read_bytes() == b'{"a": 1}'
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(models)], check=False)
    assert (dest / SNAPSHOTS / made[1]).is_dir()


def test_idp_ops_backup_allow_shrink_backs_up_an_emptied_store_once(tmp_path, dest, store):
    config = write_settings(tmp_path / "idp-ops.yaml", home=tmp_path / "home", models_dir=store, backups_dir=dest)
    assert cli("backup", config=config).returncode == 0
    shutil.rmtree(store)
    store.mkdir()
    assert cli("backup", config=config).returncode == 1
    allowed = cli("backup", "--allow-shrink", "--json", config=config)
    assert allowed.returncode == 0, allowed.stderr
    data = json.loads(allowed.stdout)
    assert data["status"] == "warning" and data["files_total"] == 0 and data["pruned"] == []
    assert data["prune_skipped"] == "this run's status is warning: every snapshot is kept"
    assert len(list_snapshots(dest)) == 2
