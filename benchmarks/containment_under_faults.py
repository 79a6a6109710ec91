"""Containment latency under ordinary faults, beside the fault-free figure, in one process.

Two paths, each measured ROUNDS times per fault (median printed, ratio to no fault):

* guard: one watch tick that sees the overheat -> contain() (stop + verify + latch)
  on a real container -> the spool and alert writes. Clock: tick start to verified stop.
* sensor: thermal_sensor evaluated (build_sensor_context) on the tick that crosses the
  line. Clock: evaluation start to the SensorResult carrying the RunRequest (what
  follows, the daemon launching the run, is the same whatever the fault).

Faults: a webhook that hangs (30 s timeout), refuses, or is not a URL; the data and
log disk full (a 256 KiB tmpfs filled to the last byte, needs root); the settings
file broken mid-run (the last good settings stay in force).

Usage: .venv/bin/python benchmarks/containment_under_faults.py [ROUNDS]
Needs dockerd and the llama-server image (compose/setup.sh).
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from dagster import DagsterInstance, build_sensor_context

from idp_ops.last_good_settings import load_or_last_good
from idp_ops.resources import SettingsResource
from idp_ops.settings import REPO_ROOT, load_settings
from idp_ops.stack.deploy import clear_latch, compose_project, contain, read_latch
from idp_ops.thermal.defs import thermal_sensor
from idp_ops.thermal.policy import PolicyConfig
from idp_ops.thermal.telemetry import Sample, write_samples_csv
from idp_ops.thermal.watch import AlertSink, Spool, WatchState, record_tick, watch_tick, webhooks

STANDIN = """\
services:
  gpu-standin:
    image: ${IDP_LLAMA_SERVER_IMAGE}
    entrypoint: ["/bin/busybox", "sleep", "3600"]
    network_mode: none
    # busybox sleep as PID 1 ignores SIGTERM; KILL makes the stop itself as quick as
    # llama-server's (0.2 s), so the figures show what the watch adds around it.
    stop_signal: SIGKILL
    user: "65534:65534"
    read_only: true
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
"""
FAULTS = ["none", "webhook hangs", "webhook refuses", "webhook not a URL", "disk full", "settings broken"]


class Hang(BaseHTTPRequestHandler):
    release = threading.Event()

    def do_POST(self):
        Hang.release.wait(60)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Hot:
    name = "nvml"

    def __init__(self, start: datetime):
        self.samples = [
            Sample(ts=start + timedelta(seconds=i), device="gpu0", source="nvml", temperature_c=95) for i in range(2)
        ]

    def sample(self):
        return self.samples

    def thresholds(self):
        return []

    def close(self):
        pass


def prepare(work: Path, fault: str, image: str, hook_url: str | None) -> Path:
    home = work / "home"
    if fault == "disk full":
        (work / "full").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(work / "full")], check=True)
        home = work / "full" / "home"
    compose = work / "standin.yml"
    compose.write_text(STANDIN)
    trace = work / "trace.csv"
    t0 = datetime.now(UTC)
    write_samples_csv(
        [
            Sample(ts=t0 + timedelta(seconds=i), device="gpu0", source="csv", temperature_c=t)
            for i, t in enumerate([40, 41, 95, 96])
        ],
        trace,
    )
    thermal = {
        "warn_c": 85,
        "contain_c": 90,
        "replay_csv": str(trace),
        "replay_rows_per_tick": 2,
        "webhook_timeout_s": 30,
    }
    if hook_url:
        thermal["webhook_url"] = hook_url
    config = work / "idp-ops.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "profile": "gpu",
                "home": str(home),
                "compose_file": str(compose),
                "endpoints": [],
                "compose_project": f"idp-bench-{uuid.uuid4().hex[:8]}",
                "llama_server_image": image,
                "gpu_services": ["gpu-standin"],
                "stop_timeout_s": 2,
                "thermal": thermal,
            }
        )
    )
    settings = load_settings(config)
    load_or_last_good(config)  # the watch has seen these settings before the fault
    for directory in (settings.thermal_spool_dir, settings.alerts_log.parent):
        directory.mkdir(parents=True, exist_ok=True)
    if fault == "disk full":
        fd = os.open(work / "full" / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 512):
                pass
        os.close(fd)
    return config


def break_settings(config: Path, fault: str) -> None:
    if fault == "settings broken":
        config.write_text(config.read_text().replace("warn_c: 85", "warn_c: [85"))


def guard_round(config: Path, fault: str) -> float:
    settings = load_settings(config)
    project = compose_project(settings)
    project.up(wait=False, timeout=60)
    break_settings(config, fault)
    try:
        started = time.perf_counter()
        active, _ = load_or_last_good(config)
        result = watch_tick(
            [Hot(datetime.now(UTC))],
            PolicyConfig.from_thresholds(active.thermal),
            WatchState(),
            latch=read_latch(active),
        )
        for request in result.to_contain:
            contain(active, "benchmark", {"episode": request.episode}, retry_for_s=30)
        elapsed = time.perf_counter() - started
        record_tick(
            result,
            Spool(active.thermal_spool_dir),
            AlertSink(active.alerts_log, active.thermal.webhook_url, active.thermal.webhook_timeout_s),
            origin="guard",
        )
        assert result.to_contain and read_latch(active) is not None
        return elapsed
    finally:
        clear_latch(settings)
        project.down(timeout=2)


def sensor_round(config: Path, fault: str) -> float:
    resources = {"settings": SettingsResource(config_file=str(config))}
    with DagsterInstance.ephemeral() as instance:
        first = thermal_sensor(build_sensor_context(cursor=None, instance=instance, resources=resources))
        break_settings(config, fault)
        started = time.perf_counter()
        second = thermal_sensor(build_sensor_context(cursor=first.cursor, instance=instance, resources=resources))
        elapsed = time.perf_counter() - started
    assert second.run_requests, "the overheat must be contained"
    return elapsed


def main(rounds: int) -> None:
    image = load_settings(REPO_ROOT / "idp-ops.yaml" if (REPO_ROOT / "idp-ops.yaml").exists() else None)
    image = image.llama_server_image
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hang)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hooks = {
        "webhook hangs": f"http://127.0.0.1:{server.server_port}/hook",
        "webhook refuses": f"http://127.0.0.1:{closed_port()}/hook",
        "webhook not a URL": "http://[::1",
    }
    results: dict[str, dict[str, list[float]]] = {}
    for fault in FAULTS:
        if fault == "disk full" and os.geteuid() != 0:
            print(f"{fault}: skipped (mounting a tmpfs needs root)")
            continue
        results[fault] = {"guard": [], "sensor": []}
        for _ in range(rounds):
            for path, measure in (("guard", guard_round), ("sensor", sensor_round)):
                with tempfile.TemporaryDirectory() as tmp:
                    work = Path(tmp)
                    config = prepare(work, fault, image, hooks.get(fault))
                    try:
                        results[fault][path].append(measure(config, fault))
                    finally:
                        if fault == "disk full":
                            subprocess.run(["umount", str(work / "full")], check=True)
    Hang.release.set()
    webhooks.flush(60)
    server.shutdown()
    base = {path: statistics.median(results["none"][path]) for path in ("guard", "sensor")}
    print(f"rounds per cell: {rounds}; medians (ratio to no fault)")
    print(f"{'fault':<20} {'guard: tick -> verified stop':>30} {'sensor: tick -> RunRequest':>30}")
    for fault, paths in results.items():
        cells = []
        for path in ("guard", "sensor"):
            median = statistics.median(paths[path])
            cells.append(f"{median * 1000:9.1f} ms ({median / base[path]:4.2f}x)")
        print(f"{fault:<20} {cells[0]:>30} {cells[1]:>30}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
