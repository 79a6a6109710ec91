"""Router mode (many GGUFs behind one llama.cpp endpoint): preset and models_max from real GGUF headers,
the compose wiring and its audit, and a real router container serving Gemma and a tiny GGUF by name."""

from __future__ import annotations

import os
import shutil
from datetime import date
from pathlib import Path

import httpx
import pytest
from dagster import materialize

from idp_ops.history import database as history
from idp_ops.models.router import (
    MIB,
    RouterClient,
    RouterEntry,
    RouterError,
    RouterLoad,
    derive_models_max,
    plan_router,
    record_router_loads,
    render_preset,
    time_load,
    write_router_presets,
)
from idp_ops.resources import SettingsResource
from idp_ops.settings import DEMO_MODEL_FILE, SettingsError, load_settings
from idp_ops.stack.audit import audit_compose_file, deploy_environment, has_high
from idp_ops_harness.ports import free_port
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings
from idp_ops_harness.tiny_gguf import write_tiny_gguf

# The tiny GGUF's KV cache per token: 2 layers x 2 KV heads x (16 + 16) dims x 2 bytes (f16).
TINY_KV_PER_TOKEN = 2 * 2 * (16 + 16) * 2


def _entry(name: str, size_mb: float, kv_per_token: int | None, ctx: int = 1024) -> RouterEntry:
    return RouterEntry(name, f"{name}.gguf", int(size_mb * MIB), ctx, None, kv_per_token)


# -- models_max from the memory budget ---------------------------------------------------


def test_models_max_is_the_budget_over_the_largest_need():
    entries = [_entry("small", 100, 1024), _entry("large", 300, 1024), _entry("mid", 200, 1024)]
    # largest: 300 MiB weights + 1024 tokens x 1 KiB = 1 MiB KV + 64 MiB overhead = 365 MiB
    models_max, largest = derive_models_max(entries, 1100 * MIB, 64 * MIB)
    assert largest == 365 * MIB
    assert models_max == 3  # 1100 // 365
    assert derive_models_max(entries, 800 * MIB, 64 * MIB)[0] == 2


def test_models_max_is_at_least_one_and_at_most_the_model_count():
    entries = [_entry("a", 500, 2048), _entry("b", 10, 2048)]
    assert derive_models_max(entries, 100 * MIB, 0)[0] == 1  # does not fit: still one (never 0 = unlimited)
    assert derive_models_max(entries, 100_000 * MIB, 0)[0] == 2


def test_unknown_kv_cache_counts_the_weights_twice():
    [entry] = [_entry("x", 100, None)]
    assert entry.need_bytes(0) == 200 * MIB
    assert _entry("y", 100, 1024, ctx=4096).need_bytes(0) == 104 * MIB


# -- the preset from real GGUF headers --------------------------------------------------


@pytest.fixture
def tiny_models(tmp_path) -> Path:
    models = tmp_path / "models"
    write_tiny_gguf(models / "router" / "tiny-a.gguf", seed=1)
    write_tiny_gguf(models / "router" / "tiny-b.gguf", seed=2)
    write_tiny_gguf(models / "router" / "vision" / "mmproj-f16.gguf", seed=3)  # a projector: not a model
    write_tiny_gguf(models / "elsewhere.gguf", seed=4)  # outside the subdir
    return models


def _router_settings(tmp_path, models, router: dict, model: str = "tiny-a", **extra):
    endpoint = {
        "name": "router",
        "protocol": "openai",
        "url": "http://127.0.0.1:18002",
        "compose_service": "llamacpp-router",
        "key_name": "llamacpp_router_api_key",
        "model": model,
        "router": router,
    }
    config = write_settings(
        tmp_path / "s.yaml", home=tmp_path / "home", models_dir=models, endpoints=[endpoint], **extra
    )
    return load_settings(config)


