"""Containment on real dockerd when something else is already failing.

The GPU service is stood in for by a container of the llama-server image running
busybox `sleep` (no model, starts in a fraction of a second); what matters here is
that dockerd, compose and the latch behave as they will on the GPU box.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from idp_ops.stack.compose import DockerUnavailable
from idp_ops.stack.deploy import DeployError, clear_latch, compose_project, contain, deploy, read_latch
from idp_ops.stack.probe import ProbeError
from idp_ops.stack.secrets import ensure_keys
from idp_ops.thermal.policy import PolicyConfig
from idp_ops.thermal.telemetry import Sample
from idp_ops.thermal.watch import WatchState, watch_tick
from idp_ops_harness.docker_engine import SecondEngine
from idp_ops_harness.gpu_standin import GPU_STANDIN, running, standin_settings
from idp_ops_harness.ports import free_port

pytestmark = [pytest.mark.docker]


def wait_for(predicate, hang_guard_s: float, what: str) -> None:
    deadline = time.monotonic() + hang_guard_s
    while not predicate():
        assert time.monotonic() < deadline, f"still waiting after {hang_guard_s:.0f} s for {what}"
        time.sleep(0.1)


@pytest.fixture
def engine(llama_image, monkeypatch):
    box = SecondEngine()
    box.start()
    box.load_image(llama_image)
    monkeypatch.setenv("DOCKER_HOST", box.host)
    yield box
    if not box.answering():
        box.start()
    box.stop()


def test_containment_lands_when_dockerd_restarts_midway(tmp_path, engine, llama_image):
    settings = standin_settings(tmp_path, llama_image)
    project = compose_project(settings)
    try:
        project.up(wait=False, timeout=60)
        assert running(settings) == {"gpu-standin"}
        engine.stop()  # dockerd goes away just as the card overheats

        failures: list[tuple[int, str]] = []
        outcome: dict = {}

        def containment():
            try:
                outcome["report"] = contain(
                    settings,
                    "overheat during a dockerd restart",
                    {"episode": "gpu0-test-1"},
                    retry_for_s=120,
                    retry_interval_s=0.5,
                    on_failed_attempt=lambda n, e: failures.append((n, e)),
                )
            except Exception as exc:  # handed to the assertions below
                outcome["error"] = exc

        worker = threading.Thread(target=containment, daemon=True)
        worker.start()
        wait_for(lambda: len(failures) >= 2, 60, "two failed attempts while dockerd is down")
        assert read_latch(settings) is None, "nothing is latched before the stop is verified"
        assert all("docker" in error.lower() for _, error in failures), failures

        engine.start()  # dockerd is back; `restart: unless-stopped` brings the service back too
        worker.join(120)
        assert not worker.is_alive() and "error" not in outcome, outcome
        report = outcome["report"]
        assert report.ok and report.attempts == len(failures) + 1 >= 3
        assert running(settings) == set()
        latch = read_latch(settings)
        assert latch["reading"]["episode"] == "gpu0-test-1" and len(latch["failed_attempts"]) == len(failures)
    finally:
        if engine.answering():
            project.down(timeout=2)


def test_containment_that_cannot_be_verified_raises_and_never_latches(tmp_path, engine, llama_image):
    settings = standin_settings(tmp_path, llama_image)
    project = compose_project(settings)
    try:
        project.up(wait=False, timeout=60)
        engine.stop()
        failures = []
        with pytest.raises(DeployError, match=r"not verified stopped after \d+ attempt"):
            contain(
                settings,
                "dockerd stays down",
                {},
                retry_for_s=1.5,
                retry_interval_s=0.5,
                on_failed_attempt=lambda n, e: failures.append(n),
            )
        assert failures and read_latch(settings) is None
    finally:
        engine.start()
        project.down(timeout=2)


def hot(device: str, start: datetime, count: int = 2) -> list[Sample]:
    return [
        Sample(ts=start + timedelta(seconds=i), device=device, source="csv", temperature_c=95) for i in range(count)
    ]


class Samples:
    """A source handing out prepared samples, one batch per tick."""

    name = "nvml"

    def __init__(self, batches):
        self.batches = list(batches)

    def sample(self):
        return self.batches.pop(0) if self.batches else []

    def thresholds(self):
        return []

    def close(self):
        pass


def test_a_failed_deploy_after_a_containment_leaves_protection_armed(tmp_path, llama_image, docker_ready):
    closed_port = free_port()  # nothing will answer there: the deploy's proof fails
    settings = standin_settings(
        tmp_path,
        llama_image,
        deploy_timeout_s=10,
        endpoints=[
            {
                "name": "gpu",
                "protocol": "openai",
                "url": f"http://127.0.0.1:{closed_port}",
                "compose_service": "gpu-standin",
                "key_name": "gpu_api_key",
                "model": "m",
                "gpu": True,
            }
        ],
    )
    ensure_keys(
        settings.secrets_dir, settings.key_names, owner_uid=settings.service_uid, owner_gid=settings.service_gid
    )
    project = compose_project(settings)
    config = PolicyConfig(warn_c=85, contain_c=90, consecutive_samples=2, clear_after_s=600)
    t0 = datetime.now(UTC)
    state = WatchState()
    try:
        project.up(wait=False, timeout=60)
        # An overheat, contained and latched.
        first = watch_tick([Samples([hot("gpu0", t0)])], config, state, latch=None)
        [request] = first.to_contain
        contain(settings, "overheat", {"episode": request.episode}, retry_for_s=30)
        assert running(settings) == set()
        settled = watch_tick(
            [Samples([hot("gpu0", t0 + timedelta(seconds=10))])], config, state, latch=read_latch(settings)
        )
        assert settled.to_contain == [], "latched and verified: nothing pending, no second containment"

        # A person re-deploys; the GPU service comes up, then the proof fails.
        with pytest.raises((DeployError, ProbeError, DockerUnavailable), match="not ready"):
            deploy(settings)
        assert running(settings) == {"gpu-standin"}
        latch = read_latch(settings)
        assert latch is not None and latch["rearmed_at"], "the record stays until a deploy is proven"

        # The card heats again: the watch protects the running service.
        again = watch_tick([Samples([hot("gpu0", t0 + timedelta(seconds=60))])], config, state, latch=latch)
        assert [r.device for r in again.to_contain] == ["gpu0"] and again.to_contain[0].episode != request.episode
    finally:
        project.down(timeout=2)


class HungDockerd:
    """A unix socket that accepts the docker CLI's connection and never answers: a hung dockerd."""

    def __init__(self, path):
        import socket

        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        self.held = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.held.append(connection)  # read nothing, answer nothing

    def close(self):
        self.server.close()
        for connection in self.held:
            connection.close()


