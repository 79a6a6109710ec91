"""Workloads that look like real use: context depth at exact token counts, the prefix cache, goodput,
arrival patterns and the server's /metrics. The logic against the scripted local server
(mode "llama" of fake_llm_server), then the same runs against the real llama-server (CPU stack)."""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime

import pytest

from idp_ops.history import database as history
from idp_ops.physics.formulas import (
    PhysicsError,
    decode_ceiling_at_depth,
    kv_bytes_per_token,
    kv_read_tokens,
    min_step_ms,
    single_stream_ceiling,
)
from idp_ops.settings import AcceptanceCriteria, Endpoint, ValidationSettings, load_settings
from idp_ops.validation.arrivals import arrival_gap_s
from idp_ops.validation.bench import BenchError, RequestSample, ScenarioResult, resolve_arrival, run_benchmark_sync
from idp_ops.validation.criteria import evaluate_depth, evaluate_prefix_cache
from idp_ops.validation.goodput import evaluate_goodput, goodput_levels, record_goodput, request_meets_slo
from idp_ops.validation.server_metrics import MetricsScraper, parse_prometheus, record_server_metrics
from idp_ops.validation.workloads import (
    DepthPhysics,
    capped_depths,
    depth_physics,
    prefix_caching_configured,
    record_depth,
    record_prefix_cache,
    run_depth_sync,
    run_prefix_cache_sync,
)
from idp_ops_harness.fake_llm_server import FakeServer

KEY = "s3cret-key"

# -- physics ---------------------------------------------------------------------


def test_kv_bytes_and_the_decode_ceiling_at_depth():
    # Gemma 3 270M: 18 layers, 1 KV head, head dim 256, f16 cache.
    assert kv_bytes_per_token(18, 1, 256) == 2 * 18 * 1 * 256 * 2 == 18_432
    weights, bandwidth = 246_587_904, 30e9
    at_zero = decode_ceiling_at_depth(weights, bandwidth, 0, 18_432)
    assert at_zero == pytest.approx(bandwidth / weights)
    assert at_zero == single_stream_ceiling(weights, bandwidth, efficiency=1.0)
    deep = decode_ceiling_at_depth(weights, bandwidth, 16_384, 18_432)
    assert deep == pytest.approx(bandwidth / (weights + 16_384 * 18_432))
    assert deep < decode_ceiling_at_depth(weights, bandwidth, 1024, 18_432) < at_zero
    # Sliding-window layers read at most the window: the ceiling stays an upper bound.
    assert kv_read_tokens(4096, 512) == 512 and kv_read_tokens(100, 512) == 100 and kv_read_tokens(4096, None) == 4096
    assert min_step_ms(50.0) == 20.0
    with pytest.raises(PhysicsError):
        decode_ceiling_at_depth(weights, bandwidth, -1, 18_432)


@pytest.mark.model
def test_depth_physics_comes_from_the_gguf_header(demo_models_dir):
    from idp_ops.physics.ceilings import EndpointCeiling

    endpoint = Endpoint(
        name="e", protocol="llamacpp", url="http://127.0.0.1:1", model_file="gemma-3-270m-q4_k_m.gguf", cpu_threads=1
    )
    ceiling = EndpointCeiling("e", 100.0, 246_587_904, 30.0, "datasheet", 0.8, "cpu")
    physics = depth_physics(endpoint, demo_models_dir, ceiling)
    assert physics.kv_bytes_per_token == 18_432 and physics.sliding_window == 512
    assert physics.ceiling(0) == pytest.approx(30e9 * 0.8 / 246_587_904)
    assert physics.ceiling(256) < physics.ceiling(0)
    assert depth_physics(endpoint, demo_models_dir, None) is None


def test_depths_are_capped_by_the_served_context():
    assert capped_depths([128, 1024, 4096, 16384], 32768, 32) == [
        (128, 128),
        (1024, 1024),
        (4096, 4096),
        (16384, 16384),
    ]
    # A 1024-token slot: 4096 and 16384 both become the deepest prompt that leaves room for 32 tokens.
    assert capped_depths([128, 1024, 4096, 16384], 1024, 32) == [(128, 128), (991, 1024)]
    assert capped_depths([64], None, 32) == [(64, 64)]
    with pytest.raises(ValueError, match="depths must be >= 8"):
        ValidationSettings(depths=[4])
    with pytest.raises(ValueError, match="needs arrival_rate"):
        ValidationSettings(arrival="constant")


