"""Detection-to-containment latency, end to end, with the real daemon and the real container.

Each round deploys the CPU stack (re-arming), replays the real H200 trace with the
lines scaled below its 59 °C peak, and times from the tick that logged the
containment alert to dockerd's FinishedAt of the GPU-role container:
  - daemon: a fresh dagster-daemon whose thermal_sensor (5 s interval) launches
    containment_job through the run queue (target: <= interval + 15 s);
  - guard: `idp-ops thermal-guard` at its default 5 s interval, no Dagster (target: <= 10 s).
Prints the medians of N rounds each. Add up to one sampling interval for the time
between a real crossing and the sample that sees it. Needs compose/setup.sh to have run.

Usage: .venv/bin/python benchmarks/thermal_containment_latency.py [ROUNDS]
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
from idp_ops_harness.thermal_e2e import (
    contain_through_daemon,
    contain_through_guard,
    deploy_fresh,
    replay_settings,
)


def main(rounds: int) -> None:
    repo = load_settings(REPO_ROOT / "idp-ops.yaml") if (REPO_ROOT / "idp-ops.yaml").exists() else load_settings()
    models_dir = fetch_demo_model(REPO_ROOT / ".idp-data" / "models").parent
    results: dict[str, list[float]] = {"daemon": [], "guard": []}
    for index in range(rounds):
        for path in ("daemon", "guard"):
            with tempfile.TemporaryDirectory() as tmp:
                tmp_path = Path(tmp)
                config = replay_settings(
                    tmp_path, models_dir, repo.llama_server_image, f"idp-ops-bench-{path}", rows_per_tick=5
                )
                settings = load_settings(config)
                try:
                    deploy_fresh(settings)
                    if path == "daemon":
                        timing, dagster = contain_through_daemon(tmp_path, config)
                        dagster.stop()
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
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