def test_every_docker_call_gives_up_on_a_hung_dockerd(tmp_path, monkeypatch):
    from idp_ops.stack import compose as compose_module
    from idp_ops.stack.compose import ComposeProject, container_time, image_id

    hung = HungDockerd(tmp_path / "hung.sock")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{hung.path}")
    monkeypatch.setattr(compose_module, "DOCKER_CALL_TIMEOUT_S", 1.0)
    compose = tmp_path / "c.yml"
    compose.write_text(GPU_STANDIN)
    try:
        for call in (lambda: container_time("any"), lambda: image_id("any")):
            with pytest.raises(DockerUnavailable, match="did not answer within 1 s"):
                call()
        with pytest.raises(DockerUnavailable, match="did not answer"):
            compose_module.check_docker(timeout=1)
        project = ComposeProject(compose, "idp-test-hung", environment={"IDP_LLAMA_SERVER_IMAGE": "x"})
        with pytest.raises(Exception, match="did not finish within 2 s"):
            project.run("ps", "--format", "json", timeout=2)
        assert len(hung.held) >= 4, "each call really reached the hung daemon"
    finally:
        hung.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_full_data_disk_does_not_turn_a_verified_stop_into_a_failure(tmp_path, llama_image, docker_ready):
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
    settings = standin_settings(tmp_path, llama_image, data_dir=str(full / "data"))
    project = compose_project(settings)
    try:
        project.up(wait=False, timeout=60)
        settings.data_dir.mkdir()
        fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 512):
                pass
        os.close(fd)
        report = contain(settings, "overheat on a full disk", {"episode": "gpu0-full-1"}, retry_for_s=5)
        assert report.ok and running(settings) == set()
        latch = read_latch(settings)
        assert latch["reading"]["episode"] == "gpu0-full-1" and "No space left" in latch["stored_in_fallback_because"]
        assert not settings.containment_latch_file.exists()
        assert clear_latch(settings) and read_latch(settings) is None
    finally:
        clear_latch(settings)
        project.down(timeout=2)
        subprocess.run(["umount", str(full)], check=True)