# -- context depth and prefix cache against the scripted server ----------------------


def test_depth_prompts_have_exactly_the_asked_token_count():
    with FakeServer("llama", key=KEY, n_ctx=512) as server:
        report = run_depth_sync(
            server.url,
            "llamacpp",
            "m",
            KEY,
            depths=[16, 100, 2048],
            max_tokens=8,
            physics=DepthPhysics(1e7, 10.0, 1.0, 1000.0),
            ready_timeout_s=5,
        )
    assert report.ok, report.problems + [p for point in report.points for p in point.problems]
    assert report.n_ctx == 512 and report.n_ctx_source == "/props default_generation_settings.n_ctx"
    assert [(p.depth, p.requested_depth) for p in report.points] == [(16, 16), (100, 100), (503, 2048)]
    completions = [r for r in server.requests if r["path"] == "/completion"]
    assert len(completions) == 3
    for point, request in zip(report.points, completions, strict=True):
        (sample,) = point.samples
        # The server's own count of what it evaluated: exactly the depth, nothing from a cache.
        assert sample.prompt_tokens == point.depth and sample.server_prompt_tokens == point.depth
        assert sample.server_cached_tokens == 0 and request["payload"]["cache_prompt"] is False
        assert len(server.tokenize(request["payload"]["prompt"], add_special=True)) == point.depth
        assert request["auth"] == f"Bearer {KEY}"
        assert point.prefill_tok_s == pytest.approx(point.depth / (sample.ttft_ms / 1000), rel=1e-3)
        assert point.server_prefill_tok_s == 2000.0 and point.server_decode_tok_s == 500.0
        assert point.ceiling_tok_s == pytest.approx(10e9 / (1e7 + point.depth * 1000.0), rel=1e-3)
    # A nonce at the start of every prompt: no two share their first word.
    firsts = [r["payload"]["prompt"].split()[0] for r in completions]
    assert len(set(firsts)) == len(firsts)


def test_a_depth_the_server_miscounts_is_a_problem_not_a_figure():
    class Miscounting(FakeServer):
        """Its completions count one token more than its /tokenize says (a template, a hidden prefix)."""

        def answer_llama(self, handler, payload):
            if "prompt" in payload:
                payload = {**payload, "prompt": "hidden " + payload["prompt"]}
            return super().answer_llama(handler, payload)

    with Miscounting("llama", key=KEY) as server:
        report = run_depth_sync(server.url, "openai", "m", KEY, depths=[64], max_tokens=4, ready_timeout_s=5)
    # /tokenize said 64 but the completion counted 65: the mismatch is reported.
    assert not report.ok
    result = evaluate_depth(Endpoint(name="e", protocol="openai", url=server.url), report)
    assert result.status == "failed" and "not 64" in result.message


def test_prefix_cache_warm_requests_reuse_the_cached_prefix():
    with FakeServer("llama", key=KEY, n_ctx=1024, prefill_ms_per_token=0.5) as server:
        report = run_prefix_cache_sync(
            server.url, "openai", "m", KEY, prefix_tokens=400, rounds=2, warm_requests=3, ready_timeout_s=5
        )
    assert report.ok, report.problems
    kinds = [(r, k) for r, k, _ in report.samples]
    assert kinds == [
        (0, "cold"),
        (0, "warm"),
        (0, "warm"),
        (0, "warm"),
        (1, "cold"),
        (1, "warm"),
        (1, "warm"),
        (1, "warm"),
    ]
    sent = [r["payload"] for r in server.requests if r["path"] == "/v1/completions"]
    assert all(p["cache_prompt"] is True for p in sent)
    assert len({p["prompt"] for p in sent}) == len(sent), "distinct questions"
    for _, kind, sample in report.samples:
        if kind == "cold":
            assert sample.server_cached_tokens <= 1  # BOS: a new nonce leads the prefix
        else:
            assert sample.server_cached_tokens >= 400 - 1
    assert report.cold_hit_rate < 0.01 and report.warm_hit_rate > 0.9
    # 400 tokens at 0.5 ms each cold; a few tokens warm.
    assert report.ttft_ratio < 0.5 and report.warm_ttft["p50"] < report.cold_ttft["p50"]
    endpoint = Endpoint(name="e", protocol="openai", url=server.url)
    assert evaluate_prefix_cache(endpoint, report, configured=True, why="test", ceiling=None).status == "passed"
    off = evaluate_prefix_cache(endpoint, report, configured=False, why="--no-cache-prompt", ceiling=None)
    assert off.status == "not judged" and "off by configuration" in off.message


