"""Model downloads against a real HTTP server in the test: Range, drops, stalls, bad hashes."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import stat
import subprocess
from dataclasses import dataclass

import pytest

from idp_ops.models.downloads import download_model, download_models, partial_path
from idp_ops.settings import ModelDownload

MB = 1 << 20


def spec_for(
    server, body: bytes, *, name="tiny", target="tiny/model.gguf", path="/model.gguf", sha256=None
) -> ModelDownload:
    server.state.files[path] = body
    return ModelDownload(
        name=name, url=server.base + path, sha256=sha256 or hashlib.sha256(body).hexdigest(), target=target
    )


FAST = {"backoff_s": 0.0, "progress_interval_s": 0.0, "timeout_s": 5.0}


def test_dropped_connection_resumes_with_range_and_the_file_is_byte_identical(server, tmp_path):
    body = os.urandom(3 * MB + 123)
    spec = spec_for(server, body)
    server.state.drop_after["/model.gguf"] = MB
    updates, lines = [], []
    result = download_model(spec, tmp_path, progress=updates.append, log=lines.append, chunk_size=64 * 1024, **FAST)

    assert result.status == "downloaded", result.message
    target = tmp_path / "tiny" / "model.gguf"
    assert target.read_bytes() == body
    assert result.sha256 == spec.sha256 and result.size == len(body) and result.attempts == 2
    assert len(server.state.requests) == 2
    assert "Range" not in server.state.requests[0][1]
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", server.state.requests[1][1]["Range"]).group(1))
    assert 0 < resumed_at <= MB
    assert result.bytes_downloaded == len(body), "each byte fetched once"
    assert not partial_path(target).exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    # Progress: bytes, total and percent, ending at 100 %.
    assert updates[-1].done == len(body) and updates[-1].percent == pytest.approx(100.0)
    assert all(u.total == len(body) for u in updates if u.done > resumed_at)
    assert "%" in updates[-1].describe() and "/s" in updates[-1].describe()
    assert any("resuming at byte" in line for line in lines)


def test_a_partial_from_an_earlier_run_is_hashed_then_resumed(server, tmp_path):
    body = os.urandom(2 * MB)
    spec = spec_for(server, body)
    part = partial_path(tmp_path / spec.target)
    part.parent.mkdir(parents=True)
    part.write_bytes(body[: MB + 7])
    result = download_model(spec, tmp_path, **FAST)
    assert result.status == "downloaded", result.message
    assert result.resumed_from == MB + 7 and result.bytes_downloaded == len(body) - MB - 7
    assert server.state.requests[0][1]["Range"] == f"bytes={MB + 7}-"
    assert (tmp_path / spec.target).read_bytes() == body


def test_sha256_mismatch_keeps_nothing_and_names_both_hashes(server, tmp_path):
    body = os.urandom(MB)
    wrong = hashlib.sha256(b"something else").hexdigest()
    spec = spec_for(server, body, sha256=wrong)
    result = download_model(spec, tmp_path, **FAST)
    assert result.status == "failed"
    assert f"expected {wrong}" in result.message and f"got {hashlib.sha256(body).hexdigest()}" in result.message
    assert "deleted" in result.message
    target = tmp_path / spec.target
    assert not target.exists() and not partial_path(target).exists()
    assert list(target.parent.iterdir()) == []


def test_a_corrupt_partial_is_caught_by_the_hash_and_removed(server, tmp_path):
    body = os.urandom(MB)
    spec = spec_for(server, body)
    part = partial_path(tmp_path / spec.target)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # not the first 1000 bytes of the model
    result = download_model(spec, tmp_path, **FAST)
    assert result.status == "failed" and "resumed from an earlier partial" in result.message
    assert not part.exists() and not (tmp_path / spec.target).exists()
    # The next run starts clean and succeeds.
    assert download_model(spec, tmp_path, **FAST).status == "downloaded"


def test_present_and_correct_file_is_skipped_without_any_request(server, tmp_path):
    body = os.urandom(MB)
    spec = spec_for(server, body)
    target = tmp_path / spec.target
    target.parent.mkdir(parents=True)
    target.write_bytes(body)
    result = download_model(spec, tmp_path, **FAST)
    assert result.status == "skipped" and "sha256 verified" in result.message
    assert server.state.requests == []


def test_present_file_with_the_wrong_hash_is_reported_and_left_untouched(server, tmp_path):
    spec = spec_for(server, os.urandom(MB))
    target = tmp_path / spec.target
    target.parent.mkdir(parents=True)
    target.write_bytes(b"the operator's own file")
    before = target.stat()
    result = download_model(spec, tmp_path, **FAST)
    assert result.status == "failed"
    assert "left untouched" in result.message and f"expected {spec.sha256}" in result.message
    assert target.read_bytes() == b"the operator's own file" and target.stat().st_mtime_ns == before.st_mtime_ns
    assert server.state.requests == [] and not partial_path(target).exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    body = os.urandom(MB)
    spec = spec_for(server, body)
    server.state.ignore_range = True
    part = partial_path(tmp_path / spec.target)
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:5000])
    result = download_model(spec, tmp_path, **FAST)
    assert result.status == "downloaded" and (tmp_path / spec.target).read_bytes() == body


def test_complete_partial_answered_416_is_verified_and_renamed(server, tmp_path):
    body = os.urandom(MB)
    spec = spec_for(server, body)
    part = partial_path(tmp_path / spec.target)
    part.parent.mkdir(parents=True)
    part.write_bytes(body)  # an earlier run died between the last byte and the rename
    result = download_model(spec, tmp_path, **FAST)
    assert result.status == "downloaded" and result.bytes_downloaded == 0
    assert (tmp_path / spec.target).read_bytes() == body and not part.exists()


def test_stalled_transfer_times_out_and_resumes(server, tmp_path):
    body = os.urandom(2 * MB)
    spec = spec_for(server, body)
    server.state.stall_after["/model.gguf"] = MB // 2
    # 64 KiB chunks: every chunk received before the stall is written to the partial (with 1 MiB
    # chunks the half-filled chunk is lost at the timeout and the retry starts from byte 0).
    result = download_model(spec, tmp_path, chunk_size=64 * 1024, **{**FAST, "timeout_s": 0.5})
    assert result.status == "downloaded", result.message
    # The stall cost at least one more attempt (how many more depends on this machine's timing);
    # every later one resumed where the partial ended, and the file completed and verified.
    assert result.attempts >= 2 and len(server.state.requests) == result.attempts
    assert "Range" not in server.state.requests[0][1]
    resumed = [int(re.fullmatch(r"bytes=(\d+)-", h["Range"]).group(1)) for _, h in server.state.requests[1:]]
    assert 0 < resumed[0] <= MB // 2 and resumed == sorted(resumed), resumed
    assert result.sha256 == spec.sha256 == hashlib.sha256((tmp_path / spec.target).read_bytes()).hexdigest()
    assert (tmp_path / spec.target).read_bytes() == body and not partial_path(tmp_path / spec.target).exists()


def test_redirects_are_followed(server, tmp_path):
    body = os.urandom(1000)
    spec = spec_for(server, body, path="/cdn/blob")
    server.state.redirects["/org/repo/resolve/main/model.gguf"] = "/cdn/blob"
    spec = ModelDownload(
        name="hf-like", url=server.base + "/org/repo/resolve/main/model.gguf", sha256=spec.sha256, target="m.gguf"
    )
    assert download_model(spec, tmp_path, **FAST).status == "downloaded"


def test_404_fails_at_once_and_503_gives_up_after_bounded_attempts(server, tmp_path):
    missing = ModelDownload(name="gone", url=server.base + "/nope", sha256="0" * 64, target="gone.gguf")
    result = download_model(missing, tmp_path, **FAST)
    assert result.status == "failed" and result.attempts == 1 and "HTTP 404" in result.message
    assert not partial_path(tmp_path / "gone.gguf").exists()

    server.state.status["/busy"] = 503
    busy = ModelDownload(name="busy", url=server.base + "/busy", sha256="0" * 64, target="busy.gguf")
    result = download_model(busy, tmp_path, max_attempts=3, **FAST)
    assert result.status == "failed" and result.attempts == 3
    assert "gave up after 3 attempts (HTTP 503" in result.message


def test_unreachable_server_fails_cleanly(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    spec = ModelDownload(name="down", url=f"http://127.0.0.1:{port}/m", sha256="0" * 64, target="m.gguf")
    result = download_model(spec, tmp_path, max_attempts=2, **FAST)
    assert result.status == "failed" and "ConnectError" in result.message and result.attempts == 2
    assert list(tmp_path.iterdir()) == [], "no empty partial left behind"


def test_a_second_concurrent_download_of_the_same_file_refuses(server, tmp_path):
    spec = spec_for(server, os.urandom(1000))
    part = partial_path(tmp_path / spec.target)
    part.parent.mkdir(parents=True)
    with part.open("ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        result = download_model(spec, tmp_path, **FAST)
    assert result.status == "failed" and "in progress" in result.message
    assert server.state.requests == []


def test_download_models_reports_each_and_one_failure_does_not_stop_the_rest(server, tmp_path):
    good = spec_for(server, os.urandom(1000), name="good", target="good.gguf", path="/good")
    bad = spec_for(server, os.urandom(1000), name="bad", target="bad.gguf", path="/bad", sha256="f" * 64)
    results = download_models([bad, good], tmp_path, **FAST)
    assert [(r.name, r.status) for r in results] == [("bad", "failed"), ("good", "downloaded")]
    assert (tmp_path / "good.gguf").exists() and not (tmp_path / "bad.gguf").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MB filesystem (we are root in CI): a models dir that cannot hold the download."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_download_that_cannot_fit_fails_before_writing_and_leaves_nothing(server, small_tmpfs):
    spec = spec_for(server, os.urandom(3 * MB))
    result = download_model(spec, small_tmpfs, **FAST)
    assert result.status == "failed" and result.attempts == 1
    assert re.search(r"needs 3\.15 MB more but .* has [\d.]+ (KB|MB) free", result.message), result.message
    assert not (small_tmpfs / spec.target).exists() and not partial_path(small_tmpfs / spec.target).exists()


@dataclass
class BlobSpec:
    """A file known only by its git blob id, as the Hub lists a small non-LFS file."""

    name: str
    target: str
    source_url: str
    git_sha1: str
    sha256: str | None = None


def git_sha1_of(body: bytes) -> str:
    return hashlib.sha1(f"blob {len(body)}\0".encode() + body, usedforsecurity=False).hexdigest()


def test_a_file_known_by_its_git_blob_id_is_verified_against_it(server, tmp_path):
    body = b'{"architectures": ["LlamaForCausalLM"]}\n'
    server.state.files["/config.json"] = body
    spec = BlobSpec("config", "cfg/config.json", server.base + "/config.json", git_sha1_of(body))
    result = download_model(spec, tmp_path, **FAST)
    assert result.status == "downloaded" and result.verified_by == "git-blob-sha1", result.message
    assert result.sha256 == hashlib.sha256(body).hexdigest(), "the sha256 is still computed and recorded"
    assert (tmp_path / "cfg" / "config.json").read_bytes() == body
    # Present: verified again by the blob id, nothing fetched.
    server.state.requests.clear()
    again = download_model(spec, tmp_path, **FAST)
    assert again.status == "skipped" and "git blob sha1 verified" in again.message and not server.state.requests


def test_a_git_blob_id_mismatch_keeps_nothing(server, tmp_path):
    server.state.files["/config.json"] = b'{"hidden_size": 64}'
    wrong = git_sha1_of(b'{"hidden_size": 65}')
    spec = BlobSpec("config", "config.json", server.base + "/config.json", wrong)
    result = download_model(spec, tmp_path, **FAST)
    assert result.status == "failed" and f"git blob sha1 mismatch: expected {wrong}" in result.message
    assert not (tmp_path / "config.json").exists() and not partial_path(tmp_path / "config.json").exists()


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"url": "http://x/m.gguf"}, "a url download needs its sha256"),
        ({"hf_repo": "o/r"}, "either hf_file (one file) or include"),
        ({"hf_repo": "o/r", "hf_file": "a", "include": ["*"]}, "either hf_file (one file) or include"),
        ({"hf_repo": "o/r", "include": ["*"], "sha256": "a" * 64}, "with include, give file_sha256"),
        ({"hf_repo": "o/r", "include": ["*"], "file_sha256": {"a": "XYZ"}}, "64 lower-case hex digits"),
        ({"url": "http://x/m", "sha256": "a" * 64, "include": ["*"]}, "go with hf_repo, not url"),
    ],
)
def test_model_download_forms_are_checked_when_settings_load(fields, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        ModelDownload(name="m", target="t", **fields)


def test_the_hub_forms_load_without_a_sha256():
    one = ModelDownload(name="m", hf_repo="o/r", hf_file="m.gguf", target="m.gguf")
    many = ModelDownload(name="f", hf_repo="o/r", include=["*.safetensors", "config.json"], target="f")
    assert one.sha256 is None and one.source_url == "https://huggingface.co/o/r/resolve/main/m.gguf"
    assert many.include == ["*.safetensors", "config.json"] and many.source_url.endswith("/o/r/tree/main")
