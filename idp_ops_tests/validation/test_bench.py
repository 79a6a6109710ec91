"""The streaming benchmark client: statistics and SSE edge cases against a scripted local
HTTP server, then every metric against the real llama-server (CPU stack, Gemma 270M)
on both protocols, the CLI, and a server stopped mid-run."""

from __future__ import annotations

import json
import math
import re
import statistics
import threading
import time

import pytest

from idp_ops.validation.bench import (
    BenchError,
    RequestSample,
    percentiles,
    run_benchmark_sync,
)
from idp_ops_harness.fake_llm_server import FakeServer

# -- statistics --------------------------------------------------------------


def test_percentiles_interpolate_linearly_between_ranks():
    values = list(range(1, 101))  # 1..100
    p = percentiles(values)
    assert p["n"] == 100 and p["mean"] == 50.5
    # numpy's default: v[(n-1)q] interpolated
    assert p["p50"] == pytest.approx(50.5) and p["p90"] == pytest.approx(90.1)
    assert p["p95"] == pytest.approx(95.05) and p["p99"] == pytest.approx(99.01)
    assert percentiles([7.0]) == {"p50": 7.0, "p90": 7.0, "p95": 7.0, "p99": 7.0, "mean": 7.0, "n": 1}
    assert percentiles([]) == {"n": 0}
    assert percentiles([3, 1, 2])["p50"] == 2


def test_decode_rate_counts_the_intervals_between_first_and_last_token():
    sample = RequestSample(index=0, started_at=None, ttft_ms=100.0, e2e_ms=1100.0, output_tokens=51)
    assert sample.decode_tok_s == pytest.approx(50.0)  # 50 tokens after the first, in 1 s
    assert RequestSample(index=0, started_at=None, ttft_ms=1, e2e_ms=2, output_tokens=1).decode_tok_s is None


# -- a scripted local server (support/fake_llm_server.py) --------------------

SMALL = dict(
    warmups=1, ttft_requests=3, ttft_max_tokens=8, decode_tokens=8, decode_requests=1, sweep=(2,), sweep_tokens=8
)


class InFlightServer(FakeServer):
    """A FakeServer that records how many completions it is answering at once.

    Each arrival is logged as (the request's index, read from its prompt; the completions in
    flight, itself included). A request of ``gate_tokens`` tokens is held until another is in
    flight beside it, or ``hold_s`` passes: a client that allows concurrency always shows it,
    whatever this machine's timing. The count drops before the answer's connection closes,
    and the client ends a request only at that close (it reads the stream to its end), so the
    server can never count a request the client has already finished.
    """

    def __init__(self, mode: str, *, gate_tokens: int, hold_s: float = 1.0):
        super().__init__(mode)
        self.gate_tokens = gate_tokens
        self.hold_s = hold_s
        self.in_flight = 0
        self.arrivals: list[tuple[int, int]] = []
        self._changed = threading.Condition()

    def answer(self, handler, payload: dict) -> None:
        index = int(re.match(r"Request \w+-(\d+)\.", payload["prompt"]).group(1))
        with self._changed:
            self.in_flight += 1
            self.arrivals.append((index, self.in_flight))
            self._changed.notify_all()
            if payload.get("max_tokens") == self.gate_tokens:
                self._changed.wait_for(lambda: self.in_flight > 1, timeout=self.hold_s)
        try:
            super().answer(handler, payload)
        finally:
            with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()


class ReadyAfterPolls(FakeServer):
    """A FakeServer whose /health answers 503 to its first ``polls`` polls, then 200: "loading" by
    count, not by a clock that a slow start could outrun."""

    def __init__(self, mode: str, *, polls: int):
        self._polls_left = polls
        super().__init__(mode)

    @property
    def not_ready_until(self) -> float:  # read once per /health poll by the handler
        if self._polls_left > 0:
            self._polls_left -= 1
            return math.inf
        return -math.inf

    @not_ready_until.setter
    def not_ready_until(self, _value: float) -> None:
        pass  # FakeServer's clock-based window does not apply


