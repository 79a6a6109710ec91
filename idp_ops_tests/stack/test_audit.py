from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from idp_ops.cli.main import main as cli_main
from idp_ops.stack.audit import (
    RULES,
    ComposeFileError,
    Finding,
    audit_compose,
    audit_compose_file,
    has_high,
    load_compose_file,
)

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
README = Path(__file__).resolve().parents[2] / "README.md"
# A planted fake key, assembled at run time so no key-shaped literal sits in the repository.
SECRET = "sk-" + "abcdef0123456789ABCDEFxyz"
DROP = object()
ACCEPT = "x-idp-audit-accept"
REVISION = "0123456789abcdef0123456789abcdef01234567"  # 40 hex: a pinned commit id


def hardened_service() -> dict:
    return {
        "image": "ghcr.io/ggml-org/llama.cpp:server",
        "user": "65534:65534",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "ports": ["127.0.0.1:8000:8000"],
        "volumes": ["/mnt/models:/models:ro"],
        "healthcheck": {"test": ["CMD", "curl", "-f", "http://127.0.0.1:8000/health"], "interval": "30s"},
        "deploy": {"resources": {"limits": {"memory": "1g", "cpus": "1.0", "pids": 256}}},
        "logging": {"driver": "json-file", "options": {"max-size": "20m", "max-file": "3"}},
    }


def service_with(changes: dict) -> dict:
    """The hardened service with `changes` applied; keys may be dotted paths, DROP deletes."""
    svc = hardened_service()
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = svc
        for parent in parents:
            node = node[parent]
        if value is DROP:
            del node[key]
        else:
            node[key] = copy.deepcopy(value)
    return svc


def write_compose(tmp_path: Path, services: dict, **top) -> Path:
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump({**top, "services": services}, sort_keys=False))
    return path


def audit_bad(tmp_path: Path, changes: dict) -> list[Finding]:
    """Audit a file with one hardened service `good` and one `bad` carrying `changes`."""
    path = write_compose(tmp_path, {"good": hardened_service(), "bad": service_with(changes)})
    return audit_compose_file(path)


def test_hardened_service_has_no_findings(tmp_path):
    path = write_compose(tmp_path, {"svc": hardened_service()})
    assert audit_compose_file(path) == []


