"""The bench pool: one scenario's streams over several processes, merged back into one result.

Against the harness token server (a real HTTP server in its own process), which records
every stream it served: the pool must send each request exactly once, and give the same
counts, token totals and per-stream ITL samples as one process does.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

import httpx
import pytest

from idp_ops.validation.bench import BenchError, RequestSample, ScenarioResult, make_prompt, stream_request
from idp_ops.validation.bench_pool import merge_samples, pool_workers, pooled_scenario, run_pool_scenario
from idp_ops_harness.ports import refusing_port
from idp_ops_harness.token_stream_server import TokenStreamServer

TOKENS = 6


@pytest.fixture(scope="module")
def server():
    with TokenStreamServer(interval_ms=2) as running:
        yield running


def _single_process(url: str, protocol: str, nonce: str, count: int, concurrency: int) -> list[RequestSample]:
    async def main() -> list[RequestSample]:
        limit = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def one(i: int) -> RequestSample:
                async with limit:
                    return await stream_request(
                        client, url, protocol, "m", "k", make_prompt(nonce, i), TOKENS, index=i, scenario="s"
                    )

            return list(await asyncio.gather(*[one(i) for i in range(count)]))

    return asyncio.run(main())


def test_workers_are_split_by_streams_and_capped_by_cpus():
    assert pool_workers(1) == pool_workers(128) == 1
    assert pool_workers(129) == min(3, os.cpu_count() or 1)
    assert pool_workers(512, workers=3) == 3
    assert pool_workers(4, threshold=1, workers=16) == 4  # never more processes than streams
    assert pool_workers(10_000) == os.cpu_count()


def test_merge_orders_by_request_and_refuses_an_index_twice():
    now = datetime.now(UTC)
    a, b, c = (RequestSample(index=i, started_at=now) for i in (2, 0, 1))
    assert [s.index for s in merge_samples([[a], [b, c]])] == [0, 1, 2]
    with pytest.raises(BenchError, match="same request index twice"):
        merge_samples([[a], [RequestSample(index=2, started_at=now)]])


@pytest.mark.parametrize("protocol", ["llamacpp", "openai"])
def test_the_pool_sends_each_request_once_and_counts_like_one_process(server, protocol):
    count, concurrency = 30, 9
    server.stats(reset=True)
    single = _single_process(server.url, protocol, "one", count, concurrency)
    run = run_pool_scenario(
        server.url,
        protocol,
        "m",
        "k",
        name="sweep_c9",
        count=count,
        concurrency=concurrency,
        max_tokens=TOKENS,
        first_index=100,
        nonce="pool",
        workers=3,
    )
    served = server.stats(reset=True)["streams"]
    pooled = run.result
    assert isinstance(pooled, ScenarioResult) and run.workers == 3 and len(run.worker_cpu_s) == 3
    # every request exactly once, in order, labelled with the scenario's name and total concurrency
    assert [s.index for s in pooled.samples] == list(range(100, 100 + count))
    assert {make_prompt("pool", i) for i in range(100, 100 + count)} <= set(served)
    assert {make_prompt("one", i) for i in range(count)} <= set(served)
    assert len(served) == 2 * count
    assert {(s.scenario, s.concurrency) for s in pooled.samples} == {("sweep_c9", concurrency)}
    # the same measurements as one process: all succeeded, same token counts, same number of gaps
    assert pooled.requests == len(single) == count and pooled.success_rate == 1.0
    assert [s.output_tokens for s in pooled.samples] == [s.output_tokens for s in single] == [TOKENS] * count
    assert pooled.percentiles["itl_ms"]["n"] == sum(len(s.itl_ms) for s in single) == count * (TOKENS - 1)
    assert pooled.percentiles["ttft_ms"]["n"] == count
    # each stream's ITL list is that stream's, not another worker's: one gap per gap the server left
    for sample in pooled.samples:
        assert len(sample.itl_ms) == len(served[make_prompt("pool", sample.index)])
    assert pooled.aggregate_output_tok_s > 0 and pooled.wall_s > 0


def test_the_async_hook_returns_the_scenario_and_errors_name_the_worker(server):
    result = asyncio.run(
        pooled_scenario(
            server.url, "llamacpp", "m", None, name="s", count=4, concurrency=4, max_tokens=3, nonce="x", workers=2
        )
    )
    assert result.requests == 4 and result.success_rate == 1.0
    # a worker that cannot build its request reports why, instead of the pool waiting out a timeout
    with pytest.raises(BenchError, match=r"worker \d failed:(.|\n)*unknown protocol"):
        run_pool_scenario(
            server.url, "grpc", "m", None, name="s", count=2, concurrency=2, max_tokens=3, nonce="x", workers=2
        )


def test_an_unreachable_server_gives_connect_errors_not_a_crash():
    # A bound port that never listens refuses every connect (a stopped server's port may be taken again).
    with refusing_port() as port:
        run = run_pool_scenario(
            f"http://127.0.0.1:{port}", "llamacpp", "m", None,
            name="s", count=4, concurrency=4, max_tokens=3, nonce="x", workers=2,
        )  # fmt: skip
    assert run.result.errors_by_kind == {"connect": 4} and run.result.success_rate == 0.0


def test_run_benchmark_spreads_sweep_levels_above_the_threshold_over_processes(server):
    from idp_ops.validation.bench import run_benchmark_sync

    server.stats(reset=True)
    said: list[str] = []
    report = run_benchmark_sync(
        server.url,
        "llamacpp",
        "m",
        "k",
        warmups=1,
        ttft_requests=1,
        ttft_max_tokens=TOKENS,
        decode_tokens=TOKENS,
        decode_requests=1,
        sweep=[2, 6],
        sweep_tokens=TOKENS,
        sweep_rounds=2,
        pool_threshold=4,
        pool_workers=2,
        timeout_s=30,
        progress=said.append,
    )
    assert [line for line in said if "client processes" in line] == ["sweep: concurrency 6 over 2 client processes"]
    low, high = report.sweep
    assert [s.concurrency for s in report.sweep] == [2, 6]
    assert len(low.samples) == 4 and len(high.samples) == 12
    assert all(s.ok for s in high.samples), [s.error_detail for s in high.samples if not s.ok]
    # Every request reached the server exactly once: warm-up, TTFT, decode and both levels.
    assert len(server.stats()["streams"]) == 1 + 1 + 1 + 4 + 12
    assert report.settings["pool_threshold"] == 4 and report.settings["pool_workers"] == 2
