"""Physics and report assets materialized by Dagster: ceilings, trends, ROI, plots in metadata, report.html."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import AssetCheckSeverity, DagsterInstance, DefaultScheduleStatus, materialize

from idp_ops.models.gguf_meta import record_scan, scan_models
from idp_ops.physics.bandwidth_store import latest_measured_bandwidth
from idp_ops.physics.ceilings import MeasuredBandwidth
from idp_ops.physics.defs import memory_bandwidth, throughput_ceilings
from idp_ops.physics.formulas import GB
from idp_ops.physics.report import ModelFacts, ceiling_for, criteria_rows, model_facts
from idp_ops.reports.defs import performance_trend, roi_report
from idp_ops.resources import SettingsResource
from idp_ops.settings import HARDWARE_PROFILES, AcceptanceCriteria, Endpoint, load_settings
from idp_ops_harness.gguf_files import tiny_gguf
from idp_ops_harness.history_seed import nightly_history, seed_bench_runs, seed_thermal_hourly
from idp_ops_harness.settings_files import write_settings

ASSETS = [memory_bandwidth, throughput_ceilings, performance_trend, roi_report]
# A small probe: the assets' logic is under test here, not the bandwidth (physics/test_bandwidth.py).
RUN_CONFIG = {"ops": {"memory_bandwidth": {"config": {"buffer_mb": 32, "repeats": 3, "gpu_buffer_mb": 32}}}}
PNG_IN_MARKDOWN = re.compile(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")
PNG_IN_HTML = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def box_settings(tmp_path: Path) -> Path:
    """Endpoints named like the seeded history: 'gpu' serves a tiny GGUF, 'cpu' asks for the impossible."""
    models = tmp_path / "models"
    models.mkdir()
    tiny_gguf(models / "tiny.gguf")
    return write_settings(
        tmp_path / "idp-ops.yaml",
        home=tmp_path / "home",
        models_dir=models,
        endpoints=[
            {"name": "gpu", "protocol": "openai", "url": "http://127.0.0.1:18000", "model_file": "tiny.gguf",
             "cpu_threads": 1, "acceptance": {"decode_tok_s_min": 50, "ttft_p50_ms": 100}},
            {"name": "cpu", "protocol": "llamacpp", "url": "http://127.0.0.1:18001", "weights_gb": 2.0,
             "acceptance": {"decode_tok_s_min": 1_000_000}},
        ],
    )  # fmt: skip


def run(tmp_path: Path, config: Path, selection=ASSETS):
    (tmp_path / "dagster").mkdir(exist_ok=True)
    instance = DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster"))
    result = materialize(
        selection,
        instance=instance,
        resources={"settings": SettingsResource(config_file=str(config))},
        run_config=RUN_CONFIG if memory_bandwidth in selection else None,
    )
    assert result.success
    return result


def metadata(result, node: str) -> dict:
    (event,) = result.asset_materializations_for_node(node)
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def assert_png(b64: str) -> None:
    assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"


def test_assets_on_a_seeded_history_show_ceilings_trends_roi_plots_and_write_the_report(tmp_path):
    config = box_settings(tmp_path)
    cfg = load_settings(config)
    record_scan(cfg.history_file, cfg.models_dir, scan_models(cfg.models_dir))
    seed_bench_runs(cfg.history_file, nightly_history())
    start = datetime(2026, 2, 1, tzinfo=UTC)
    seed_thermal_hourly(
        cfg.history_file,
        [{"hour": start + timedelta(hours=h), "device": "gpu0", "energy_kwh": 0.2,
          "seconds_above_warn": 300.0 if h == 20 else 0.0,
          "throttle_seconds": '{"sw_power_cap": 12.0}' if h == 20 else "{}"} for h in range(48)],
    )  # fmt: skip

    result = run(tmp_path, config)

    measured = latest_measured_bandwidth(cfg.history_file)
    assert measured.cpu_read_gbs_one_thread and measured.cpu_read_gbs_all_threads
    bandwidth = metadata(result, "memory_bandwidth")
    assert bandwidth["cpu_read_gbs_1_thread"] == measured.cpu_read_gbs_one_thread
    assert bandwidth["gpu_source"] in ("none", "measured")  # cpu-only profile: no datasheet GPU

    ceilings = metadata(result, "throughput_ceilings")
    assert "| gpu | tiny.gguf | cpu |" in ceilings["endpoints"] and "measured" in ceilings["endpoints"]
    assert "tiny.gguf" in ceilings["models"]
    assert "impossible" in ceilings["plan_claims"] and "understated" in ceilings["plan_claims"]
    assert "unattainable" in ceilings["acceptance_criteria"] and ceilings["unattainable_criteria"] == 1
    found = checks(result)
    attainable = found["criteria_attainable"]
    assert not attainable.passed and attainable.severity == AssetCheckSeverity.WARN
    assert "cpu decode_tok_s_min 1e+06 is unattainable" in attainable.description

    trend = metadata(result, "performance_trend")
    assert trend["bench_runs"] == 24 and trend["regressions"] == 2 and trend["status"] == "regression"
    assert_png(PNG_IN_MARKDOWN.search(trend["trend"]).group(1))
    assert_png(PNG_IN_MARKDOWN.search(trend["thermal"]).group(1))
    assert "sw_power_cap" in trend["thermal"] and trend["energy_kwh_total"] == pytest.approx(9.6)
    regression = found["no_performance_regression"]
    assert not regression.passed and regression.severity == AssetCheckSeverity.WARN
    assert "gpu decode_tok_s = 64" in regression.description and "cpu ttft_p95_ms = 91" in regression.description

    roi = metadata(result, "roi_report")
    assert roi["electricity_source"] == "measured" and roi["electricity_monthly_usd"] == 17.28
    assert roi["hardware_monthly_usd"] == 69.44 and roi["total_monthly_usd"] == 86.72
    assert roi["payback_months"]["AWS g5.xlarge (A10G)"] == 2.9
    assert "gpu/decode_tok_s" in roi["cost_per_million_tokens_usd"]
    assert_png(PNG_IN_MARKDOWN.search(roi["roi"]).group(1))

    page = cfg.data_dir / "reports" / "report.html"
    text = page.read_text()
    assert all(f'<section id="{name}">' in text for name in ("physics", "performance", "roi"))
    images = PNG_IN_HTML.findall(text)
    assert len(images) == 3  # trend, thermal, ROI
    for image in images:
        assert_png(image)
    assert text.index('id="physics"') < text.index('id="performance"') < text.index('id="roi"')
    assert not [p for p in page.parent.rglob(".*.tmp")]  # atomic writes leave no temp files


def test_empty_history_gives_not_enough_data_and_passing_checks(tmp_path):
    config = write_settings(tmp_path / "idp-ops.yaml", home=tmp_path / "home")
    result = run(tmp_path, config)
    trend = metadata(result, "performance_trend")
    assert trend["status"] == "not enough data" and "not enough data" in trend["trend"]
    assert "not enough data" in trend["thermal"]
    regression = checks(result)["no_performance_regression"]
    assert regression.passed and regression.description.startswith("not enough data")
    roi = metadata(result, "roi_report")
    assert roi["electricity_source"] == "duty cycle" and roi["total_monthly_usd"] == 88.74
    assert roi["throughput"].startswith("not enough data")
    assert_png(PNG_IN_MARKDOWN.search(roi["roi"]).group(1))
    ceilings = metadata(result, "throughput_ceilings")
    assert "not found" in ceilings["endpoints"]  # the demo model was never placed in this home
    assert (load_settings(config).data_dir / "reports" / "report.html").is_file()


def test_reports_job_and_its_daily_schedule_are_registered():
    from idp_ops.definitions import defs

    job = defs.resolve_job_def("reports_job")
    assert job.executor_def.name == "in_process"
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert keys == {"model_files", "memory_bandwidth", "throughput_ceilings", "performance_trend", "roi_report"}
    schedule = defs.resolve_schedule_def("reports_schedule")
    assert schedule.cron_schedule == "0 6 * * *" and schedule.job_name == "reports_job"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING


# -- the ceiling table's logic (physics/report.py) -------------------------------------


def test_a_model_larger_than_vram_gets_the_hybrid_ceiling_not_the_gpu_one(tmp_path):
    hardware = HARDWARE_PROFILES["rtx5070ti-ryzen9900x"]
    endpoint = Endpoint(name="70b", protocol="llamacpp", url="http://127.0.0.1:1", gpu=True, model_file="70b.gguf")
    model = ModelFacts("70b.gguf", "gguf", 43 * GB, parameters=70e9, layers=80, layer_bytes=43 * GB / 80,
                       non_layer_bytes=0.0)  # fmt: skip
    row = ceiling_for(endpoint, models_dir=tmp_path, hardware=hardware, measured=MeasuredBandwidth(), model=model)
    # 85 % of 16 GB holds 25 layers: 13.4 GB at 717 GB/s + 29.6 GB at 82 GB/s = 0.38 s per token.
    assert row.device == "hybrid" and "25/80 layers" in row.note
    assert row.tok_s == pytest.approx(1 / (25 * 43 / 80 / 716.8 + 55 * 43 / 80 / 81.92), rel=1e-6)
    assert 2.0 < row.tok_s < 3.0


def test_batched_ceilings_appear_only_with_a_flop_figure(tmp_path):
    hardware = HARDWARE_PROFILES["rtx5070ti-ryzen9900x"]
    endpoint = Endpoint(name="vllm", protocol="openai", url="http://127.0.0.1:1", gpu=True)
    model = ModelFacts("8b", "safetensors", 8 * GB, parameters=8e9)
    plain = ceiling_for(endpoint, models_dir=tmp_path, hardware=hardware, measured=MeasuredBandwidth(), model=model)
    assert plain.tok_s == pytest.approx(89.6) and plain.batched_tok_s == {}
    batched = ceiling_for(endpoint, models_dir=tmp_path, hardware=hardware, measured=MeasuredBandwidth(), model=model,
                          gpu_tflops=176.0)  # fmt: skip
    assert batched.batched_tok_s[1] == pytest.approx(89.6)
    assert batched.batched_tok_s[8] == pytest.approx(8 * 89.6)  # memory-bound: 8x, not the plan's 1.5x
    assert batched.batched_tok_s[32] == pytest.approx(32 * 89.6)  # still memory-bound at 176 TFLOP/s
    slow = ceiling_for(endpoint, models_dir=tmp_path, hardware=hardware, measured=MeasuredBandwidth(), model=model,
                       gpu_tflops=20.0)  # fmt: skip
    # 2 x 8e9 x 32 FLOP at 0.8 x 20 TFLOP/s = 32 ms > 11.2 ms of weight reads: compute binds.
    assert slow.batched_tok_s[8] == pytest.approx(8 * 89.6) and slow.batched_tok_s[32] == pytest.approx(1000.0)


def test_criteria_above_the_ceiling_are_unattainable_and_shards_are_one_model(tmp_path):
    endpoint = Endpoint(name="cpu3b", protocol="llamacpp", url="http://127.0.0.1:1", weights_gb=2.0,
                        acceptance=AcceptanceCriteria(decode_tok_s_min=100, ttft_p50_ms=50))  # fmt: skip
    row = ceiling_for(endpoint, models_dir=tmp_path, hardware=HARDWARE_PROFILES["rtx5070ti-ryzen9900x"],
                      measured=MeasuredBandwidth())  # fmt: skip
    assert row.tok_s == pytest.approx(40.96)
    statuses = {c.criterion: c for c in criteria_rows(endpoint, row, {"decode_tok_s": 35.0, "ttft_p50_ms": 40.0})}
    assert statuses["decode_tok_s_min"].status == "unattainable" and "2.4x" in statuses["decode_tok_s_min"].note
    assert statuses["decode_tok_s_min"].efficiency == pytest.approx(35 / 40.96)
    assert statuses["ttft_p50_ms"].status == "passed"

    root = "/m"
    shards = [
        {"path": f"/m/llama/model-0000{i}-of-00002.safetensors", "root": root, "kind": "safetensors",
         "tensor_bytes": 4 * GB, "non_layer_bytes": 0.5 * GB, "token_embd_bytes": 0.5 * GB if i == 1 else None,
         "tied_embeddings": False if i == 1 else None, "block_count": 32, "parameters": 2e9, "layer_bytes": 1}
        for i in (1, 2)
    ] + [{"path": "/m/broken.gguf", "root": root, "kind": "gguf", "tensor_bytes": 5, "finding": "corrupt"}]  # fmt: skip
    (facts,) = model_facts(shards)
    assert facts.name == "llama" and facts.files == 2
    assert facts.weight_bytes == pytest.approx(7.5 * GB)  # untied: one embedding row per token, not the table
    assert facts.layer_bytes == pytest.approx(7 * GB / 32) and facts.parameters == 4e9