# (case id, changes to the hardened service, rule, text the message must name)
BAD_CASES = [
    ("cap_drop-missing", {"cap_drop": DROP}, "CIS-5.4", "cap_drop"),
    ("cap_drop-partial", {"cap_drop": ["NET_RAW"]}, "CIS-5.4", "ALL"),
    ("cap_add-SYS_ADMIN", {"cap_add": ["SYS_ADMIN"]}, "CIS-5.4", "SYS_ADMIN"),
    ("cap_add-CAP_NET_ADMIN", {"cap_add": ["CAP_NET_ADMIN"]}, "CIS-5.4", "NET_ADMIN"),
    ("privileged", {"privileged": True}, "CIS-5.5", "privileged"),
    ("no-memory-limit", {"deploy.resources.limits.memory": DROP}, "CIS-5.11", "memory"),
    ("no-cpu-limit", {"deploy.resources.limits.cpus": DROP}, "CIS-5.12", "CPU"),
    ("read_only-false", {"read_only": False}, "CIS-5.13", "read_only"),
    ("read_only-missing", {"read_only": DROP}, "CIS-5.13", "read_only"),
    ("port-0.0.0.0", {"ports": ["0.0.0.0:8000:8000"]}, "CIS-5.14", "0.0.0.0:8000:8000"),
    ("port-host:container", {"ports": ["8000:8000"]}, "CIS-5.14", "8000:8000"),
    ("port-bare-string", {"ports": ["8080"]}, "CIS-5.14", "8080"),
    ("port-int", {"ports": [8080]}, "CIS-5.14", "8080"),
    ("port-udp-all-interfaces", {"ports": ["5353:5353/udp"]}, "CIS-5.14", "5353:5353/udp"),
    ("port-long-no-host_ip", {"ports": [{"target": 8080, "published": 18080}]}, "CIS-5.14", "all interfaces"),
    (
        "port-long-public-host_ip",
        {"ports": [{"target": 8080, "published": 18080, "host_ip": "0.0.0.0"}]},
        "CIS-5.14",
        "0.0.0.0",
    ),
    ("port-interpolated-public", {"ports": ["0.0.0.0:${IDP_PORT:-18000}:8080"]}, "CIS-5.14", "0.0.0.0"),
    ("port-lan-ip", {"ports": ["192.168.1.10:8000:8000"]}, "CIS-5.14", "192.168.1.10"),
    ("network_mode-host", {"network_mode": "host", "ports": DROP}, "CIS-5.10", "network_mode: host"),
    ("pid-host", {"pid": "host"}, "CIS-5.16", "pid: host"),
    ("ipc-host", {"ipc": "host"}, "CIS-5.17", "shm_size"),
    ("security_opt-missing", {"security_opt": DROP}, "CIS-5.26", "no-new-privileges"),
    ("security_opt-false", {"security_opt": ["no-new-privileges:false"]}, "CIS-5.26", "no-new-privileges"),
    ("healthcheck-missing", {"healthcheck": DROP}, "CIS-5.27", "no healthcheck"),
    ("healthcheck-disabled", {"healthcheck": {"disable": True}}, "CIS-5.27", "disables"),
    ("healthcheck-NONE", {"healthcheck": {"test": ["NONE"]}}, "CIS-5.27", "disables"),
    ("no-pids-limit", {"deploy.resources.limits.pids": DROP}, "CIS-5.29", "pids"),
    (
        "docker.sock-short",
        {"volumes": ["/mnt/models:/models:ro", "/var/run/docker.sock:/var/run/docker.sock"]},
        "CIS-5.32",
        "/var/run/docker.sock",
    ),
    (
        "docker.sock-long",
        {
            "volumes": [
                "/mnt/models:/models:ro",
                {"type": "bind", "source": "/run/docker.sock", "target": "/sock", "read_only": True},
            ]
        },
        "CIS-5.32",
        "/run/docker.sock",
    ),
    ("env-list-interpolated", {"environment": ["VLLM_API_KEY=${VLLM_API_KEY}"]}, "IDP-SECRET-ENV", "VLLM_API_KEY"),
    (
        "env-mapping-interpolated",
        {"environment": {"VLLM_API_KEY": "${VLLM_API_KEY}"}},
        "IDP-SECRET-ENV",
        "VLLM_API_KEY",
    ),
    ("env-mapping-literal", {"environment": {"HF_TOKEN": "hf_literal"}}, "IDP-SECRET-ENV", "HF_TOKEN"),
    ("env-literal-key-value", {"environment": {"OPENAI_BASE": SECRET}}, "IDP-SECRET-ENV", "OPENAI_BASE"),
    # 64 hex digits is what `secrets generate` writes: still a key, unlike a 40-hex revision.
    (
        "env-literal-64-hex",
        {"environment": {"UPSTREAM_AUTH": "0123456789abcdef" * 4}},
        "IDP-SECRET-ENV",
        "UPSTREAM_AUTH",
    ),
    ("env_file-secrets", {"env_file": "./secrets/api-keys.env"}, "IDP-SECRET-ENV", "./secrets/api-keys.env"),
    (
        "env_file-long",
        {"env_file": [{"path": "./config/tokens.env", "required": False}]},
        "IDP-SECRET-ENV",
        "./config/tokens.env",
    ),
    ("cmd-api-key-literal", {"command": ["--model", "/models", "--api-key", SECRET]}, "IDP-SECRET-CMD", "--api-key"),
    ("cmd-api-key-equals", {"command": f"--api-key={SECRET} --port 8000"}, "IDP-SECRET-CMD", "--api-key"),
    ("cmd-password-flag", {"command": ["--password", "hunter2"]}, "IDP-SECRET-CMD", "--password"),
    ("cmd-token-interpolated", {"command": ["--token", "${HF_TOKEN}"]}, "IDP-SECRET-CMD", "HF_TOKEN"),
    # Token-count words (MAX_TOKENS is not a secret) must not hide real secrets ending in them.
    ("env-admin-token", {"environment": {"ADMIN_TOKEN": "x"}}, "IDP-SECRET-ENV", "ADMIN_TOKEN"),
    ("env-login-token", {"environment": ["LOGIN_TOKEN=x"]}, "IDP-SECRET-ENV", "LOGIN_TOKEN"),
    ("cmd-admin-token-flag", {"command": ["--admin-token", "x"]}, "IDP-SECRET-CMD", "--admin-token"),
    ("cmd-gen-token-interpolated", {"command": ["--auth", "${GEN_TOKEN}"]}, "IDP-SECRET-CMD", "GEN_TOKEN"),
    (
        "healthcheck-bearer-interpolated",
        {
            "healthcheck.test": [
                "CMD-SHELL",
                'curl -fsS -H "Authorization: Bearer ${VLLM_API_KEY}" http://127.0.0.1:8000/v1/models',
            ]
        },
        "IDP-SECRET-CMD",
        "VLLM_API_KEY",
    ),
    (
        "entrypoint-dollar-name",
        {"entrypoint": ["/bin/sh", "-c", "exec server --key-from-env $OPENAI_API_KEY"]},
        "IDP-SECRET-CMD",
        "OPENAI_API_KEY",
    ),
    (
        "cmd-hex-literal",
        {"command": ["--header", "X-Auth: " + "0123456789abcdef" * 2]},
        "IDP-SECRET-CMD",
        "looks like an API key",
    ),
    ("models-rw-short", {"volumes": ["/mnt/models:/models"]}, "IDP-MODEL-RW", "/mnt/models"),
    ("models-rw-explicit", {"volumes": ["${IDP_MODELS_DIR}:/models:rw"]}, "IDP-MODEL-RW", "${IDP_MODELS_DIR}"),
    (
        "models-rw-long",
        {"volumes": [{"type": "bind", "source": "/srv/llm", "target": "/models"}]},
        "IDP-MODEL-RW",
        "/srv/llm",
    ),
    ("models-anonymous", {"volumes": ["/models"]}, "IDP-MODEL-RW", "/models"),
    ("user-root", {"user": "root"}, "IDP-ROOT", "root"),
    ("user-0:0", {"user": "0:0"}, "IDP-ROOT", "0:0"),
    ("user-int-0", {"user": 0}, "IDP-ROOT", "user: 0"),
    ("user-interpolated-root-default", {"user": "${IDP_UID:-0}:${IDP_GID:-0}"}, "IDP-ROOT", "${IDP_UID:-0}"),
    ("user-missing", {"user": DROP}, "IDP-ROOT", "no user"),
    ("logging-missing", {"logging": DROP}, "IDP-LOGGING", "logging"),
    ("logging-no-max-size", {"logging.options": {"max-file": "3"}}, "IDP-LOGGING", "max-size"),
    ("logging-local-no-options", {"logging": {"driver": "local"}}, "IDP-LOGGING", "local"),
    # A service's own x-idp-audit-accept is checked too (the hardened service triggers no rule).
    ("accept-no-reason", {ACCEPT: [{"rule": "CIS-5.32"}]}, "IDP-ACCEPT-INVALID", "without a reason"),
    ("accept-blank-reason", {ACCEPT: [{"rule": "CIS-5.32", "reason": "  "}]}, "IDP-ACCEPT-INVALID", "without a reason"),
    ("accept-unknown-rule", {ACCEPT: [{"rule": "CIS-5.99", "reason": "r"}]}, "IDP-ACCEPT-INVALID", "'CIS-5.99'"),
    ("accept-no-rule", {ACCEPT: [{"reason": "because"}]}, "IDP-ACCEPT-INVALID", "names no rule"),
    ("accept-not-a-list", {ACCEPT: {"rule": "CIS-5.32", "reason": "r"}}, "IDP-ACCEPT-INVALID", "must be a list"),
    ("accept-entry-string", {ACCEPT: ["CIS-5.32"]}, "IDP-ACCEPT-INVALID", "must be a mapping"),
    (
        "accept-narrowing-key",
        {ACCEPT: [{"rule": "CIS-5.6", "reason": "r", "target": "/etc"}]},
        "IDP-ACCEPT-INVALID",
        "unknown key(s) ['target']",
    ),
    (
        "accept-itself",
        {ACCEPT: [{"rule": "IDP-ACCEPT-INVALID", "reason": "r"}]},
        "IDP-ACCEPT-INVALID",
        "about acceptances themselves",
    ),
    ("accept-unused", {ACCEPT: [{"rule": "CIS-5.32", "reason": "r"}]}, "IDP-ACCEPT-UNUSED", "does not trigger it"),
]

