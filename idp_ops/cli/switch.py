"""`idp-ops models switch ENDPOINT MODEL [--json]`: switch a llama.cpp endpoint's model, proven or rolled back.

Exit status: 0 switched and proven; 1 refused in preflight, rolled back, or rollback failed (the endpoint then
serves nothing: the message says so first); 2 bad input (unknown endpoint or model: the choices are listed).
"""

from __future__ import annotations

import argparse


def cmd_switch(args: argparse.Namespace) -> int:
    from idp_ops.cli.main import emit, progress
    from idp_ops.models.switch import switch_model
    from idp_ops.settings import load_settings

    settings = load_settings(args.config)
    result = switch_model(settings, args.endpoint, args.model, progress=progress(args))

    def human(d: dict) -> str:
        lines = [f"{d['outcome'].upper()}: {d['message']}"]
        for check in d["preflight"]:
            lines.append(f"  {check['check']:<28} {check['status']:<12} {check['detail']}")
        timings = ", ".join(
            f"{name} {d[name + '_s']:.2f} s"
            for name in ("preflight", "recreate", "prove", "rollback")
            if d.get(name + "_s") is not None
        )
        lines.append(f"  timings: {timings}")
        if d.get("served"):
            lines.append(f"  serving: {d['served'].get('model_id')} ({d['served'].get('model_path')})")
        return "\n".join(lines)

    emit(args, result.as_dict(), human)
    return 0 if result.ok else 1


def register(models: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Adds `switch` to the `models` noun (its subparsers, from cli/main.py)."""
    switch = models.add_parser(
        "switch",
        parents=[common],
        help="serve another GGUF on a llama.cpp endpoint: preflight, recreate that service, prove; roll back on failure",
    )
    switch.add_argument("endpoint", help="endpoint name (settings: endpoints)")
    switch.add_argument("model", help="GGUF in the models dir: relative path, file name, or file name without .gguf")
    switch.set_defaults(func=cmd_switch)
