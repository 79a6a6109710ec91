"""thermal_sensor evaluated with build_sensor_context over the real H200 trace."""

import contextlib
import functools
import json
import os
import subprocess
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pynvml
import pytest
from dagster import DagsterInstance, SkipReason, build_sensor_context

from idp_ops.last_good_settings import read_snapshot
from idp_ops.resources import SettingsResource
from idp_ops.settings import load_settings
from idp_ops.stack.deploy import read_latch
from idp_ops.thermal import defs as thermal_defs
from idp_ops.thermal.defs import thermal_sensor
from idp_ops.thermal.telemetry import open_sources
from idp_ops.thermal.watch import LiveSources, Spool, webhooks
from idp_ops_harness.nvml_stand_in import StandInNvml
from idp_ops_harness.recorded_data import FIXTURES
from idp_ops_harness.settings_files import write_settings

TRACE = FIXTURES / "h200_trace.csv"


def thermal_settings(tmp_path, **thermal):
    values = {
        "warn_c": 50,
        "contain_c": 55,
        "clear_after_s": 10,
        "consecutive_samples": 2,
        "replay_csv": str(TRACE),
        "replay_rows_per_tick": 10,
        **thermal,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_settings(tmp_path / "idp-ops.yaml", home=str(tmp_path / "home"), thermal=values)
    return config, load_settings(config)


def tick(config, cursor, instance):
    context = build_sensor_context(
        cursor=cursor, instance=instance, resources={"settings": SettingsResource(config_file=str(config))}
    )
    return thermal_sensor(context), context


def run_ticks(config, instance, count):
    cursor, results = None, []
    for _ in range(count):
        result, _ = tick(config, cursor, instance)
        results.append((cursor, result))
        cursor = result.cursor
    return results


def test_replayed_overheat_yields_one_containment_with_a_stable_key(tmp_path):
    config, settings = thermal_settings(tmp_path)
    with DagsterInstance.ephemeral() as instance:
        results = run_ticks(config, instance, 10)  # 99 rows at 10 per tick
        requests = [(cursor, r) for cursor, result in results for r in (result.run_requests or [])]
        # Until a run verifies the stop, every tick asks again with the same key (Dagster
        # launches a key once): one containment, whatever happens to the first request.
        assert {r.run_key for _, r in requests} == {requests[0][1].run_key}, [r.run_key for _, r in requests]
        cursor_before, request = requests[0]
        assert request.run_key.startswith("contain:gpu0-")
        run_config = request.run_config["ops"]["stop_gpu_services"]["config"]
        assert run_config["device"] == "gpu0" and run_config["temperature_c"] >= 55
        # The same tick evaluated again (a retry) asks for the same run key.
        again, _ = tick(config, cursor_before, instance)
        assert [r.run_key for r in again.run_requests] == [request.run_key]

    final = json.loads(results[-1][1].cursor)
    assert final["replay_index"] == 99
    spool = Spool(settings.thermal_spool_dir)
    spooled = [s for day in spool.days() for s in spool.read(day)[0]]
    assert len(spooled) >= 99 and max(s.temperature_c for s in spooled) == 59
    alerts = [json.loads(line) for line in settings.alerts_log.read_text().splitlines()]
    assert [a["action"] for a in alerts if a["origin"] == "thermal_sensor"][:2] == ["warn", "contain"]
    assert len({(a["episode"], a["action"]) for a in alerts}) == len(alerts), "alerts are deduplicated per episode"


CpuReading = namedtuple("CpuReading", "label current high critical")  # psutil's shwtemp
NO_NVML_LIBRARY = "nvml: no NVIDIA device: NVML Shared Library Not Found"


def box_without_a_gpu(monkeypatch, cpu_sensors: dict) -> None:
    """The sensor's live sources as on a box with no NVIDIA driver (the real NvmlSource over a stand-in
    whose nvmlInit answers LIBRARY_NOT_FOUND) and hwmon reading ``cpu_sensors`` (what
    psutil.sensors_temperatures() returns), whatever this machine has."""
    import psutil

    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: cpu_sensors)
    no_driver = StandInNvml(fail={"nvmlInit": pynvml.NVML_ERROR_LIBRARY_NOT_FOUND})
    monkeypatch.setattr(thermal_defs, "_live", LiveSources(functools.partial(open_sources, nvml=no_driver)))


def live_tick(tmp_path):
    config = write_settings(tmp_path / "idp-ops.yaml", home=str(tmp_path / "home"))
    with DagsterInstance.ephemeral() as instance:
        result, _ = tick(config, None, instance)
    assert not result.run_requests
    assert isinstance(result.skip_reason, SkipReason)
    return result.skip_reason.skip_message, load_settings(config)


