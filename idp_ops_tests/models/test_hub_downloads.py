"""Hugging Face Hub downloads: commit pinning, Hub hashes, resume, gated repos, 404s, and the token kept secret.

The one fake here is the Hub itself (idp_ops_harness/fake_hub.py): no Hub is reachable from these
machines, and a real one could not be told to drop a connection, lie about a hash or gate a repo on
cue. It is a real HTTP server on loopback speaking the Hub's wire format (model info with siblings
and LFS metadata, resolve with HEAD/GET/Range and the X-Repo-Commit / ETag / X-Linked-* headers,
X-Error-Code errors), selected with HF_ENDPOINT as a real deployment would select a mirror. The
client side is all real: huggingface_hub's HfApi, httpx, the files on disk, the idp-ops CLI as a
subprocess and the Dagster asset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import subprocess

import pytest
from dagster import DagsterInstance, materialize

from idp_ops.models.defs import model_downloads
from idp_ops.models.downloads import download_models, partial_path
from idp_ops.resources import SettingsResource
from idp_ops.settings import ModelDownload, load_settings
from idp_ops.stack.secrets import HF_TOKEN_FILE_NAME, write_hf_token
from idp_ops_harness.cli import IDP_OPS
from idp_ops_harness.fake_hub import running_fake_hub
from idp_ops_harness.settings_files import write_settings

MB = 1 << 20
FAST = {"backoff_s": 0.0, "progress_interval_s": 0.0, "timeout_s": 5.0}
REPO = "acme/tiny-vllm"
CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}).encode()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake Hub, selected the way a deployment selects a mirror: HF_ENDPOINT."""
    # No ambient token or cache may help or leak; no telemetry, no Xet (the fake sends no Xet headers anyway).
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    with running_fake_hub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.base)
        yield fake


def two_file_repo(hub, *, gated=False, size=3 * MB + 77) -> tuple[bytes, str]:
    """One LFS weights file, one small config, and a README nobody asked for."""
    weights = os.urandom(size)
    commit = hub.state.add_repo(
        REPO,
        {"model.safetensors": weights, "config.json": CONFIG, "README.md": b"# tiny\n"},
        lfs={"model.safetensors"},
        gated=gated,
    )
    return weights, commit


def folder_spec(**extra) -> ModelDownload:
    return ModelDownload(
        name="tiny-vllm", hf_repo=REPO, include=["*.safetensors", "config.json"], target="tiny-vllm", **extra
    )


def resolve_requests(hub) -> list[tuple[str, str, dict]]:
    return [r for r in hub.state.requests if "/resolve/" in r[1]]


def test_a_two_file_repo_lands_verified_with_the_commit_a_branch_resolved_to(hub, tmp_path):
    weights, commit = two_file_repo(hub)
    lines = []
    [result] = download_models([folder_spec()], tmp_path, log=lines.append, **FAST)

    assert result.status == "downloaded", result.message
    assert result.commit == commit and result.revision == "main" and result.hf_repo == REPO
    assert (tmp_path / "tiny-vllm" / "model.safetensors").read_bytes() == weights
    assert (tmp_path / "tiny-vllm" / "config.json").read_bytes() == CONFIG
    assert not (tmp_path / "tiny-vllm" / "README.md").exists(), "include picks files"
    by_path = {f["path"]: f for f in result.files}
    assert set(by_path) == {"model.safetensors", "config.json"}
    # The LFS file against the Hub's sha256; the small file against its git blob id (no sha256 on the Hub).
    assert by_path["model.safetensors"]["verified_by"] == "sha256" and by_path["model.safetensors"]["lfs"]
    assert by_path["model.safetensors"]["expected_sha256"] == hashlib.sha256(weights).hexdigest()
    assert by_path["config.json"]["verified_by"] == "git-blob-sha1" and not by_path["config.json"]["lfs"]
    assert by_path["config.json"]["sha256"] == hashlib.sha256(CONFIG).hexdigest()
    assert result.bytes_downloaded == len(weights) + len(CONFIG)
    # Every byte came from the commit, not the branch: a moving branch cannot mix two versions.
    assert {p for _, p, _ in resolve_requests(hub)} == {
        f"/{REPO}/resolve/{commit}/model.safetensors",
        f"/{REPO}/resolve/{commit}/config.json",
    }
    assert any(f"main is commit {commit}" in line for line in lines)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in (tmp_path / "tiny-vllm").iterdir())

    # A second run finds both present and verified, and fetches no file.
    hub.state.requests.clear()
    [again] = download_models([folder_spec()], tmp_path, **FAST)
    assert again.status == "skipped", again.message
    assert again.commit == commit and not resolve_requests(hub)


