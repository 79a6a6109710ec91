"""Manifests on real files: the DuckDB hash cache, SHA256SUMS through the real sha256sum, verify."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from idp_ops.backup.manifest import (
    ExcludeRules,
    ManifestError,
    build_manifest,
    hash_files,
    load_manifest,
    scan,
    verify,
    write_manifest,
)
from idp_ops.history import database as history
from idp_ops_harness.model_store import flip_bit, make_store

EXCLUDES = ["*.tmp", "cache/"]


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path / "models")


def test_scan_lists_regular_files_and_applies_rsync_style_excludes(store):
    (store / "llama" / "download.gguf.tmp").write_bytes(b"partial")
    (store / "qwen" / "cache").mkdir()
    (store / "qwen" / "cache" / "blob").write_bytes(b"x")
    (store / "cache.txt").write_bytes(b"a file named like the dir pattern is kept")
    (store / "llama" / "latest.gguf").symlink_to("model-00001.gguf")
    (store / "manifest.json").write_text("{}")  # the manifest's own output is never listed
    (store / "nested").mkdir()
    (store / "nested" / "SHA256SUMS").write_text("kept: only the top-level one is ours")

    paths = [f.path for f in scan(store, EXCLUDES)]

    assert paths == [
        "cache.txt",
        "empty.bin",
        "llama/config.json",
        "llama/model-00001.gguf",
        "nested/SHA256SUMS",
        "qwen/tokenizer.json",
        "qwen/weights.safetensors",
    ]


def test_exclude_rules_follow_rsync_semantics():
    rules = ExcludeRules(["*.tmp", "cache/", "/top-only.bin", "hf/**/blobs", "b?d[0-9].gguf"])
    assert rules.excluded("a/b/x.tmp", is_dir=False)
    assert rules.excluded("a/cache", is_dir=True)
    assert not rules.excluded("a/cache", is_dir=False)  # 'cache/' matches directories only
    assert rules.excluded("top-only.bin", is_dir=False)
    assert not rules.excluded("sub/top-only.bin", is_dir=False)  # anchored at the root
    assert rules.excluded("x/hf/org/repo/blobs", is_dir=True)
    assert rules.excluded("m/bad7.gguf", is_dir=False)
    assert not rules.excluded("m/bad77.gguf", is_dir=False)


def test_second_pass_over_unchanged_tree_hashes_nothing_and_touching_one_file_rehashes_one(store, tmp_path):
    cache = tmp_path / "history.duckdb"
    first = build_manifest(store, cache_file=cache, excludes=EXCLUDES)
    assert first.stats.hashed_files == 5 and first.stats.reused_files == 0

    second = build_manifest(store, cache_file=cache, excludes=EXCLUDES)
    assert second.stats.hashed_files == 0
    assert second.stats.reused_files == 5
    assert second.manifest.entries == first.manifest.entries

    os.utime(store / "qwen" / "tokenizer.json")  # touch: content the same, mtime new
    third = build_manifest(store, cache_file=cache, excludes=EXCLUDES)
    assert third.stats.hashed_files == 1 and third.stats.hashed_bytes == 2000
    assert third.stats.reused_files == 4


def test_a_replaced_file_with_the_same_size_and_mtime_is_rehashed_because_its_inode_changed(store, tmp_path):
    cache = tmp_path / "history.duckdb"
    build_manifest(store, cache_file=cache)
    target = store / "qwen" / "weights.safetensors"
    st = target.stat()
    replacement = target.with_name("new")
    replacement.write_bytes(os.urandom(st.st_size))
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, target)

    again = build_manifest(store, cache_file=cache)

    assert again.stats.hashed_files == 1
    import hashlib

    assert again.manifest.entries["qwen/weights.safetensors"].sha256 == hashlib.sha256(target.read_bytes()).hexdigest()


def test_cache_rows_of_deleted_files_are_dropped(store, tmp_path):
    cache = tmp_path / "history.duckdb"
    build_manifest(store, cache_file=cache)
    (store / "empty.bin").unlink()
    build_manifest(store, cache_file=cache)
    with history.connect(cache) as con:
        paths = {row[0] for row in con.execute("SELECT path FROM manifest_cache").fetchall()}
    assert str(store / "empty.bin") not in paths
    assert str(store / "llama" / "config.json") in paths


def test_manifest_files_are_accepted_by_the_real_sha256sum(store, tmp_path):
    # Names coreutils must escape, and one with spaces.
    (store / "odd name with spaces.gguf").write_bytes(b"spaces")
    (store / "back\\slash").write_bytes(b"backslash")
    (store / "new\nline").write_bytes(b"newline")
    out = tmp_path / "out"
    built = build_manifest(store)
    json_file, sums = write_manifest(built.manifest, out)

    check = subprocess.run(["sha256sum", "--check", "--strict", str(sums)], cwd=store, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 8

    data = json.loads(json_file.read_text())
    assert data["total_files"] == 8
    assert load_manifest(json_file).entries == built.manifest.entries

    flip_bit(store / "llama" / "model-00001.gguf", 1234)
    check = subprocess.run(["sha256sum", "--check", "--quiet", str(sums)], cwd=store, capture_output=True, text=True)
    assert check.returncode == 1
    assert "llama/model-00001.gguf: FAILED" in check.stdout


def test_verify_names_a_single_flipped_bit_and_a_missing_file_without_trusting_any_cache(store, tmp_path):
    cache = tmp_path / "history.duckdb"
    json_file, _ = write_manifest(build_manifest(store, cache_file=cache).manifest, tmp_path / "m")
    copy = tmp_path / "copy"
    shutil.copytree(store, copy, copy_function=shutil.copy2)
    assert verify(copy, json_file).as_dict() == {"ok": True, "checked": 5, "mismatched": [], "missing": []}

    flip_bit(copy / "qwen" / "weights.safetensors", 77_777)
    (copy / "llama" / "config.json").unlink()
    result = verify(copy, json_file)

    assert result.as_dict() == {
        "ok": False,
        "checked": 5,
        "mismatched": ["qwen/weights.safetensors"],
        "missing": ["llama/config.json"],
    }
    assert "sha256" in result.reasons["qwen/weights.safetensors"]


def test_verify_reports_a_truncated_file_by_size(store, tmp_path):
    json_file, _ = write_manifest(build_manifest(store).manifest, tmp_path / "m")
    with open(store / "llama" / "model-00001.gguf", "r+b") as handle:
        handle.truncate(1000)
    result = verify(store, json_file)
    assert result.mismatched == ["llama/model-00001.gguf"]
    assert "size 1000" in result.reasons["llama/model-00001.gguf"]


def test_progress_is_reported_during_a_pass_and_finished_hashes_reach_the_cache_in_batches(store):
    seen, batches = [], []
    files = [(f.path, f.size) for f in scan(store)]
    outcome = hash_files(
        store,
        files,
        workers=2,
        progress=seen.append,
        progress_interval_s=0.0,
        on_batch=lambda b: batches.append(sorted(b)),
        batch_interval_s=0.0,
    )
    assert len(outcome.hashes) == 5
    assert seen and seen[-1].files_done == 5 and seen[-1].bytes_done == sum(size for _, size in files)
    assert "hashed 5/5 files" in seen[-1].describe()
    assert sorted(p for batch in batches for p in batch) == sorted(p for p, _ in files)


def test_missing_root_and_unsafe_manifests_are_clear_errors(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        build_manifest(tmp_path / "nope")
    evil = tmp_path / "evil.json"
    evil.write_text(
        json.dumps(
            {
                "format": "idp-ops-manifest/1",
                "files": [{"path": "../../etc/passwd", "size": 1, "mtime_ns": 1, "sha256": "0" * 64}],
            }
        )
    )
    with pytest.raises(ManifestError, match="unsafe"):
        load_manifest(evil)
    not_ours = tmp_path / "other.json"
    not_ours.write_text("[1, 2]")
    with pytest.raises(ManifestError, match="not an idp-ops manifest"):
        load_manifest(not_ours)


def _cli(*args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    prefix = ["--config", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "idp_ops.cli", *prefix, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_manifest_then_verify_catches_one_flipped_bit_and_names_the_file(store, tmp_path):
    from idp_ops_harness.settings_files import write_settings

    config = write_settings(tmp_path / "idp.yaml", home=tmp_path / "home", models_dir=store)
    made = _cli("manifest", str(store), "--json", config=config)
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    assert info["files"] == 5 and info["hashed_files"] == 5
    again = json.loads(_cli("manifest", str(store), "--json", config=config).stdout)
    assert again["hashed_files"] == 0 and again["reused_files"] == 5

    flip_bit(store / "llama" / "model-00001.gguf", 4096)
    (store / "qwen" / "tokenizer.json").unlink()
    checked = _cli("verify", str(store), "--manifest", info["manifest"], "--json")
    assert checked.returncode == 1
    assert json.loads(checked.stdout) == {
        "ok": False,
        "checked": 5,
        "mismatched": ["llama/model-00001.gguf"],
        "missing": ["qwen/tokenizer.json"],
    }
    human = _cli("verify", str(store), "--manifest", info["manifest"])
    assert human.returncode == 1
    assert "MISMATCH llama/model-00001.gguf" in human.stdout
    assert "MISSING  qwen/tokenizer.json" in human.stdout

    no_manifest = _cli("verify", str(store), "--manifest", str(tmp_path / "absent.json"))
    assert no_manifest.returncode == 2
    assert "does not exist" in no_manifest.stderr and "Traceback" not in no_manifest.stderr


def test_files_in_progress_are_never_listed_whatever_the_excludes(store, tmp_path):
    # models/downloads.py's partial, huggingface_hub's, an atomic write's temp: none is part of the store.
    (store / "llama" / ".model-00002.gguf.part").write_bytes(b"half a download")
    (store / "qwen" / "blob.incomplete").write_bytes(b"half a hub download")
    (store / "qwen" / ".weights.safetensors.1234.tmp").write_bytes(b"half a write")
    (store / ".rsync-partial").mkdir()
    (store / ".rsync-partial" / "x.gguf").write_bytes(b"rsync's partial")
    (store / "llama" / "notes.partial.txt").write_bytes(b"a real file whose name merely contains part")

    built = build_manifest(store, excludes=[])  # no configured excludes at all

    assert sorted(built.manifest.entries) == [
        "empty.bin",
        "llama/config.json",
        "llama/model-00001.gguf",
        "llama/notes.partial.txt",
        "qwen/tokenizer.json",
        "qwen/weights.safetensors",
    ]


def test_symlinks_are_listed_as_links_with_their_target_and_verify_checks_them(store, tmp_path):
    (store / "llama" / "latest.gguf").symlink_to("model-00001.gguf")
    (store / "current").symlink_to("qwen")  # a link to a directory: listed, not followed
    built = build_manifest(store)
    assert built.manifest.links == {"current": "qwen", "llama/latest.gguf": "model-00001.gguf"}
    assert "current/tokenizer.json" not in built.manifest.entries and len(built.manifest.entries) == 5
    json_file, sums = write_manifest(built.manifest, tmp_path / "m")
    assert load_manifest(json_file).links == built.manifest.links
    assert "latest.gguf" not in sums.read_text()  # sha256sum -c checks files only

    copy = tmp_path / "copy"
    shutil.copytree(store, copy, symlinks=True)
    assert verify(copy, json_file).as_dict() == {"ok": True, "checked": 7, "mismatched": [], "missing": []}

    (copy / "current").unlink()
    (copy / "llama" / "latest.gguf").unlink()
    (copy / "llama" / "latest.gguf").symlink_to("elsewhere.gguf")
    result = verify(copy, json_file)
    assert result.missing == ["current"] and result.mismatched == ["llama/latest.gguf"]
    assert result.reasons["llama/latest.gguf"] == "symlink points to 'elsewhere.gguf', manifest says 'model-00001.gguf'"


def test_a_manifest_link_that_could_escape_the_root_is_refused(tmp_path):
    evil = tmp_path / "evil.json"
    evil.write_text(
        json.dumps({"format": "idp-ops-manifest/1", "files": [], "links": [{"path": "../outside", "target": "x"}]})
    )
    with pytest.raises(ManifestError, match="unsafe or malformed link '../outside'"):
        load_manifest(evil)


def test_an_empty_store_keeps_its_hash_cache_for_when_the_disk_comes_back(store, tmp_path):
    cache = tmp_path / "history.duckdb"
    build_manifest(store, cache_file=cache)
    moved = tmp_path / "unmounted"
    store.rename(moved)
    store.mkdir()  # the mount point of a disk that is not mounted: empty

    assert build_manifest(store, cache_file=cache).manifest.entries == {}

    store.rmdir()
    moved.rename(store)  # mounted again: same files, same inodes
    again = build_manifest(store, cache_file=cache)
    assert again.stats.hashed_files == 0 and again.stats.reused_files == 5