def test_prefix_cache_fails_when_the_server_reuses_nothing():
    with FakeServer("llama", key=KEY, n_ctx=1024) as server:
        original = server.answer_llama

        def never_cache(handler, payload):
            return original(handler, {**payload, "cache_prompt": False})

        server.answer_llama = never_cache
        report = run_prefix_cache_sync(server.url, "llamacpp", "m", KEY, prefix_tokens=200, rounds=1, warm_requests=2)
    assert report.warm_hit_rate == 0
    result = evaluate_prefix_cache(
        Endpoint(name="e", protocol="llamacpp", url=server.url), report, configured=True, why="t", ceiling=None
    )
    assert result.status == "failed" and "served no warm prompt token from its cache" in result.message


def test_a_prefix_larger_than_the_context_is_cut_to_fit():
    with FakeServer("llama", key=KEY, n_ctx=300) as server:
        report = run_prefix_cache_sync(server.url, "llamacpp", "m", KEY, prefix_tokens=5000, rounds=1, warm_requests=1)
    assert report.ok and report.requested_prefix_tokens == 5000 and report.prefix_tokens == 300 - 8 - 48


def test_caching_is_read_from_the_compose_file(tmp_path):
    cpu = load_settings(profile="cpu", home=tmp_path / "h")
    configured, why = prefix_caching_configured(cpu, cpu.endpoint("llamacpp-cpu"))
    assert configured is True and "no --no-cache-prompt" in why
    gpu = load_settings(profile="gpu", home=tmp_path / "h")
    configured, why = prefix_caching_configured(gpu, gpu.endpoint("vllm-gpu"))
    assert configured is True and "--enable-prefix-caching" in why
    compose = tmp_path / "c.yml"
    compose.write_text(
        "services:\n"
        "  a: {image: x, command: [--model, m, --no-cache-prompt]}\n"
        "  v: {image: vllm/vllm-openai:v0.7.1, command: [--model, m]}\n"
        "  w: {image: vllm/vllm-openai:v0.7.1, command: [--model, m, --no-enable-prefix-caching]}\n"
    )
    settings = load_settings(profile="gpu", home=tmp_path / "h", compose_file=compose)
    endpoint = Endpoint(name="a", protocol="llamacpp", url="http://127.0.0.1:1", compose_service="a")
    assert prefix_caching_configured(settings, endpoint) == (False, "c.yml service a: --no-cache-prompt")
    v0 = prefix_caching_configured(settings, endpoint.model_copy(update={"compose_service": "v"}))
    assert v0[0] is False and "V0" in v0[1]
    assert prefix_caching_configured(settings, endpoint.model_copy(update={"compose_service": "w"}))[0] is False
    assert prefix_caching_configured(settings, endpoint.model_copy(update={"compose_service": None}))[0] is None


# -- server /metrics ----------------------------------------------------------------

VLLM_METRICS = """# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama-3.1-8b"} 3.0
vllm:num_requests_running{model_name="llama-3.1-8b"} 12.0
vllm:gpu_cache_usage_perc{model_name="llama-3.1-8b"} 0.42
vllm:num_preemptions_total{model_name="llama-3.1-8b"} 7.0
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="llama-3.1-8b"} 4.0
vllm:time_to_first_token_seconds_sum{model_name="llama-3.1-8b"} 1.5
vllm:gpu_prefix_cache_hit_rate{model_name="a"} NaN
vllm:prompt_tokens_total{model_name="a"} 100 1712345678000
vllm:prompt_tokens_total{model_name="b"} 23
not a metric line at all {
"""


