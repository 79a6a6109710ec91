"""`idp_ops.client.Box`: sync, async and streamed answers from the real llama-server on both
protocols, the endpoint choice by health, served model and the last nightly figures (a real
DuckDB history), the one retry on a connection error (a TCP proxy in front of the real server),
and a wrong key.

The scripted local server (idp_ops_harness/fake_llm_server.py) stands in only for faults a
real llama-server cannot be made to show on demand: a 500, an error event in the stream, a
stream that trickles keep-alives forever.
"""

from __future__ import annotations

import asyncio
from datetime import date

import pytest

from idp_ops.client import (
    Answer,
    AnswerStreamError,
    Box,
    BoxConnectionError,
    NoEndpointError,
    ServerAnswerError,
    last_figures,
)
from idp_ops.errors import IdpOpsError
from idp_ops.settings import load_settings
from idp_ops_harness.fake_llm_server import FakeServer
from idp_ops_harness.flaky_proxy import FlakyProxy
from idp_ops_harness.history_seed import seed_bench_runs
from idp_ops_harness.ports import free_port
from idp_ops_harness.settings_files import write_settings

ENDPOINTS = ("openai-standin", "llamacpp-cpu")


def _settings(tmp_path, *endpoints: dict):
    """Hermetic settings whose endpoints are the given ones, each with key file "k" holding k3y."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = load_settings(
        write_settings(tmp_path / "idp-ops.yaml", home=tmp_path / "home", endpoints=list(endpoints))
    )
    settings.secrets_dir.mkdir(parents=True)
    (settings.secrets_dir / "k").write_text("k3y\n")
    return settings


def _endpoint(name: str, url: str, protocol: str = "openai", model: str = "m") -> dict:
    return {"name": name, "protocol": protocol, "url": url, "key_name": "k", "model": model}


def _with_endpoints(settings, **changes):
    """The stack's settings with some endpoint fields changed (the running servers are unchanged)."""
    endpoints = [e.model_copy(update=changes.get(e.name, {})) for e in settings.endpoints]
    return settings.model_copy(update={"endpoints": endpoints})


# -- faults, against the scripted server -------------------------------------------


def test_an_http_error_is_the_servers_answer_and_is_not_retried(tmp_path):
    with FakeServer("http_500") as server:
        box = Box(_settings(tmp_path, _endpoint("a", server.url)), retry_delay_s=0)
        with pytest.raises(ServerAnswerError, match=r"a answered HTTP 500: .*scripted") as raised:
            box.ask("hello", endpoint="a")
    assert raised.value.status == 500 and raised.value.exit_code == 1
    assert len(server.requests) == 1, "an HTTP error is an answer: never retried"
    assert server.requests[0]["auth"] == "Bearer k3y"
    body = server.requests[0]["payload"]
    assert body["stream"] is True and body["max_tokens"] == 256 and "ignore_eos" not in body


def test_an_error_event_and_a_stream_cut_short_fail_clearly_without_a_retry(tmp_path):
    with FakeServer("stream_error") as server:
        box = Box(_settings(tmp_path, _endpoint("a", server.url)), retry_delay_s=0)
        with pytest.raises(ServerAnswerError, match="error in the stream: .*context overflow"):
            box.ask("hello")
    with FakeServer("llamacpp_truncated") as server:
        box = Box(_settings(tmp_path / "t", _endpoint("b", server.url, "llamacpp")), retry_delay_s=0)
        stream = box.stream("hello", endpoint="b")
        seen = []
        with pytest.raises(AnswerStreamError, match=r"ended before its final \(stop\) event \(3 chars came\)"):
            seen.extend(stream)
        assert seen == ["x", "x", "x"] and stream.answer is None
        assert len(server.requests) == 1