def test_preset_serves_the_subdir_with_context_and_threads_per_model(tmp_path, tiny_models):
    settings = _router_settings(
        tmp_path,
        tiny_models,
        {
            "models_subdir": "router",
            "ctx_size": 2048,
            "threads": 2,
            "models": [{"file": "router/tiny-b.gguf", "name": "bee", "ctx_size": 512, "threads": 1}],
        },
    )
    plan = plan_router(settings, settings.endpoint("router"))
    assert plan.names == ["tiny-a", "bee"]
    a, b = plan.entries
    assert (a.relpath, a.ctx_size, a.threads) == ("router/tiny-a.gguf", 2048, 2)
    assert (b.relpath, b.ctx_size, b.threads) == ("router/tiny-b.gguf", 512, 1)
    assert a.kv_bytes_per_token == TINY_KV_PER_TOKEN  # read from the header, as the inventory does
    text = render_preset(plan.entries, settings.endpoint("router").router)
    assert "[tiny-a]\nmodel = /models/router/tiny-a.gguf\nctx-size = 2048\nthreads = 2\n" in text
    assert "[bee]\nmodel = /models/router/tiny-b.gguf\nctx-size = 512\nthreads = 1\n" in text
    assert "mmproj" not in text and "elsewhere" not in text
    assert text.startswith("version = 1\n")


def test_include_picks_a_subset_and_files_outside_can_be_added(tmp_path, tiny_models):
    settings = _router_settings(
        tmp_path,
        tiny_models,
        {"models_subdir": "router", "include": ["*-a.gguf"], "models": [{"file": "elsewhere.gguf"}]},
    )
    assert plan_router(settings, settings.endpoint("router")).names == ["elsewhere", "tiny-a"]


def test_preset_is_written_atomically_where_compose_mounts_it(tmp_path, tiny_models):
    settings = _router_settings(tmp_path, tiny_models, {"models_subdir": "router", "memory_limit_gb": 1.0})
    [plan] = write_router_presets(settings)
    path = Path(plan.preset_file)
    assert path.parent == Path(settings.compose_environment()["IDP_ROUTER_PRESETS_DIR"])
    assert "[tiny-b]" in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_settings_derive_the_compose_variables_and_profile(tmp_path, tiny_models):
    settings = _router_settings(tmp_path, tiny_models, {"models_subdir": "router", "memory_limit_gb": 1.5})
    env = settings.compose_environment()
    plan = plan_router(settings, settings.endpoint("router"))
    assert env["IDP_ROUTER_PORT"] == "18002"
    assert env["IDP_ROUTER_MEMORY"] == "1536m"
    assert env["IDP_ROUTER_MODELS_MAX"] == str(plan.models_max) == "2"
    assert "router" in settings.compose_profiles
    fixed = _router_settings(tmp_path, tiny_models, {"models_subdir": "router", "models_max": 1})
    assert fixed.compose_environment()["IDP_ROUTER_MODELS_MAX"] == "1"


def test_no_router_means_no_router_profile(tmp_path):
    settings = load_settings(write_settings(tmp_path / "s.yaml", home=tmp_path / "home"))
    assert "router" not in settings.compose_profiles
    assert "IDP_ROUTER_PORT" not in settings.compose_environment()


def test_router_endpoint_must_speak_openai(tmp_path, tiny_models):
    with pytest.raises(SettingsError, match="router endpoint needs protocol 'openai'"):
        load_settings(
            write_settings(
                tmp_path / "s.yaml",
                endpoints=[{"name": "r", "protocol": "llamacpp", "url": "http://127.0.0.1:1", "router": {}}],
            )
        )


def test_unknown_models_are_clear_errors(tmp_path, tiny_models):
    settings = _router_settings(tmp_path, tiny_models, {"models_subdir": "router"}, model="gemma")
    with pytest.raises(RouterError, match=r"model 'gemma' \(probed on deploy\) is not served; served: \['tiny-a'"):
        plan_router(settings, settings.endpoint("router"))
    settings = _router_settings(tmp_path, tiny_models, {"models_subdir": "router", "benchmark_models": ["nope"]})
    with pytest.raises(RouterError, match="benchmark_models names 'nope'"):
        plan_router(settings, settings.endpoint("router"))
    settings = _router_settings(tmp_path, tiny_models, {"models_subdir": "router", "include": ["*.bin"]})
    with pytest.raises(RouterError, match="no GGUF under"):
        plan_router(settings, settings.endpoint("router"))


def test_router_service_passes_the_audit(tmp_path, tiny_models):
    for profile in ("cpu", "gpu"):
        settings = _router_settings(tmp_path, tiny_models, {"models_subdir": "router"}, profile=profile)
        findings = audit_compose_file(settings.compose_file, deploy_environment(settings))
        assert not has_high(findings), [f.to_dict() for f in findings if f.severity == "high"]
        assert not [f for f in findings if f.service == "llamacpp-router"], findings