def test_prometheus_text_is_parsed_with_label_sets_summed_and_buckets_skipped():
    values = parse_prometheus(VLLM_METRICS)
    assert values["vllm:num_requests_waiting"] == 3.0 and values["vllm:gpu_cache_usage_perc"] == 0.42
    assert values["vllm:num_preemptions_total"] == 7.0 and values["vllm:prompt_tokens_total"] == 123.0
    assert math.isnan(values["vllm:gpu_prefix_cache_hit_rate"])
    assert "vllm:time_to_first_token_seconds_bucket" not in values
    assert values["vllm:time_to_first_token_seconds_sum"] == 1.5


def test_metrics_are_scraped_during_a_run_and_a_server_without_them_is_not_a_failure(tmp_path):
    with FakeServer("llama", key=KEY) as server:
        with MetricsScraper("e", server.url, KEY, interval_s=0.05) as scraper:
            run_depth_sync(server.url, "llamacpp", "m", KEY, depths=[200], max_tokens=4, ready_timeout_s=5)
        result = scraper.result
        assert result.status == "ok" and result.scrapes == server.metric_scrapes >= 2
        summary = result.summary()
        assert summary["queue_depth"]["metric"] == "llamacpp:requests_deferred"
        assert summary["kv_cache_usage"]["max"] > 0, "the depth prompt filled part of the slot"
        with MetricsScraper("e", server.url, "wrong", interval_s=0.05) as wrong:
            pass
        assert wrong.result.status == "unauthorized" and wrong.result.samples == []
    with FakeServer("llama", key=KEY, metrics=False) as server, MetricsScraper("e", server.url, KEY) as off:
        pass
    assert off.result.status == "not exposed" and "501" in off.result.detail
    with FakeServer("openai_edge_cases") as plain, MetricsScraper("p", plain.url, None) as missing:
        pass
    assert missing.result.status == "not exposed" and "404" in missing.result.detail
    with history.connect(tmp_path / "h.duckdb") as con:
        assert record_server_metrics(con, "run-1", date(2026, 11, 25), "benchmark", result) == len(result.samples)
        record_server_metrics(con, "run-1", date(2026, 11, 25), "benchmark", missing.result)
        # Re-recording a run's phase replaces it.
        record_server_metrics(con, "run-1", date(2026, 11, 25), "benchmark", result)
        rows = con.execute("SELECT endpoint, status, scrapes FROM server_metric_runs ORDER BY endpoint").fetchall()
        count = con.execute("SELECT count(*) FROM server_metrics WHERE endpoint = 'e'").fetchone()[0]
    assert rows == [("e", "ok", result.scrapes), ("p", "not exposed", 0)] and count == len(result.samples)


# -- goodput and arrivals ---------------------------------------------------------


def _sample(ttft, itl, *, error=None, tokens=8):
    return RequestSample(
        index=0, started_at=datetime.now(UTC), ttft_ms=ttft, itl_ms=itl, e2e_ms=ttft, output_tokens=tokens, error=error
    )


class _Report:
    def __init__(self, sweep):
        self.sweep = sweep


def _level(concurrency, samples):
    return ScenarioResult.from_samples(f"sweep_c{concurrency}", concurrency, samples, 2.0)


