"""How far the streaming benchmark client (idp_ops.validation.bench) can be trusted, in one run.

Against a real llama-server (the CPU stack: Gemma 3 270M on both protocols):
  decode ratio   our single-stream decode tok/s ÷ the server's own timings.predicted_per_second,
                 per request (target 0.95–1.05)
  TTFT overhead  our TTFT − the server's timings.prompt_ms: everything that is not prompt
                 processing (client, HTTP, server queueing/sampling), p50 target ≤ 5 ms

Against a trivial local SSE server in another process, which streams every request's tokens
at a fixed interval (so any deviation is the client's or the loop's doing):
  client floor   TTFT at concurrency 1 when the server answers at once (client+HTTP alone)
  capacity       for growing concurrency: our process's CPU time ÷ wall time, the ITL we
                 measure against the interval the server keeps, and the server's own CPU;
                 the largest concurrency (before the first level that misses) at which our
                 client's CPU stays below 80 % of a core, its ITL p50 within ±10 % of the
                 server's interval and its ITL p95 within 1.5× of it: the stream's pacing is
                 the server's, not the client's (a client that falls behind reads events in
                 bunches: ITL p50 collapses towards 0 and the tail grows).

One process against the bench pool (idp_ops.validation.bench_pool), side by side at
128/256/512 streams against the same server: client CPU (cores, and the busiest process's
share of its core), ITL p50/p95 as the client measured it and as the server produced it
(the server reports the gaps it left between the events it wrote), and the client's added
ITL in %: the issue's bar is under 5 % at 512 streams.

Usage:
  python benchmarks/bench_accuracy.py                       # deploys a private CPU stack, tears it down
  python benchmarks/bench_accuracy.py --url http://127.0.0.1:18001 --protocol llamacpp --key-file K
  python benchmarks/bench_accuracy.py --skip-accuracy        # the local-server parts only (no docker)
  options: --decode-runs N --decode-tokens N --ttft-runs N --levels 1,8,32,... --interval-ms 20 --json
           --pool-levels 128,256,512 --pool-workers N --skip-pool --skip-capacity
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from idp_ops.validation.bench import (  # noqa: E402
    make_prompt,
    percentiles,
    stream_request,
    wait_ready,
)

CPU_LIMIT = 0.80  # a client above this share of one core is competing with what it measures
ITL_TOLERANCE = 0.10
ITL_P95_FACTOR = 1.5


# -- part A: against llama-server ---------------------------------------------


async def _sequential(url, protocol, model, key, runs, max_tokens, scenario):
    samples = []
    nonce = os.urandom(4).hex()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        await wait_ready(client, url, 60, lambda _l: None)
        # one discarded warm-up
        await stream_request(client, url, protocol, model, key, make_prompt(nonce, 10_000), 8, scenario="warmup")
        for i in range(runs):
            samples.append(
                await stream_request(
                    client, url, protocol, model, key, make_prompt(nonce, i), max_tokens, index=i, scenario=scenario
                )
            )
    bad = [s for s in samples if not s.ok]
    if bad:
        raise SystemExit(f"{scenario}: {len(bad)} requests failed: {bad[0].error}: {bad[0].error_detail}")
    return samples


def accuracy(url, protocol, model, key, *, decode_runs, decode_tokens, ttft_runs) -> dict:
    decode = asyncio.run(_sequential(url, protocol, model, key, decode_runs, decode_tokens, "decode"))
    ratios = [s.decode_tok_s / s.server_decode_tok_s for s in decode if s.decode_tok_s and s.server_decode_tok_s]
    short = asyncio.run(_sequential(url, protocol, model, key, ttft_runs, 8, "ttft"))
    overhead = [s.ttft_ms - s.server_prompt_ms for s in short if s.server_prompt_ms is not None]
    return {
        "url": url,
        "protocol": protocol,
        "decode_tokens": decode_tokens,
        "decode_runs": len(decode),
        "ours_tok_s": [round(s.decode_tok_s, 2) for s in decode],
        "server_tok_s": [round(s.server_decode_tok_s, 2) for s in decode if s.server_decode_tok_s],
        "decode_ratio": {
            "median": round(statistics.median(ratios), 4) if ratios else None,
            "min": round(min(ratios), 4) if ratios else None,
            "max": round(max(ratios), 4) if ratios else None,
        },
        "ttft_runs": len(short),
        "ttft_ms": percentiles(s.ttft_ms for s in short),
        "server_prompt_ms": percentiles(s.server_prompt_ms for s in short if s.server_prompt_ms is not None),
        "ttft_overhead_ms": percentiles(overhead),
    }


# -- part B: a fixed-rate local SSE server in another process -------------------


def _added_itl(samples, nonce: str, stats: dict) -> dict:
    """The client's ITL against the gaps the server actually left between the same events.

    Joined per stream (the server keys its gaps by prompt): what remains is the client's
    doing, not the server's own lag on a busy machine. ``added_p50_pct``/``added_p95_pct``
    compare the two distributions' quantiles; ``excess_ms`` is client gap - server gap, per gap.
    """
    client, server = [], []
    for sample in samples:
        gaps = stats["streams"].get(make_prompt(nonce, sample.index))
        if sample.ok and gaps and len(gaps) == len(sample.itl_ms):
            client += sample.itl_ms
            server += gaps
    c, s = percentiles(client), percentiles(server)
    if not c.get("n") or not s.get("n"):
        return {"joined_gaps": 0}
    added = {q: round((c[q] - s[q]) / s[q] * 100, 2) if s[q] else None for q in ("p50", "p95", "mean")}
    return {
        "joined_gaps": len(client),
        "client_itl_ms": c,
        "server_itl_ms": s,
        "added_p50_pct": added["p50"],
        "added_p95_pct": added["p95"],
        "added_mean_pct": added["mean"],
        "excess_ms": percentiles(a - b for a, b in zip(client, server, strict=True)),
        # the bar: the client adds under 5 % to the ITL it reports
        "under_5_pct": added["p95"] is not None and abs(added["p50"]) < 5 and added["p95"] < 5,
    }


async def _level(url: str, concurrency: int, tokens: int) -> dict:
    nonce = os.urandom(4).hex()
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        samples = await asyncio.gather(
            *[
                stream_request(
                    client, url, "llamacpp", "m", None, make_prompt(nonce, i), tokens, index=i, concurrency=concurrency
                )
                for i in range(concurrency)
            ]
        )
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"samples": samples, "cpu_s": cpu, "wall_s": wall, "nonce": nonce}


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process, from /proc (Linux; no psutil needed)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def capacity(levels: list[int], interval_ms: float, tokens: int) -> dict:
    from idp_ops_harness.token_stream_server import TokenStreamServer

    with TokenStreamServer(interval_ms) as server:
        url = server.url
        rows = []
        asyncio.run(_level(url, 1, 4))  # warm imports and the loop
        server.stats(reset=True)
        for concurrency in levels:
            before = _process_cpu_s(server.pid)
            result = asyncio.run(_level(url, concurrency, tokens))
            after = _process_cpu_s(server.pid)
            samples = result["samples"]
            ok = [s for s in samples if s.ok]
            itl = percentiles(g for s in ok for g in s.itl_ms)
            ttft = percentiles(s.ttft_ms for s in ok)
            events = sum(len(s.itl_ms) + 1 for s in ok)
            client_cpu = result["cpu_s"] / result["wall_s"]
            server_cpu = (after - before) / result["wall_s"]
            sustained = (
                len(ok) == concurrency
                and client_cpu < CPU_LIMIT
                and abs(itl.get("p50", 1e9) - interval_ms) <= interval_ms * ITL_TOLERANCE
                and itl.get("p95", 1e9) <= interval_ms * ITL_P95_FACTOR
            )
            rows.append(
                {
                    "concurrency": concurrency,
                    "ok": len(ok),
                    "wall_s": round(result["wall_s"], 3),
                    "client_cpu_share": round(client_cpu, 3),
                    "client_cpu_us_per_event": round(result["cpu_s"] / max(events, 1) * 1e6, 1),
                    "server_cpu_share": round(server_cpu, 3),
                    "events_per_s": round(events / result["wall_s"], 1),
                    "ttft_ms": ttft,
                    "itl_ms": itl,
                    "vs_server": _added_itl(ok, result["nonce"], server.stats(reset=True)),
                    "sustained": sustained,
                }
            )
    sustained_levels = [r["concurrency"] for r in rows if r["sustained"]]
    # the largest level before the first failure: a later lucky pass does not count
    largest = None
    for row in rows:
        if not row["sustained"]:
            break
        largest = row["concurrency"]
    return {
        "interval_ms": interval_ms,
        "tokens_per_stream": tokens,
        "rows": rows,
        "client_floor_ttft_ms": rows[0]["ttft_ms"] if rows and rows[0]["concurrency"] == 1 else None,
        "largest_sustained_concurrency": largest,
        "sustained_levels": sustained_levels,
        "cpus": os.cpu_count(),
    }


def pool_compare(levels: list[int], interval_ms: float, tokens: int, workers: int) -> dict:
    """One process against the bench pool, side by side at each level, against the same server."""
    from idp_ops.validation.bench_pool import pool_workers, run_pool_scenario
    from idp_ops_harness.token_stream_server import TokenStreamServer

    rows = []
    with TokenStreamServer(interval_ms) as server:
        asyncio.run(_level(server.url, 1, 4))
        server.stats(reset=True)
        for concurrency in levels:
            # default: what run_benchmark's sweep would use, but pooled at every level compared
            n = workers or pool_workers(concurrency, threshold=1)
            for mode in ("single", "pool"):
                before = _process_cpu_s(server.pid)
                if mode == "single":
                    result = asyncio.run(_level(server.url, concurrency, tokens))
                    samples, nonce, wall = result["samples"], result["nonce"], result["wall_s"]
                    cpu_s, busiest, used = result["cpu_s"], result["cpu_s"] / result["wall_s"], 1
                else:
                    nonce = os.urandom(4).hex()
                    run = run_pool_scenario(
                        server.url,
                        "llamacpp",
                        "m",
                        None,
                        name=f"pool_c{concurrency}",
                        count=concurrency,
                        concurrency=concurrency,
                        max_tokens=tokens,
                        nonce=nonce,
                        workers=n,
                    )
                    samples, wall = run.result.samples, run.wall_s
                    cpu_s, busiest, used = run.client_cpu_s, run.busiest_worker_cpu_share, run.workers
                after = _process_cpu_s(server.pid)
                ok = [s for s in samples if s.ok]
                rows.append(
                    {
                        "concurrency": concurrency,
                        "mode": mode,
                        "processes": used,
                        "ok": len(ok),
                        "wall_s": round(wall, 3),
                        "client_cpu_cores": round(cpu_s / wall, 3),
                        "busiest_process_cpu_share": round(busiest, 3),
                        "server_cpu_share": round((after - before) / wall, 3),
                        "ttft_ms": percentiles(s.ttft_ms for s in ok),
                        "vs_server": _added_itl(ok, nonce, server.stats(reset=True)),
                    }
                )
    return {"interval_ms": interval_ms, "tokens_per_stream": tokens, "rows": rows, "cpus": os.cpu_count()}


# -- the stack -----------------------------------------------------------------


def deploy_private_stack(log) -> tuple[object, dict]:
    """A CPU stack on free ports from the repo's image and model, in a temporary home."""
    from idp_ops.settings import REPO_ROOT, load_settings
    from idp_ops.stack.deploy import deploy
    from idp_ops.stack.secrets import ensure_keys

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("IDP_")}
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        repo = load_settings()
    finally:
        os.chdir(cwd)
        os.environ.update(saved)

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    home = Path(tempfile.mkdtemp(prefix="idp-bench-accuracy-"))
    endpoints = []
    for name, protocol in (("openai-standin", "openai"), ("llamacpp-cpu", "llamacpp")):
        endpoints.append(
            {
                "name": name,
                "protocol": protocol,
                "url": f"http://127.0.0.1:{free_port()}",
                "compose_service": name,
                "key_name": f"{name.split('-')[0]}_api_key",
                "model": "gemma-3-270m",
            }
        )
    settings = load_settings(
        None,
        home=home,
        models_dir=repo.models_dir,
        llama_server_image=repo.llama_server_image,
        compose_project=f"idp-ops-bench-accuracy-{os.getpid()}",
        endpoints=endpoints,
        stop_timeout_s=5,
    )
    ensure_keys(
        settings.secrets_dir, settings.key_names, owner_uid=settings.service_uid, owner_gid=settings.service_gid
    )
    report = deploy(settings, log=log)
    if not report.ok:
        raise SystemExit(f"deploy failed: {report.problems}")
    return settings, {"home": str(home)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--protocol", choices=["openai", "llamacpp"])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--key-file")
    parser.add_argument("--decode-runs", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=200)
    parser.add_argument("--ttft-runs", type=int, default=20)
    parser.add_argument("--levels", default="1,8,32,64,128,256,512")
    parser.add_argument(
        "--interval-ms", type=float, default=20.0, help="the local server's token interval (20 ms = 50 tok/s)"
    )
    parser.add_argument("--stream-tokens", type=int, default=100)
    parser.add_argument("--skip-capacity", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true", help="no llama-server: the local-server parts only")
    parser.add_argument("--pool-levels", default="128,256,512", help="one process vs the bench pool at these levels")
    parser.add_argument("--pool-workers", type=int, default=0, help="pool processes (0: one per 64 streams, <= CPUs)")
    parser.add_argument("--skip-pool", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    def log(line: str) -> None:
        print(f"[bench] {line}", file=sys.stderr, flush=True)

    from idp_ops.stack.secrets import read_key

    results: dict = {"accuracy": [], "capacity": None, "pool": None}
    settings = None
    try:
        if args.skip_accuracy:
            targets = []
        elif args.url:
            if not args.protocol:
                parser.error("--url needs --protocol")
            key = read_key(Path(args.key_file)) if args.key_file else None
            targets = [(args.url.rstrip("/"), args.protocol, args.model, key)]
        else:
            log("deploying a private CPU stack (llama-server + Gemma 3 270M, both protocols)")
            settings, _info = deploy_private_stack(log)
            targets = [(e.url, e.protocol, e.model, read_key(settings.key_file(e))) for e in settings.endpoints]
        for url, protocol, model, key in targets:
            log(
                f"accuracy against {url} ({protocol}): {args.decode_runs}×{args.decode_tokens}-token decodes, {args.ttft_runs} TTFT requests"
            )
            results["accuracy"].append(
                accuracy(
                    url,
                    protocol,
                    model,
                    key,
                    decode_runs=args.decode_runs,
                    decode_tokens=args.decode_tokens,
                    ttft_runs=args.ttft_runs,
                )
            )
    finally:
        if settings is not None:
            from idp_ops.stack.deploy import compose_project

            log("tearing the private stack down")
            compose_project(settings).down(timeout=5)
            shutil.rmtree(settings.home, ignore_errors=True)  # its keys go with it
    if not args.skip_capacity:
        levels = [int(x) for x in args.levels.split(",") if x.strip()]
        log(f"client capacity against a local {args.interval_ms:g} ms/token SSE server: concurrency {levels}")
        results["capacity"] = capacity(levels, args.interval_ms, args.stream_tokens)
    if not args.skip_pool:
        levels = [int(x) for x in args.pool_levels.split(",") if x.strip()]
        log(f"one process vs the bench pool at {levels} streams, {args.interval_ms:g} ms/token")
        results["pool"] = pool_compare(levels, args.interval_ms, args.stream_tokens, args.pool_workers)

    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    print(f"machine: {os.cpu_count()} CPUs; llama-server runs with --threads 1 per service")
    for a in results["accuracy"]:
        r = a["decode_ratio"]
        o = a["ttft_overhead_ms"]
        print(f"\n{a['protocol']} @ {a['url']}")
        print(
            f"  decode tok/s, ours ÷ server's predicted_per_second over {a['decode_runs']}×{a['decode_tokens']} tokens: "
            f"median {r['median']:.4f} (min {r['min']:.4f}, max {r['max']:.4f})  target 0.95–1.05  "
            f"{'PASS' if r['min'] >= 0.95 and r['max'] <= 1.05 else 'MISS'}"
        )
        print(f"    ours   {a['ours_tok_s']}\n    server {a['server_tok_s']}")
        print(
            f"  TTFT − server prompt_ms over {a['ttft_runs']} requests: p50 {o['p50']:.2f} ms, p90 {o['p90']:.2f}, "
            f"p99 {o['p99']:.2f} (TTFT p50 {a['ttft_ms']['p50']:.1f} ms, prompt_ms p50 {a['server_prompt_ms']['p50']:.1f})  "
            f"target p50 ≤ 5 ms  {'PASS' if o['p50'] <= 5 else 'MISS'}"
        )
    c = results["capacity"]
    if c:
        print(
            f"\nclient capacity: local SSE server in another process, {c['tokens_per_stream']} tokens/stream at {c['interval_ms']:g} ms/token"
        )
        print("  conc   ok  client CPU  µs/event  server CPU  events/s  TTFT p50  ITL p50  ITL p95  ITL p99  sustained")
        for row in c["rows"]:
            print(
                f"  {row['concurrency']:>4} {row['ok']:>4}  {row['client_cpu_share'] * 100:>9.1f}%  {row['client_cpu_us_per_event']:>8.1f}"
                f"  {row['server_cpu_share'] * 100:>9.1f}%  {row['events_per_s']:>8.0f}  {row['ttft_ms'].get('p50', float('nan')):>8.2f}"
                f"  {row['itl_ms'].get('p50', float('nan')):>7.2f}  {row['itl_ms'].get('p95', float('nan')):>7.2f}"
                f"  {row['itl_ms'].get('p99', float('nan')):>7.2f}  {'yes' if row['sustained'] else 'NO'}"
            )
        floor = c["client_floor_ttft_ms"]
        if floor:
            print(f"  client+HTTP TTFT floor (concurrency 1, server answers at once): p50 {floor['p50']:.2f} ms")
        print(
            f"  largest concurrency with client CPU < {CPU_LIMIT:.0%} of a core, ITL p50 within ±{ITL_TOLERANCE:.0%} "
            f"and ITL p95 within {ITL_P95_FACTOR:g}× of {c['interval_ms']:g} ms: {c['largest_sustained_concurrency']}"
        )
        print(
            "  against the server's own gaps (same events):  conc  client p50/p95  server p50/p95  added p50 %  p95 %"
        )
        for row in c["rows"]:
            _print_vs(f"  {'':<45}{row['concurrency']:>4}", row["vs_server"])
    p = results["pool"]
    if p:
        print(
            f"\none process vs the bench pool: {p['tokens_per_stream']} tokens/stream at {p['interval_ms']:g} ms/token, "
            f"{p['cpus']} CPUs shared with the server"
        )
        print(
            "  conc  mode    procs  ok  client CPU (cores)  busiest proc  server CPU  TTFT p50"
            "  client ITL p50/p95  server ITL p50/p95  added p50 %  p95 %  <5 %"
        )
        for row in p["rows"]:
            _print_vs(
                f"  {row['concurrency']:>4}  {row['mode']:<6} {row['processes']:>5} {row['ok']:>4}"
                f"  {row['client_cpu_cores']:>18.2f}  {row['busiest_process_cpu_share'] * 100:>11.0f}%"
                f"  {row['server_cpu_share'] * 100:>9.0f}%  {row['ttft_ms'].get('p50', float('nan')):>8.2f}",
                row["vs_server"],
                verdict=True,
            )
    return 0


def _print_vs(prefix: str, vs: dict, *, verdict: bool = False) -> None:
    if not vs.get("joined_gaps"):
        print(f"{prefix}  (no gaps joined with the server's)")
        return
    c, s = vs["client_itl_ms"], vs["server_itl_ms"]
    tail = f"  {'yes' if vs['under_5_pct'] else 'NO':>4}" if verdict else ""
    print(
        f"{prefix}  {c['p50']:>8.2f}/{c['p95']:<8.2f}  {s['p50']:>8.2f}/{s['p95']:<8.2f}"
        f"  {vs['added_p50_pct']:>+10.2f}  {vs['added_p95_pct']:>+6.2f}{tail}"
    )


if __name__ == "__main__":
    sys.exit(main())
