"""One benchmark scenario's streams fanned out over worker processes, so the client never paces them.

One asyncio process parses every SSE event of every stream on one core: at a few
hundred concurrent streams (a GPU box under vLLM) that core binds, events queue in the
socket buffers and the client reads them in bunches: measured ITL collapses towards 0
with a long tail, and TTFT grows by the time the loop takes to get round. Here each of
N spawned workers runs its own loop with its own ``httpx`` client and streams its share
through :func:`idp_ops.validation.bench.stream_request` (the same measurement, sample
for sample); the parent merges the samples back into one
:class:`~idp_ops.validation.bench.ScenarioResult`.

* Request i goes to worker ``i % N`` (its prompt is ``make_prompt(nonce, i)``, as in one
  process); worker k may have ``concurrency // N`` (+1 for the first ``concurrency % N``)
  in flight, so the scenario's cap is the same in total.
* Arrivals: closed loop as in one process; constant rate r: worker k sends at
  k/r + j*N/r (the merged stream is evenly spaced at 1/r); Poisson at r: each worker is a
  Poisson process at r/N (a superposition of independent Poisson processes is Poisson).
* The clock starts when every worker has started and built its client (spawning and
  importing take ~0.5 s that no request should pay); wall time is from the go signal to
  the last worker's last answer (``time.monotonic`` is one clock for every process on Linux).
* The key travels to the workers pickled through the spawn pipe, never on a command line.

Plain Python, no Dagster import.
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import random
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from idp_ops.validation.arrivals import arrival_gap_s, resolve_arrival
from idp_ops.validation.bench import BenchError, RequestSample, ScenarioResult, make_prompt, stream_request

# Measured on 16 cores (benchmarks/bench_accuracy.py, 100 tokens/stream at 20 ms): one process
# keeps 128 streams within ~1-6 % of the server's ITL at ~70 % of its core and binds above
# (256: ITL p95 +16-45 %); a process per 64 streams keeps 512 within 2 % at p95, while
# 128 per process does not (+10 %).
DEFAULT_THRESHOLD = 128
DEFAULT_STREAMS_PER_WORKER = 64
_START_TIMEOUT_S = 120.0


def pool_workers(
    concurrency: int,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    workers: int = 0,
    streams_per_worker: int = DEFAULT_STREAMS_PER_WORKER,
) -> int:
    """How many processes a level of ``concurrency`` streams gets: 1 up to ``threshold``.

    Above it, ``workers`` if given, else one per ``streams_per_worker`` streams, at most the
    CPU count (more processes than cores only share the same cores).
    """
    if concurrency <= threshold:
        return 1
    if workers:
        return max(1, min(workers, concurrency))
    return max(1, min(math.ceil(concurrency / streams_per_worker), os.cpu_count() or 1))


@dataclass
class _Job:
    """One worker's share of a scenario (pickled to the worker)."""

    worker: int
    workers: int
    url: str
    protocol: str
    model: str
    key: str | None
    name: str
    indices: list[int]
    concurrency: int
    slots: int
    max_tokens: int
    nonce: str
    timeout_s: float
    arrival: str
    arrival_rate: float | None
    seed: int | None


@dataclass
class PoolRun:
    """A pooled scenario, and what the client cost: CPU seconds per worker over the same wall time."""

    result: ScenarioResult
    workers: int
    worker_cpu_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def client_cpu_s(self) -> float:
        return sum(self.worker_cpu_s)

    @property
    def busiest_worker_cpu_share(self) -> float:
        """The busiest worker's CPU ÷ wall: near 1.0 means that worker's core was bound."""
        return max(self.worker_cpu_s, default=0.0) / self.wall_s if self.wall_s > 0 else 0.0


async def _run_job(job: _Job, ready, go) -> dict | None:
    # No keep-alive, as in bench.run_benchmark (llama-server drops idle streamed connections).
    limits = httpx.Limits(max_connections=job.slots + 2, max_keepalive_connections=0)
    timeout = httpx.Timeout(job.timeout_s, connect=min(10.0, job.timeout_s))
    rng = random.Random(None if job.seed is None else job.seed * 1000 + job.worker)
    limit = asyncio.Semaphore(job.slots)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def one(index: int) -> RequestSample:
            async with limit:
                return await stream_request(
                    client,
                    job.url,
                    job.protocol,
                    job.model,
                    job.key,
                    make_prompt(job.nonce, index),
                    job.max_tokens,
                    index=index,
                    scenario=job.name,
                    concurrency=job.concurrency,
                    timeout_s=job.timeout_s,
                )

        # Ready only once the client is built (its SSL context alone takes milliseconds).
        ready.put(job.worker)
        if not await asyncio.to_thread(go.wait, _START_TIMEOUT_S):
            return None
        cpu0, start = time.process_time(), time.monotonic()
        tasks = []
        rate = job.arrival_rate / job.workers if job.arrival_rate else None
        if job.arrival == "constant" and rate:
            await asyncio.sleep(job.worker / job.arrival_rate)  # interleave the workers' schedules
        for n, index in enumerate(job.indices):
            if n:
                gap = arrival_gap_s(job.arrival, rate, rng)
                if gap:
                    await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(index)))
        samples = list(await asyncio.gather(*tasks))
        end = time.monotonic()
    return {
        "worker": job.worker,
        "samples": samples,
        "cpu_s": time.process_time() - cpu0,
        "start": start,
        "end": end,
    }


