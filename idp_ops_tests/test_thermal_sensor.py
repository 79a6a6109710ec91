"""thermal_sensor evaluated with build_sensor_context over the real H200 trace."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dagster import DagsterInstance, SkipReason, build_sensor_context

from idp_ops.config import load_settings
from idp_ops.core.thermal_watch import Spool
from idp_ops.resources import SettingsResource
from idp_ops.sensors import thermal_sensor
from idp_ops_tests.conftest import FIXTURES, write_settings

TRACE = FIXTURES / "h200_trace.csv"


def thermal_settings(tmp_path, **thermal):
    values = {"warn_c": 50, "contain_c": 55, "clear_after_s": 10, "consecutive_samples": 2,
              "replay_csv": str(TRACE), "replay_rows_per_tick": 10, **thermal}
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
        assert len(requests) == 1, [r.run_key for _, r in requests]
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


def test_no_nvml_on_this_machine_is_a_skip_reason_not_a_crash(tmp_path):
    config = write_settings(tmp_path / "idp-ops.yaml", home=str(tmp_path / "home"))
    with DagsterInstance.ephemeral() as instance:
        result, _ = tick(config, None, instance)
    assert not result.run_requests
    reason = result.skip_reason.skip_message if isinstance(result.skip_reason, SkipReason) else str(result.skip_reason)
    # Either no source at all (no GPU, no hwmon) or hwmon alone sampled the CPU.
    assert "nvml" in reason.lower() or "samples" in reason


class SlowWebhook(BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        SlowWebhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        time.sleep(1.5)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_webhook_that_times_out_keeps_the_alert_and_still_contains(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowWebhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config, settings = thermal_settings(
            tmp_path, webhook_url=f"http://127.0.0.1:{server.server_port}/hook", webhook_timeout_s=0.3,
            replay_rows_per_tick=30,
        )
        with DagsterInstance.ephemeral() as instance:
            results = run_ticks(config, instance, 2)
    finally:
        server.shutdown()
    assert sum(len(r.run_requests or []) for _, r in results) == 1
    alerts = [json.loads(line) for line in settings.alerts_log.read_text().splitlines()]
    assert {a["action"] for a in alerts} >= {"warn", "contain"}
    assert SlowWebhook.received and SlowWebhook.received[0]["device"] == "gpu0"
