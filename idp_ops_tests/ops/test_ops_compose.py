"""The ops platform's shipped compose files pass the audit, alone and with the GPU override merged by compose.

The environment is the one up.sh writes (compose/ops/platform_env.py) for a settings file; the GPU
override is merged by the real `docker compose config`, as `up` merges it, then audited.
"""

from __future__ import annotations

import json
import subprocess

import yaml

from idp_ops.settings import REPO_ROOT, load_settings
from idp_ops.stack.audit import audit_compose_file_result, audit_compose_result
from idp_ops.stack.compose import find_compose_command
from idp_ops_harness.ops_locations import platform_env_module
from idp_ops_harness.settings_files import write_settings

OPS = REPO_ROOT / "compose" / "ops"
platform_env_script = platform_env_module()  # a script beside the compose file, not a package


def ops_environment(tmp_path) -> dict[str, str]:
    config = write_settings(tmp_path / "idp-ops.yaml", home=str(tmp_path / "home"))
    (load_settings(config).secrets_dir).mkdir(parents=True)
    return platform_env_script.platform_env(
        "idp-ops-platform", "idp-ops/ops:test", "idp-ops/postgres:15", 3000, 15432, config
    )


def open_and_accepted(result) -> tuple[list[str], list[tuple[str, str]]]:
    open_high = [f"{f.service}: {f.rule} {f.message}" for f in result.findings if f.severity == "high"]
    return open_high, sorted((a.service, a.rule) for a in result.accepted)


def test_the_platform_compose_file_has_no_open_high_finding_and_accepts_only_the_daemons_and_the_guards_socket(
    tmp_path,
):
    result = audit_compose_file_result(OPS / "docker-compose.yml", ops_environment(tmp_path))
    open_high, accepted = open_and_accepted(result)
    assert not open_high, "\n".join(open_high)
    assert accepted == [("daemon", "CIS-5.32"), ("guard", "CIS-5.32")], accepted


def test_the_gpu_override_gives_the_code_location_nvml_by_device_reservation_and_still_passes(tmp_path):
    env = ops_environment(tmp_path)
    merged = subprocess.run(
        [*find_compose_command(), "-f", str(OPS / "docker-compose.yml"), "-f", str(OPS / "docker-compose.gpu.yml"),
         "--profile", "guard", "-p", "idp-ops-platform", "config", "--no-interpolate"],
        env={**env, "PATH": "/usr/local/bin:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    model = yaml.safe_load(merged.stdout)
    code_location = model["services"]["code-location"]
    devices = code_location["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["utility"]}], devices
    # The merge keeps the limits and the hardening; nothing privileged, no socket, no extra capability.
    assert code_location["deploy"]["resources"]["limits"]["memory"]
    assert not code_location.get("privileged") and code_location["cap_drop"] == ["ALL"]
    assert not any("docker.sock" in str(v) for v in code_location.get("volumes", []))
    guard = model["services"]["guard"]
    assert guard["deploy"]["resources"]["reservations"]["devices"] == devices, guard["deploy"]
    assert not guard.get("privileged") and guard["cap_drop"] == ["ALL"] and not guard.get("depends_on")

    open_high, accepted = open_and_accepted(audit_compose_result(model, env, base_dir=OPS))
    assert not open_high, "\n".join(open_high)
    assert accepted == [("daemon", "CIS-5.32"), ("guard", "CIS-5.32")], accepted


def test_only_the_central_platforms_runs_are_told_to_dump_postgres(tmp_path):
    """The weekly backup dumps the one instance on the central box; another box's backup has none to dump."""

    def run_env(env: dict) -> dict:
        context = json.loads(env["IDP_OPS_RUN_CONTEXT"])["docker"]
        return dict(v.split("=", 1) for v in context["env_vars"])

    central = run_env(ops_environment(tmp_path))
    assert central["IDP_OPS_POSTGRES_PROJECT"] == "idp-ops-platform"
    config = write_settings(tmp_path / "box-b.yaml", home=str(tmp_path / "box-b"))
    box_b = run_env(
        platform_env_script.location_env("box_b", "idp-ops-box-b", "idp-ops/ops:test", config, "10.0.0.1", 15432)
    )
    assert "IDP_OPS_POSTGRES_PROJECT" not in box_b and box_b["IDP_OPS_PROJECT"] == "idp-ops-box-b"
