"""Model switching (models/switch.py) on a private CPU stack: real dockerd, llama-server, Gemma and a tiny GGUF,
real DuckDB, real Dagster. The GPU is the only stand-in (NVML, for the VRAM budget).

Container recreations are the expensive part (seconds each on 2 cores): the stack starts once, and the module
recreates llamacpp-cpu four times (to tiny, back to Gemma, to the unloadable model, the rollback).
"""

import json
import os
import shutil
from datetime import date, timedelta

import httpx
import pandas as pd
import pytest
from dagster import DagsterInstance

from idp_ops.definitions import defs
from idp_ops.history import database as history
from idp_ops.models.fit import DOES_NOT_FIT, FITS, UNKNOWN, Budget, assess_fit, gpu_free_vram, parse_memory
from idp_ops.models.selection import read_selection, selection_file, write_selection
from idp_ops.models.switch import switch_model
from idp_ops.reports.trends import analyse_runs, load_bench_runs
from idp_ops.resources import SettingsResource
from idp_ops.settings import DEMO_MODEL_FILE, load_settings
from idp_ops.stack.audit import deploy_environment
from idp_ops.stack.compose import container_time
from idp_ops.stack.deploy import compose_project
from idp_ops.stack.secrets import ensure_keys, read_key
from idp_ops_harness.cli import idp_ops
from idp_ops_harness.gguf_files import write_gguf_header
from idp_ops_harness.nvml_stand_in import StandInNvml
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings
from idp_ops_harness.tiny_gguf import cached_tiny_gguf, write_tiny_gguf

ENDPOINT = "llamacpp-cpu"


def _place(source, target):
    try:
        os.link(source, target)
    except OSError:  # another filesystem: a copy
        shutil.copyfile(source, target)