def test_goodput_counts_requests_that_met_both_slos():
    good = _sample(100, [10, 12, 11])
    slow_start = _sample(900, [10, 10])
    stalls = _sample(100, [10] * 9 + [400] * 2)  # two long gaps: ITL p95 above the SLO
    failed = _sample(None, [], error="http_5xx")
    assert request_meets_slo(good, 500, 50) == (True, True, True)
    assert request_meets_slo(slow_start, 500, 50) == (False, False, True)
    assert request_meets_slo(stalls, 500, 50)[2] is False
    assert request_meets_slo(failed, 500, 50) == (False, False, False)
    assert request_meets_slo(_sample(100, []), 500, 50)[0], "one token: no gap to judge"
    report = _Report([_level(1, [good, good]), _level(8, [good, slow_start, stalls, failed])])
    levels = goodput_levels(report, 500, 50)
    assert [(lv.concurrency, lv.met, lv.requests, lv.share) for lv in levels] == [(1, 2, 2, 1.0), (8, 1, 4, 0.25)]
    assert (levels[1].missed_ttft, levels[1].missed_itl, levels[1].failed) == (1, 1, 1)
    assert levels[0].goodput_tok_s == 8.0  # 16 good tokens in 2 s

    endpoint = Endpoint(
        name="e",
        protocol="openai",
        url="http://127.0.0.1:1",
        acceptance=AcceptanceCriteria(slo_ttft_ms=500, slo_itl_ms=50, goodput_min=0.9, concurrency=8),
    )
    result = evaluate_goodput(endpoint, report, ceiling=None)
    assert result.status == "failed" and result.measured == 0.25 and "worst 25% at c8" in result.message
    # Judged only up to the criterion's concurrency.
    one = endpoint.model_copy(update={"acceptance": endpoint.acceptance.model_copy(update={"concurrency": 4})})
    assert evaluate_goodput(one, report, ceiling=None).status == "passed"
    # An ITL SLO faster than one decode step at the ceiling (100 tok/s: 10 ms) is unattainable.
    from idp_ops.physics.ceilings import EndpointCeiling

    ceiling = EndpointCeiling("e", 100.0, 1e9, 100.0, "datasheet", 1.0, "gpu")
    fast = endpoint.model_copy(update={"acceptance": endpoint.acceptance.model_copy(update={"slo_itl_ms": 5})})
    result = evaluate_goodput(fast, report, ceiling=ceiling)
    assert result.status == "unattainable" and "below one decode step (10.0 ms" in result.message
    unset = endpoint.model_copy(update={"acceptance": AcceptanceCriteria()})
    assert evaluate_goodput(unset, report, ceiling=None).status == "not judged"


def test_goodput_rows_are_recorded_once_per_night(tmp_path):
    report = _Report([_level(1, [_sample(100, [10])]), _level(8, [_sample(100, [10]), _sample(900, [10])])])
    report.endpoint = "e"
    endpoint = Endpoint(
        name="e", protocol="openai", url="http://127.0.0.1:1", acceptance=AcceptanceCriteria(slo_ttft_ms=500)
    )
    with history.connect(tmp_path / "h.duckdb") as con:
        for _ in range(2):
            record_goodput(con, date(2026, 11, 25), report, endpoint)
        rows = con.execute("SELECT concurrency, met, requests, share FROM goodput ORDER BY 1").fetchall()
    assert rows == [(1, 1, 1, 1.0), (8, 1, 2, 0.5)]


def test_arrival_patterns():
    assert resolve_arrival(None, None, 5.0) == ("poisson", 5.0), "poisson_rate alone keeps working"
    assert resolve_arrival("closed", None) == ("closed", None)
    assert resolve_arrival("constant", 4.0) == ("constant", 4.0)
    with pytest.raises(BenchError, match="needs a rate"):
        resolve_arrival("constant", None)
    with pytest.raises(BenchError, match="unknown arrival"):
        resolve_arrival("burst", 1.0)
    assert arrival_gap_s("constant", 4.0, None) == 0.25 and arrival_gap_s("closed", None, None) == 0.0
    import random

    rng = random.Random(1)
    gaps = [arrival_gap_s("poisson", 10.0, rng) for _ in range(2000)]
    assert sum(gaps) / len(gaps) == pytest.approx(0.1, rel=0.1) and len(set(gaps)) == len(gaps)


def test_a_constant_rate_sweep_releases_requests_on_schedule():
    with FakeServer("openai_edge_cases") as server:
        report = run_benchmark_sync(
            server.url,
            "openai",
            "m",
            "k",
            warmups=1,
            ttft_requests=1,
            ttft_max_tokens=4,
            decode_tokens=4,
            decode_requests=1,
            sweep=(4,),
            sweep_tokens=4,
            sweep_rounds=2,
            arrival="constant",
            arrival_rate=20.0,
            ready_timeout_s=5,
        )
    assert report.ok, report.problems
    (level,) = report.sweep
    assert (level.arrival, level.arrival_rate, level.requests) == ("constant", 20.0, 8)
    assert report.settings["arrival"] == "constant" and report.settings["arrival_rate"] == 20.0
    starts = sorted(s.started_at for s in level.samples)
    # Released 50 ms apart: the 8th starts at least 7 gaps after the first.
    assert (starts[-1] - starts[0]).total_seconds() >= 7 * 0.05 * 0.95