# Root-equivalent settings (issue 9, item 12): each is high and named in the message.
NNP = "no-new-privileges:true"
ROOT_EQUIVALENT_CASES = [
    ("mount-root", {"volumes": ["/:/host"]}, "CIS-5.6", "the host's root filesystem"),
    ("mount-etc", {"volumes": ["/etc:/host/etc:ro"]}, "CIS-5.6", "'/etc:/host/etc:ro'"),
    ("mount-etc-file", {"volumes": ["/etc/shadow:/shadow:ro"]}, "CIS-5.6", "beneath /etc"),
    ("mount-etc-trailing-slash", {"volumes": ["/etc/:/e"]}, "CIS-5.6", "host path /etc via"),
    ("mount-etc-dotdot", {"volumes": ["/srv/data/../../etc:/e"]}, "CIS-5.6", "host path /etc via"),
    ("mount-etc-double-slash", {"volumes": ["//etc:/e"]}, "CIS-5.6", "host path /etc via"),
    ("mount-proc", {"volumes": ["/proc:/host/proc:ro"]}, "CIS-5.6", "/proc"),
    ("mount-sys", {"volumes": ["/sys:/host/sys"]}, "CIS-5.6", "/sys"),
    ("mount-boot", {"volumes": ["/boot:/boot:ro"]}, "CIS-5.6", "/boot"),
    ("mount-dev", {"volumes": ["/dev:/dev"]}, "CIS-5.6", "/dev"),
    ("mount-dev-mem", {"volumes": ["/dev/mem:/dev/mem"]}, "CIS-5.6", "beneath /dev"),
    ("mount-var-run", {"volumes": ["/var/run:/host-run"]}, "CIS-5.6", "/var/run"),
    ("mount-run", {"volumes": ["/run:/host-run:ro"]}, "CIS-5.6", "/run"),
    ("mount-var-holds-var-run", {"volumes": ["/var:/host-var:ro"]}, "CIS-5.6", "it holds /var/run"),
    ("mount-root-home", {"volumes": ["/root:/r"]}, "CIS-5.6", "/root"),
    ("mount-home", {"volumes": ["/home:/h:ro"]}, "CIS-5.6", "/home"),
    ("mount-home-ssh", {"volumes": ["/home/alice/.ssh:/ssh:ro"]}, "CIS-5.6", "beneath /home"),
    ("mount-a-users-home", {"volumes": ["/home/alice:/a:ro"]}, "CIS-5.6", "a user's home directory"),
    ("mount-root-dotdir", {"volumes": ["/root/.docker:/d:ro"]}, "CIS-5.6", "dot-directory beneath /root"),
    ("mount-tilde-alone", {"volumes": ["~:/h:ro"]}, "CIS-5.6", "home directory"),
    ("mount-tilde", {"volumes": ["~/.aws:/aws:ro"]}, "CIS-5.6", "home directory"),
    ("mount-usr", {"volumes": ["/usr/lib:/l:ro"]}, "CIS-5.6", "beneath /usr"),
    (
        "mount-relative-up-to-root",
        {"volumes": ["../" * 40 + ":/host:ro"]},
        "CIS-5.6",
        "the host's root filesystem",
    ),
    (
        "mount-long-bind-etc",
        {"volumes": [{"type": "bind", "source": "/etc/", "target": "/host-etc", "read_only": True}]},
        "CIS-5.6",
        "bind /etc/ -> /host-etc",
    ),
    (
        "mount-long-bind-dotdot",
        {"volumes": [{"type": "bind", "source": "/opt/../home/bob", "target": "/b"}]},
        "CIS-5.6",
        "/home/bob",
    ),
    (
        "docker.sock-any-path",
        {"volumes": ["/home/alice/.docker/run/docker.sock:/var/run/docker.sock"]},
        "CIS-5.32",
        "/home/alice/.docker/run/docker.sock",
    ),
    ("devices-short", {"devices": ["/dev/mem:/dev/mem"]}, "CIS-5.18", "devices: '/dev/mem:/dev/mem'"),
    (
        "devices-long",
        {"devices": [{"source": "/dev/sda", "target": "/dev/xvda", "permissions": "rwm"}]},
        "CIS-5.18",
        "/dev/sda -> /dev/xvda",
    ),
    ("device_cgroup_rules", {"device_cgroup_rules": ["c 1:1 rwm"]}, "CIS-5.18", "device_cgroup_rules: 'c 1:1 rwm'"),
    ("seccomp-colon", {"security_opt": [NNP, "seccomp:unconfined"]}, "CIS-5.22", "security_opt: 'seccomp:unconfined'"),
    ("seccomp-equals", {"security_opt": [NNP, "seccomp=unconfined"]}, "CIS-5.22", "seccomp=unconfined"),
    ("apparmor-colon", {"security_opt": [NNP, "apparmor:unconfined"]}, "CIS-5.2", "apparmor:unconfined"),
    ("apparmor-equals", {"security_opt": ["apparmor=unconfined", NNP]}, "CIS-5.2", "apparmor=unconfined"),
    ("label-disable-colon", {"security_opt": [NNP, "label:disable"]}, "CIS-5.3", "label:disable"),
    ("label-disable-equals", {"security_opt": [NNP, "label=disable"]}, "CIS-5.3", "label=disable"),
    ("label-spc_t", {"security_opt": [NNP, "label=type:spc_t"]}, "CIS-5.3", "label=type:spc_t"),
    (
        "systempaths-equals",
        {"security_opt": [NNP, "systempaths=unconfined"]},
        "IDP-SYSTEMPATHS",
        "systempaths=unconfined",
    ),
    (
        "systempaths-colon",
        {"security_opt": [NNP, "systempaths:unconfined"]},
        "IDP-SYSTEMPATHS",
        "systempaths:unconfined",
    ),
    ("userns_mode-host", {"userns_mode": "host"}, "CIS-5.31", "userns_mode: host"),
    ("uts-host", {"uts": "host"}, "CIS-5.21", "uts: host"),
    ("cgroup-host", {"cgroup": "host"}, "IDP-CGROUP-HOST", "cgroup: host"),
    (
        "pid-host-interpolated",
        {"pid": "${IDP_PID_MODE:-host}"},
        "CIS-5.16",
        "pid: ${IDP_PID_MODE:-host} (resolves to host)",
    ),
    ("propagation-short-rshared", {"volumes": ["/mnt/models:/models:ro,rshared"]}, "CIS-5.20", "rshared propagation"),
    ("propagation-short-shared", {"volumes": ["/srv/data:/data:shared"]}, "CIS-5.20", "'/srv/data:/data:shared'"),
    (
        "propagation-long",
        {"volumes": [{"type": "bind", "source": "/srv/data", "target": "/data", "bind": {"propagation": "rshared"}}]},
        "CIS-5.20",
        "rshared propagation",
    ),
] + [
    (f"cap_add-{written}", {"cap_add": [written]}, "CIS-5.4", f"capability {canonical} (cap_add: '{written}')")
    for written, canonical in [
        ("sys_admin", "SYS_ADMIN"),
        ("CAP_SYS_ADMIN", "SYS_ADMIN"),
        ("SYS_PTRACE", "SYS_PTRACE"),
        ("sys_module", "SYS_MODULE"),
        ("SYS_RAWIO", "SYS_RAWIO"),
        ("cap_sys_time", "SYS_TIME"),
        ("NET_ADMIN", "NET_ADMIN"),
        ("net_raw", "NET_RAW"),
        ("BPF", "BPF"),
        ("PERFMON", "PERFMON"),
        ("DAC_READ_SEARCH", "DAC_READ_SEARCH"),
        ("Dac_Override", "DAC_OVERRIDE"),
        ("MKNOD", "MKNOD"),
        ("all", "ALL"),
    ]
]
BAD_CASES += ROOT_EQUIVALENT_CASES