def test_load_times_are_recorded_per_night_endpoint_and_model(tmp_path):
    from datetime import UTC, datetime

    night = date(2026, 11, 29)
    loads = [
        RouterLoad("router", "tiny-a", datetime.now(UTC), 0.01, 0.4, 2),
        RouterLoad("router", "tiny-b", datetime.now(UTC), 0.01, None, 2, error="exit code 1"),
    ]
    db = tmp_path / "h.duckdb"
    with history.connect(db) as con:
        record_router_loads(con, night, loads)
        loads[0].load_s = 0.5
        record_router_loads(con, night, loads[:1])  # a rerun of the night replaces, never duplicates
        rows = con.execute("SELECT model, load_s, status, error FROM router_loads ORDER BY model").fetchall()
    assert rows == [("tiny-a", 0.5, "loaded", None), ("tiny-b", None, "failed", "exit code 1")]


# -- a real router: Gemma and the tiny GGUF behind one endpoint ----------------------------


@pytest.fixture(scope="module")
def router_box(tmp_path_factory, llama_image, demo_models_dir):
    """The CPU stack plus a router endpoint serving Gemma and a tiny GGUF, deployed as `idp-ops deploy` does."""
    from idp_ops.stack.deploy import compose_project, deploy
    from idp_ops.stack.secrets import ensure_keys

    root = tmp_path_factory.mktemp("router")
    models = root / "models"
    models.mkdir()
    gemma = demo_models_dir / DEMO_MODEL_FILE
    try:
        os.link(gemma, models / DEMO_MODEL_FILE)
    except OSError:  # another filesystem
        shutil.copy2(gemma, models / DEMO_MODEL_FILE)
    write_tiny_gguf(models / "tiny.gguf", seed=7)
    for path in models.iterdir():
        path.chmod(0o644)
    values = cpu_stack_settings(root / "home", models, llama_image, "idp-ops-router")
    router_endpoint = {
        "name": "llamacpp-router",
        "protocol": "openai",
        "url": f"http://127.0.0.1:{free_port()}",
        "compose_service": "llamacpp-router",
        "key_name": "llamacpp_router_api_key",
        "model": "gemma-3-270m",
        "cpu_threads": 1,
        "router": {
            "ctx_size": 1024,
            "threads": 1,
            "models": [{"file": DEMO_MODEL_FILE, "name": "gemma-3-270m", "ctx_size": 2048}],
        },
    }
    values["endpoints"].append(router_endpoint)
    config = write_settings(root / "idp-ops.yaml", **values)
    settings = load_settings(config)
    ensure_keys(
        settings.secrets_dir, settings.key_names, owner_uid=settings.service_uid, owner_gid=settings.service_gid
    )
    try:
        report = deploy(settings)
        yield {"settings": settings, "report": report, "root": root, "endpoint": router_endpoint, "values": values}
    finally:
        compose_project(settings).down()


def _key(settings, name="llamacpp-router") -> str:
    from idp_ops.stack.secrets import read_key

    return read_key(settings.key_file(settings.endpoint(name)))


@pytest.mark.docker
@pytest.mark.model
def test_deploy_proves_the_router_and_its_listing(router_box):
    report = router_box["report"]
    assert report.ok, report.problems
    services = {s["service"]: s for s in report.services}
    assert services["llamacpp-router"]["health"] == "healthy"
    probed = {e["endpoint"]: e for e in report.endpoints}
    assert probed["llamacpp-router"]["rejects_without_key"] is True


