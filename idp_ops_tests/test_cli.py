"""The idp-ops console script, run as a real subprocess."""

import json
import os
import stat
import subprocess
import sys

import pytest
import yaml

from idp_ops.config import REPO_ROOT

IDP_OPS = [sys.executable, "-m", "idp_ops.cli"]


def idp_ops(*args, env=None, cwd=None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    return subprocess.run(
        IDP_OPS + list(args), capture_output=True, text=True, env={**clean, **(env or {})}, cwd=cwd, timeout=120
    )


def test_audit_compose_passes_the_shipped_files():
    for name in ("docker-compose.yml", "docker-compose.cpu.yml"):
        result = idp_ops("audit-compose", str(REPO_ROOT / "compose" / name), "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        findings = json.loads(result.stdout)["findings"]
        assert not [f for f in findings if f["severity"] == "high"]


# A planted fake key, assembled at run time so no key-shaped literal sits in the repository.
FAKE_KEY = "sk-" + "abcdefghijklmnopqrstuvwx"


def test_audit_compose_names_each_planted_problem_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "vllm": {
                        "image": "vllm/vllm-openai",
                        "privileged": True,
                        "ports": ["8000:8000"],
                        "volumes": ["/var/run/docker.sock:/var/run/docker.sock", "/mnt/models:/models"],
                        "environment": {"VLLM_API_KEY": FAKE_KEY},
                        "ipc": "host",
                    }
                }
            }
        )
    )
    result = idp_ops("audit-compose", str(bad), "--json")
    assert result.returncode == 1
    findings = json.loads(result.stdout)["findings"]
    assert set(findings[0]) == {"service", "rule", "severity", "message"}
    rules = {f["rule"] for f in findings}
    assert {"CIS-5.4", "CIS-5.5", "CIS-5.14", "CIS-5.17", "CIS-5.31", "IDP-SECRET-ENV", "IDP-MODEL-RW", "IDP-ROOT"} <= rules
    assert FAKE_KEY not in result.stdout


def test_audit_compose_on_a_missing_or_broken_file_exits_2_with_one_line(tmp_path):
    result = idp_ops("audit-compose", str(tmp_path / "nope.yml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "nope.yml" in result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text("services: [\n")
    result = idp_ops("audit-compose", str(broken), "--json")
    assert result.returncode == 2 and "line" in result.stderr and "Traceback" not in result.stderr


def test_secrets_generate_then_rotate(tmp_path):
    env = {"IDP_HOME": str(tmp_path / "box")}
    first = idp_ops("secrets", "generate", "--json", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert sorted(report["created"]) == ["llamacpp_api_key", "openai_api_key"]
    secrets_dir = tmp_path / "box" / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    key = (secrets_dir / "openai_api_key").read_text().strip()
    assert key not in first.stdout + first.stderr

    again = json.loads(idp_ops("secrets", "generate", "--json", env=env).stdout)
    assert again["created"] == [] and sorted(again["unchanged"]) == ["llamacpp_api_key", "openai_api_key"]

    rotated = idp_ops("secrets", "generate", "--rotate", "openai_api_key", env=env)
    assert rotated.returncode == 0 and "restart to apply: openai-standin" in rotated.stdout
    assert (secrets_dir / "openai_api_key").read_text().strip() != key


def test_invalid_settings_exit_2_naming_the_field(tmp_path):
    config = tmp_path / "idp-ops.yaml"
    config.write_text("thermal:\n  contain_c: boiling\n")
    result = idp_ops("--config", str(config), "secrets", "generate")
    assert result.returncode == 2
    assert "thermal.contain_c" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["secrets", "--help"], ["audit-compose", "--help"]])
def test_help_works(argv):
    assert idp_ops(*argv).returncode == 0


def test_fetch_demo_refuses_to_overwrite_a_different_file(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    squatter = models / "gemma-3-270m-q4_k_m.gguf"
    squatter.write_bytes(b"not the model")
    result = idp_ops("models", "fetch-demo", env={"IDP_MODELS_DIR": str(models)})
    assert result.returncode == 2 and "left untouched" in result.stderr and "Traceback" not in result.stderr
    assert squatter.read_bytes() == b"not the model"
