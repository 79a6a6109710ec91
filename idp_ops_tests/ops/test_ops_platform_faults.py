"""The ops platform in containers under the faults of an unattended box: an overheat, a daemon crash, a reboot.

One platform, one scenario, because each bring-up costs a minute of a 2-core machine:
1. A replayed H200 overheat: the code-location container evaluates thermal_sensor, the containerised
   daemon launches containment_job as its own run container, and that container stops the GPU-role
   service of the stack on the host's dockerd. The latch lands in the box's data dir, where the host
   (its guard, its CLI, this test) reads it: the platform and the host share one latch.
2. The daemon's process is killed as a crash would: the restart policy brings it back healthy, its
   sensors tick again, the schedules are still running, and no sensor or schedule launched a run twice
   (run keys), while each containment episode got exactly one run.
3. `down` then `up` (a reboot): the run history is still there, in Postgres.
How fast the GPU service stops through containers is measured by benchmarks/thermal_containment_latency.py
(the "platform" path); here it is printed only.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from idp_ops.settings import load_settings
from idp_ops.stack.deploy import read_latch
from idp_ops_harness.ops_platform import UP_TIMEOUT_S, OpsPlatform, torn_down_after
from idp_ops_harness.thermal_e2e import deploy_fresh, replay_settings, wait_until_contained

pytestmark = [pytest.mark.docker, pytest.mark.e2e, pytest.mark.model, pytest.mark.timeout(UP_TIMEOUT_S + 900)]

LOCATION = "idp_ops"
SENSOR = "thermal_sensor"
RUN_KEY_TAG, SENSOR_TAG, SCHEDULE_TAG = "dagster/run_key", "dagster/sensor_name", "dagster/schedule_name"
EPISODE_TAG = "idp_ops/episode"


def wait_for(predicate, what: str, timeout_s: float, every_s: float = 2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:.0f} s"  # a hang guard
        time.sleep(every_s)


def finished_containment_runs(platform: OpsPlatform) -> list[dict]:
    runs = platform.runs("containment_job")
    if runs and all(r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs):
        return runs
    return []


def duplicate_run_keys(runs: list[dict]) -> dict:
    """(instigator, run key) pairs that launched more than one run: what run keys exist to prevent."""
    keys = Counter()
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        if RUN_KEY_TAG in tags:
            keys[(tags.get(SENSOR_TAG) or tags.get(SCHEDULE_TAG), tags[RUN_KEY_TAG])] += 1
    return {key: n for key, n in keys.items() if n > 1}


def test_platform_contains_an_overheat_survives_a_daemon_crash_and_a_reboot(tmp_path, llama_image, demo_models_dir):
    config_file = replay_settings(
        tmp_path, demo_models_dir, llama_image, "idp-ops-platform-thermal", rows_per_tick=10, trace_in_data_dir=True
    )
    settings = load_settings(config_file)
    platform = OpsPlatform(tmp_path, config_file)
    with torn_down_after(platform, settings):
        deploy_fresh(settings)  # on the host: the stack is up before the sensor's first tick
        up_s = platform.up()
        print(f"\nplatform {platform.project} healthy after {up_s:.1f} s")
        (repository,) = platform.wait_for_location(LOCATION)["repositories"]
        repo = repository["name"]

        # 1. Contained through containers, and the latch is the host's.
        timing = wait_until_contained(settings, timeout_s=300)
        print(f"detection -> GPU service stopped through the platform: {timing.latency_s:.1f} s")
        runs = wait_for(lambda: finished_containment_runs(platform), "containment run finished", 180)
        assert [r["status"] for r in runs] == ["SUCCESS"], runs
        tags = {t["key"]: t["value"] for t in runs[0]["tags"]}
        assert tags[SENSOR_TAG] == SENSOR and tags[EPISODE_TAG] == timing.contain_alert["episode"], tags
        assert tags.get("docker/container_id"), f"containment did not run in its own container: {tags}"
        latch = read_latch(settings)
        assert latch and latch["reading"]["episode"] == timing.contain_alert["episode"], latch
        assert latch["reading"]["temperature_c"] >= 55

        # 2. The daemon crashes and comes back; nothing is launched twice.
        schedules_before = platform.schedule_states(LOCATION, repo)
        assert schedules_before and set(schedules_before.values()) == {"RUNNING"}, schedules_before
        restarts = platform.crash("daemon")
        crashed_at = time.time()
        back_s = platform.wait_restarted_healthy("daemon", restarts)
        print(f"daemon restarted and healthy {back_s:.1f} s after the crash")
        wait_for(
            lambda: [t for t in platform.sensor_ticks(LOCATION, repo, SENSOR) if t["timestamp"] > crashed_at + back_s],
            "a thermal_sensor tick after the restart",
            120,
        )
        health = platform.daemon_health()
        assert health and all(health.values()), f"daemons after the restart: {health}"
        assert platform.schedule_states(LOCATION, repo) == schedules_before
        every_run = platform.runs()
        assert not duplicate_run_keys(every_run), duplicate_run_keys(every_run)
        alerts = [json.loads(line) for line in settings.alerts_log.read_text().splitlines()]
        episodes = Counter(a["episode"] for a in alerts if a["action"] == "contain")
        launched = Counter(
            {t["key"]: t["value"] for t in r["tags"]}[EPISODE_TAG] for r in platform.runs("containment_job")
        )
        assert launched == episodes, f"containment runs per episode {dict(launched)}, contain alerts {dict(episodes)}"

        # 3. A reboot: down (volumes kept) and up; the history is in Postgres.
        run_ids = {r["runId"] for r in every_run}
        platform.stop()
        platform.up()
        platform.wait_for_location(LOCATION)
        after = {r["runId"]: r["status"] for r in platform.runs()}
        assert run_ids <= set(after), f"runs lost across down/up: {sorted(run_ids - set(after))}"
        assert after[runs[0]["runId"]] == "SUCCESS"
        assert read_latch(settings), "the latch must survive the platform's restart"
        print(f"{len(run_ids)} runs survived down/up")
