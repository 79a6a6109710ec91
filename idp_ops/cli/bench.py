"""`idp-ops bench` and `idp-ops loadtest`: measure an endpoint outside Dagster.

Exit status as for every command: 0 every request succeeded, 1 the run found a
problem (failed requests, wrong token counts), 2 it could not run (endpoint not
ready, key rejected, unknown endpoint, locust missing).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Target:
    name: str
    url: str
    protocol: str
    model: str | None
    key_file: Path | None


def resolve_target(args: argparse.Namespace) -> Target:
    """An endpoint from settings by name, or a URL (which needs --protocol)."""
    from idp_ops.cli.main import CommandError
    from idp_ops.settings import load_settings

    if args.endpoint.startswith(("http://", "https://")):
        if not args.protocol:
            raise CommandError("an endpoint given as a URL needs --protocol openai|llamacpp")
        key_file = Path(args.key_file).expanduser() if args.key_file else None
        return Target(args.endpoint.rstrip("/"), args.endpoint.rstrip("/"), args.protocol, args.model, key_file)
    settings = load_settings(args.config)
    try:
        endpoint = settings.endpoint(args.endpoint)
    except KeyError as exc:
        raise CommandError(str(exc.args[0])) from None
    if args.protocol and args.protocol != endpoint.protocol:
        raise CommandError(f"endpoint {endpoint.name} speaks {endpoint.protocol}, not {args.protocol}")
    key_file = Path(args.key_file).expanduser() if args.key_file else settings.key_file(endpoint)
    return Target(endpoint.name, endpoint.url, endpoint.protocol, args.model or endpoint.model, key_file)


def _sweep(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sweep takes comma-separated integers, got {text!r}") from None
    if any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("--sweep levels must be >= 1")
    return levels


def cmd_bench(args: argparse.Namespace) -> int:
    from idp_ops.cli.main import emit, progress
    from idp_ops.stack.secrets import read_key
    from idp_ops.validation.bench import discover_model, resolve_arrival, run_benchmark_sync, summary_lines

    resolve_arrival(args.arrival, args.rate, args.poisson_rate)  # a bad pair is exit 2 before any request
    target = resolve_target(args)
    key = read_key(target.key_file) if target.key_file else None
    model = target.model or discover_model(target.url, key) or "default"
    report = run_benchmark_sync(
        target.url,
        target.protocol,
        model,
        key,
        endpoint=target.name,
        warmups=args.warmups,
        ttft_requests=args.requests,
        ttft_max_tokens=args.ttft_tokens,
        decode_tokens=args.decode_tokens,
        decode_requests=args.decode_requests,
        sweep=args.sweep,
        sweep_tokens=args.sweep_tokens,
        sweep_rounds=args.sweep_rounds,
        poisson_rate=args.poisson_rate,
        arrival=args.arrival,
        arrival_rate=args.rate,
        pool_threshold=args.pool_threshold,
        pool_workers=args.pool_workers,
        timeout_s=args.timeout,
        ready_timeout_s=args.ready_timeout,
        progress=progress(args),
    )
    emit(args, report.to_dict(with_samples=args.samples), lambda _d: "\n".join(summary_lines(report)))
    return 0 if report.ok else 1


def _load_test_defaults(args: argparse.Namespace) -> dict:
    """users / spawn_rate / run_time_s / wait_scale from settings.validation (the nightly's own figures)."""
    from idp_ops.settings import load_settings

    validation = load_settings(args.config).validation
    return {
        "users": validation.load_users,
        "spawn_rate": validation.load_spawn_rate,
        "run_time_s": validation.load_run_time_s,
        "wait_scale": validation.load_wait_scale,
    }


def cmd_loadtest(args: argparse.Namespace) -> int:
    from idp_ops.cli.main import emit, progress
    from idp_ops.settings import load_settings
    from idp_ops.validation.loadtest import run_locust

    target = resolve_target(args)
    defaults = _load_test_defaults(args)
    users = args.users or defaults["users"]
    spawn_rate = args.spawn_rate or defaults["spawn_rate"]
    run_time_s = args.run_time or defaults["run_time_s"]
    if args.csv_dir:
        csv_dir = Path(args.csv_dir).expanduser()
    else:
        csv_dir = load_settings(args.config).data_dir / "loadtest" / target.name.replace("/", "_").replace(":", "_")
    progress(args)(f"locust: {users} users (+{spawn_rate:g}/s) against {target.url} for {run_time_s:g} s")
    result = run_locust(
        target.url,
        target.protocol,
        target.model or "default",
        target.key_file,
        users=users,
        spawn_rate=spawn_rate,
        run_time_s=run_time_s,
        csv_dir=csv_dir,
        timeout_s=args.timeout,
        wait_scale=defaults["wait_scale"],
    )

    def human(d: dict) -> str:
        def ms(value: float | None) -> str:
            return f"{value:.0f}" if value is not None else "-"

        lines = [
            f"{target.name}: {d['requests']} requests, {d['failures']} failed, {d['rps']:.2f} req/s "
            f"({d['users']} users, {d['run_time_s']:g} s) — {'OK' if d['ok'] else 'FAILED'}",
            f"  time to headers p50 {ms(d['p50_ms'])} ms, p95 {ms(d['p95_ms'])} ms (not TTFT: {d['response_time_note']})",
        ]
        for s in d["stats"]:
            lines.append(f"  {s['method']:<5} {s['name']:<24} {s['requests']:>6} reqs {s['failures']:>5} fails")
        if d["failures_by_status"]:
            lines.append("  failures by status: " + ", ".join(f"{k} {v}" for k, v in d["failures_by_status"].items()))
        lines += [f"  PROBLEM: {p}" for p in d["problems"]]
        lines.append(f"  CSV: {d['csv_prefix']}_*.csv")
        return "\n".join(lines)

    emit(args, result.to_dict(), human)
    return 0 if result.ok else 1


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", required=True, help="an endpoint name from settings, or a URL")
    parser.add_argument("--protocol", choices=["openai", "llamacpp"], help="needed when --endpoint is a URL")
    parser.add_argument("--model", help="model name for the OpenAI API (default: settings, or the server's first)")
    parser.add_argument("--key-file", help="file holding the Bearer key (default: the endpoint's key in settings)")


def register(sub, common) -> None:
    bench = sub.add_parser(
        "bench", parents=[common], help="streaming benchmark: TTFT/ITL/TPOT/E2E percentiles, decode tok/s, sweep"
    )
    _target_arguments(bench)
    bench.add_argument("--requests", type=int, default=10, help="warm TTFT requests (default 10)")
    bench.add_argument("--ttft-tokens", type=int, default=16, help="output tokens of each TTFT request (default 16)")
    bench.add_argument("--warmups", type=int, default=2, help="discarded warm-up requests (default 2)")
    bench.add_argument("--decode-tokens", type=int, default=200, help="single-stream decode length (default 200)")
    bench.add_argument("--decode-requests", type=int, default=3, help="single-stream decode runs (default 3)")
    bench.add_argument("--sweep", type=_sweep, default=(1, 8, 32), help="concurrency levels, e.g. 1,8,32 ('' for none)")
    bench.add_argument("--sweep-tokens", type=int, default=64, help="output tokens per sweep request (default 64)")
    bench.add_argument(
        "--sweep-rounds", type=int, default=2, help="requests per level = rounds x concurrency (default 2)"
    )
    bench.add_argument("--poisson-rate", type=float, help="sweep arrivals as a Poisson process of this many req/s")
    bench.add_argument(
        "--arrival",
        choices=["closed", "constant", "poisson"],
        help="how sweep requests arrive: all at once (closed, the default), or at --rate req/s, evenly or Poisson",
    )
    bench.add_argument("--rate", type=float, help="requests/s for --arrival constant|poisson")
    bench.add_argument(
        "--pool-threshold",
        type=int,
        default=128,
        help="sweep levels above this many streams are spread over client processes (default 128)",
    )
    bench.add_argument(
        "--pool-workers", type=int, default=0, help="client processes for such levels (default: one per 64 streams)"
    )
    bench.add_argument("--timeout", type=float, default=120, help="seconds one request may take (default 120)")
    bench.add_argument("--ready-timeout", type=float, default=60, help="seconds to wait for readiness (default 60)")
    bench.add_argument("--samples", action="store_true", help="include every request's sample in --json output")
    bench.set_defaults(func=cmd_bench)

    load = sub.add_parser("loadtest", parents=[common], help="Locust load test with the plan's user mix (headless)")
    _target_arguments(load)
    load.add_argument("--users", type=int, help="simulated users (default: settings, else 10)")
    load.add_argument("--spawn-rate", type=float, help="users started per second (default: settings, else 2)")
    load.add_argument("--run-time", type=float, help="seconds (default: settings, else 600)")
    load.add_argument("--timeout", type=float, help="cap on each request's timeout in seconds (default: the plan's)")
    load.add_argument("--csv-dir", help="where Locust writes its CSV files (default: <data_dir>/loadtest/<endpoint>)")
    load.set_defaults(func=cmd_loadtest)
