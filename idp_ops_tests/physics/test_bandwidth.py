"""The memory-bandwidth probe on this machine, and the measurements kept in DuckDB."""

from __future__ import annotations

import importlib.util
import os
from datetime import UTC, datetime, timedelta

import pytest

from idp_ops.physics.bandwidth import measure_cpu_bandwidth, spread
from idp_ops.physics.bandwidth_store import (
    BandwidthRow,
    bandwidth_history,
    latest_measured_bandwidth,
    measure_gpu_bandwidth,
    record_bandwidth,
)
from idp_ops.physics.ceilings import MeasuredBandwidth, endpoint_ceiling
from idp_ops.physics.formulas import GB
from idp_ops.settings import HARDWARE_PROFILES, Endpoint

T0 = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)


def test_cpu_probe_is_plausible_and_reports_the_best_of_its_repeats():
    # 256 MB is 8x this machine's L3, so DRAM is read. How much the figure moves between runs
    # (one thread against all cores) is a measurement, not a test: benchmarks/cpu_bandwidth_spread.py.
    one = measure_cpu_bandwidth(256, threads=1, repeats=10)
    # DRAM: more than one DDR3 channel's worth, less than any HBM stack.
    assert all(1.0 < r < 2000.0 for r in one.runs_read_gbs), one.runs_read_gbs
    # Best of the repeats: the others met interference, the best is the machine's capability.
    assert len(one.runs_read_gbs) == 10 and one.read_gbs == max(one.runs_read_gbs)
    assert (one.threads, one.buffer_mb, one.repeats) == (1, 256, 10) and one.copy_gbs > 0
    everything = measure_cpu_bandwidth(256, repeats=5)  # all cores by default
    assert 1.0 < everything.read_gbs < 2000.0 and everything.threads == (os.cpu_count() or 1)
    assert len(everything.runs_read_gbs) == 5 and everything.read_gbs == max(everything.runs_read_gbs)


def test_spread_is_the_range_over_the_median():
    assert spread([9.0, 10.0, 12.0]) == pytest.approx(0.3)
    assert spread([20.0, 20.0, 20.0]) == 0.0
    assert spread([5.0]) == 0.0


def test_newest_measured_rows_become_the_bandwidth_the_ceilings_use(tmp_path):
    history = tmp_path / "history.duckdb"
    assert latest_measured_bandwidth(history) == MeasuredBandwidth()  # no file: nothing measured, no crash
    record_bandwidth(
        history,
        [
            BandwidthRow("cpu", 1, 20.0, 15.0, "measured"),
            BandwidthRow("cpu", 8, 60.0, 50.0, "measured"),
            BandwidthRow("gpu", 0, 896.0, None, "datasheet"),
        ],  # fmt: skip
        measured_at=T0,
        host="box",
    )
    record_bandwidth(
        history,
        [BandwidthRow("cpu", 1, 22.0, 16.0, "measured"), BandwidthRow("cpu", 8, 64.0, 52.0, "measured")],
        measured_at=T0 + timedelta(days=1),
        host="box",
    )
    latest = latest_measured_bandwidth(history)
    # A datasheet row is kept for the record but never passed off as measured.
    assert latest == MeasuredBandwidth(cpu_read_gbs_one_thread=22.0, cpu_read_gbs_all_threads=64.0, gpu_gbs=None)
    assert latest_measured_bandwidth(history, host="other") == MeasuredBandwidth()
    assert [(r["device"], r["threads"], r["source"]) for r in bandwidth_history(history)][:3] == [
        ("cpu", 1, "measured"), ("cpu", 8, "measured"), ("gpu", 0, "datasheet")
    ]  # fmt: skip

    record_bandwidth(history, [BandwidthRow("gpu", 0, 1500.0, 2900.0, "measured")], measured_at=T0 + timedelta(days=2))
    assert latest_measured_bandwidth(history).gpu_gbs == 1500.0


def test_a_one_core_host_uses_its_single_thread_figure_for_all_threads(tmp_path):
    history = tmp_path / "history.duckdb"
    record_bandwidth(history, [BandwidthRow("cpu", 1, 12.5, 10.0, "measured")], measured_at=T0)
    assert latest_measured_bandwidth(history) == MeasuredBandwidth(12.5, 12.5, None)


def test_measured_bandwidth_replaces_the_datasheet_in_an_endpoint_ceiling(tmp_path):
    history = tmp_path / "history.duckdb"
    record_bandwidth(
        history, [BandwidthRow("cpu", 1, 20.0, 15.0, "measured"), BandwidthRow("cpu", 12, 80.0, 70.0, "measured")],
        measured_at=T0,
    )  # fmt: skip
    endpoint = Endpoint(name="cpu3b", protocol="llamacpp", url="http://127.0.0.1:1", weights_gb=2.0, cpu_threads=10)
    hardware = HARDWARE_PROFILES["rtx5070ti-ryzen9900x"]
    measured = endpoint_ceiling(endpoint, models_dir=tmp_path, hardware=hardware,
                                measured=latest_measured_bandwidth(history))  # fmt: skip
    datasheet = endpoint_ceiling(endpoint, models_dir=tmp_path, hardware=hardware)
    assert measured.bandwidth_source == "measured" and measured.tok_s == pytest.approx(80.0 * GB / (2.0 * GB))
    assert datasheet.bandwidth_source == "datasheet" and datasheet.tok_s == pytest.approx(40.96)


@pytest.mark.skipif(
    importlib.util.find_spec("cupy") is not None or importlib.util.find_spec("torch") is not None,
    reason="a CUDA array library is installed: the probe may measure",
)
def test_gpu_probe_says_none_without_a_cuda_array_library():
    assert measure_gpu_bandwidth(8) is None


def test_a_noisy_all_threads_run_never_lowers_the_bandwidth_below_one_thread(tmp_path):
    history = tmp_path / "history.duckdb"
    record_bandwidth(
        history, [BandwidthRow("cpu", 1, 25.0, 20.0, "measured"), BandwidthRow("cpu", 2, 19.0, 18.0, "measured")],
        measured_at=T0,
    )  # fmt: skip
    assert latest_measured_bandwidth(history) == MeasuredBandwidth(25.0, 25.0, None)
