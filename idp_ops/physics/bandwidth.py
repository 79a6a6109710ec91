"""Measure this host's memory bandwidth, the number decode speed is bounded by.

A streaming read across all cores (NumPy reductions release the GIL, so threads
run in parallel), on a buffer far larger than the caches. The read is ``np.max``:
``np.sum`` on float64 is bound by its pairwise additions, not by memory (measured
here on one core: sum 18.4 GB/s, max 32.4 GB/s, while llama-server decoding Gemma
270M on one thread already streams 18.9 GB/s), so a sum under-reads the ceiling. Read bandwidth is what
decode needs (weights are only read); a copy figure is reported beside it
(bytes read + bytes written), as STREAM and the GPU fixture report copies.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class BandwidthResult:
    read_gbs: float
    copy_gbs: float
    threads: int
    buffer_mb: int
    repeats: int
    runs_read_gbs: list[float]

    def as_dict(self) -> dict:
        return asdict(self)


def _chunks(array: np.ndarray, parts: int) -> list[np.ndarray]:
    return [c for c in np.array_split(array, parts) if c.size]


def measure_cpu_bandwidth(buffer_mb: int = 1024, threads: int | None = None, repeats: int = 5) -> BandwidthResult:
    """Best-of-``repeats`` read and copy bandwidth in GB/s (1e9 bytes) using ``threads`` threads."""
    threads = threads or os.cpu_count() or 1
    elements = buffer_mb * 1024 * 1024 // 8
    source = np.ones(elements, dtype=np.float64)  # touched once: pages are really allocated
    target = np.empty_like(source)
    read_parts = _chunks(source, threads)
    copy_parts = list(zip(_chunks(target, threads), read_parts))
    runs_read, runs_copy = [], []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(np.max, read_parts))  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(np.max, read_parts))
            runs_read.append(source.nbytes / (time.perf_counter() - started) / 1e9)
            started = time.perf_counter()
            list(pool.map(lambda pair: np.copyto(pair[0], pair[1]), copy_parts))
            runs_copy.append(2 * source.nbytes / (time.perf_counter() - started) / 1e9)
    # The best run is the machine's capability; the others met interference.
    return BandwidthResult(
        read_gbs=round(max(runs_read), 2),
        copy_gbs=round(max(runs_copy), 2),
        threads=threads,
        buffer_mb=buffer_mb,
        repeats=repeats,
        runs_read_gbs=[round(r, 2) for r in runs_read],
    )


def spread(values: list[float]) -> float:
    """Relative spread (max-min)/median of repeated measurements."""
    return (max(values) - min(values)) / statistics.median(values)