def test_a_trickling_stream_hits_the_whole_answer_deadline(tmp_path):
    with FakeServer("trickle") as server:
        box = Box(_settings(tmp_path, _endpoint("a", server.url)), retry_delay_s=0)
        with pytest.raises(AnswerStreamError, match=r"no complete answer within 0.5 s"):
            box.ask("hello", timeout_s=0.5)
    assert len(server.requests) == 1


def test_a_refused_endpoint_is_tried_twice_then_fails_clearly(tmp_path):
    port = free_port()  # nothing listens there
    retries = []
    box = Box(
        _settings(tmp_path, _endpoint("dead", f"http://127.0.0.1:{port}")),
        retry_delay_s=0,
        on_retry=lambda attempt, exc: retries.append((attempt, type(exc).__name__)),
    )
    with pytest.raises(BoxConnectionError, match=rf"dead at http://127.0.0.1:{port} could not be reached after 2"):
        box.ask("hello", endpoint="dead")
    assert retries == [(1, "ConnectError")]
    assert BoxConnectionError("x").exit_code == 2


def test_bad_input_and_no_fitting_endpoint_are_clear_errors(tmp_path):
    with FakeServer("http_500", not_ready_for_s=3600) as loading:
        settings = _settings(
            tmp_path,
            _endpoint("loading", loading.url),
            _endpoint("dead", f"http://127.0.0.1:{free_port()}", "llamacpp"),
        )
        box = Box(settings)
        with pytest.raises(NoEndpointError) as raised:
            box.ask("hello")
    message = str(raised.value)
    assert "no endpoint can answer for any model" in message
    assert "loading: not healthy: /health answered HTTP 503" in message
    assert "dead: unreachable at http://127.0.0.1:" in message
    assert raised.value.exit_code == 2
    with pytest.raises(NoEndpointError, match=r"no endpoint named 'nope'; configured: \['loading', 'dead'\]"):
        box.ask("hello", endpoint="nope")
    with pytest.raises(IdpOpsError, match="the prompt is empty"):
        box.ask("  ", endpoint="dead")
    with pytest.raises(IdpOpsError, match="max_tokens must be >= 1"):
        box.ask("hi", endpoint="dead", max_tokens=0)


def test_last_figures_are_each_endpoints_newest_night(tmp_path):
    history_file = tmp_path / "history.duckdb"
    assert last_figures(history_file) == {}
    seed_bench_runs(
        history_file,
        [
            {"night": date(2026, 3, 1), "endpoint": "a", "decode_tok_s": 10.0, "model": "m"},
            {"night": date(2026, 3, 2), "endpoint": "a", "decode_tok_s": 30.0, "model": "m"},
            {"night": date(2026, 3, 1), "endpoint": "b", "decode_tok_s": None, "ok": False},
        ],
    )
    figures = last_figures(history_file)
    assert figures["a"]["night"] == date(2026, 3, 2) and figures["a"]["decode_tok_s"] == 30.0
    assert figures["b"]["decode_tok_s"] is None and figures["b"]["ok"] is False


# -- the real llama-server ---------------------------------------------------------


def _check_answer(answer: Answer, name: str, max_tokens: int) -> None:
    assert answer.endpoint == name and answer.model == "gemma-3-270m"
    assert answer.text.strip(), "Gemma answered some text"
    assert 0 < answer.ttft_ms <= answer.e2e_ms
    assert 1 <= answer.output_tokens <= max_tokens
    assert answer.prompt_tokens and answer.prompt_tokens > 3
    # llama-server sends timings on both of its APIs: the rate is its own.
    assert answer.tok_s > 0 and answer.tok_s_source == "server"
    assert answer.attempts == 1


