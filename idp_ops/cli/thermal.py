"""`idp-ops thermal …` and `idp-ops thermal-guard`."""

import argparse
from pathlib import Path


def cmd_replay(args: argparse.Namespace) -> int:
    from idp_ops.cli.main import emit
    from idp_ops.settings import load_settings
    from idp_ops.thermal.policy import PolicyConfig, replay
    from idp_ops.thermal.telemetry import CsvReplaySource

    settings = load_settings(args.config)
    source = CsvReplaySource(Path(args.file), device=args.device)
    samples = source.samples()
    decisions = replay(samples, PolicyConfig.from_thresholds(settings.thermal), source.thresholds())
    data = {
        "file": args.file,
        "samples": len(samples),
        "problems": source.problems,
        "decisions": [d.to_dict() for d in decisions],
    }

    def human(d: dict) -> str:
        lines = [f"{d['samples']} samples from {d['file']}; {len(d['decisions'])} decisions"]
        lines += [
            f"  {x['timestamp']}  {x['device']:<6} {x['action']:<8} {x['temperature_c']} °C  {x['reason']}"
            for x in d["decisions"]
        ]
        lines += [f"  problem: {p}" for p in d["problems"][:20]]
        return "\n".join(lines)

    emit(args, data, human)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from idp_ops.cli.main import emit
    from idp_ops.history import database as history
    from idp_ops.settings import load_settings
    from idp_ops.thermal.store import insert_samples, rollup_day
    from idp_ops.thermal.telemetry import CsvReplaySource

    settings = load_settings(args.config)
    source = CsvReplaySource(Path(args.file), device=args.device)
    samples = source.samples()
    with history.connect(settings.history_file) as con:
        new = insert_samples(con, samples)
        days = sorted({s.ts.replace(hour=0, minute=0, second=0, microsecond=0) for s in samples})
        for day in days:
            rollup_day(
                con,
                day,
                warn_c=settings.thermal.warn_c,
                contain_c=settings.thermal.contain_c,
                max_gap_s=3 * settings.thermal.sensor_interval_s,
            )
    data = {
        "file": args.file,
        "samples": len(samples),
        "new_rows": new,
        "days": [d.date().isoformat() for d in days],
        "problems": source.problems,
        "history": str(settings.history_file),
    }
    emit(
        args,
        data,
        lambda d: (
            f"imported {d['new_rows']} new of {d['samples']} samples into {d['history']}"
            + "".join(f"\n  problem: {p}" for p in d["problems"][:20])
        ),
    )
    return 0


def cmd_guard(args: argparse.Namespace) -> int:
    import signal
    import threading

    from idp_ops.cli.main import progress
    from idp_ops.last_good_settings import load_or_last_good
    from idp_ops.stack.deploy import contain
    from idp_ops.thermal.watch import alert_failed_attempt, run_guard

    settings, _ = load_or_last_good(args.config)
    log = progress(args)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    current = {"settings": settings}

    def reload():
        current["settings"], problem = load_or_last_good(args.config)
        return current["settings"], problem

    def contain_now(request) -> None:
        decision = request.decision
        reading = {
            "device": decision.device,
            "temperature_c": decision.temperature_c,
            "sample_timestamp": decision.ts.isoformat(),
            "episode": request.episode,
            "attempt": request.attempt,
        }
        active = current["settings"]
        # Short in-process retries: the guard's own loop tries again on its next tick.
        report = contain(
            active,
            f"thermal guard: {decision.reason}",
            reading,
            log=log,
            retry_for_s=min(active.thermal.contain_retry_s, 3 * active.thermal.guard_interval_s),
            on_failed_attempt=alert_failed_attempt(active, reading, "guard"),
        )
        log(f"contained: stopped {report.stopped} in {report.stop_seconds:.2f} s (attempt {report.attempts})")

    log(f"thermal guard: every {args.interval or settings.thermal.guard_interval_s} s; stops {settings.gpu_services}")
    run_guard(
        settings,
        contain=contain_now,
        stop=stop,
        log=log,
        interval_s=args.interval,
        max_ticks=args.max_ticks,
        reload=reload,
        watch_dagster=not args.no_dagster,
    )
    return 0


def register(sub, common) -> None:
    thermal = sub.add_parser("thermal", help="thermal logs and policy").add_subparsers(dest="action", required=True)
    replay_parser = thermal.add_parser("replay", parents=[common], help="run the thermal policy over a CSV trace")
    replay_parser.add_argument("file")
    replay_parser.add_argument("--device", default="gpu0")
    replay_parser.set_defaults(func=cmd_replay)
    import_parser = thermal.add_parser("import", parents=[common], help="load an old CSV thermal log into history")
    import_parser.add_argument("file")
    import_parser.add_argument("--device", default="gpu0")
    import_parser.set_defaults(func=cmd_import)
    guard = sub.add_parser("thermal-guard", parents=[common], help="watch temperatures and contain, without Dagster")
    guard.add_argument("--interval", type=float, help="seconds between samples (default: settings)")
    guard.add_argument("--max-ticks", type=int, help=argparse.SUPPRESS)
    guard.add_argument(
        "--no-dagster",
        action="store_true",
        help="do not watch the Dagster instance (DAGSTER_HOME or alerts.dagster_home): no dead-man or "
        "scheduler_down alerts from the guard",
    )
    guard.set_defaults(func=cmd_guard)