def test_no_nvml_on_this_machine_is_a_skip_reason_not_a_crash(tmp_path, monkeypatch):
    box_without_a_gpu(monkeypatch, cpu_sensors={})
    reason, _ = live_tick(tmp_path)
    assert reason == (
        f"0 samples, hottest GPU None °C, no containment; {NO_NVML_LIBRARY}; hwmon: no CPU temperature sensor"
    )


def test_without_a_gpu_the_cpu_is_still_sampled_and_the_missing_nvml_named(tmp_path, monkeypatch):
    box_without_a_gpu(
        monkeypatch,
        cpu_sensors={"k10temp": [CpuReading("Tctl", 47.5, None, None), CpuReading("Tccd1", 44.0, None, None)]},
    )
    reason, settings = live_tick(tmp_path)
    assert reason == f"2 samples, hottest GPU None °C, no containment; {NO_NVML_LIBRARY}"
    spool = Spool(settings.thermal_spool_dir)
    spooled = [s for day in spool.days() for s in spool.read(day)[0]]
    assert sorted((s.device, s.source, s.temperature_c) for s in spooled) == [
        ("cpu", "hwmon", 47.5),
        ("cpu-ccd", "hwmon", 44.0),
    ]


def first_containment_tick(results) -> int:
    return next(i for i, (_, result) in enumerate(results) if result.run_requests)


def ticks_in_thread(config, count, hang_guard_s=30.0):
    """Run the ticks on a thread; a tick that waits on a fault would trip the hang guard."""
    out = {}

    def work():
        with DagsterInstance.ephemeral() as instance:
            out["results"] = run_ticks(config, instance, count)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(hang_guard_s)
    assert not worker.is_alive(), f"sensor ticks still running after {hang_guard_s} s: a fault sits before the stop"
    return out["results"]


class HangingWebhook(BaseHTTPRequestHandler):
    """Answers only when the test releases it: a webhook that hangs for as long as we like."""

    received: list = []
    release = threading.Event()

    def do_POST(self):
        HangingWebhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        HangingWebhook.release.wait(120)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _closed_port() -> int:
    from idp_ops_harness.ports import free_port

    return free_port()  # bound and released: nothing listens there


@pytest.mark.parametrize("fault", ["hangs", "refuses", "invalid-url", "not-a-url"])
def test_a_webhook_fault_never_delays_containment(tmp_path, fault):
    baseline_config, _ = thermal_settings(tmp_path / "baseline", replay_rows_per_tick=10)
    baseline = first_containment_tick(ticks_in_thread(baseline_config, 6))

    server = None
    if fault == "hangs":
        HangingWebhook.received, HangingWebhook.release = [], threading.Event()
        server = ThreadingHTTPServer(("127.0.0.1", 0), HangingWebhook)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}/hook"
    else:
        url = {
            "refuses": f"http://127.0.0.1:{_closed_port()}/hook",
            "invalid-url": "http://[::1",
            "not-a-url": "::not a url",
        }[fault]
    try:
        # A 60 s webhook timeout: a tick that waited for the webhook would trip the 30 s hang guard.
        config, settings = thermal_settings(
            tmp_path / fault, replay_rows_per_tick=10, webhook_url=url, webhook_timeout_s=60
        )
        results = ticks_in_thread(config, 6)
        assert first_containment_tick(results) == baseline
        alerts = [json.loads(line) for line in settings.alerts_log.read_text().splitlines()]
        assert [a["action"] for a in alerts][:2] == ["warn", "contain"], "the alert is logged before any delivery"
        if fault == "hangs":
            assert not HangingWebhook.release.is_set()
            HangingWebhook.release.set()
        assert webhooks.flush(60)
    finally:
        if server is not None:
            HangingWebhook.release.set()
            server.shutdown()
    logged = [json.loads(line) for line in settings.alerts_log.read_text().splitlines()]
    failures = [a for a in logged if a["action"] == "webhook_failed"]
    if fault == "hangs":
        assert [a["device"] for a in HangingWebhook.received][:2] == ["gpu0", "gpu0"] and not failures
    else:
        assert failures and all(a["error"].startswith("webhook failed:") for a in failures), failures
        assert {a["key"] for a in failures} >= {a["key"] for a in logged if a["action"] in ("warn", "contain")}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_full_disk_never_stops_containment(tmp_path):
    baseline_config, _ = thermal_settings(tmp_path / "baseline", replay_rows_per_tick=10)
    baseline = first_containment_tick(ticks_in_thread(baseline_config, 6))

    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
    try:
        config = write_settings(
            tmp_path / "idp-ops.yaml",
            home=str(full / "home"),
            thermal={
                "warn_c": 50,
                "contain_c": 55,
                "clear_after_s": 10,
                "replay_csv": str(TRACE),
                "replay_rows_per_tick": 10,
            },
        )
        settings = load_settings(config)
        settings.thermal_spool_dir.mkdir(parents=True)
        settings.alerts_log.parent.mkdir(parents=True)
        fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk to the last byte
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * 512):
                    pass
        finally:
            os.close(fd)
        with pytest.raises(OSError, match="No space left"):
            (full / "probe").write_text("x" * 4096)
        results = ticks_in_thread(config, 6)
        assert first_containment_tick(results) == baseline
        spooled = list(settings.thermal_spool_dir.glob("*.jsonl"))
        for path in spooled:  # whatever got written is whole lines: nothing torn
            for line in path.read_text().splitlines():
                json.loads(line)
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_settings_that_stop_parsing_keep_the_last_good_in_force(tmp_path):
    config, settings = thermal_settings(tmp_path, replay_rows_per_tick=10)
    good = config.read_text()
    with DagsterInstance.ephemeral() as instance:
        results = run_ticks(config, instance, 2)  # cool rows only: no containment yet
        assert not any(result.run_requests for _, result in results)
        config.write_text(good.replace("warn_c: 50", "warn_c: [not, a, number"))  # an editor mid-save
        cursor = results[-1][1].cursor
        requests = []
        for _ in range(4):
            result, _ = tick(config, cursor, instance)
            cursor = result.cursor
            requests += result.run_requests or []
    assert requests, "the overheat is still contained with the last good settings"
    alerts = [json.loads(line) for line in settings.alerts_log.read_text().splitlines()]
    settings_alerts = [a for a in alerts if a["action"] == "settings"]
    assert len(settings_alerts) == 1 and "last good settings stay in force" in settings_alerts[0]["reason"]
    assert "warn_c" in settings_alerts[0]["reason"]
    # The containment run gets the snapshot to fall back to: the same settings, from no other source.
    snapshot = requests[0].run_config["ops"]["stop_gpu_services"]["config"]["settings_snapshot"]
    restored = read_snapshot(snapshot)
    assert restored is not None and restored.model_dump() == settings.model_dump()
    assert oct(Path(snapshot).stat().st_mode & 0o777) == "0o600"