def _worker(job: _Job, ready, go, results) -> None:
    """A worker process: build its client, report ready, wait for the go signal, stream, send the samples back."""
    try:
        report = asyncio.run(_run_job(job, ready, go))
        if report is not None:
            results.put(report)
    except BaseException:  # the parent must hear why, not wait out a timeout
        results.put({"worker": job.worker, "error": traceback.format_exc(limit=5)})


def merge_samples(parts: Sequence[Sequence[RequestSample]]) -> list[RequestSample]:
    """The workers' samples as one list in request order; an index seen twice is a bug, not data."""
    merged = sorted((s for part in parts for s in part), key=lambda s: s.index)
    indices = [s.index for s in merged]
    if len(set(indices)) != len(indices):
        raise BenchError("pooled scenario returned the same request index twice")
    return merged


def run_pool_scenario(
    url: str,
    protocol: str,
    model: str,
    key: str | None,
    *,
    name: str,
    count: int,
    concurrency: int,
    max_tokens: int,
    first_index: int = 0,
    nonce: str,
    workers: int,
    timeout_s: float = 120,
    arrival: str = "closed",
    arrival_rate: float | None = None,
    poisson_rate: float | None = None,
    seed: int | None = None,
) -> PoolRun:
    """``count`` requests, at most ``concurrency`` in flight, over ``workers`` processes.

    Blocking (call it from a thread inside an event loop: :func:`pooled_scenario`).
    Raises :class:`BenchError` when a worker crashes or the pool does not finish in time;
    a request's failure is its sample's error kind, as in one process.
    """
    import multiprocessing

    arrival, arrival_rate = resolve_arrival(arrival, arrival_rate, poisson_rate)
    if count < 1 or concurrency < 1 or workers < 1:
        raise BenchError(f"count, concurrency and workers must be >= 1, got {count}, {concurrency}, {workers}")
    workers = min(workers, count, concurrency)
    indices = list(range(first_index, first_index + count))
    jobs = [
        _Job(
            worker=k,
            workers=workers,
            url=url.rstrip("/"),
            protocol=protocol,
            model=model,
            key=key,
            name=name,
            indices=indices[k::workers],
            concurrency=concurrency,
            slots=concurrency // workers + (1 if k < concurrency % workers else 0),
            max_tokens=max_tokens,
            nonce=nonce,
            timeout_s=timeout_s,
            arrival=arrival,
            arrival_rate=arrival_rate,
            seed=seed,
        )
        for k in range(workers)
    ]
    # spawn, not fork: the caller may be a Dagster process with threads (fork copies their locks).
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    processes = [context.Process(target=_worker, args=(job, ready, go, results), daemon=True) for job in jobs]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            try:
                ready.get(timeout=_START_TIMEOUT_S)
            except queue.Empty:
                raise BenchError(f"bench pool: workers did not start within {_START_TIMEOUT_S:g} s") from None
        go_at = time.monotonic()
        go.set()
        # Every request may take timeout_s, and a worker runs its share in ceil(share/slots) rounds.
        rounds = max(math.ceil(len(job.indices) / max(job.slots, 1)) for job in jobs)
        budget = timeout_s * rounds + (count / arrival_rate if arrival_rate else 0) + 60
        reports = []
        for _ in processes:
            try:
                report = results.get(timeout=max(1.0, go_at + budget - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"bench pool: {name} did not finish within {budget:.0f} s") from None
            if "error" in report:
                raise BenchError(f"bench pool worker {report['worker']} failed:\n{report['error']}")
            reports.append(report)
    finally:
        go.set()  # a worker still waiting must not wait out its start timeout
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)
    samples = merge_samples([r["samples"] for r in reports])
    wall_s = max(r["end"] for r in reports) - go_at
    result = ScenarioResult.from_samples(
        name, concurrency, samples, wall_s, poisson_rate, arrival=arrival, arrival_rate=arrival_rate
    )
    ordered = sorted(reports, key=lambda r: r["worker"])
    return PoolRun(result=result, workers=workers, worker_cpu_s=[round(r["cpu_s"], 4) for r in ordered], wall_s=wall_s)


async def pooled_scenario(url: str, protocol: str, model: str, key: str | None, **kwargs: Any) -> ScenarioResult:
    """:func:`run_pool_scenario` for ``bench.run_benchmark``'s loop (runs in a thread; same arguments)."""
    run = await asyncio.to_thread(run_pool_scenario, url, protocol, model, key, **kwargs)
    return run.result