def test_the_old_hf_file_form_still_works_and_a_given_sha256_wins_over_the_hubs(hub, tmp_path):
    weights, commit = two_file_repo(hub)
    hub.state.lie_sha256[(REPO, "model.safetensors")] = "0" * 64  # the Hub's metadata is wrong
    spec = ModelDownload(
        name="weights",
        hf_repo=REPO,
        hf_file="model.safetensors",
        hf_revision=commit,  # already a commit: pinned as given
        sha256=hashlib.sha256(weights).hexdigest(),
        target="w/model.safetensors",
    )
    lines = []
    [result] = download_models([spec], tmp_path, log=lines.append, **FAST)
    assert result.status == "downloaded", result.message
    assert result.commit == commit and result.url.endswith(f"/resolve/{commit}/model.safetensors")
    assert result.expected_sha256 == spec.sha256 == result.sha256
    assert (tmp_path / "w" / "model.safetensors").read_bytes() == weights
    assert any("differs from the Hub's" in line for line in lines)


def test_a_dropped_connection_resumes_with_range_and_the_file_is_byte_identical(hub, tmp_path):
    weights, commit = two_file_repo(hub)
    hub.state.drop_after[(REPO, "model.safetensors")] = MB + 5
    updates = []
    [result] = download_models([folder_spec()], tmp_path, progress=updates.append, **FAST)

    assert result.status == "downloaded", result.message
    assert (tmp_path / "tiny-vllm" / "model.safetensors").read_bytes() == weights
    weights_gets = [h for _, p, h in resolve_requests(hub) if p.endswith("/model.safetensors")]
    assert len(weights_gets) == 2
    assert "Range" not in weights_gets[0]
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", weights_gets[1]["Range"]).group(1))
    assert 0 < resumed_at <= MB + 5
    by_path = {f["path"]: f for f in result.files}
    assert by_path["model.safetensors"]["attempts"] == 2
    assert by_path["model.safetensors"]["bytes_downloaded"] == len(weights), "each byte fetched once"
    assert not partial_path(tmp_path / "tiny-vllm" / "model.safetensors").exists()
    # Progress: bytes, rate and ETA, ending at 100 % of the weights file.
    last = [u for u in updates if u.name == "tiny-vllm/model.safetensors"][-1]
    assert last.done == last.total == len(weights)
    assert "/s" in last.describe() and "s left" in last.describe()


def test_a_wrong_sha256_in_the_hub_metadata_keeps_nothing_and_names_both_hashes(hub, tmp_path):
    weights, _ = two_file_repo(hub)
    lie = hashlib.sha256(b"not these weights").hexdigest()
    hub.state.lie_sha256[(REPO, "model.safetensors")] = lie
    [result] = download_models([folder_spec()], tmp_path, **FAST)

    assert result.status == "failed"
    assert f"expected {lie}" in result.message and f"got {hashlib.sha256(weights).hexdigest()}" in result.message
    assert "deleted" in result.message
    target = tmp_path / "tiny-vllm" / "model.safetensors"
    assert not target.exists() and not partial_path(target).exists()


def test_a_gated_repo_without_access_gives_the_licence_and_token_advice(hub, tmp_path):
    two_file_repo(hub, gated=True)
    hub.state.token = "hf_" + secrets.token_hex(16)
    token_file = tmp_path / "secrets" / HF_TOKEN_FILE_NAME

    # No token at all: the Hub answers 401.
    [no_token] = download_models([folder_spec()], tmp_path / "models", hf_token_file=token_file, **FAST)
    assert no_token.status == "failed"
    assert "HTTP 401" in no_token.message and "no Hub token is set" in no_token.message
    assert "accept the licence on the model page" in no_token.message and str(token_file) in no_token.message

    # A token without access: 403, and the other file is not tried (it would be refused the same).
    write_hf_token(tmp_path / "secrets", "hf_" + secrets.token_hex(16))
    hub.state.requests.clear()
    [wrong] = download_models([folder_spec()], tmp_path / "models", hf_token_file=token_file, **FAST)
    assert wrong.status == "failed"
    assert "HTTP 403" in wrong.message and "has no access" in wrong.message
    assert "accept the licence on the model page" in wrong.message
    assert len(resolve_requests(hub)) == 1
    assert not any(p.is_file() for p in (tmp_path / "models").rglob("*")), "nothing kept"

    # The right token gets in.
    write_hf_token(tmp_path / "secrets", hub.state.token)
    [ok] = download_models([folder_spec()], tmp_path / "models", hf_token_file=token_file, **FAST)
    assert ok.status == "downloaded", ok.message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            ModelDownload(name="m", hf_repo="acme/no-such-repo", hf_file="a.gguf", target="a.gguf"),
            r"repo acme/no-such-repo not found at .* \(HTTP 404\)",
        ),
        (
            ModelDownload(name="m", hf_repo=REPO, hf_file="config.json", hf_revision="v9", target="c.json"),
            r"revision 'v9' not found in acme/tiny-vllm \(HTTP 404\)",
        ),
        (
            ModelDownload(name="m", hf_repo=REPO, hf_file="model.gguf", target="m.gguf"),
            r"model.gguf is not in acme/tiny-vllm at commit [0-9a-f]{40} \(HTTP 404\); files there: README.md, ",
        ),
        (
            ModelDownload(name="m", hf_repo=REPO, include=["*.gguf"], target="m"),
            r"no file of acme/tiny-vllm at commit [0-9a-f]{40} matches include \['\*.gguf'\]",
        ),
    ],
    ids=["repo", "revision", "file", "include"],
)
def test_404s_name_what_is_missing(hub, tmp_path, spec, expected):
    two_file_repo(hub, size=1000)
    [result] = download_models([spec], tmp_path, **FAST)
    assert result.status == "failed"
    assert re.search(expected, result.message), result.message
    assert not any(tmp_path.iterdir())


