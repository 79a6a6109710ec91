"""The idp-ops console script, run as a real subprocess."""

import json
import stat

import pytest
import yaml

from idp_ops.settings import REPO_ROOT
from idp_ops_harness.cli import idp_ops


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
    assert {
        "CIS-5.4",
        "CIS-5.5",
        "CIS-5.14",
        "CIS-5.17",
        "CIS-5.32",
        "IDP-SECRET-ENV",
        "IDP-MODEL-RW",
        "IDP-ROOT",
    } <= rules
    assert FAKE_KEY not in result.stdout


# One service carrying every root-equivalent setting: (rule, the setting its message must name).
ROOT_EQUIVALENT = {
    "cap_add": ["sys_rawio", "CAP_SYS_ADMIN"],
    "security_opt": [
        "no-new-privileges:true",
        "seccomp:unconfined",
        "apparmor=unconfined",
        "label:disable",
        "systempaths=unconfined",
    ],
    "volumes": ["/:/host:ro", "/etc:/host-etc:ro", "/srv/data:/data:ro,rshared"],
    "devices": ["/dev/mem:/dev/mem"],
    "device_cgroup_rules": ["c 1:1 rwm"],
    "userns_mode": "host",
    "uts": "host",
    "cgroup": "host",
    "pid": "host",
    "ipc": "host",
    "network_mode": "host",
}
EXPECTED_HIGH = [
    ("CIS-5.4", "cap_add: 'sys_rawio'"),
    ("CIS-5.4", "cap_add: 'CAP_SYS_ADMIN'"),
    ("CIS-5.22", "seccomp:unconfined"),
    ("CIS-5.2", "apparmor=unconfined"),
    ("CIS-5.3", "label:disable"),
    ("IDP-SYSTEMPATHS", "systempaths=unconfined"),
    ("CIS-5.6", "'/:/host:ro'"),
    ("CIS-5.6", "'/etc:/host-etc:ro'"),
    ("CIS-5.20", "'/srv/data:/data:ro,rshared'"),
    ("CIS-5.18", "/dev/mem:/dev/mem"),
    ("CIS-5.18", "c 1:1 rwm"),
    ("CIS-5.31", "userns_mode: host"),
    ("CIS-5.21", "uts: host"),
    ("IDP-CGROUP-HOST", "cgroup: host"),
    ("CIS-5.16", "pid: host"),
    ("CIS-5.17", "ipc: host"),
    ("CIS-5.10", "network_mode: host"),
]


def hardened(**extra) -> dict:
    return {
        "image": "x",
        "user": "65534:65534",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "healthcheck": {"test": ["CMD", "true"]},
        "deploy": {"resources": {"limits": {"memory": "1g", "cpus": "1", "pids": 64}}},
        "logging": {"driver": "json-file", "options": {"max-size": "10m"}},
        **extra,
    }


def test_audit_compose_names_each_root_equivalent_setting_and_exits_1(tmp_path):
    compose = tmp_path / "root-equivalent.yml"
    compose.write_text(yaml.safe_dump({"services": {"box": hardened(**ROOT_EQUIVALENT), "fine": hardened()}}))

    result = idp_ops("audit-compose", str(compose), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["benchmark"] == "CIS Docker Benchmark v1.6.0"
    findings = data["findings"]
    assert all(f["service"] == "box" and f["severity"] == "high" for f in findings), findings
    for rule, setting in EXPECTED_HIGH:
        assert any(f["rule"] == rule and setting in f["message"] for f in findings), (rule, setting, findings)
    assert len(findings) == len(EXPECTED_HIGH)

    human = idp_ops("audit-compose", str(compose))
    assert human.returncode == 1
    assert "audited against CIS Docker Benchmark v1.6.0" in human.stdout
    assert human.stdout.count("high ") == len(EXPECTED_HIGH)


def test_audit_compose_judges_variables_by_the_settings_values():
    shipped = str(REPO_ROOT / "compose" / "docker-compose.cpu.yml")
    exposed = idp_ops("audit-compose", shipped, "--json", env={"IDP_MODELS_DIR": "/etc"})
    assert exposed.returncode == 1, exposed.stdout + exposed.stderr
    high = [f for f in json.loads(exposed.stdout)["findings"] if f["severity"] == "high"]
    assert {(f["service"], f["rule"]) for f in high} == {
        ("openai-standin", "CIS-5.6"),
        ("llamacpp-cpu", "CIS-5.6"),
        ("llamacpp-router", "CIS-5.6"),  # profile router: mounts the models dir too
    }
    assert all("resolves to '/etc:/models:ro'" in f["message"] for f in high)

    as_root = idp_ops("audit-compose", shipped, "--json", env={"IDP_SERVICE_UID": "0", "IDP_SERVICE_GID": "0"})
    assert as_root.returncode == 0  # running as root is medium: reported, not blocking
    root = [f for f in json.loads(as_root.stdout)["findings"] if f["rule"] == "IDP-ROOT"]
    assert {f["service"] for f in root} == {"openai-standin", "llamacpp-cpu", "llamacpp-router"}


def test_deploy_refuses_a_high_finding_before_starting_anything(tmp_path):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        yaml.safe_dump({"services": {"box": hardened(devices=["/dev/mem:/dev/mem"], cap_add=["SYS_RAWIO"])}})
    )
    # No keys and no model exist in this home: had the deploy gone past the gate, preflight
    # would have complained about them instead.
    env = {"IDP_HOME": str(tmp_path / "home"), "IDP_COMPOSE_FILE": str(compose), "IDP_COMPOSE_PROJECT": "idp-ops-gate"}
    result = idp_ops("deploy", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "deploy refused" in result.stderr and "CIS Docker Benchmark v1.6.0" in result.stderr
    assert "box: CIS-5.18" in result.stderr and "/dev/mem:/dev/mem" in result.stderr
    assert "box: CIS-5.4" in result.stderr and "SYS_RAWIO" in result.stderr
    assert "cannot deploy" not in result.stderr and "starting project" not in result.stderr
    assert "Traceback" not in result.stderr

    as_json = idp_ops("deploy", "--json", env=env)
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["deployed"] is False and data["benchmark"] == "CIS Docker Benchmark v1.6.0"
    assert {f["rule"] for f in data["findings"]} == {"CIS-5.4", "CIS-5.18"}


def test_deploy_on_a_compose_file_that_cannot_be_audited_exits_2(tmp_path):
    env = {"IDP_HOME": str(tmp_path / "home"), "IDP_COMPOSE_FILE": str(tmp_path / "missing.yml")}
    result = idp_ops("deploy", env=env)
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr


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