def test_depth_and_prefix_rows_are_recorded_once_per_night(tmp_path):
    with FakeServer("llama", key=KEY) as server:
        depth = run_depth_sync(server.url, "llamacpp", "m", KEY, depths=[32, 64], requests=2, max_tokens=4)
        prefix = run_prefix_cache_sync(server.url, "llamacpp", "m", KEY, prefix_tokens=64, rounds=2, warm_requests=2)
    night = date(2026, 11, 25)
    with history.connect(tmp_path / "h.duckdb") as con:
        for _ in range(2):
            record_depth(con, night, depth)
            record_prefix_cache(con, night, prefix)
        depths = con.execute("SELECT depth, count(*), min(prompt_tokens) FROM depth_samples GROUP BY 1 ORDER BY 1")
        depths = depths.fetchall()
        kinds = con.execute("SELECT kind, count(*) FROM prefix_cache_samples GROUP BY 1 ORDER BY 1").fetchall()
    assert depths == [(32, 2, 32), (64, 2, 64)]
    assert kinds == [("cold", 2), ("warm", 4)]


# -- against the real llama-server (CPU stack, Gemma 270M) ---------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, llama_image, demo_models_dir):
    from idp_ops.stack.deploy import compose_project, deploy
    from idp_ops.stack.secrets import ensure_keys
    from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

    root = tmp_path_factory.mktemp("workload-stack")
    values = cpu_stack_settings(
        root / "home", demo_models_dir, llama_image, f"idp-ops-test-workloads-{time.time_ns() % 10**8}"
    )
    settings = load_settings(write_settings(root / "idp-ops.yaml", **values))
    ensure_keys(
        settings.secrets_dir, settings.key_names, owner_uid=settings.service_uid, owner_gid=settings.service_gid
    )
    try:
        report = deploy(settings)
        assert report.ok, report.problems
        yield settings
    finally:
        compose_project(settings).down(timeout=settings.stop_timeout_s)


def _target(settings, name):
    from idp_ops.stack.secrets import read_key

    endpoint = settings.endpoint(name)
    return endpoint, read_key(settings.key_file(endpoint))


@pytest.mark.docker
@pytest.mark.model
@pytest.mark.parametrize("name", ["llamacpp-cpu", "openai-standin"])
def test_real_depth_runs_at_exact_token_counts(stack, name, demo_models_dir):
    from idp_ops.physics.ceilings import EndpointCeiling

    endpoint, key = _target(stack, name)
    physics = depth_physics(
        endpoint.model_copy(update={"model_file": "gemma-3-270m-q4_k_m.gguf"}),
        demo_models_dir,
        EndpointCeiling(name, 1.0, 246_587_904, 30.0, "datasheet", 0.8, "cpu"),
    )
    with MetricsScraper(name, endpoint.url, key, interval_s=0.5) as scraper:
        report = run_depth_sync(
            endpoint.url,
            endpoint.protocol,
            endpoint.model,
            key,
            depths=[64, 256, 1024],
            max_tokens=16,
            physics=physics,
            endpoint=name,
        )
    assert report.ok, report.problems + [p for point in report.points for p in point.problems]
    # The compose file gives each of 4 slots 1024 tokens: 1024 is cut to leave room for the answer.
    assert report.n_ctx == 1024
    assert [(p.depth, p.requested_depth) for p in report.points] == [(64, 64), (256, 256), (1007, 1024)]
    for point in report.points:
        (sample,) = point.samples
        assert sample.ok and sample.output_tokens == 16
        # llama-server's own count: it evaluated exactly `depth` tokens, none from a cache.
        assert sample.prompt_tokens == point.depth and sample.server_prompt_tokens == point.depth
        assert sample.server_cached_tokens == 0
        assert 0 < sample.server_prompt_ms < sample.ttft_ms
        assert point.prefill_tok_s > 0 and point.server_prefill_tok_s > 0 and point.decode_tok_s > 0
        assert 0 < point.decode_tok_s < point.ceiling_tok_s
        print(
            f"\n{name} depth {point.depth}: TTFT {point.ttft_ms:.0f} ms (server prompt {point.server_prompt_ms:.0f} "
            f"ms), prefill {point.prefill_tok_s:.0f} tok/s (server {point.server_prefill_tok_s:.0f}), decode "
            f"{point.decode_tok_s:.1f} tok/s (server {point.server_decode_tok_s:.1f}, ceiling {point.ceiling_tok_s:.0f})"
        )
    # The server's /metrics was read, with the key, while it worked.
    summary = scraper.result.summary()
    assert scraper.result.status == "ok" and scraper.result.scrapes >= 2
    assert summary["prompt_tokens"]["increase"] >= 64 + 256 + 1007
    assert summary["queue_depth"]["metric"] == "llamacpp:requests_deferred"
    result = evaluate_depth(endpoint, report)
    assert result.status == "passed" and "1007 tok" in result.message


