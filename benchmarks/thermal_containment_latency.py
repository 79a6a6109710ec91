"""Detection-to-containment latency, end to end, with the real daemon and the real container.

Each round deploys the CPU stack (re-arming), replays the real H200 trace with the
lines scaled below its 59 °C peak, and times from the tick that logged the
containment alert to dockerd's FinishedAt of the GPU-role container:
  - daemon: a fresh dagster-daemon whose thermal_sensor (5 s interval) launches
    containment_job through the run queue (target: <= interval + 15 s);
  - guard: `idp-ops thermal-guard` at its default 5 s interval, no Dagster (target: <= 10 s);
  - platform (with --platform): the ops platform in containers (compose/ops): the code-location container
    evaluates the sensor, the containerised daemon launches containment_job as its own run container
    (target: <= interval + 15 s, as for the daemon). Each round brings the platform up and down.
Prints the medians of N rounds each. Add up to one sampling interval for the time
between a real crossing and the sample that sees it. Needs compose/setup.sh to have run.

Usage: .venv/bin/python benchmarks/thermal_containment_latency.py [ROUNDS] [--platform]
"""

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: idp_ops_harness

from idp_ops.models.demo_model import fetch_demo_model
from idp_ops.settings import REPO_ROOT, load_settings
from idp_ops.stack.deploy import compose_project

# The harness is shared with the tests (idp_ops_tests/thermal/test_e2e_thermal.py).
from idp_ops_harness.ops_platform import OpsPlatform
from idp_ops_harness.thermal_e2e import (
    contain_through_daemon,
    contain_through_guard,
    deploy_fresh,
    replay_settings,
    wait_until_contained,
)


def contain_through_platform(tmp_path: Path, config: Path):
    platform = OpsPlatform(tmp_path, config, name="idp-ops-bench-platform")
    try:
        platform.up()
        return wait_until_contained(load_settings(config), timeout_s=300)
    finally:
        platform.down()


def main(rounds: int, with_platform: bool) -> None:
    repo = load_settings(REPO_ROOT / "idp-ops.yaml") if (REPO_ROOT / "idp-ops.yaml").exists() else load_settings()
    models_dir = fetch_demo_model(REPO_ROOT / ".idp-data" / "models").parent
    paths = ("daemon", "guard", "platform") if with_platform else ("daemon", "guard")
    results: dict[str, list[float]] = {path: [] for path in paths}
    for index in range(rounds):
        for path in paths:
            with tempfile.TemporaryDirectory() as tmp:
                tmp_path = Path(tmp)
                config = replay_settings(
                    tmp_path,
                    models_dir,
                    repo.llama_server_image,
                    f"idp-ops-bench-{path}",
                    rows_per_tick=5,
                    trace_in_data_dir=path == "platform",
                )
                settings = load_settings(config)
                try:
                    deploy_fresh(settings)
                    if path == "daemon":
                        timing, dagster = contain_through_daemon(tmp_path, config)
                        dagster.stop()
                    elif path == "platform":
                        timing = contain_through_platform(tmp_path, config)
                    else:
                        timing = contain_through_guard(config, interval_s=settings.thermal.guard_interval_s)
                finally:
                    compose_project(settings).down()
                results[path].append(timing.latency_s)
                print(f"round {index + 1} {path:<6} {timing.latency_s:6.2f} s", flush=True)
    for path, values in results.items():
        print(
            f"{path:<6} median {statistics.median(values):6.2f} s  min {min(values):6.2f}  max {max(values):6.2f}  (n={len(values)})"
        )


if __name__ == "__main__":
    numbers = [a for a in sys.argv[1:] if a.isdigit()]
    main(int(numbers[0]) if numbers else 5, "--platform" in sys.argv[1:])