@pytest.mark.docker
@pytest.mark.model
@pytest.mark.parametrize("name", ENDPOINTS)
def test_sync_async_and_streamed_answers_on_both_protocols(box_stack, name):
    box = Box(box_stack)
    answer = box.ask("Name three colours of the rainbow.", endpoint=name, max_tokens=24)
    _check_answer(answer, name, 24)
    assert answer.protocol == box_stack.endpoint(name).protocol
    assert answer.chosen_because == "named by the caller" and answer.skipped == {}

    stream = box.ask("Write one sentence about the sea.", endpoint=name, max_tokens=24, stream=True)
    pieces = list(stream)
    assert len(pieces) >= 2, "the answer arrived in pieces"
    _check_answer(stream.answer, name, 24)
    assert "".join(pieces) == stream.answer.text

    async def both() -> tuple[Answer, list[str], Answer]:
        whole = await box.aask("What is a river?", endpoint=name, max_tokens=16)
        streamed = await box.aask("What is a lake?", endpoint=name, max_tokens=16, stream=True)
        parts = [piece async for piece in streamed]
        return whole, parts, streamed.answer

    whole, parts, streamed_answer = asyncio.run(both())
    _check_answer(whole, name, 16)
    _check_answer(streamed_answer, name, 16)
    assert "".join(parts) == streamed_answer.text and len(parts) >= 2


@pytest.mark.docker
@pytest.mark.model
def test_a_stream_closed_early_stops_the_request(box_stack):
    box = Box(box_stack)
    with box.stream("Count from one to fifty in words.", endpoint="llamacpp-cpu", max_tokens=64) as stream:
        first = next(iter(stream))
    assert first and stream.answer is None
    # The endpoint answers the next question as usual.
    _check_answer(box.ask("Say hello.", endpoint="llamacpp-cpu", max_tokens=8), "llamacpp-cpu", 8)


@pytest.mark.docker
@pytest.mark.model
def test_the_choice_follows_health_model_and_the_last_nightly_figures(box_stack, tmp_path):
    settings = box_stack.model_copy(update={"data_dir": tmp_path / "data"})
    box = Box(settings)
    # No history: settings order.
    answer = box.ask("Say hello.", max_tokens=8)
    assert answer.endpoint == "openai-standin" and "settings order" in answer.chosen_because
    assert answer.skipped == {"llamacpp-cpu": "fits, but comes later (no nightly figures)"}

    seed_bench_runs(
        settings.history_file,
        [
            {"night": date(2026, 3, 1), "endpoint": "openai-standin", "decode_tok_s": 20.0, "model": "gemma-3-270m"},
            {"night": date(2026, 3, 1), "endpoint": "llamacpp-cpu", "decode_tok_s": 40.0, "model": "gemma-3-270m"},
        ],
    )
    answer = box.ask("Say hello.", max_tokens=8)
    assert answer.endpoint == "llamacpp-cpu" and answer.protocol == "llamacpp"
    assert answer.chosen_because == "fastest by the night of 2026-03-01 (40.0 tok/s decode)"
    assert answer.skipped == {"openai-standin": "slower by the last nightly figures (20.0 tok/s)"}

    # The newest night decides; figures of another model do not count.
    seed_bench_runs(
        settings.history_file,
        [
            {"night": date(2026, 3, 2), "endpoint": "openai-standin", "decode_tok_s": 50.0, "model": "gemma-3-270m"},
            {"night": date(2026, 3, 2), "endpoint": "llamacpp-cpu", "decode_tok_s": 90.0, "model": "other-model"},
        ],
    )
    assert box.ask("Say hello.", max_tokens=8).endpoint == "openai-standin"

    # A stopped-looking endpoint is skipped with its reason; the other answers.
    dead = _with_endpoints(settings, **{"openai-standin": {"url": f"http://127.0.0.1:{free_port()}"}})
    answer = Box(dead).ask("Say hello.", max_tokens=8)
    assert answer.endpoint == "llamacpp-cpu"
    assert answer.skipped["openai-standin"].startswith("unreachable at http://127.0.0.1:")