@pytest.mark.docker
@pytest.mark.model
@pytest.mark.parametrize("name", ["openai-standin", "llamacpp-cpu"])
def test_real_prefix_cache_serves_warm_requests_from_the_cache(stack, name):
    endpoint, key = _target(stack, name)
    report = run_prefix_cache_sync(
        endpoint.url,
        endpoint.protocol,
        endpoint.model,
        key,
        prefix_tokens=600,
        rounds=2,
        warm_requests=3,
        endpoint=name,
    )
    assert report.ok, report.problems
    for _, kind, sample in report.samples:
        if kind == "cold":
            assert sample.server_cached_tokens <= 2, "a new prefix: at most BOS and a shared first piece"
        else:
            # The shared prefix came from the cache: llama-server's own count.
            assert sample.server_cached_tokens >= 550 and sample.prompt_tokens > 600
    assert report.warm_hit_rate > 0.85 and report.cold_hit_rate < 0.01
    print(
        f"\n{name} prefix {report.prefix_tokens} tok: cold TTFT p50 {report.cold_ttft['p50']:.0f} ms, warm "
        f"{report.warm_ttft['p50']:.0f} ms (ratio {report.ttft_ratio:.2f}), warm hit {report.warm_hit_rate:.0%}"
    )
    configured, why = prefix_caching_configured(stack, endpoint)
    result = evaluate_prefix_cache(endpoint, report, configured=configured, why=why, ceiling=None)
    assert configured is True and result.status == "passed", result.message


@pytest.mark.docker
@pytest.mark.model
def test_real_goodput_at_1_and_8_with_metrics_scraped(stack):
    endpoint, key = _target(stack, "llamacpp-cpu")
    with MetricsScraper(endpoint.name, endpoint.url, key, interval_s=0.25) as scraper:
        report = run_benchmark_sync(
            endpoint.url,
            endpoint.protocol,
            endpoint.model,
            key,
            warmups=1,
            ttft_requests=2,
            ttft_max_tokens=8,
            decode_tokens=16,
            decode_requests=1,
            sweep=(1, 8),
            sweep_tokens=16,
            sweep_rounds=1,
            endpoint=endpoint.name,
        )
    assert report.ok, report.problems
    acceptance = AcceptanceCriteria(slo_ttft_ms=10_000, slo_itl_ms=2_000, goodput_min=0.9, concurrency=8)
    levels = goodput_levels(report, acceptance.slo_ttft_ms, acceptance.slo_itl_ms)
    assert [(lv.concurrency, lv.requests) for lv in levels] == [(1, 1), (8, 8)]
    for level, scenario in zip(levels, report.sweep, strict=True):
        expected = sum(request_meets_slo(s, 10_000, 2_000)[0] for s in scenario.samples)
        assert level.met == expected and level.failed == 0
    # A TTFT SLO at the single stream's own TTFT: met at c1 by construction (a measurement, printed, at c8).
    single = report.sweep[0].samples[0]
    tight = goodput_levels(report, single.ttft_ms, None)
    assert tight[0].met == 1
    print(
        f"\ngoodput (TTFT <= {single.ttft_ms:.0f} ms): "
        + ", ".join(f"c{lv.concurrency} {lv.share:.0%}" for lv in tight)
    )
    endpoint = endpoint.model_copy(update={"acceptance": acceptance})
    assert evaluate_goodput(endpoint, report, ceiling=None).status == "passed"
    summary = scraper.result.summary()
    assert scraper.result.status == "ok" and summary["running"]["metric"] == "llamacpp:requests_processing"
    assert summary["prompt_tokens"]["increase"] > 0
    # Without the key llama-server's /metrics is refused: recorded, not raised.
    with MetricsScraper(endpoint.name, endpoint.url, None) as anonymous:
        pass
    assert anonymous.result.status == "unauthorized"