def test_sse_comments_pings_role_only_and_usage_only_chunks_are_not_tokens():
    with FakeServer("openai_edge_cases") as server:
        report = run_benchmark_sync(server.url, "openai", "m", "k3y", **SMALL, timeout_s=10, ready_timeout_s=5)
    assert report.ok, report.problems
    for sample in report.samples:
        assert sample.error is None
        # TTFT waited for the first non-empty text (sent 150 ms after the role/empty chunks)
        assert sample.ttft_ms >= 140
        # tokens from usage (8), though only 7 content events arrived
        assert sample.output_tokens == 8 and len(sample.itl_ms) == 8 - 3
        assert sample.prompt_tokens == 11
        assert sample.tpot_ms == pytest.approx((sample.e2e_ms - sample.ttft_ms) / 7, abs=0.01)
        assert sample.server_decode_tok_s is None  # not llama.cpp: no timings
    sent = server.requests[0]
    assert sent["auth"] == "Bearer k3y"
    body = sent["payload"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["max_tokens"] == 8
    prompts = [r["payload"]["prompt"] for r in server.requests]
    assert len(set(prompts)) == len(prompts), "every request has its own prompt"
    assert len(report.sweep[0].samples) == 4 and report.sweep[0].concurrency == 2


def test_poisson_arrivals_keep_the_concurrency_cap():
    sweep_tokens = 6  # unlike the warm-up, TTFT and decode requests (8): only sweep requests are held
    with InFlightServer("openai_edge_cases", gate_tokens=sweep_tokens) as server:
        report = run_benchmark_sync(
            server.url,
            "openai",
            "m",
            "k",
            **{**SMALL, "sweep": (2, 3), "sweep_tokens": sweep_tokens},
            poisson_rate=50.0,
            seed=7,
        )
    assert report.ok, report.problems
    assert [(s.concurrency, s.requests, s.poisson_rate) for s in report.sweep] == [(2, 4, 50.0), (3, 6, 50.0)]
    assert report.settings["poisson_rate"] == 50.0
    # What the server saw: the most completions in flight at once, per sweep level (1: warm-up,
    # warm TTFT and decode, one at a time). Each level's cap holds, and is used: more than one.
    level = {sample.index: scenario.concurrency for scenario in report.sweep for sample in scenario.samples}
    assert sorted(level) == sorted(index for index, _ in server.arrivals if index in level), "every request arrived"
    peak: dict[int, int] = {}
    for index, in_flight in server.arrivals:
        peak[level.get(index, 1)] = max(peak.get(level.get(index, 1), 0), in_flight)
    assert peak[1] == 1 and peak[2] == 2 and 1 < peak[3] <= 3, (peak, server.arrivals)


@pytest.mark.timeout(60)  # a hang guard: "never hangs" is this timeout, the assertions are what was recorded
@pytest.mark.parametrize(
    ("mode", "protocol", "kind"),
    [
        ("malformed", "openai", "malformed_sse"),
        ("not_sse", "openai", "malformed_sse"),
        ("http_500", "openai", "http_5xx"),
        ("http_500", "llamacpp", "http_5xx"),
        ("llamacpp_truncated", "llamacpp", "server_stopped"),
        ("openai_truncated", "openai", "server_stopped"),
        ("stream_error", "llamacpp", "stream_error"),
    ],
)
def test_a_misbehaving_server_is_recorded_by_kind_and_never_hangs(mode, protocol, kind):
    with FakeServer(mode) as server:
        report = run_benchmark_sync(server.url, protocol, "m", "k", **SMALL, timeout_s=5, ready_timeout_s=5)
    measured = 3 + 1 + 4
    assert report.errors_by_kind == {kind: measured}
    assert not report.ok and report.problems[0].startswith(
        f"{measured} of {measured} requests failed ({kind} {measured})"
    )
    assert all(s.error == kind and s.error_detail for s in report.samples)
    assert report.warm_ttft.success_rate == 0 and report.warm_ttft.percentiles["ttft_ms"] == {"n": 0}
    if kind == "http_5xx":
        assert {s.status for s in report.samples} == {500}
        assert "server error (5xx)" in report.message


@pytest.mark.timeout(60)  # a hang guard: the trickle itself lasts 60 s per request
def test_a_stream_that_never_finishes_times_out_per_request():
    with FakeServer("trickle") as server:
        report = run_benchmark_sync(
            server.url,
            "openai",
            "m",
            "k",
            warmups=1,
            ttft_requests=2,
            decode_tokens=4,
            decode_requests=1,
            sweep=(),
            timeout_s=0.6,
            ready_timeout_s=5,
        )
    # Cut by the whole-request deadline: a stream left to end by itself would be "no_content".
    assert report.errors_by_kind == {"timeout": 3}
    assert all(s.error_detail == "no complete answer within 0.6 s" for s in report.samples)
    assert any("no complete answer within 0.6 s" in p for p in report.problems)


def test_a_rejected_key_is_an_auth_failure_not_a_measurement():
    with FakeServer("http_401") as server, pytest.raises(BenchError, match=r"rejected the key \(401\)"):
        run_benchmark_sync(server.url, "openai", "m", "wrong", **SMALL, timeout_s=5, ready_timeout_s=5)


def test_an_unreachable_endpoint_fails_clearly_after_the_ready_timeout():
    from idp_ops_harness.ports import refusing_port

    lines: list[str] = []
    with refusing_port() as port, pytest.raises(BenchError, match=r"not ready after 2 s \(last: ConnectError"):
        url = f"http://127.0.0.1:{port}"
        run_benchmark_sync(url, "llamacpp", "m", "k", ready_timeout_s=2, progress=lines.append)
    # It kept trying until the ready timeout, rather than failing at the first refused connection.
    assert len(lines) == 1 and lines[0].startswith(f"{url} not ready (ConnectError"), lines
    assert lines[0].endswith("retrying for up to 2 s")


def test_503_while_loading_means_not_ready_and_is_retried():
    with ReadyAfterPolls("openai_edge_cases", polls=2) as server:
        lines: list[str] = []
        report = run_benchmark_sync(server.url, "openai", "m", "k", **SMALL, ready_timeout_s=10, progress=lines.append)
    assert report.ok
    assert any("not ready (HTTP 503)" in line for line in lines)
    with (
        FakeServer("openai_edge_cases", not_ready_for_s=60) as server,
        pytest.raises(BenchError, match=r"not ready after 1 s \(last: HTTP 503\)"),
    ):
        run_benchmark_sync(server.url, "openai", "m", "k", **SMALL, ready_timeout_s=1)


def test_bad_arguments_are_refused_before_anything_is_sent():
    with pytest.raises(BenchError, match="unknown protocol"):
        run_benchmark_sync("http://127.0.0.1:1", "grpc", "m", None)
    with pytest.raises(BenchError, match="sweep levels"):
        run_benchmark_sync("http://127.0.0.1:1", "openai", "m", None, sweep=(0,))


# -- against the real llama-server --------------------------------------------

REAL = dict(
    warmups=1, ttft_requests=5, ttft_max_tokens=8, decode_tokens=32, decode_requests=2, sweep=(1, 4), sweep_tokens=16
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, llama_image, demo_models_dir):
    """A CPU stack (llama-server + Gemma 270M on both protocols) on free ports, torn down after."""
    from idp_ops.settings import load_settings
    from idp_ops.stack.deploy import compose_project, deploy
    from idp_ops.stack.secrets import ensure_keys
    from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

    root = tmp_path_factory.mktemp("bench-stack")
    config = write_settings(
        root / "idp-ops.yaml",
        **cpu_stack_settings(
            root / "home", demo_models_dir, llama_image, f"idp-ops-test-bench-{time.time_ns() % 10**8}"
        ),
    )
    settings = load_settings(config)
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
def test_every_metric_is_present_and_sane_on_the_real_server(stack, name):
    endpoint, key = _target(stack, name)
    report = run_benchmark_sync(
        endpoint.url, endpoint.protocol, endpoint.model, key, endpoint=name, **REAL, ready_timeout_s=30
    )
    assert report.ok, report.problems
    assert report.errors_by_kind == {}
    assert [s.scenario for s in report.scenarios] == ["warm_ttft", "decode", "sweep_c1", "sweep_c4"]
    assert [len(s.samples) for s in report.scenarios] == [5, 2, 2, 8]
    for scenario in report.scenarios:
        assert scenario.success_rate == 1.0 and scenario.aggregate_output_tok_s > 0
        for metric in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
            p = scenario.percentiles[metric]
            assert p["n"] > 0 and 0 < p["p50"] <= p["p90"] <= p["p95"] <= p["p99"], (scenario.scenario, metric, p)
        for sample in scenario.samples:
            assert sample.status == 200 and sample.error is None
            assert 0 < sample.ttft_ms < sample.e2e_ms
            assert sample.output_tokens == sample.max_tokens, "fixed output length (ignore_eos)"
            assert sample.prompt_tokens and sample.prompt_tokens > 5
            assert len(sample.itl_ms) >= 1 and all(gap >= 0 for gap in sample.itl_ms)
            assert sample.tpot_ms == pytest.approx(
                (sample.e2e_ms - sample.ttft_ms) / (sample.output_tokens - 1), rel=1e-3
            )
            # the whole prompt was evaluated: no prefix cache served any of it
            assert sample.server_cached_tokens == 0
            # the server's prompt processing is inside our TTFT
            assert 0 < sample.server_prompt_ms < sample.ttft_ms
            assert sample.started_at.tzinfo is not None and sample.concurrency == scenario.concurrency
    assert [s.max_tokens for s in report.decode.samples] == [32, 32]
    # Our single-stream decode rate beside llama-server's own timings.predicted_per_second (sent on
    # its OpenAI route too): both present for every decode stream, each the median of its samples.
    # How closely the two agree is a measurement, not a test: benchmarks/bench_accuracy.py.
    for sample in report.decode.samples:
        assert sample.decode_tok_s > 0 and sample.server_decode_tok_s > 0
        # the client saw no more text events than the tokens the server counted
        assert 1 < len(sample.itl_ms) + 1 <= sample.output_tokens == 32
    assert report.decode_tok_s == round(statistics.median(s.decode_tok_s for s in report.decode.samples), 3)
    assert report.server_decode_tok_s == round(
        statistics.median(s.server_decode_tok_s for s in report.decode.samples), 3
    )
    data = json.loads(json.dumps(report.to_dict(), default=str))
    assert data["decode"]["percentiles"]["tpot_ms"]["n"] == 2 and len(data["sweep"][1]["samples"]) == 8


@pytest.mark.docker
@pytest.mark.model
@pytest.mark.parametrize("name", ["llamacpp-cpu", "openai-standin"])
def test_a_wrong_or_missing_key_is_reported_as_an_auth_failure(stack, name):
    endpoint, key = _target(stack, name)
    for wrong in ("not-the-key", None):
        with pytest.raises(BenchError, match=r"rejected the key \(401\)"):
            run_benchmark_sync(endpoint.url, endpoint.protocol, endpoint.model, wrong, **REAL, ready_timeout_s=10)


@pytest.mark.docker
@pytest.mark.model
def test_cli_bench_json_returns_percentiles_and_decode_rate(stack, capsys, tmp_path):
    from idp_ops.cli.main import main

    endpoint = stack.endpoint("llamacpp-cpu")
    argv = [
        "bench",
        "--endpoint",
        endpoint.url,
        "--protocol",
        "llamacpp",
        "--key-file",
        str(stack.key_file(endpoint)),
        "--requests",
        "3",
        "--decode-tokens",
        "24",
        "--decode-requests",
        "1",
        "--sweep",
        "1,2",
        "--sweep-tokens",
        "8",
        "--arrival",
        "constant",
        "--rate",
        "20",
        "--json",
    ]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["protocol"] == "llamacpp"
    assert (data["settings"]["arrival"], data["settings"]["arrival_rate"]) == ("constant", 20.0)
    assert {s["arrival"] for s in data["sweep"]} == {"constant"}
    for metric in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert set(data["warm_ttft"]["percentiles"][metric]) == {"p50", "p90", "p95", "p99", "mean", "n"}
    assert data["decode_tok_s"] > 0 and data["server_decode_tok_s"] > 0
    assert [s["concurrency"] for s in data["sweep"]] == [1, 2]
    assert "samples" not in data["decode"]

    # by name through settings, human output; a URL without --protocol cannot run
    assert (
        main(
            [
                "--config",
                str(stack.home.parent / "idp-ops.yaml"),
                "bench",
                "--endpoint",
                "openai-standin",
                "--requests",
                "2",
                "--decode-tokens",
                "8",
                "--decode-requests",
                "1",
                "--sweep",
                "",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "single-stream decode:" in out and "TTFT" in out and "OK" in out
    assert main(["bench", "--endpoint", endpoint.url]) == 2
    assert "needs --protocol" in capsys.readouterr().err
    assert main(["bench", "--endpoint", endpoint.url, "--protocol", "llamacpp", "--arrival", "poisson"]) == 2
    assert "needs a rate" in capsys.readouterr().err
    assert (
        main(["bench", "--endpoint", endpoint.url, "--protocol", "llamacpp", "--key-file", str(tmp_path / "none")]) == 2
    )


def _restart(settings, endpoint) -> None:
    """Start a service a test stopped, and wait until it answers: the module's stack as it was."""
    from idp_ops.stack.deploy import compose_project
    from idp_ops.stack.probe import wait_until_ready

    compose_project(settings).up([endpoint.compose_service], timeout=settings.deploy_timeout_s)
    wait_until_ready(endpoint.url, timeout_s=settings.deploy_timeout_s)


@pytest.mark.docker
@pytest.mark.model
@pytest.mark.timeout(300)  # a hang guard; every request has its own 30 s deadline
def test_the_server_stopped_mid_run_is_recorded_and_fails_clearly(stack):
    """It stops a service of the module's stack, and starts it again: any test may run after it."""
    from idp_ops.stack.deploy import compose_project

    endpoint, key = _target(stack, "llamacpp-cpu")
    stopper: list[threading.Thread] = []

    def progress(line: str) -> None:
        # After the warm TTFT scenario, stop the server while decode streams run.
        if line.startswith("decode:") and not stopper:
            thread = threading.Thread(
                target=compose_project(stack).stop, args=([endpoint.compose_service],), kwargs={"timeout": 2}
            )
            thread.start()
            stopper.append(thread)

    try:
        report = run_benchmark_sync(
            endpoint.url,
            endpoint.protocol,
            endpoint.model,
            key,
            warmups=1,
            ttft_requests=3,
            ttft_max_tokens=8,
            decode_tokens=400,
            decode_requests=3,
            sweep=(1, 4),
            sweep_tokens=16,
            timeout_s=30,
            progress=progress,
        )
    finally:
        for thread in stopper:
            thread.join(timeout=60)
        _restart(stack, endpoint)
    assert stopper and not stopper[0].is_alive(), "the stop ran during the decode streams"
    assert report.warm_ttft.success_rate == 1.0
    assert not report.ok
    failed = sum(report.errors_by_kind.values())
    # the decode stream in flight may finish or be cut; every request after it fails
    assert set(report.errors_by_kind) <= {"connect", "server_stopped"} and failed >= 2 + 2 + 8
    assert report.sweep[0].success_rate == 0 and report.sweep[-1].success_rate == 0
    assert "the server stopped answering during the run" in report.message
    assert report.problems[0].startswith(f"{failed} of 16 requests failed")