@pytest.mark.parametrize(
    ("changes", "rule", "named"),
    [pytest.param(changes, rule, named, id=case_id) for case_id, changes, rule, named in BAD_CASES],
)
def test_rule_flags_planted_problem(tmp_path, changes, rule, named):
    findings = audit_bad(tmp_path, changes)

    assert findings, "expected a finding"
    assert {f.rule for f in findings} == {rule}, [f.to_dict() for f in findings]
    for finding in findings:
        assert finding.service == "bad"
        assert finding.severity == RULES[rule][0]
    assert any(named in f.message for f in findings), [f.message for f in findings]


def test_every_rule_has_a_case():
    assert {rule for _, _, rule, _ in BAD_CASES} == set(RULES)


# The severity each rule is promised (the README's audit paragraph, the deploy gate that stops on
# "high"), written out here and reached through the audit of a planted setting (a case id from
# BAD_CASES), never read back from RULES.
PROMISED_SEVERITY = [
    ("CIS-5.2", "high", "apparmor-equals"),
    ("CIS-5.3", "high", "label-disable-colon"),
    ("CIS-5.4", "high", "cap_add-SYS_ADMIN"),
    ("CIS-5.5", "high", "privileged"),
    ("CIS-5.6", "high", "mount-etc"),
    ("CIS-5.10", "high", "network_mode-host"),
    ("CIS-5.11", "medium", "no-memory-limit"),
    ("CIS-5.12", "low", "no-cpu-limit"),
    ("CIS-5.13", "medium", "read_only-false"),
    ("CIS-5.14", "high", "port-0.0.0.0"),
    ("CIS-5.16", "high", "pid-host"),
    ("CIS-5.17", "high", "ipc-host"),
    ("CIS-5.18", "high", "devices-short"),
    ("CIS-5.20", "high", "propagation-short-shared"),
    ("CIS-5.21", "high", "uts-host"),
    ("CIS-5.22", "high", "seccomp-equals"),
    ("CIS-5.26", "medium", "security_opt-missing"),
    ("CIS-5.27", "medium", "healthcheck-missing"),
    ("CIS-5.29", "medium", "no-pids-limit"),
    ("CIS-5.31", "high", "userns_mode-host"),
    ("CIS-5.32", "high", "docker.sock-short"),
    ("IDP-CGROUP-HOST", "high", "cgroup-host"),
    ("IDP-SYSTEMPATHS", "high", "systempaths-equals"),
    ("IDP-SECRET-ENV", "high", "env-mapping-literal"),
    ("IDP-SECRET-CMD", "high", "cmd-password-flag"),
    ("IDP-MODEL-RW", "high", "models-rw-short"),
    ("IDP-ROOT", "medium", "user-0:0"),
    ("IDP-LOGGING", "low", "logging-missing"),
    ("IDP-ACCEPT-INVALID", "high", "accept-no-reason"),
    ("IDP-ACCEPT-UNUSED", "note", "accept-unused"),
]
CHANGES_BY_CASE = {case_id: changes for case_id, changes, _, _ in BAD_CASES}


