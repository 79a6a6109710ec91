"""This host's memory bandwidth: the GPU probe, and the measurements kept in DuckDB.

The CPU probe lives in ``core/bandwidth.py``. The GPU probe needs a CUDA array
library (CuPy or PyTorch built with CUDA), an optional extra: where neither is
importable, or no CUDA device answers, ``measure_gpu_bandwidth`` returns None and
callers fall back to the hardware profile's datasheet figure, labelled as such.

Rows go to ``bandwidth_measurements`` (``core/history.py``); the ceilings read
them back through :func:`latest_measured_bandwidth`. Datasheet rows are stored
for the record but never returned as measured: a ceiling must say where its
bandwidth came from.
"""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from idp_ops.history import database as history
from idp_ops.physics.ceilings import MeasuredBandwidth

SOURCE_MEASURED = "measured"
SOURCE_DATASHEET = "datasheet"
DEVICE_CPU = "cpu"
DEVICE_GPU = "gpu"


@dataclass(frozen=True)
class BandwidthRow:
    device: str  # "cpu" | "gpu"
    threads: int  # CPU threads used; 0 for a GPU
    read_gbs: float | None
    copy_gbs: float | None
    source: str  # "measured" | "datasheet"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GpuBandwidth:
    read_gbs: float
    copy_gbs: float
    library: str  # "cupy" | "torch"
    device_name: str
    buffer_mb: int


def measure_gpu_bandwidth(buffer_mb: int = 1024, repeats: int = 10) -> GpuBandwidth | None:
    """Best-of-``repeats`` device read (reduction) and copy bandwidth in GB/s; None without CUDA.

    Read is what decode does with weights, so it is the figure the ceilings use;
    copy (bytes read + written) is reported beside it, as the H200 fixture does.
    """
    for probe in (_probe_cupy, _probe_torch):
        try:
            result = probe(buffer_mb, repeats)
        except ImportError:
            continue
        except Exception:  # a library without a working driver/device: try the next, else None
            continue
        if result is not None:
            return result
    return None


def _probe_cupy(buffer_mb: int, repeats: int) -> GpuBandwidth | None:
    import cupy as cp

    if cp.cuda.runtime.getDeviceCount() < 1:
        return None
    source = cp.ones(buffer_mb * 1024 * 1024 // 4, dtype=cp.float32)
    target = cp.empty_like(source)

    def timed(fn) -> float:
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) / 1e3

    read_once = lambda: source.sum()  # noqa: E731
    copy_once = lambda: cp.copyto(target, source)  # noqa: E731
    read_once(), copy_once()  # warm-up: kernel compilation and first-touch
    read = max(source.nbytes / timed(read_once) for _ in range(repeats)) / 1e9
    copy = max(2 * source.nbytes / timed(copy_once) for _ in range(repeats)) / 1e9
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return GpuBandwidth(round(read, 1), round(copy, 1), "cupy", name, buffer_mb)


def _probe_torch(buffer_mb: int, repeats: int) -> GpuBandwidth | None:
    import torch

    if not torch.cuda.is_available():
        return None
    source = torch.ones(buffer_mb * 1024 * 1024 // 4, dtype=torch.float32, device="cuda")
    target = torch.empty_like(source)
    nbytes = source.numel() * source.element_size()

    def timed(fn) -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - started

    read_once = lambda: source.sum()  # noqa: E731
    copy_once = lambda: target.copy_(source)  # noqa: E731
    read_once(), copy_once()
    read = max(nbytes / timed(read_once) for _ in range(repeats)) / 1e9
    copy = max(2 * nbytes / timed(copy_once) for _ in range(repeats)) / 1e9
    return GpuBandwidth(round(read, 1), round(copy, 1), "torch", torch.cuda.get_device_name(0), buffer_mb)


def record_bandwidth(
    history_file: Path, rows: list[BandwidthRow], *, measured_at: datetime | None = None, host: str | None = None
) -> datetime:
    """Store one measurement (all its rows share a timestamp); returns that timestamp."""
    measured_at = measured_at or datetime.now(UTC)
    host = host or socket.gethostname()
    with history.connect(history_file) as con:
        con.executemany(
            "INSERT OR REPLACE INTO bandwidth_measurements "
            "(measured_at, host, device, threads, read_gbs, copy_gbs, source) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(measured_at, host, r.device, r.threads, r.read_gbs, r.copy_gbs, r.source) for r in rows],
        )
    return measured_at


def latest_measured_bandwidth(history_file: Path, *, host: str | None = None) -> MeasuredBandwidth:
    """The newest *measured* figures per device, for ``endpoint_ceiling``; empty where none exist.

    CPU single-thread is the newest 1-thread row; all-threads is the row with the
    most threads from the newest measurement that has more than one thread (on a
    1-core host, whose newest measurement has only a 1-thread row, that row). ``host`` limits rows to one machine
    (a history file copied from another box must not set this one's ceilings).
    """
    if not Path(history_file).exists():
        return MeasuredBandwidth()
    where, params = "source = ? AND read_gbs > 0", [SOURCE_MEASURED]
    if host is not None:
        where += " AND host = ?"
        params.append(host)
    with history.connect(history_file, read_only=True) as con:
        if not _has_table(con, "bandwidth_measurements"):
            return MeasuredBandwidth()
        rows = con.execute(
            f"SELECT device, threads, read_gbs FROM bandwidth_measurements WHERE {where} "
            "ORDER BY measured_at DESC, threads DESC",
            params,
        ).fetchall()
    cpu = [(threads, read) for device, threads, read in rows if device == DEVICE_CPU]
    one = next((read for threads, read in cpu if threads == 1), None)
    many = next((read for threads, read in cpu if threads > 1), None)
    if many is None and cpu and cpu[0][0] == 1:
        # The newest CPU measurement used one thread as its "all threads": a 1-core host.
        many = cpu[0][1]
    if many is not None and one is not None:
        # More threads never have less bandwidth available (a server may use fewer): a noisy
        # all-threads run below the 1-thread one must not give a ceiling a measurement can beat.
        many = max(many, one)
    gpu = next((read for device, _, read in rows if device == DEVICE_GPU), None)
    return MeasuredBandwidth(cpu_read_gbs_one_thread=one, cpu_read_gbs_all_threads=many, gpu_gbs=gpu)


def bandwidth_history(history_file: Path) -> list[dict]:
    """Every stored row, oldest first (for reports)."""
    if not Path(history_file).exists():
        return []
    with history.connect(history_file, read_only=True) as con:
        if not _has_table(con, "bandwidth_measurements"):
            return []
        cursor = con.execute("SELECT * FROM bandwidth_measurements ORDER BY measured_at, device, threads")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def _has_table(con, name: str) -> bool:
    # A read-only connection does not migrate: a history file written by an older
    # schema may lack the table, which means "nothing measured", not an error.
    return bool(
        con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0]
    )
