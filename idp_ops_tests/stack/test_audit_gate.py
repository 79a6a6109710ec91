"""The audit judges the file compose will run: extends, include, interpolation with the
deploy's own values, and the one gate the Dagster asset and `idp-ops deploy` share."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from idp_ops.cli.main import main as cli_main
from idp_ops.settings import REPO_ROOT, load_settings
from idp_ops.stack.audit import (
    BENCHMARK,
    AuditGateError,
    ComposeFileError,
    audit_compose,
    audit_compose_file,
    audit_compose_file_result,
    audit_gate,
    audit_gate_result,
    deploy_environment,
    has_high,
    load_compose_file,
)
from idp_ops.stack.audit_load import interpolate, merge_service
from idp_ops.stack.compose import find_compose_command

COMPOSE_DIR = REPO_ROOT / "compose"

HARDENED = {
    "image": "ghcr.io/ggml-org/llama.cpp:server",
    "user": "65534:65534",
    "read_only": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "healthcheck": {"test": ["CMD", "true"]},
    "deploy": {"resources": {"limits": {"memory": "1g", "cpus": "1", "pids": 64}}},
    "logging": {"driver": "json-file", "options": {"max-size": "10m"}},
}


def write(path: Path, model: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(model, sort_keys=False))
    return path


def rules_by_service(findings) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for f in findings:
        result.setdefault(f.service, set()).add(f.rule)
    return result


def settings_file(tmp_path: Path, **values) -> Path:
    values.setdefault("home", str(tmp_path / "home"))
    path = tmp_path / "idp-ops.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# --- interpolation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("${A}", {}, ""),
        ("$A/b", {"A": "x"}, "x/b"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A-d}", {}, "d"),
        ("${A:+r}", {"A": "x"}, "r"),
        ("${A:+r}", {"A": ""}, ""),
        ("${A+r}", {"A": ""}, "r"),
        ("${A:?must be set}", {"A": "v"}, "v"),
        ("${A:?must be set}", {}, ""),
        ("${A:-${B:-inner}}", {}, "inner"),
        ("${A:-${B:-inner}}", {"B": "b"}, "b"),
        ("$${A}", {"A": "x"}, "${A}"),
        ("127.0.0.1:${P:-18000}:8080", {"P": "9000"}, "127.0.0.1:9000:8080"),
    ],
)
def test_interpolate_follows_compose(text, env, expected):
    assert interpolate(text, env) == expected


def test_a_variable_is_judged_by_its_value_not_only_its_default():
    model = {"services": {"svc": {**HARDENED, "ports": ["${IDP_BIND:-127.0.0.1}:8000:8000"]}}}
    assert audit_compose(model) == []
    (finding,) = audit_compose(model, {"IDP_BIND": "0.0.0.0"})
    assert finding.rule == "CIS-5.14" and "0.0.0.0" in finding.message


def test_service_uid_zero_fires_the_root_rule_through_the_variable():
    model = {"services": {"svc": {**HARDENED, "user": "${IDP_SERVICE_UID:-65534}:${IDP_SERVICE_GID:-65534}"}}}
    assert audit_compose(model, {"IDP_SERVICE_UID": "1000", "IDP_SERVICE_GID": "1000"}) == []
    (finding,) = audit_compose(model, {"IDP_SERVICE_UID": "0", "IDP_SERVICE_GID": "0"})
    assert finding.rule == "IDP-ROOT"
    assert "${IDP_SERVICE_UID:-65534}" in finding.message and "resolves to '0:0'" in finding.message


def test_interpolated_mount_of_a_sensitive_directory_is_high():
    model = {"services": {"svc": {**HARDENED, "volumes": ["${IDP_MODELS_DIR:?set it}:/models:ro"]}}}
    assert audit_compose(model, {"IDP_MODELS_DIR": "/mnt/models"}) == []
    (finding,) = audit_compose(model, {"IDP_MODELS_DIR": "/etc"})
    assert (finding.rule, finding.severity) == ("CIS-5.6", "high")
    assert "/etc" in finding.message and "${IDP_MODELS_DIR:?set it}" in finding.message


def test_a_named_volume_bound_to_a_host_directory_is_judged_by_that_directory(tmp_path):
    path = write(
        tmp_path / "docker-compose.yml",
        {
            "services": {"svc": {**HARDENED, "volumes": ["hostetc:/config:ro", "cache:/cache"]}},
            "volumes": {
                "hostetc": {"driver": "local", "driver_opts": {"type": "none", "o": "bind", "device": "/etc"}},
                "cache": {},
            },
        },
    )
    (finding,) = audit_compose_file(path)
    assert finding.rule == "CIS-5.6" and "/etc" in finding.message and "hostetc:/config:ro" in finding.message


# --- extends -------------------------------------------------------------------


def test_extends_in_the_same_file_inherits_the_base_settings(tmp_path):
    path = write(
        tmp_path / "docker-compose.yml",
        {
            "x-note": "extension fields are not services",
            "services": {
                "base": {**HARDENED, "cap_add": ["SYS_ADMIN"]},
                "child": {"extends": "base", "image": "other"},
                "long-form": {"extends": {"service": "base"}, "cap_add": ["NET_BIND_SERVICE"]},
            },
        },
    )
    by_service = rules_by_service(audit_compose_file(path))
    assert by_service == {"base": {"CIS-5.4"}, "child": {"CIS-5.4"}, "long-form": {"CIS-5.4"}}


def test_extends_from_another_file_resolves_its_path_and_its_relative_mounts(tmp_path):
    # The base file lives elsewhere; its relative mount reaches /etc from *its* directory.
    base_dir = tmp_path / "shared" / "deep"
    relative_etc = os.path.relpath("/etc", base_dir)
    write(base_dir / "base.yml", {"services": {"web": {**HARDENED, "volumes": [f"{relative_etc}:/config:ro"]}}})
    path = write(
        tmp_path / "app" / "docker-compose.yml",
        {"services": {"app": {"extends": {"file": "../shared/deep/base.yml", "service": "web"}, "image": "x"}}},
    )
    (finding,) = audit_compose_file(path)
    assert (finding.service, finding.rule) == ("app", "CIS-5.6")
    assert "sensitive host path /etc via" in finding.message


def test_extends_follows_chains_and_merges_like_compose(tmp_path):
    path = write(
        tmp_path / "docker-compose.yml",
        {
            "services": {
                "root": {**HARDENED, "volumes": ["/etc:/data:ro"], "environment": ["A=1"], "command": ["--a"]},
                "middle": {"extends": "root", "privileged": True},
                # Same target: compose keeps only the override's mount, so /etc is gone here.
                "leaf": {"extends": "middle", "privileged": False, "volumes": ["/srv/data:/data:ro"]},
            }
        },
    )
    by_service = rules_by_service(audit_compose_file(path))
    assert by_service["root"] == {"CIS-5.6"}
    assert by_service["middle"] == {"CIS-5.5", "CIS-5.6"}
    assert "leaf" not in by_service


def test_merge_service_rules():
    base = {
        "command": ["--a", "--b"],
        "environment": ["A=1", "B=2"],
        "cap_add": ["CHOWN"],
        "volumes": ["/srv/a:/a", "/srv/b:/b"],
        "healthcheck": {"test": ["CMD", "a"], "interval": "5s"},
    }
    override = {
        "command": ["--c"],
        "environment": {"B": "3"},
        "cap_add": ["SYS_TIME"],
        "volumes": ["/srv/c:/b"],
        "healthcheck": {"test": ["CMD", "c"]},
    }
    merged = merge_service(base, override)
    assert merged["command"] == ["--c"]
    assert merged["environment"] == {"A": "1", "B": "3"}
    assert merged["cap_add"] == ["CHOWN", "SYS_TIME"]
    assert merged["volumes"] == ["/srv/a:/a", "/srv/c:/b"]
    assert merged["healthcheck"] == {"test": ["CMD", "c"], "interval": "5s"}
    assert base["command"] == ["--a", "--b"]  # inputs untouched


def test_extends_loop_is_refused(tmp_path):
    path = write(
        tmp_path / "docker-compose.yml",
        {"services": {"a": {"extends": "b", "image": "x"}, "b": {"extends": "a", "image": "x"}}},
    )
    with pytest.raises(ComposeFileError, match="extends loop"):
        audit_compose_file(path)


def test_extends_of_an_unknown_service_is_refused(tmp_path):
    path = write(tmp_path / "docker-compose.yml", {"services": {"a": {"extends": "ghost", "image": "x"}}})
    with pytest.raises(ComposeFileError, match="'ghost'"):
        audit_compose_file(path)


# --- include -------------------------------------------------------------------


def test_include_is_relative_to_the_including_file_and_nests(tmp_path):
    write(tmp_path / "parts" / "gpu" / "gpu.yml", {"services": {"gpu": {**HARDENED, "devices": ["/dev/nvidia0"]}}})
    write(
        tmp_path / "parts" / "cpu.yml",
        {"include": ["gpu/gpu.yml"], "services": {"cpu": {**HARDENED, "pid": "host"}}},
    )
    path = write(tmp_path / "top" / "docker-compose.yml", {"include": [{"path": "../parts/cpu.yml"}]})
    by_service = rules_by_service(audit_compose_file(path))
    assert by_service == {"cpu": {"CIS-5.16"}, "gpu": {"CIS-5.18"}}
    assert set(load_compose_file(path)["services"]) == {"cpu", "gpu"}


def test_included_relative_mounts_resolve_against_the_included_file(tmp_path):
    part_dir = tmp_path / "a" / "b" / "c"
    write(
        part_dir / "part.yml",
        {"services": {"p": {**HARDENED, "volumes": [f"{os.path.relpath('/', part_dir)}:/host:ro"]}}},
    )
    path = write(tmp_path / "docker-compose.yml", {"include": ["a/b/c/part.yml"], "services": {"main": HARDENED}})
    (finding,) = audit_compose_file(path)
    assert (finding.service, finding.rule) == ("p", "CIS-5.6") and "root filesystem" in finding.message


def test_include_path_takes_variables(tmp_path):
    write(tmp_path / "extra" / "x.yml", {"services": {"x": {**HARDENED, "network_mode": "host"}}})
    path = write(tmp_path / "docker-compose.yml", {"include": ["${PARTS_DIR:-missing}/x.yml"], "services": {}})
    (finding,) = audit_compose_file(path, {"PARTS_DIR": "extra"})
    assert (finding.service, finding.rule) == ("x", "CIS-5.10")


@pytest.mark.parametrize(
    ("files", "match"),
    [
        pytest.param({"docker-compose.yml": {"include": ["nope.yml"], "services": {}}}, "not found", id="missing"),
        pytest.param(
            {
                "docker-compose.yml": {"include": ["b.yml"], "services": {"s": HARDENED}},
                "b.yml": {"services": {"s": HARDENED}},
            },
            r"already defined",
            id="conflict",
        ),
        pytest.param(
            {
                "docker-compose.yml": {"include": ["b.yml"], "services": {}},
                "b.yml": {"include": ["docker-compose.yml"], "services": {}},
            },
            "include loop",
            id="loop",
        ),
        pytest.param({"docker-compose.yml": {"include": [{"env_file": ".env"}]}}, "without a path", id="no-path"),
    ],
)
def test_bad_include_cannot_be_judged(tmp_path, files, match):
    for name, model in files.items():
        write(tmp_path / name, model)
    with pytest.raises(ComposeFileError, match=match):
        audit_compose_file(tmp_path / "docker-compose.yml")


# --- the deploy environment and the gate -----------------------------------------


def test_deploy_environment_layers_dotenv_process_and_settings(tmp_path, monkeypatch):
    compose = write(tmp_path / "stack" / "docker-compose.yml", {"services": {"s": HARDENED}})
    (compose.parent / ".env").write_text("# comment\nFROM_DOTENV='dotenv'\nSHADOWED=dotenv\nIDP_SERVICE_UID=0\n")
    monkeypatch.setenv("SHADOWED", "process")
    settings = load_settings(settings_file(tmp_path, service_uid=4242, compose_file=str(compose)))
    env = deploy_environment(settings)
    assert env["FROM_DOTENV"] == "dotenv"
    assert env["SHADOWED"] == "process"
    assert env["IDP_SERVICE_UID"] == "4242"  # the settings win, as ComposeProject passes them last
    assert env["IDP_MODELS_DIR"] == str(settings.models_dir)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_gate_passes_the_shipped_files_with_their_deploy_values(tmp_path, profile):
    settings = load_settings(settings_file(tmp_path, profile=profile, service_uid=1000, service_gid=1000))
    findings = audit_gate(settings)
    assert not has_high(findings), [f.to_dict() for f in findings]


def test_gate_fires_the_root_rule_for_service_uid_zero_on_the_shipped_file(tmp_path):
    settings = load_settings(settings_file(tmp_path, service_uid=0, service_gid=0))
    findings = audit_gate(settings)  # root is medium: reported, not blocking
    root = [f for f in findings if f.rule == "IDP-ROOT"]
    # The router service (profile router) shares the hardening, so the shipped file has it too.
    assert {f.service for f in root} == {"openai-standin", "llamacpp-cpu", "llamacpp-router"}
    assert all("${IDP_SERVICE_UID:-65534}" in f.message and "'0:0'" in f.message for f in root)


def test_gate_refuses_a_models_dir_that_is_a_sensitive_host_directory(tmp_path):
    settings = load_settings(settings_file(tmp_path, models_dir="/etc", service_uid=0, service_gid=0))
    with pytest.raises(AuditGateError, match=r"deploy refused: .*docker-compose\.cpu\.yml") as info:
        audit_gate(settings)
    error = info.value
    # llamacpp-router (profile router) mounts the models dir too.
    assert {(f.service, f.rule) for f in error.high} == {
        ("openai-standin", "CIS-5.6"),
        ("llamacpp-cpu", "CIS-5.6"),
        ("llamacpp-router", "CIS-5.6"),
    }
    assert BENCHMARK in str(error) and "llamacpp-cpu: CIS-5.6" in str(error)
    # It carries every finding, not only the blocking ones (the asset records them all).
    assert {f.rule for f in error.findings} == {"CIS-5.6", "IDP-ROOT"}


def test_gate_on_a_file_that_cannot_be_read(tmp_path):
    settings = load_settings(settings_file(tmp_path, compose_file=str(tmp_path / "missing.yml")))
    with pytest.raises(ComposeFileError, match="not found"):
        audit_gate(settings)


def test_compose_audit_asset_runs_the_gate_with_the_settings_values(tmp_path):
    from dagster import materialize

    from idp_ops.resources import SettingsResource
    from idp_ops.stack.defs import compose_audit

    config = settings_file(tmp_path, service_uid=1000, service_gid=1000, models_dir="/boot/llm-models")
    result = materialize(
        [compose_audit], resources={"settings": SettingsResource(config_file=str(config))}, raise_on_error=False
    )
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "no_high_findings" and not check.passed
    assert "CIS-5.6" in check.description and "/boot/llm-models" in check.description
    (materialization,) = result.asset_materializations_for_node("compose_audit")
    assert materialization.metadata["benchmark"].value == BENCHMARK
    assert materialization.metadata["high"].value == 3  # openai-standin, llamacpp-cpu, llamacpp-router


def test_an_included_file_may_hold_no_services(tmp_path):
    write(tmp_path / "net.yml", {"networks": {"inference": {"driver": "bridge"}}})
    path = write(tmp_path / "docker-compose.yml", {"include": ["net.yml"], "services": {"s": HARDENED}})
    model = load_compose_file(path)
    assert set(model["services"]) == {"s"} and "inference" in model["networks"]
    assert audit_compose_file(path) == []


# --- reasoned, per-service acceptances (x-idp-audit-accept) ---------------------

SOCKET = "/var/run/docker.sock:/var/run/docker.sock"
WHY = "the DockerRunLauncher starts every run as a container: it needs the Docker API"


def with_socket(accept: list | None = None, **more) -> dict:
    svc = {**HARDENED, "volumes": [SOCKET], **more}
    if accept is not None:
        svc["x-idp-audit-accept"] = accept
    return svc


def gate_settings(tmp_path: Path, compose: Path):
    return load_settings(settings_file(tmp_path, compose_file=str(compose), service_uid=1000, service_gid=1000))


def test_an_accepted_docker_socket_passes_the_gate_and_is_listed_with_its_reason(tmp_path):
    compose = write(
        tmp_path / "docker-compose.yml", {"services": {"daemon": with_socket([{"rule": "CIS-5.32", "reason": WHY}])}}
    )
    # Without the acceptance the same service is refused: the acceptance is what lets it through.
    unaccepted = write(tmp_path / "plain" / "docker-compose.yml", {"services": {"daemon": with_socket()}})
    with pytest.raises(AuditGateError):
        audit_gate(gate_settings(tmp_path, unaccepted))

    result = audit_gate_result(gate_settings(tmp_path, compose))
    assert result.findings == [] and audit_gate(gate_settings(tmp_path, compose)) == []
    (accepted,) = result.accepted
    assert (accepted.service, accepted.rule, accepted.severity, accepted.status) == (
        "daemon",
        "CIS-5.32",
        "high",
        "accepted",
    )
    assert accepted.reason == WHY and "/var/run/docker.sock" in accepted.message
    assert list(accepted.to_dict()) == ["service", "rule", "severity", "message", "status", "reason"]


def test_the_same_mount_on_a_second_service_without_an_acceptance_blocks(tmp_path):
    compose = write(
        tmp_path / "docker-compose.yml",
        {
            "services": {
                "daemon": with_socket([{"rule": "CIS-5.32", "reason": WHY}]),
                "webserver": with_socket(),
            }
        },
    )
    with pytest.raises(AuditGateError) as info:
        audit_gate(gate_settings(tmp_path, compose))
    error = info.value
    assert [(f.service, f.rule) for f in error.high] == [("webserver", "CIS-5.32")]
    assert "daemon" not in str(error)
    # The refusal still carries the accepted one, so the record shows it.
    assert [(a.service, a.rule, a.reason) for a in error.accepted] == [("daemon", "CIS-5.32", WHY)]


def test_an_acceptance_covers_only_its_own_rule(tmp_path):
    # daemon accepts the socket, not /etc: the sensitive mount still blocks.
    daemon = with_socket([{"rule": "CIS-5.32", "reason": WHY}])
    daemon["volumes"] = [SOCKET, "/etc:/host-etc:ro"]
    result = audit_compose_file_result(write(tmp_path / "docker-compose.yml", {"services": {"daemon": daemon}}))
    assert [(f.service, f.rule) for f in result.findings] == [("daemon", "CIS-5.6")]
    assert [(a.service, a.rule) for a in result.accepted] == [("daemon", "CIS-5.32")]


@pytest.mark.parametrize(
    ("accept", "named"),
    [
        pytest.param([{"rule": "CIS-5.32"}], "without a reason", id="missing-reason"),
        pytest.param([{"rule": "CIS-5.32", "reason": ""}], "without a reason", id="empty-reason"),
        pytest.param([{"rule": "CIS-5.32", "reason": None}], "without a reason", id="null-reason"),
        pytest.param([{"rule": "CIS-532", "reason": WHY}], "unknown rule 'CIS-532'", id="unknown-rule"),
    ],
)
def test_a_broken_acceptance_is_a_high_finding_and_accepts_nothing(tmp_path, accept, named):
    compose = write(tmp_path / "docker-compose.yml", {"services": {"daemon": with_socket(accept)}})
    with pytest.raises(AuditGateError) as info:
        audit_gate(gate_settings(tmp_path, compose))
    error = info.value
    assert {(f.service, f.rule) for f in error.high} == {("daemon", "CIS-5.32"), ("daemon", "IDP-ACCEPT-INVALID")}
    (invalid,) = [f for f in error.high if f.rule == "IDP-ACCEPT-INVALID"]
    assert named in invalid.message and invalid.severity == "high"
    assert error.accepted == []


def test_an_unused_acceptance_is_a_note_that_does_not_block(tmp_path):
    compose = write(
        tmp_path / "docker-compose.yml",
        {"services": {"daemon": {**HARDENED, "x-idp-audit-accept": [{"rule": "CIS-5.32", "reason": WHY}]}}},
    )
    findings = audit_gate(gate_settings(tmp_path, compose))
    assert [(f.service, f.rule, f.severity) for f in findings] == [("daemon", "IDP-ACCEPT-UNUSED", "note")]
    assert not has_high(findings)


def test_a_top_level_acceptance_is_refused_and_silences_nothing(tmp_path):
    compose = write(
        tmp_path / "docker-compose.yml",
        {"x-idp-audit-accept": [{"rule": "CIS-5.32", "reason": WHY}], "services": {"daemon": with_socket()}},
    )
    result = audit_compose_file_result(compose)
    assert {(f.service, f.rule) for f in result.findings} == {("daemon", "CIS-5.32"), ("", "IDP-ACCEPT-INVALID")}
    assert result.accepted == []


def test_the_acceptance_follows_the_service_through_extends_as_compose_merges_it(tmp_path):
    # The base (another file) mounts the socket and accepts it; the extending service adds its own
    # acceptance for a sensitive mount of its own. Compose appends x- lists through extends.
    write(
        tmp_path / "base" / "docker-client.yml",
        {"services": {"docker-client": with_socket([{"rule": "CIS-5.32", "reason": WHY}])}},
    )
    compose = write(
        tmp_path / "docker-compose.yml",
        {
            "services": {
                "daemon": {
                    "extends": {"file": "base/docker-client.yml", "service": "docker-client"},
                    "volumes": ["/etc/ssl/certs:/etc/ssl/certs:ro"],
                    "x-idp-audit-accept": [{"rule": "CIS-5.6", "reason": "the CA bundle for the registry"}],
                },
                # Extends without an acceptance of its own still carries the base's: what compose runs.
                "runner": {"extends": {"file": "base/docker-client.yml", "service": "docker-client"}},
                # The same socket written by hand, no acceptance: still fires.
                "webserver": with_socket(),
            }
        },
    )
    result = audit_compose_file_result(compose)
    assert [(f.service, f.rule) for f in result.findings] == [("webserver", "CIS-5.32")]
    assert sorted((a.service, a.rule, a.reason) for a in result.accepted) == [
        ("daemon", "CIS-5.32", WHY),
        ("daemon", "CIS-5.6", "the CA bundle for the registry"),
        ("runner", "CIS-5.32", WHY),
    ]

    # Cross-check with compose itself: the resolved config keeps the x- key in the service,
    # with the same entries our assembly judged. (YAML output: Compose v5.6.1's `--format json`
    # drops service-level x- keys, which is why the audit reads its own assembly, not compose's.)
    ours = load_compose_file(compose)["services"]
    out = subprocess.run(
        [*find_compose_command(), "-f", str(compose), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=True,
    )
    theirs = yaml.safe_load(out.stdout)["services"]
    for name in ("daemon", "runner", "webserver"):
        assert theirs[name].get("x-idp-audit-accept") == ours[name].get("x-idp-audit-accept"), name


def test_audit_compose_prints_accepted_findings_apart(tmp_path, monkeypatch, capsys):
    compose = write(
        tmp_path / "docker-compose.yml", {"services": {"daemon": with_socket([{"rule": "CIS-5.32", "reason": WHY}])}}
    )
    monkeypatch.chdir(tmp_path)  # no idp-ops.yaml here: default settings
    assert cli_main(["audit-compose", str(compose), "--json"]) == 0  # accepted: not a refusal
    printed = json.loads(capsys.readouterr().out)
    assert printed["findings"] == []
    assert printed["accepted"] == [
        {
            "service": "daemon",
            "rule": "CIS-5.32",
            "severity": "high",
            "message": printed["accepted"][0]["message"],
            "status": "accepted",
            "reason": WHY,
        }
    ]
    assert cli_main(["audit-compose", str(compose)]) == 0
    human = capsys.readouterr().out
    assert "accepted (1" in human and "CIS-5.32" in human and f"accepted because: {WHY}" in human
    assert "no findings" not in human  # an accepted high finding is still shown, not hidden

    # A second, unaccepted socket: exit 1, the open finding listed, the accepted one still apart.
    write(compose, {"services": {"daemon": with_socket([{"rule": "CIS-5.32", "reason": WHY}]), "web": with_socket()}})
    assert cli_main(["audit-compose", str(compose), "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert [(f["service"], f["rule"]) for f in printed["findings"]] == [("web", "CIS-5.32")]
    assert [(a["service"], a["status"]) for a in printed["accepted"]] == [("daemon", "accepted")]


def test_compose_audit_asset_records_the_accepted_findings(tmp_path):
    from dagster import materialize

    from idp_ops.resources import SettingsResource
    from idp_ops.stack.defs import compose_audit

    compose = write(
        tmp_path / "docker-compose.yml", {"services": {"daemon": with_socket([{"rule": "CIS-5.32", "reason": WHY}])}}
    )
    config = settings_file(tmp_path, compose_file=str(compose), service_uid=1000, service_gid=1000)
    result = materialize([compose_audit], resources={"settings": SettingsResource(config_file=str(config))})
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "no_high_findings" and check.passed
    (materialization,) = result.asset_materializations_for_node("compose_audit")
    metadata = materialization.metadata
    assert metadata["high"].value == 0 and metadata["accepted_count"].value == 1
    assert "CIS-5.32" in metadata["accepted"].value and WHY in metadata["accepted"].value