@pytest.mark.docker
@pytest.mark.model
def test_a_model_is_found_in_the_servers_list_or_refused_with_reasons(box_stack, tmp_path):
    # Settings call the model something else: the server's /v1/models still lists its alias.
    renamed = _with_endpoints(box_stack, **{name: {"model": "renamed"} for name in ENDPOINTS})
    renamed = renamed.model_copy(update={"data_dir": tmp_path / "data"})
    answer = Box(renamed).ask("Say hello.", model="gemma-3-270m", max_tokens=8)
    assert answer.endpoint == "openai-standin" and answer.model == "gemma-3-270m" and answer.text
    with pytest.raises(NoEndpointError) as raised:
        Box(renamed).ask("Say hello.", model="llama-3.1-8b")
    message = str(raised.value)
    assert "no endpoint can answer for model 'llama-3.1-8b'" in message
    for name in ENDPOINTS:
        assert f"{name}: serves ['gemma-3-270m'], not 'llama-3.1-8b'" in message


@pytest.mark.docker
@pytest.mark.model
@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_wrong_key_is_a_clear_error_that_never_shows_a_key(box_stack, tmp_path, name):
    wrong_dir = tmp_path / "secrets"
    wrong_dir.mkdir()
    for key_name in box_stack.key_names:
        (wrong_dir / key_name).write_text("not-the-key-0123456789\n")
    settings = box_stack.model_copy(update={"secrets_dir": wrong_dir})
    with pytest.raises(ServerAnswerError) as raised:
        Box(settings).ask("Say hello.", endpoint=name, max_tokens=8)
    message = str(raised.value)
    assert raised.value.status == 401 and raised.value.exit_code == 1
    assert f"{name} rejected the key (HTTP 401)" in message and str(wrong_dir) in message
    assert "not-the-key" not in message


@pytest.mark.docker
@pytest.mark.model
def test_one_retry_when_the_port_refuses_then_comes_up(box_stack):
    """The first connection is refused (nothing listens yet); the proxy starts listening before the retry."""
    real = box_stack.endpoint("llamacpp-cpu")
    proxy = FlakyProxy(real.url, ["forward"], port=free_port())
    settings = _with_endpoints(box_stack, **{"llamacpp-cpu": {"url": proxy.url}})
    retries = []

    def on_retry(attempt, exc):
        retries.append((attempt, type(exc).__name__))
        proxy.listen()

    with proxy:
        answer = Box(settings, on_retry=on_retry).ask("Say hello.", endpoint="llamacpp-cpu", max_tokens=8)
    assert retries == [(1, "ConnectError")]
    assert answer.attempts == 2 and answer.text and proxy.connections == ["forward"]


@pytest.mark.docker
@pytest.mark.model
def test_one_retry_when_the_connection_is_reset_before_any_text(box_stack):
    real = box_stack.endpoint("openai-standin")
    with FlakyProxy(real.url, ["reset", "forward"]).listen() as proxy:
        settings = _with_endpoints(box_stack, **{"openai-standin": {"url": proxy.url}})
        answer = Box(settings, retry_delay_s=0).ask("Say hello.", endpoint="openai-standin", max_tokens=8)
    assert answer.attempts == 2 and answer.text and proxy.connections == ["reset", "forward"]


@pytest.mark.docker
@pytest.mark.model
def test_no_retry_once_text_has_arrived(box_stack):
    real = box_stack.endpoint("llamacpp-cpu")
    with FlakyProxy(real.url, ["reset_after_text"]).listen() as proxy:
        settings = _with_endpoints(box_stack, **{"llamacpp-cpu": {"url": proxy.url}})
        stream = Box(settings, retry_delay_s=0).stream(
            "Count to twenty.", endpoint="llamacpp-cpu", max_tokens=64, timeout_s=60
        )
        pieces = []
        with pytest.raises(AnswerStreamError, match="dropped mid-answer after .* not retried once text has arrived"):
            pieces.extend(stream)
    assert pieces and proxy.connections == ["reset_after_text"]