def containment_job_with_resources():
    from idp_ops.definitions import defs

    return defs.resolve_job_def("containment_job")


def test_a_failed_containment_run_is_retried_with_a_new_key_until_verified(tmp_path, monkeypatch, docker_ready):
    values = {
        "warn_c": 50,
        "contain_c": 55,
        "clear_after_s": 10,
        "consecutive_samples": 2,
        "replay_csv": str(TRACE),
        "replay_rows_per_tick": 10,
        "contain_retry_s": 0,
    }
    broken = write_settings(
        tmp_path / "idp-ops.yaml",
        home=str(tmp_path / "home"),
        thermal=values,
        compose_file=str(tmp_path / "missing-compose.yml"),
        compose_project=f"idp-test-retry-{os.getpid()}",
        gpu_services=["gpu-standin"],
    )
    settings = load_settings(broken)
    monkeypatch.setenv("IDP_CONFIG", str(broken))
    job = containment_job_with_resources()
    with DagsterInstance.ephemeral() as instance:
        cursor, first = None, None
        for _ in range(6):
            result, _ = tick(broken, cursor, instance)
            cursor = result.cursor
            if result.run_requests:
                first = result.run_requests[0]
                break
        assert first is not None
        run = job.execute_in_process(
            run_config=first.run_config, instance=instance, tags=first.tags, raise_on_error=False
        )
        assert not run.success and settings.containment_latch_file.exists() is False

        result, _ = tick(broken, cursor, instance)
        cursor = result.cursor
        [second] = result.run_requests
        assert second.run_key == first.run_key + ":attempt-2" and second.tags["idp_ops/attempt"] == "2"

        # The fault goes away (here: a compose file with nothing running), the second attempt lands.
        compose = tmp_path / "missing-compose.yml"
        compose.write_text("services:\n  gpu-standin:\n    image: idp-ops/none\n")
        run = job.execute_in_process(run_config=second.run_config, instance=instance, tags=second.tags)
        assert run.success
        latch = read_latch(settings)
        assert latch["reading"]["episode"] == second.tags["idp_ops/episode"] and latch["attempts"] == 1

        result, _ = tick(broken, cursor, instance)
        assert not result.run_requests, "verified: nothing more to ask"
    alerts = [json.loads(line) for line in settings.alerts_log.read_text().splitlines()]
    failed = [a for a in alerts if a["action"] == "contain_failed"]
    assert {a["origin"] for a in failed} == {"containment_job", "thermal_sensor"}
    assert any("compose file" in a["reason"] and "does not exist" in a["reason"] for a in failed)