@pytest.mark.parametrize(
    ("rule", "severity", "case_id"),
    [pytest.param(rule, severity, case_id, id=f"{rule}-{severity}") for rule, severity, case_id in PROMISED_SEVERITY],
)
def test_rule_severity(tmp_path, rule, severity, case_id):
    findings = audit_bad(tmp_path, CHANGES_BY_CASE[case_id])
    assert {(f.rule, f.severity) for f in findings} == {(rule, severity)}, [f.to_dict() for f in findings]
    assert has_high(findings) is (severity == "high"), "the deploy gate stops on exactly the high ones"


def test_promised_severities_cover_every_rule():
    assert [rule for rule, _, _ in PROMISED_SEVERITY] == list(RULES)


@pytest.mark.parametrize(
    "changes",
    [pytest.param(changes, id=case_id) for case_id, changes, _, _ in ROOT_EQUIVALENT_CASES],
)
def test_every_root_equivalent_setting_is_high(tmp_path, changes):
    """The README: "Every root-equivalent setting is high" -- so the deploy gate refuses it."""
    findings = audit_bad(tmp_path, changes)
    assert findings and {f.severity for f in findings} == {"high"}, [f.to_dict() for f in findings]
    assert has_high(findings)


def readme_audit_paragraph() -> str:
    text = README.read_text()
    start = text.index("`audit-compose` prints")
    return text[start : text.index("\n## ", start)]