def make_models(models, demo_models_dir):
    """Gemma, the tiny model, one that loads nowhere (a tensor missing), a truncated copy and a 70B-sized header."""
    models.mkdir(parents=True)
    _place(demo_models_dir / DEMO_MODEL_FILE, models / DEMO_MODEL_FILE)
    shutil.copyfile(cached_tiny_gguf(), models / "tiny-llama.gguf")
    write_tiny_gguf(models / "tiny-broken.gguf", seed=7, drop_tensors=("blk.1.ffn_down.weight",))
    shutil.copyfile(models / "tiny-llama.gguf", models / "tiny-truncated.gguf")
    os.truncate(models / "tiny-truncated.gguf", (models / "tiny-llama.gguf").stat().st_size // 2)
    write_gguf_header(models / "huge-70b.gguf", arch="llama", layers=80, file_type=15)  # sparse: no disk
    for path in models.iterdir():
        path.chmod(0o644)
    models.chmod(0o755)


def settings_values(root, models, image):
    values = cpu_stack_settings(root / "home", models, image, "idp-switch-test")
    for endpoint in values["endpoints"]:
        endpoint["model_file"] = DEMO_MODEL_FILE
        endpoint["cpu_threads"] = 1
    return values


# -- the stack ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def box(tmp_path_factory, llama_image, demo_models_dir):
    root = tmp_path_factory.mktemp("switch")
    models = root / "models"
    make_models(models, demo_models_dir)
    config = write_settings(root / "idp-ops.yaml", **settings_values(root, models, llama_image))
    settings = load_settings(config)
    ensure_keys(settings.secrets_dir, settings.key_names, owner_uid=settings.service_uid,
                owner_gid=settings.service_gid)  # fmt: skip
    project = compose_project(settings)
    (root / "dagster_home").mkdir()
    instance = DagsterInstance.local_temp(tempdir=str(root / "dagster_home"))
    project.up([ENDPOINT], timeout=180)
    try:
        yield {"root": root, "config": config, "settings": settings, "instance": instance}
    finally:
        project.down()
        instance.dispose()


def fresh(box):
    return load_settings(box["config"])


def serving(settings) -> dict:
    """What llamacpp-cpu says it serves, asked directly (not through the code under test)."""
    endpoint = settings.endpoint(ENDPOINT)
    headers = {"Authorization": f"Bearer {read_key(settings.key_file(endpoint))}"}
    props = httpx.get(f"{endpoint.url}/props", headers=headers, timeout=10).json()
    models = httpx.get(f"{endpoint.url}/v1/models", headers=headers, timeout=10).json()
    answer = httpx.post(f"{endpoint.url}/completion", headers=headers, timeout=60,
                        json={"prompt": "Hello", "n_predict": 4, "temperature": 0})  # fmt: skip
    return {"path": props["model_path"], "id": models["data"][0]["id"], "status": answer.status_code}


def container(settings) -> tuple[str, object]:
    state = next(s for s in compose_project(settings).ps([ENDPOINT]))
    return state.container, container_time(state.container, "StartedAt")


def run_job(box, endpoint, model):
    job = defs.resolve_job_def("switch_model_job")
    return job.execute_in_process(
        run_config={"ops": {"switch_model": {"config": {"endpoint": endpoint, "model": model}}}},
        instance=box["instance"],
        resources={"settings": SettingsResource(config_file=str(box["config"]))},
        raise_on_error=False,
    )


def switches(settings) -> list[tuple]:
    with history.connect(settings.history_file, read_only=True) as con:
        return con.execute(
            "SELECT to_model, outcome, preflight_s, recreate_s, prove_s, rollback_s, message "
            "FROM model_switches ORDER BY started_at"
        ).fetchall()


def failure_event(result):
    return next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")


@pytest.mark.docker
@pytest.mark.model
def test_switch_to_the_tiny_model_and_back_through_dagster(box):
    settings = fresh(box)
    assert serving(settings)["path"] == f"/models/{DEMO_MODEL_FILE}"
    lines = []
    result = switch_model(settings, ENDPOINT, "tiny-llama", progress=lines.append)
    assert result.outcome == "switched", result.message
    assert result.from_file == DEMO_MODEL_FILE and result.to_file == "tiny-llama.gguf"
    assert {c["check"]: c["status"] for c in result.preflight}["fit"] == "ok"
    assert "not in a manifest yet" in {c["check"]: c["detail"] for c in result.preflight}["manifest"]
    now = serving(settings)
    assert now == {"path": "/models/tiny-llama.gguf", "id": "tiny-llama", "status": 200}
    assert result.served["model_path"] == now["path"] and result.served["unauthenticated_status"] == 401

    # Everything that loads settings now runs and judges the switched model: deploy's compose
    # environment, the audit's, the endpoint's model (probes, ceilings, benchmarks).
    after = fresh(box)
    assert (after.endpoint(ENDPOINT).model, after.endpoint(ENDPOINT).model_file) == ("tiny-llama", "tiny-llama.gguf")
    assert after.compose_environment()["IDP_LLAMACPP_MODEL_PATH"] == "/models/tiny-llama.gguf"
    assert deploy_environment(after)["IDP_LLAMACPP_MODEL_PATH"] == "/models/tiny-llama.gguf"
    resolved = compose_project(after).config()["services"]
    assert "/models/tiny-llama.gguf" in resolved[ENDPOINT]["command"]
    assert f"/models/{DEMO_MODEL_FILE}" in resolved["openai-standin"]["command"], "the other service changed too"
    # deploy's `compose up` afterwards keeps the switched container as it is.
    before = container(after)
    compose_project(after).up([ENDPOINT], timeout=120)
    assert container(after) == before
    assert serving(after)["path"] == "/models/tiny-llama.gguf"

    back = run_job(box, ENDPOINT, DEMO_MODEL_FILE)
    assert back.success
    metadata = back.output_for_node("switch_model")
    assert metadata["outcome"] == "switched" and metadata["to_file"] == DEMO_MODEL_FILE
    mat = [e for e in back.all_events if e.event_type_value == "STEP_OUTPUT"][0]
    entries = mat.event_specific_data.metadata
    assert entries["outcome"].value == "switched" and "tiny-llama" in entries["from"].value
    assert "| fit | ok |" in entries["preflight"].value
    assert serving(fresh(box)) == {"path": f"/models/{DEMO_MODEL_FILE}", "id": "gemma-3-270m", "status": 200}
    rows = switches(settings)
    assert [(r[0], r[1]) for r in rows[-2:]] == [("tiny-llama.gguf", "switched"), (DEMO_MODEL_FILE, "switched")]
    assert all(r[2] is not None and r[3] is not None and r[4] is not None and r[5] is None for r in rows[-2:])


@pytest.mark.docker
@pytest.mark.model
def test_a_model_that_fails_to_load_rolls_back_and_the_endpoint_still_answers(box):
    settings = fresh(box)
    selection_before = read_selection(settings.data_dir)
    result = run_job(box, ENDPOINT, "tiny-broken.gguf")
    assert not result.success
    failure = failure_event(result)
    description = failure.event_specific_data.error.message + str(failure.event_specific_data.user_failure_data)
    assert "rolled_back" in description and "crashed while loading" in description
    assert serving(fresh(box)) == {"path": f"/models/{DEMO_MODEL_FILE}", "id": "gemma-3-270m", "status": 200}
    assert read_selection(settings.data_dir) == selection_before
    to_model, outcome, _, recreate_s, _, rollback_s, message = switches(settings)[-1]
    assert (to_model, outcome) == ("tiny-broken.gguf", "rolled_back")
    assert recreate_s is None and rollback_s is not None and "rolled back to" in message


@pytest.mark.docker
@pytest.mark.model
def test_when_the_rollback_fails_too_the_result_says_the_endpoint_serves_nothing(box):
    """The previous model's file vanishes while the switch runs (a disk unmounted under it): the new model
    fails to load and the way back fails too. The outcome is rollback_failed, loud, and recorded."""
    settings = fresh(box)
    gemma = settings.models_dir / DEMO_MODEL_FILE
    parked = gemma.with_name("parked.gguf.hidden")
    said: list[str] = []

    def progress(line: str) -> None:
        said.append(line)
        if line.startswith("switch: selection written"):
            gemma.rename(parked)  # after preflight, before the recreate

    try:
        result = switch_model(settings, ENDPOINT, "tiny-broken.gguf", progress=progress, ready_timeout_s=60)
        assert result.outcome == "rollback_failed"
        assert result.message.startswith(f"ROLLBACK FAILED: {ENDPOINT} is serving nothing")
        assert DEMO_MODEL_FILE in result.message and "idp-ops deploy" in result.message
        assert switches(settings)[-1][1] == "rollback_failed"
        assert said[-1].startswith("rollback_failed: ROLLBACK FAILED")
    finally:
        if parked.exists():
            parked.rename(gemma)
        compose_project(settings).up([ENDPOINT], force_recreate=True, timeout=180)
    assert serving(fresh(box)) == {"path": f"/models/{DEMO_MODEL_FILE}", "id": "gemma-3-270m", "status": 200}


@pytest.mark.docker
@pytest.mark.model
def test_refusals_in_preflight_recreate_nothing(box):
    settings = fresh(box)
    before = container(settings)
    selection_before = selection_file(settings.data_dir).read_bytes()

    truncated = switch_model(settings, ENDPOINT, "tiny-truncated.gguf")
    assert truncated.outcome == "refused" and "truncated" in truncated.message

    cli = idp_ops("--config", str(box["config"]), "models", "switch", ENDPOINT, "huge-70b", "--json")
    assert cli.returncode == 1, cli.stderr
    data = json.loads(cli.stdout)
    assert data["outcome"] == "refused" and data["ok"] is False
    assert data["fit"]["status"] == DOES_NOT_FIT and "container limit" in data["message"]
    assert data["recreate_s"] is None and data["served"] is None

    assert container(settings) == before, "a refused switch recreated the container"
    assert selection_file(settings.data_dir).read_bytes() == selection_before
    assert serving(settings)["path"] == f"/models/{DEMO_MODEL_FILE}"
    assert [r[1] for r in switches(settings)[-2:]] == ["refused", "refused"]


# -- without docker ------------------------------------------------------------------------


@pytest.fixture
def offline(tmp_path, demo_models_dir):
    models = tmp_path / "models"
    make_models(models, demo_models_dir)
    config = write_settings(tmp_path / "idp-ops.yaml", **settings_values(tmp_path, models, "unused:latest"))
    return config


def test_unknown_names_exit_2_listing_the_choices(offline):
    bad_model = idp_ops("--config", str(offline), "models", "switch", ENDPOINT, "nope")
    assert bad_model.returncode == 2
    assert "unknown model 'nope'" in bad_model.stderr and "tiny-llama.gguf" in bad_model.stderr
    bad_endpoint = idp_ops("--config", str(offline), "models", "switch", "nowhere", "tiny-llama")
    assert bad_endpoint.returncode == 2 and "'llamacpp-cpu'" in bad_endpoint.stderr


def test_the_job_fails_on_an_unknown_model_naming_the_choices(offline, tmp_path):
    instance = DagsterInstance.ephemeral()
    result = defs.resolve_job_def("switch_model_job").execute_in_process(
        run_config={"ops": {"switch_model": {"config": {"endpoint": ENDPOINT, "model": "llama-9000"}}}},
        instance=instance,
        resources={"settings": SettingsResource(config_file=str(offline))},
        raise_on_error=False,
    )
    assert not result.success
    message = failure_event(result).event_specific_data.error.message
    assert "bad run config" in message and "llama-9000" in message and "gemma-3-270m-q4_k_m.gguf" in message


def test_a_selection_the_settings_overrode_is_ignored(offline):
    settings = load_settings(offline)
    entry = {"endpoint": ENDPOINT, "model_file": "tiny-llama.gguf", "model": "tiny-llama",
             "container_path": "/models/tiny-llama.gguf",
             "base": {"model": "gemma-3-270m", "model_file": DEMO_MODEL_FILE}}  # fmt: skip
    write_selection(settings.data_dir, {ENDPOINT: entry})
    switched = load_settings(offline)
    assert switched.endpoint(ENDPOINT).model == "tiny-llama"
    assert switched.compose_environment()["IDP_LLAMACPP_MODEL_NAME"] == "tiny-llama"
    assert switched.endpoint("openai-standin").model == "gemma-3-270m"
    # The owner edits the settings for that endpoint: the edit wins over the older switch.
    entry["base"]["model"] = "something-else"
    write_selection(settings.data_dir, {ENDPOINT: entry})
    edited = load_settings(offline)
    assert edited.endpoint(ENDPOINT).model == "gemma-3-270m"
    assert "IDP_LLAMACPP_MODEL_PATH" not in edited.compose_environment()


def test_fit_arithmetic_and_budgets():
    assert [parse_memory(v) for v in ("1g", "512m", "1.5GiB", 2048, "", "lots")] == [
        1 << 30, 512 << 20, 3 << 29, 2048, None, None,
    ]  # fmt: skip
    fits = assess_fit(weights_bytes=300 << 20, kv_bytes_per_token=18432, ctx_size=4096,
                      budgets=[Budget("container limit", 1 << 30)])  # fmt: skip
    assert fits.status == FITS and fits.kv_bytes == 18432 * 4096
    big = assess_fit(weights_bytes=300 << 20, kv_bytes_per_token=18432, ctx_size=131072,
                     budgets=[Budget("container limit", 1 << 30), Budget("host MemAvailable", 64 << 30)])  # fmt: skip
    assert big.status == DOES_NOT_FIT and "container limit" in big.message and "host" not in big.message
    unknown = assess_fit(weights_bytes=1, kv_bytes_per_token=None, ctx_size=None,
                         budgets=[Budget("GPU free VRAM", None, "unknown: no NVML")])  # fmt: skip
    assert unknown.status == UNKNOWN and "no NVML" in unknown.message


def test_gpu_budget_from_nvml_and_not_supported_is_unknown():
    vram = gpu_free_vram(StandInNvml())
    assert vram.bytes is not None and vram.bytes > 100 << 30  # the recorded H200 is nearly empty
    not_supported = StandInNvml(fail={"nvmlDeviceGetMemoryInfo": 3})  # NVML_ERROR_NOT_SUPPORTED
    budget = gpu_free_vram(not_supported)
    assert budget.bytes is None and "NotSupported" in budget.note
    assert gpu_free_vram(StandInNvml(devices=0)).bytes is None


def test_trends_keep_one_series_per_served_model(tmp_path):
    """Gemma decodes at ~100 tok/s for five nights, then the endpoint serves a 10x slower model: a new series,
    not a 90 % regression; an earlier model's nights are never judged as the endpoint's status."""
    db = tmp_path / "history.duckdb"
    first = date(2026, 1, 1)
    rows = []
    for i in range(8):
        model = "gemma-3-270m" if i < 5 else "big-model"
        rows.append({"night": first + timedelta(days=i), "endpoint": ENDPOINT, "protocol": "llamacpp",
                     "url": "http://x", "model": model, "served_model": model if i != 2 else None,
                     "started_at": pd.Timestamp(first + timedelta(days=i), tz="UTC"),
                     "decode_tok_s": 100.0 + i if i < 5 else 10.0 + i, "ok": True})  # fmt: skip
    with history.connect(db) as con:
        history.insert_rows(con, "bench_runs", rows)
    runs = load_bench_runs(db)
    assert runs["served_model"].tolist()[2] == "gemma-3-270m"  # NULL falls back to the configured model
    report = analyse_runs(runs, current_ceilings={ENDPOINT: 50.0})
    decode = [s for s in report.latest if s.metric == "decode_tok_s"]
    assert len(decode) == 1 and decode[0].served_model == "big-model"
    assert decode[0].status != "regression" and decode[0].history_runs == 2
    points = report.points[report.points["metric"] == "decode_tok_s"]
    assert set(points["served_model"]) == {"gemma-3-270m", "big-model"}
    gemma = points[points["served_model"] == "gemma-3-270m"]
    assert gemma["ceiling_tok_s"].isna().all(), "today's ceiling was lent to another model's nights"
    # The plots draw one line per series too: the switch starts a new line, it does not join the two.
    from idp_ops.reports.html import plot_metric_trends, series_labels

    labels = series_labels(points)
    assert labels.groupby(labels).size().to_dict() == {f"{ENDPOINT} · big-model": 3, f"{ENDPOINT} · gemma-3-270m": 5}
    assert plot_metric_trends(report.points, ["decode_tok_s"]).startswith(b"\x89PNG")


def test_preflight_shows_the_ceiling_beside_the_criteria(tmp_path, demo_models_dir):
    """1 GB/s of memory: Gemma's ~0.2 GB per token caps decode near 5 tok/s, so 10 tok/s is unattainable
    (shown, not refused); the tiny model reads ~0.5 MB per token and reaches it easily."""
    from idp_ops.models.switch_preflight import gguf_choices, resolve_model, run_preflight

    models = tmp_path / "models"
    make_models(models, demo_models_dir)
    values = settings_values(tmp_path, models, "unused:latest")
    values["hardware_profile"] = {"name": "slow", "cpu_bandwidth_gbs": 1.0, "efficiency": 1.0}
    for endpoint in values["endpoints"]:
        endpoint["acceptance"] = {"decode_tok_s_min": 10, "ttft_p50_ms": 50}
    settings = load_settings(write_settings(tmp_path / "idp-ops.yaml", **values))
    endpoint, rows = settings.endpoint(ENDPOINT), gguf_choices(settings.models_dir)

    gemma = {c.check: c for c in run_preflight(settings, endpoint, resolve_model(rows, DEMO_MODEL_FILE), None).checks}
    assert gemma["criterion decode_throughput"].status == "unattainable"
    assert gemma["criterion ttft_p50"].status == "unattainable"  # one step alone takes ~200 ms
    assert gemma["fit"].status == "ok" and gemma["manifest"].status == "warning"
    tiny = {c.check: c for c in run_preflight(settings, endpoint, resolve_model(rows, "tiny-llama"), None).checks}
    assert tiny["criterion decode_throughput"].status == "ok" and tiny["criterion ttft_p50"].status == "ok"
    assert not [c for c in tiny.values() if c.status == "refused"]


def test_a_file_that_differs_from_the_manifest_is_refused(offline):
    from idp_ops.backup.manifest import build_manifest, write_manifest
    from idp_ops.backup.snapshots import manifest_dir
    from idp_ops_harness.model_store import flip_bit

    settings = load_settings(offline)
    tiny = settings.models_dir / "tiny-llama.gguf"
    (settings.models_dir / "huge-70b.gguf").unlink()  # 40 GB of sparse zeros: minutes to hash, nothing to learn
    manifest = build_manifest(settings.models_dir, cache_file=settings.history_file).manifest
    write_manifest(manifest, manifest_dir(settings))
    from idp_ops.models.switch_preflight import gguf_choices, resolve_model, run_preflight

    endpoint, model = settings.endpoint(ENDPOINT), resolve_model(gguf_choices(settings.models_dir), "tiny-llama")
    ok = {c.check: c for c in run_preflight(settings, endpoint, model, None).checks}
    assert ok["manifest"].status == "ok" and "matches" in ok["manifest"].detail
    flip_bit(tiny, tiny.stat().st_size - 10)  # in the tensor data: the header still reads fine
    bad = {c.check: c for c in run_preflight(settings, endpoint, model, None).checks}
    assert bad["manifest"].status == "refused" and "sha256 differs" in bad["manifest"].detail


def test_asking_an_unreachable_server_what_it_serves_says_why():
    from idp_ops.models.switch import served_model, served_model_name
    from idp_ops_harness.ports import refusing_port

    with refusing_port() as port:
        url = f"http://127.0.0.1:{port}"
        served = served_model(url, "k", timeout_s=2)
        assert (served["model_path"], served["model_id"]) == (None, None)
        assert served["error"].startswith("ConnectError")
        assert served_model_name(url, "k") is None