@pytest.mark.docker
@pytest.mark.model
def test_router_answers_for_two_models_by_name(router_box):
    settings = router_box["settings"]
    endpoint = settings.endpoint("llamacpp-router")
    key = _key(settings)
    with RouterClient(endpoint.url, key) as client:
        assert sorted(m.name for m in client.models()) == ["gemma-3-270m", "tiny"]
    answered = {}
    for model in ("gemma-3-270m", "tiny"):
        response = httpx.post(
            f"{endpoint.url}/v1/completions",
            json={"model": model, "prompt": "Hello there", "max_tokens": 4, "temperature": 0},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        answered[model] = body["model"]
        assert body["usage"]["completion_tokens"] >= 1
    assert answered == {"gemma-3-270m": "gemma-3-270m", "tiny": "tiny"}
    with RouterClient(endpoint.url, key) as client:
        loaded = {m.name: m for m in client.models()}
    # Each child runs with its own preset values: Gemma at 2048, the tiny model at the default 1024.
    assert loaded["gemma-3-270m"].args[loaded["gemma-3-270m"].args.index("--ctx-size") + 1] == "2048"
    assert loaded["tiny"].args[loaded["tiny"].args.index("--ctx-size") + 1] == "1024"
    unknown = httpx.post(
        f"{endpoint.url}/v1/completions",
        json={"model": "nope", "prompt": "x", "max_tokens": 1},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert unknown.status_code == 400 and "not found" in unknown.text
    assert httpx.get(f"{endpoint.url}/models", timeout=30).status_code == 401


@pytest.mark.docker
@pytest.mark.model
def test_explicit_load_is_timed_from_unloaded(router_box):
    settings = router_box["settings"]
    endpoint = settings.endpoint("llamacpp-router")
    with RouterClient(endpoint.url, _key(settings)) as client:
        load = time_load(client, endpoint.name, "tiny")
        assert load.ok, load.error
        assert load.load_s > 0 and load.unload_s is not None
        assert client.status("tiny").status == "loaded"
        client.unload("tiny")
        assert client.status("tiny").status == "unloaded"
        with pytest.raises(RouterError, match="does not serve 'nope'"):
            client.load("nope")


@pytest.mark.docker
@pytest.mark.model
def test_validation_benchmarks_each_model_with_load_time_apart(router_box, tmp_path):
    """benchmark_results on the router endpoint alone: one series per model, each load in router_loads."""
    from idp_ops.validation.defs import benchmark_results

    values = dict(router_box["values"])
    values["endpoints"] = [router_box["endpoint"]]
    values["validation"] = {
        "warmups": 1,
        "ttft_requests": 2,
        "ttft_max_tokens": 2,
        "decode_tokens": 4,
        "decode_requests": 1,
        "sweep": [1],
        "sweep_tokens": 2,
        "sweep_rounds": 1,
        "metrics_interval_s": 0,
    }
    config = write_settings(tmp_path / "bench.yaml", **values)
    result = materialize(
        [benchmark_results],
        partition_key="2026-11-29",
        resources={"settings": SettingsResource(config_file=str(config))},
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    [materialization] = result.asset_materializations_for_node("benchmark_results")
    metadata = materialization.metadata
    assert "| llamacpp-router | tiny |" in metadata["router_loads"].value
    settings = load_settings(config)
    with history.connect(settings.history_file, read_only=True) as con:
        loads = con.execute("SELECT model, load_s, status FROM router_loads ORDER BY model").fetchall()
        runs = con.execute("SELECT endpoint, model, ttft_p50_ms FROM bench_runs ORDER BY endpoint").fetchall()
    assert [(m, s) for m, _, s in loads] == [("gemma-3-270m", "loaded"), ("tiny", "loaded")]
    assert all(load_s > 0 for _, load_s, _ in loads)
    assert [(e, m) for e, m, _ in runs] == [
        ("llamacpp-router/gemma-3-270m", "gemma-3-270m"),
        ("llamacpp-router/tiny", "tiny"),
    ]
    assert all(ttft is not None for _, _, ttft in runs)
    with history.connect(settings.history_file, read_only=True) as con:
        served = con.execute("SELECT endpoint, served_model FROM bench_runs ORDER BY endpoint").fetchall()
    assert served == [("llamacpp-router/gemma-3-270m", "gemma-3-270m"), ("llamacpp-router/tiny", "tiny")]

    # The depth and prefix workloads do not run on a router yet: their checks say so, they do not fail.
    from idp_ops.validation.defs import context_depth_results, prefix_cache_results

    workloads = materialize(
        [context_depth_results, prefix_cache_results],
        partition_key="2026-11-29",
        resources={"settings": SettingsResource(config_file=str(config))},
        raise_on_error=False,
    )
    assert workloads.success
    evaluations = {e.check_name: e for e in workloads.get_asset_check_evaluations()}
    for name in ("context_depth_measured", "prefix_cache_works"):
        row = evaluations[name].metadata["llamacpp-router"].value
        assert row["status"] == "not judged" and "router endpoint" in row["message"]