def test_every_rule_the_audit_can_emit_is_named_in_the_readme():
    paragraph = readme_audit_paragraph()
    named = set(re.findall(r"`((?:CIS|IDP)-[A-Z0-9.-]*[A-Z0-9])`", paragraph))
    # "`CIS-5.11`/`5.12`": the second id written short
    named |= {f"CIS-{short}" for short in re.findall(r"`CIS-[0-9.]+`/`([0-9.]+)`", paragraph)}
    assert named == set(RULES), {"not in the README": set(RULES) - named, "not a rule": named - set(RULES)}


NOT_FLAGGED = [
    ("api-key-file", {"command": ["--host", "0.0.0.0", "--api-key-file", "/run/secrets/k"]}),
    ("tokenizer-flag", {"command": ["--tokenizer", "/models/tok", "--tokenizer-mode", "auto"]}),
    (
        "escaped-command-substitution",
        {
            "entrypoint": [
                "/bin/sh",
                "-c",
                'VLLM_API_KEY="$$(cat /run/secrets/vllm_api_key)"; export VLLM_API_KEY; exec vllm "$$@"',
                "vllm-entrypoint",
            ]
        },
    ),
    ("escaped-dollar-name", {"healthcheck.test": ["CMD-SHELL", 'test -n "$$VLLM_API_KEY"']}),
    (
        "harmless-env",
        {
            "environment": {
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "API_KEY_FILE": "/run/secrets/api_key",
                "HOME": "/tmp",
            }
        },
    ),
    ("secret-name-without-value", {"environment": ["VLLM_API_KEY", "HF_TOKEN="]}),
    ("env_file-plain", {"env_file": ["./config/runtime.env"]}),
    ("port-interpolated-loopback", {"ports": ["127.0.0.1:${IDP_PORT:-18000}:8080"]}),
    ("port-interpolated-host-ip-default", {"ports": ["${IDP_BIND:-127.0.0.1}:8000:8000"]}),
    ("port-ipv6-loopback", {"ports": ["[::1]:8000:8000"]}),
    ("port-loopback-range-tcp", {"ports": ["127.0.0.2:8000-8001:8000-8001/tcp"]}),
    ("port-long-loopback", {"ports": [{"target": 8080, "published": "18080", "host_ip": "127.0.0.1"}]}),
    ("pids_limit", {"deploy.resources.limits.pids": DROP, "pids_limit": 100}),
    ("mem_limit", {"deploy.resources.limits.memory": DROP, "mem_limit": "1g"}),
    ("cpus-top-level", {"deploy.resources.limits.cpus": DROP, "cpus": 2}),
    ("no-new-privileges-bare", {"security_opt": ["no-new-privileges"]}),
    ("no-new-privileges-equals", {"security_opt": ["no-new-privileges=true"]}),
    ("cap_drop-lowercase", {"cap_drop": ["all"], "cap_add": ["NET_BIND_SERVICE"]}),
    ("user-interpolated", {"user": "${IDP_SERVICE_UID:-65534}:${IDP_SERVICE_GID:-65534}"}),
    ("user-name", {"user": "rootless"}),
    ("models-interpolated-ro", {"volumes": ["${IDP_MODELS_DIR:?IDP_MODELS_DIR must be set}/llama:/models:ro"]}),
    (
        "models-long-ro",
        {"volumes": [{"type": "bind", "source": "/mnt/models", "target": "/models", "read_only": True}]},
    ),
    ("tmpfs-volume", {"volumes": [{"type": "tmpfs", "target": "/models-cache"}, "/mnt/models:/models:ro"]}),
    ("read_only-interpolated", {"read_only": "${IDP_READ_ONLY:-true}"}),
    ("logging-syslog", {"logging": {"driver": "syslog"}}),
    # A pinned 40-hex revision (git / Hugging Face commit id) is not a key (item 15).
    ("revision-40-hex-flag", {"command": ["--model", "/models", "--revision", REVISION]}),
    ("revision-40-hex-flag-equals", {"command": f"--model /models --revision={REVISION} --code-revision {REVISION}"}),
    ("revision-40-hex-env", {"environment": {"REVISION": REVISION, "HF_REVISION": REVISION.upper()}}),
    ("revision-40-hex-env-list", {"environment": [f"REVISION={REVISION}"]}),
    # Token counts are not tokens.
    (
        "max-tokens-env",
        {"environment": {"MAX_TOKENS": "512", "MAX_NUM_BATCHED_TOKENS": "4096", "MAX_NEW_TOKENS": "256"}},
    ),
    ("max-tokens-env-list", {"environment": ["MAX_TOKENS=512", "NUM_TOKENS=8", "TOKENS_PER_SECOND=40"]}),
    (
        "max-tokens-command",
        {
            "command": [
                "--max-tokens",
                "${MAX_TOKENS:-512}",
                "--max-new-token",
                "256",
                "--max-num-batched-tokens",
                "4096",
            ]
        },
    ),
    ("max-tokens-healthcheck", {"healthcheck.test": ["CMD-SHELL", "probe --max-tokens $${MAX_TOKENS} ${MAX_TOKENS}"]}),
    # Not root-equivalent.
    (
        "gpu-reservation",
        {
            "deploy.resources.reservations": {
                "devices": [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
            }
        },
    ),
    ("propagation-rslave", {"volumes": ["/mnt/models:/models:ro,rslave"]}),
    (
        "lookalike-paths",
        {
            "volumes": [
                "/mnt/models:/models:ro",
                "/etcd-data:/etcd:ro",
                "/homelab/cache:/cache:ro",
                "/srv/home/etc:/data:ro",
                "/var/lib/idp:/var/lib/idp:ro",
                "/mnt/run:/mnt/run:ro",
                "etc:/etc-volume",
            ]
        },
    ),
    # A plain folder in a home is a data directory (a clone's ./.idp-data/models lives there).
    ("models-in-a-home", {"volumes": ["/home/alice/idp_ops/models:/models:ro", "~/models:/m2:ro", "/root/llm:/m3:ro"]}),
    (
        "confinement-profiles",
        {
            "security_opt": [
                "no-new-privileges:true",
                "seccomp=/etc/docker/seccomp-llm.json",
                "apparmor=docker-default",
                "label=type:container_t",
            ]
        },
    ),
    ("private-namespaces", {"ipc": "private", "pid": "service:other", "network_mode": "bridge", "uts": ""}),
    ("userns-not-host", {"userns_mode": "${IDP_USERNS:-}"}),
    ("cap_add-harmless", {"cap_add": ["NET_BIND_SERVICE", "CHOWN"]}),
]


@pytest.mark.parametrize(
    "changes",
    [pytest.param(changes, id=case_id) for case_id, changes in NOT_FLAGGED],
)
def test_not_flagged(tmp_path, changes):
    findings = audit_bad(tmp_path, changes)
    assert findings == [], [f.to_dict() for f in findings]


def test_secret_values_are_never_echoed(tmp_path):
    findings = audit_bad(
        tmp_path,
        {
            "command": ["--api-key", SECRET, "--password=hunter2pass"],
            "entrypoint": f"/bin/sh -c 'exec server --token {SECRET}'",
            "environment": {"OPENAI_API_KEY": SECRET, "DB_PASSWORD": "hunter2pass", "OTHER": SECRET},
            "healthcheck.test": ["CMD-SHELL", f"curl -H 'Authorization: Bearer {SECRET}' http://127.0.0.1:8000"],
        },
    )
    assert {f.rule for f in findings} == {"IDP-SECRET-CMD", "IDP-SECRET-ENV"}
    text = str([f.to_dict() for f in findings])
    assert SECRET not in text
    assert SECRET[:12] not in text
    assert "hunter2pass" not in text
    assert any("OPENAI_API_KEY" in f.message for f in findings)
    assert any("DB_PASSWORD" in f.message for f in findings)


def test_merge_keys_and_extension_fields(tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text(
        """
x-hardening: &hardening
  user: "65534:65534"
  read_only: true
  cap_drop: [ALL]
  security_opt: [no-new-privileges:true]
  logging: {driver: json-file, options: {max-size: 10m}}
  healthcheck: {test: ["CMD", "true"]}
  deploy: {resources: {limits: {memory: 1g, cpus: "1", pids: 64}}}
services:
  hardened:
    <<: *hardening
    ports: ["127.0.0.1:${IDP_PORT:-8000}:8000"]
  overridden:
    <<: *hardening
    read_only: false
"""
    )
    findings = audit_compose_file(path)
    assert [(f.service, f.rule) for f in findings] == [("overridden", "CIS-5.13")]


def test_findings_sorted_by_severity_service_rule(tmp_path):
    findings = audit_compose_file(
        write_compose(
            tmp_path,
            {
                "b": {"image": "x"},
                "a": {"image": "x", "privileged": True},
            },
        )
    )
    ranks = {"high": 0, "medium": 1, "low": 2}
    keys = [(ranks[f.severity], f.service) for f in findings]
    assert keys == sorted(keys)
    assert findings[0].severity == "high" and findings[-1].severity == "low"
    a_high = [f.rule for f in findings if f.service == "a" and f.severity == "high"]
    assert a_high == ["CIS-5.4", "CIS-5.5"]  # natural order, not string order
    a_medium = [f.rule for f in findings if f.service == "a" and f.severity == "medium"]
    assert a_medium == ["CIS-5.11", "CIS-5.13", "CIS-5.26", "CIS-5.27", "CIS-5.29", "IDP-ROOT"]
    assert has_high(findings)


def test_has_high():
    low = Finding("svc", "CIS-5.12", "low", "no CPU limit")
    high = Finding("svc", "CIS-5.5", "high", "privileged")
    assert not has_high([])
    assert not has_high([low])
    assert has_high([low, high])


def test_finding_to_dict(tmp_path, monkeypatch, capsys):
    """`audit-compose --json` promises {"benchmark", "file", "findings": [{"service", "rule", "severity",
    "message"}]}: strings, and each finding reads back as the Finding it was."""
    finding = Finding("svc", "CIS-5.5", "high", "service 'svc' runs privileged: true")
    assert Finding(**json.loads(json.dumps(finding.to_dict()))) == finding

    path = write_compose(tmp_path, {"svc": service_with({"privileged": True, "user": "0:0"})})
    monkeypatch.chdir(tmp_path)  # no idp-ops.yaml here: default settings
    assert cli_main(["audit-compose", str(path), "--json"]) == 1  # a high finding
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"benchmark", "file", "findings", "accepted"} and printed["file"] == str(path)
    assert printed["accepted"] == []  # added key: always present, empty when the file accepts nothing
    assert printed["findings"], "the planted problems are reported"
    for item in printed["findings"]:
        assert list(item) == ["service", "rule", "severity", "message"]
        assert all(isinstance(value, str) for value in item.values()), item
    assert [Finding(**item) for item in printed["findings"]] == audit_compose_file(path)
    assert {(f["service"], f["rule"], f["severity"]) for f in printed["findings"]} == {
        ("svc", "CIS-5.5", "high"),
        ("svc", "IDP-ROOT", "medium"),
    }


def test_audit_compose_accepts_a_loaded_model():
    findings = audit_compose({"services": {"svc": service_with({"privileged": True})}})
    assert [(f.service, f.rule) for f in findings] == [("svc", "CIS-5.5")]


# --- malformed files ---------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ComposeFileError, match="not found"):
        audit_compose_file(tmp_path / "nope.yml")


def test_yaml_syntax_error_reports_line(tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text('services:\n  svc:\n    image: x\n    ports: ["8000"\n  other: {}\n')
    with pytest.raises(ComposeFileError, match=r"line \d+") as info:
        load_compose_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("- a\n- b\n", "not a mapping", id="top-level-list"),
        pytest.param("", "not a mapping", id="empty-file"),
        pytest.param("name: x\nnetworks: {}\n", "no `services`", id="no-services"),
        pytest.param("services: [a, b]\n", "no `services`", id="services-list"),
        pytest.param("services:\n  svc: nginx\n", "'svc' is not a mapping", id="service-not-mapping"),
    ],
)
def test_malformed_compose(tmp_path, text, match):
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    with pytest.raises(ComposeFileError, match=match):
        audit_compose_file(path)


def test_compose_file_error_is_value_error():
    with pytest.raises(ValueError, match="top level is not a mapping"):
        audit_compose([])


# --- shipped files -----------------------------------------------------------


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_shipped_compose_has_no_high_findings(name):
    findings = audit_compose_file(COMPOSE_DIR / name)
    high = [f"{f.service}: {f.rule} {f.message}" for f in findings if f.severity == "high"]
    assert not high, "high-severity findings:\n" + "\n".join(high)
