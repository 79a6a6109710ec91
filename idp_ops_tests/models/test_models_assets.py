"""The models assets materialized by Dagster: downloads from a local server, inventory into DuckDB."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetCheckSeverity, AssetKey, DagsterInstance, materialize

from idp_ops.models.defs import model_downloads, model_files
from idp_ops.models.gguf_meta import load_inventory
from idp_ops.resources import SettingsResource
from idp_ops.settings import DEMO_MODEL_FILE, load_settings
from idp_ops_harness.gguf_files import tiny_gguf
from idp_ops_harness.settings_files import write_settings

pytestmark = pytest.mark.model


@pytest.fixture
def box(tmp_path, demo_models_dir, server):
    """Settings for a box whose models dir holds the Gemma file, a corrupt file and one declared download."""
    models = tmp_path / "models"
    models.mkdir()
    try:
        os.link(demo_models_dir / DEMO_MODEL_FILE, models / DEMO_MODEL_FILE)
    except OSError:  # another filesystem: copy
        shutil.copy2(demo_models_dir / DEMO_MODEL_FILE, models / DEMO_MODEL_FILE)
    (models / "corrupt.gguf").write_bytes(b"GGUX" + b"\0" * 1000)
    body = tiny_gguf(tmp_path / "served.gguf")
    server.state.files["/tiny.gguf"] = body
    config = write_settings(
        tmp_path / "idp-ops.yaml",
        home=tmp_path / "home",
        models_dir=models,
        model_downloads=[
            {
                "name": "tiny-llama",
                "url": server.base + "/tiny.gguf",
                "sha256": hashlib.sha256(body).hexdigest(),
                "target": "downloaded/tiny-llama-f16.gguf",
            }
        ],
    )
    return {"config": config, "models": models, "body": body, "server": server, "tmp": tmp_path}


def run(box, *, raise_on_error=True, selection=(model_downloads, model_files)):
    (box["tmp"] / "dagster").mkdir(exist_ok=True)
    instance = DagsterInstance.local_temp(tempdir=str(box["tmp"] / "dagster"))
    return materialize(
        list(selection),
        resources={"settings": SettingsResource(config_file=str(box["config"]))},
        instance=instance,
        raise_on_error=raise_on_error,
    )


def test_downloads_then_inventory_land_in_duckdb_with_a_warning_for_the_corrupt_file(box):
    result = run(box)
    assert result.success

    downloads = result.asset_materializations_for_node("model_downloads")[0].metadata
    assert downloads["downloaded"].value == 1 and downloads["failed"].value == 0
    assert downloads["per_model"].value["tiny-llama"]["status"] == "downloaded"
    assert (box["models"] / "downloaded" / "tiny-llama-f16.gguf").read_bytes() == box["body"]

    files = result.asset_materializations_for_node("model_files")[0].metadata
    assert files["file_count"].value == 3 and files["findings"].value == 1
    table = files["files"].value
    assert "| path | kind | architecture | params | quant | layers | context | size | finding |" in table
    assert f"| {DEMO_MODEL_FILE} | gguf | gemma3 | 268.1 M | Q4_K_M | 18 | 32768 |" in table
    assert "corrupt.gguf" in table and "not a GGUF file" in table

    (check,) = result.get_asset_check_evaluations()
    assert check.asset_key == AssetKey("model_files") and check.check_name == "no_findings"
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert "corrupt.gguf" in check.description

    settings = load_settings(box["config"])
    rows = {Path(r["path"]).name: r for r in load_inventory(settings.history_file)}
    assert set(rows) == {DEMO_MODEL_FILE, "corrupt.gguf", "tiny-llama-f16.gguf"}
    gemma = rows[DEMO_MODEL_FILE]
    assert (gemma["architecture"], gemma["parameters"], gemma["file_type"]) == ("gemma3", 268_098_176, "Q4_K_M")
    assert gemma["block_count"] == 18 and gemma["context_length"] == 32768 and gemma["layer_bytes"] > 0
    tiny = rows["tiny-llama-f16.gguf"]
    assert (tiny["architecture"], tiny["file_type"], tiny["parameters"]) == ("llama", "F16", 2 * 32 * 32 + 100 * 32)
    assert rows["corrupt.gguf"]["finding"].startswith("corrupt: not a GGUF file")

    # Again: the download is skipped after verifying its hash, the rows are replaced, not added.
    requests_before = len(box["server"].state.requests)
    again = run(box)
    meta = again.asset_materializations_for_node("model_downloads")[0].metadata
    assert meta["skipped"].value == 1 and meta["downloaded"].value == 0
    assert len(box["server"].state.requests) == requests_before
    assert len(load_inventory(settings.history_file)) == 3


def test_a_failed_download_fails_the_asset_naming_the_model(box):
    write_settings(
        box["config"],
        home=box["tmp"] / "home",
        models_dir=box["models"],
        model_downloads=[
            {"name": "poisoned", "url": box["server"].base + "/tiny.gguf", "sha256": "e" * 64, "target": "p.gguf"}
        ],
    )
    result = run(box, raise_on_error=False, selection=(model_downloads,))
    assert not result.success
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.error.message
    assert "poisoned" in message and f"expected {'e' * 64}" in message
    assert not (box["models"] / "p.gguf").exists() and not (box["models"] / ".p.gguf.part").exists()


def test_model_files_fails_clearly_when_the_models_dir_is_missing(box):
    shutil.rmtree(box["models"])
    result = run(box, raise_on_error=False, selection=(model_files,))
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "does not exist" in failure.step_failure_data.error.message


def idp_ops(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    return subprocess.run(
        [sys.executable, "-m", "idp_ops.cli", *args], capture_output=True, text=True, env=clean, cwd=cwd, timeout=120
    )


def test_cli_download_then_inventory(box):
    config = str(box["config"])
    result = idp_ops("--config", config, "download", "--json", cwd=box["tmp"])
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)["results"]
    assert entry["name"] == "tiny-llama" and entry["status"] == "downloaded"
    assert "tiny-llama" in result.stderr  # progress goes to stderr, JSON stays parseable

    result = idp_ops("--config", config, "inventory", str(box["models"]), "--json", cwd=box["tmp"])
    assert result.returncode == 1, "a finding exits 1"
    data = json.loads(result.stdout)
    assert data["findings"] == {"corrupt.gguf": "corrupt: not a GGUF file: magic b'GGUX', expected b'GGUF'"}
    kinds = {f["relpath"]: (f["kind"], f["architecture"]) for f in data["files"]}
    assert kinds[DEMO_MODEL_FILE] == ("gguf", "gemma3")
    assert kinds["downloaded/tiny-llama-f16.gguf"] == ("gguf", "llama")

    human = idp_ops("--config", config, "inventory", cwd=box["tmp"])  # default: the settings' models_dir
    assert human.returncode == 1 and "FINDING: corrupt: not a GGUF file" in human.stdout
    assert "Q4_K_M 18 layers ctx 32768" in human.stdout

    missing = idp_ops("inventory", str(box["tmp"] / "absent"), cwd=box["tmp"])
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    unknown = idp_ops("--config", config, "download", "--name", "nope", cwd=box["tmp"])
    assert unknown.returncode == 2 and "no declared model download named ['nope']" in unknown.stderr