def test_a_loose_token_file_is_refused(hub, tmp_path):
    two_file_repo(hub, size=1000)
    token_file = write_hf_token(tmp_path / "secrets", "hf_" + secrets.token_hex(16))["path"]
    os.chmod(token_file, 0o644)
    [result] = download_models([folder_spec()], tmp_path / "models", hf_token_file=token_file, **FAST)
    assert result.status == "failed" and "readable by others" in result.message and "chmod 600" in result.message


def test_the_token_reaches_the_hub_and_nothing_else(hub, tmp_path):
    """CLI (stdin -> 0600 file; download --json) and the Dagster asset: the token is sent as a header and
    appears in no output, log line, result, metadata, argv or environment."""
    weights, commit = two_file_repo(hub, gated=True)
    token = hub.state.token = "hf_" + secrets.token_hex(20)
    home = tmp_path / "home"
    config = write_settings(
        tmp_path / "idp-ops.yaml",
        home=home,
        models_dir=tmp_path / "models",
        model_downloads=[
            {"name": "tiny-vllm", "hf_repo": REPO, "include": ["*.safetensors", "*.json"], "target": "tiny-vllm"}
        ],
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_") and k != "DAGSTER_HOME"}

    def cli(*args, stdin=""):
        argv = [*IDP_OPS, "--config", str(config), *args]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=120)
        assert token not in " ".join(argv) and token not in done.stdout and token not in done.stderr
        return done

    # The token in argv is not an option: argparse refuses it and nothing is written.
    refused = cli("secrets", "hf-token", "hf_not_this_way")
    assert refused.returncode == 2 and "unrecognized arguments" in refused.stderr
    token_file = load_settings(config).secrets_dir / HF_TOKEN_FILE_NAME
    assert not token_file.exists()

    stored = cli("secrets", "hf-token", "--json", stdin=token + "\n")
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["path"] == str(token_file)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and token_file.read_text().strip() == token

    downloaded = cli("download", "--json")
    assert downloaded.returncode == 0, downloaded.stderr
    [result] = json.loads(downloaded.stdout)["results"]
    assert result["status"] == "downloaded" and result["commit"] == commit
    assert "[idp-ops] tiny-vllm/model.safetensors: " in downloaded.stderr, "progress on the CLI"
    auth = {h.get("Authorization") for _, p, h in hub.state.requests if "/resolve/" in p}
    assert auth == {f"Bearer {token}"}, "the token did reach the Hub"
    assert all(token not in p for _, p, _ in hub.state.requests), "never in a URL"

    # The Dagster asset, in-process: run log, metadata and the environment stay clean.
    (tmp_path / "models" / "tiny-vllm" / "model.safetensors").unlink()
    hub.state.drop_after[(REPO, "model.safetensors")] = MB  # a log line about the resume, too
    (tmp_path / "dagster").mkdir()
    instance = DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster"))
    run = materialize(
        [model_downloads], resources={"settings": SettingsResource(config_file=str(config))}, instance=instance
    )
    assert run.success
    metadata = run.asset_materializations_for_node("model_downloads")[0].metadata
    assert metadata["downloaded"].value == 1
    assert metadata["per_model"].value["tiny-vllm"]["commit"] == commit
    records = instance.all_logs(run.run_id)
    text = "\n".join(
        [r.user_message or "" for r in records] + [str(r.dagster_event) for r in records if r.dagster_event]
    )
    assert "resuming at byte" in text and f"main is commit {commit}" in text, "the log is the one we searched"
    assert token not in text
    assert token not in json.dumps({k: str(v.value) for k, v in metadata.items()})
    assert token not in "\n".join(f"{k}={v}" for k, v in os.environ.items())
    assert (tmp_path / "models" / "tiny-vllm" / "model.safetensors").read_bytes() == weights

    # Both runs are in the history: the revision asked for, the commit it resolved to, how it was verified.
    from idp_ops.history import database as history

    assert metadata["recorded_in_history"].value == 1
    with history.connect(load_settings(config).history_file, read_only=True) as con:
        rows = con.execute(
            "SELECT hf_repo, revision, commit, status, verified_by, attempts, files "
            "FROM model_downloads ORDER BY finished_at"
        ).fetchall()
    assert [r[:5] for r in rows] == [(REPO, "main", commit, "downloaded", "sha256")] * 2
    weights_file = [{f["path"]: f for f in json.loads(r[6])}["model.safetensors"] for r in rows]
    assert [(f["status"], f["attempts"]) for f in weights_file] == [("downloaded", 1), ("downloaded", 2)]
    assert all(token not in str(r) for r in rows)
