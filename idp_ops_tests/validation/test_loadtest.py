"""The Locust load test, run headless in a subprocess: against the real llama-server on
both protocols (parsed stats, zero failures), against a server that answers 500, an
unused port and a stopped service (failures counted, by status)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from idp_ops.validation.loadtest import LoadTestError, failure_status, parse_stats_csv, run_locust
from idp_ops_harness.fake_llm_server import FakeServer
from idp_ops_harness.ports import refusing_port

LLAMACPP_NAMES = {"quick_completion", "hypothesis_generation"}
OPENAI_NAMES = {"short_completion", "medium_completion", "long_completion", "/v1/models"}


def test_failure_messages_are_classified_by_status():
    assert failure_status("CatchResponseError('HTTP 503: loading')") == "503"
    assert failure_status("HTTPError('500 Server Error: Internal Server Error for url: /completion')") == "500"
    assert failure_status("CatchResponseError('connect: ConnectionError: ... Connection refused')") == "connect"
    assert failure_status("CatchResponseError('stream: ChunkedEncodingError: ...')") == "stream"
    assert failure_status("something else") == "other"


def test_bad_arguments_and_a_missing_key_file_are_refused(tmp_path):
    with pytest.raises(LoadTestError, match="unknown protocol"):
        run_locust("http://127.0.0.1:1", "grpc", "m", None, csv_dir=tmp_path)
    with pytest.raises(LoadTestError, match="does not exist"):
        run_locust("http://127.0.0.1:1", "openai", "m", tmp_path / "nope", csv_dir=tmp_path)


def test_an_unused_port_makes_every_request_fail_as_connect(tmp_path):
    with refusing_port() as port:
        result = run_locust(
            f"http://127.0.0.1:{port}",
            "llamacpp",
            "m",
            None,
            users=2,
            spawn_rate=2,
            run_time_s=3,
            csv_dir=tmp_path,
            timeout_s=5,
            wait_scale=0.2,
        )
    assert result.requests > 0 and result.failures == result.requests
    assert result.failures_by_status == {"connect": result.failures}
    assert not result.ok and result.problems[0].startswith(f"{result.failures} of {result.requests} requests failed")
    assert result.exit_code == 1  # Locust's "some requests failed"


def test_a_server_answering_500_counts_server_errors_and_never_sees_the_key_on_the_command_line(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-load-key\n")
    with FakeServer("http_500") as server:
        result = run_locust(
            server.url,
            "openai",
            "m",
            key_file,
            users=2,
            spawn_rate=2,
            run_time_s=3,
            csv_dir=tmp_path / "csv",
            timeout_s=5,
            wait_scale=0.1,
        )
    completions = [r for r in server.requests if r["path"] == "/v1/completions"]
    assert completions and all(r["auth"] == "Bearer s3cret-load-key" for r in completions)
    assert all(r["payload"]["stream"] is True for r in completions)
    prompts = [r["payload"]["prompt"] for r in completions]
    assert len(set(prompts)) == len(prompts)
    # /v1/models answers 404 on this fake server; completions 500
    assert result.failures_by_status.get("500", 0) == len(completions) > 0
    assert result.server_errors == len(completions)
    assert "s3cret" not in json.dumps(result.to_dict())


def _stack_settings(tmp_path_factory, llama_image, demo_models_dir):
    from idp_ops.settings import load_settings
    from idp_ops.stack.secrets import ensure_keys
    from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

    root = tmp_path_factory.mktemp("load-stack")
    config = write_settings(
        root / "idp-ops.yaml",
        **cpu_stack_settings(
            root / "home", demo_models_dir, llama_image, f"idp-ops-test-load-{time.time_ns() % 10**8}"
        ),
    )
    settings = load_settings(config)
    ensure_keys(
        settings.secrets_dir, settings.key_names, owner_uid=settings.service_uid, owner_gid=settings.service_gid
    )
    return settings


@pytest.fixture(scope="module")
def stack(tmp_path_factory, llama_image, demo_models_dir):
    from idp_ops.stack.deploy import compose_project, deploy

    settings = _stack_settings(tmp_path_factory, llama_image, demo_models_dir)
    try:
        report = deploy(settings)
        assert report.ok, report.problems
        yield settings
    finally:
        compose_project(settings).down(timeout=settings.stop_timeout_s)


@pytest.mark.docker
@pytest.mark.model
@pytest.mark.parametrize(("name", "names"), [("llamacpp-cpu", LLAMACPP_NAMES), ("openai-standin", OPENAI_NAMES)])
def test_locust_against_the_real_server_gives_parsed_stats_and_no_failures(stack, tmp_path, name, names):
    endpoint = stack.endpoint(name)
    result = run_locust(
        endpoint.url,
        endpoint.protocol,
        endpoint.model,
        stack.key_file(endpoint),
        users=3,
        spawn_rate=3,
        run_time_s=6,
        csv_dir=tmp_path,
        timeout_s=30,
        wait_scale=0.2,
    )
    assert result.ok, (result.problems, result.stderr_tail)
    assert result.failures == 0 and result.failures_by_status == {} and result.server_errors == 0
    assert result.requests >= 3 and result.rps > 0
    assert {s.name for s in result.stats} <= names and result.stats
    assert sum(s.requests for s in result.stats) == result.requests
    assert result.p50_ms is not None and result.p50_ms > 0 and result.p95_ms >= result.p50_ms
    assert "headers" in result.response_time_note
    # the completed run's totals, as Locust printed them in its summary
    stats, aggregated = parse_stats_csv(Path(f"{result.csv_prefix}_final_stats.csv"))
    assert aggregated.requests == result.requests
    printed = [line for line in result.stderr_tail.splitlines() if line.strip().startswith("Aggregated")]
    assert printed and int(printed[0].split()[1]) == result.requests
    # the key is read from a file named in the environment, never passed on the command line
    from idp_ops.stack.secrets import read_key

    assert read_key(stack.key_file(endpoint)) not in " ".join(result.command) and result.exit_code == 0


@pytest.mark.docker
@pytest.mark.model
def test_cli_loadtest_by_endpoint_name(stack, tmp_path, capsys):
    from idp_ops.cli.main import main

    config = stack.home.parent / "idp-ops.yaml"
    argv = [
        "--config",
        str(config),
        "loadtest",
        "--endpoint",
        "llamacpp-cpu",
        "--users",
        "2",
        "--spawn-rate",
        "2",
        "--run-time",
        "4",
        "--csv-dir",
        str(tmp_path),
        "--json",
    ]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["requests"] > 0 and data["failures"] == 0 and data["ok"] is True
    assert data["user_class"] == "LlamaCppUser"


def _restart(settings, endpoint) -> None:
    """Start a service a test stopped, and wait until it answers: the module's stack as it was."""
    from idp_ops.stack.deploy import compose_project
    from idp_ops.stack.probe import wait_until_ready

    compose_project(settings).up([endpoint.compose_service], timeout=settings.deploy_timeout_s)
    wait_until_ready(endpoint.url, timeout_s=settings.deploy_timeout_s)


@pytest.mark.docker
@pytest.mark.model
def test_a_stopped_server_makes_failures_count(stack, tmp_path):
    """It stops a service of the module's stack, and starts it again: any test may run after it."""
    from idp_ops.stack.deploy import compose_project

    endpoint = stack.endpoint("llamacpp-cpu")
    compose_project(stack).stop([endpoint.compose_service], timeout=2)
    try:
        result = run_locust(
            endpoint.url,
            endpoint.protocol,
            endpoint.model,
            stack.key_file(endpoint),
            users=2,
            spawn_rate=2,
            run_time_s=3,
            csv_dir=tmp_path,
            timeout_s=5,
            wait_scale=0.2,
        )
    finally:
        _restart(stack, endpoint)
    assert result.requests > 0 and result.failures == result.requests
    assert set(result.failures_by_status) <= {"connect", "stream"} and not result.ok
