"""deploy_job and containment_job against the real dockerd, llama-server and Gemma GGUF."""

import json
import subprocess

import httpx
import pytest
from dagster import DagsterInstance

from idp_ops.definitions import defs
from idp_ops.resources import SettingsResource, StackResource
from idp_ops.settings import load_settings
from idp_ops.stack.deploy import compose_project, read_latch
from idp_ops.stack.secrets import read_key
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

pytestmark = [pytest.mark.docker, pytest.mark.model]


@pytest.fixture(scope="module")
def box(tmp_path_factory, llama_image, demo_models_dir):
    """A CPU stack deployed once by deploy_job on a real (SQLite) Dagster instance."""
    root = tmp_path_factory.mktemp("box")
    config = write_settings(
        root / "idp-ops.yaml", **cpu_stack_settings(root / "home", demo_models_dir, llama_image, "idp-ops-test")
    )
    settings = load_settings(config)
    settings_resource = SettingsResource(config_file=str(config))
    resources = {"settings": settings_resource, "stack": StackResource(settings=settings_resource)}
    (root / "dagster_home").mkdir()
    instance = DagsterInstance.local_temp(tempdir=str(root / "dagster_home"))

    def run(job_name, run_config=None, raise_on_error=True):
        job = defs.resolve_job_def(job_name)
        return job.execute_in_process(
            run_config=run_config, instance=instance, resources=resources, raise_on_error=raise_on_error
        )

    first = run("deploy_job")
    try:
        yield {
            "settings": settings,
            "instance": instance,
            "run": run,
            "first": first,
            "root": root,
            "first_keys": keys_of(settings),  # a rotation replaces them; they must not leak either
        }
    finally:
        compose_project(settings).down()
        instance.dispose()


def stack_problems(settings) -> list[str]:
    """What differs from the stack every test starts with: both services up, nothing latched,
    each endpoint answering with the key on disk."""
    problems = []
    running = {s.service for s in compose_project(settings).ps() if s.running}
    if running != {"openai-standin", "llamacpp-cpu"}:
        problems.append(f"running: {sorted(running)}")
    if read_latch(settings) is not None:
        problems.append("containment latched")
    keys = keys_of(settings)
    for endpoint in settings.endpoints:
        try:
            status = completion(endpoint, keys[endpoint.name]).status_code
        except httpx.HTTPError as exc:
            status = repr(exc)
        if status != 200:
            problems.append(f"{endpoint.name} with its key: {status}")
    return problems


@pytest.fixture
def puts_the_stack_back(box):
    """For a test that changes the shared stack (stops a service, rotates keys): afterwards, passed
    or failed, the stack is as every test finds it, so the tests of this module run in any order."""
    assert stack_problems(box["settings"]) == [], "the stack was not as a test should find it"
    yield
    if stack_problems(box["settings"]):
        assert box["run"]("deploy_job").success  # restarts what is stopped, recreates stale keys, re-arms
    assert stack_problems(box["settings"]) == []


def materialization(result, key):
    events = result.asset_materializations_for_node(key)
    assert events, f"no materialization of {key}"
    return events[-1].metadata


def keys_of(settings):
    return {e.name: read_key(settings.key_file(e)) for e in settings.endpoints}


def completion(endpoint, key):
    path, payload = (
        ("/v1/completions", {"model": endpoint.model, "prompt": "Hello", "max_tokens": 4})
        if endpoint.protocol == "openai"
        else ("/completion", {"prompt": "Hello", "n_predict": 4})
    )
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(endpoint.url + path, json=payload, headers=headers, timeout=60)


def test_deploy_job_materializes_keys_audit_and_a_proven_deployment(box):
    result = box["first"]
    assert result.success
    for key in ("api_keys", "compose_audit", "stack_deployment"):
        materialization(result, key)
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("no_high_findings", True)]
    endpoints_table = materialization(result, "stack_deployment")["endpoints"].value
    for endpoint in box["settings"].endpoints:
        assert endpoint.name in endpoints_table
    # every endpoint row shows 200 health, 401 without key, 200 with it
    rows = [line for line in endpoints_table.splitlines() if line.startswith("| ") and "http" in line]
    assert len(rows) == 2 and all("| 200 | 401 | 200 |" in row for row in rows)


def test_every_endpoint_is_healthy_rejects_strangers_and_answers_with_its_key(box):
    settings = box["settings"]
    keys = keys_of(settings)
    for endpoint in settings.endpoints:
        assert httpx.get(endpoint.url + "/health", timeout=10).status_code == 200
        assert completion(endpoint, None).status_code == 401
        assert completion(endpoint, "not-the-key").status_code == 401
        other = next(k for name, k in keys.items() if name != endpoint.name)
        assert completion(endpoint, other).status_code == 401, "keys are per service"
        answer = completion(endpoint, keys[endpoint.name])
        assert answer.status_code == 200
        body = answer.json()
        text = body["choices"][0]["text"] if endpoint.protocol == "openai" else body["content"]
        assert text.strip()


def test_containers_run_hardened_and_keys_stay_out_of_inspect_and_ps(box):
    settings = box["settings"]
    states = compose_project(settings).ps()
    assert {s.service for s in states if s.running} == {"openai-standin", "llamacpp-cpu"}
    keys = list(keys_of(settings).values())
    for state in states:
        raw = subprocess.run(["docker", "inspect", state.container], capture_output=True, text=True, check=True).stdout
        info = json.loads(raw)[0]
        host = info["HostConfig"]
        assert info["Config"]["User"] not in ("", "0", "root") and not info["Config"]["User"].startswith("0:")
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["Privileged"] is False and host["IpcMode"] != "host"
        assert host["Memory"] > 0 and host["PidsLimit"] > 0
        for bindings in host["PortBindings"].values():
            assert all(b["HostIp"] == "127.0.0.1" for b in bindings)
        mounts = {m["Destination"]: m for m in info["Mounts"]}
        assert mounts["/models"]["RW"] is False
        assert not any(key in raw for key in keys)
    processes = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert "--api-key-file" in processes and not any(key in processes for key in keys)


def test_no_key_value_reaches_the_event_log_or_compute_logs(box):
    instance, settings = box["instance"], box["settings"]
    keys = sorted({*box["first_keys"].values(), *keys_of(settings).values()})
    run_id = box["first"].run_id
    events = instance.all_logs(run_id)
    assert len(events) > 10
    serialized = "\n".join(repr(event) for event in events)
    assert "stack_deployment" in serialized
    assert not any(key in serialized for key in keys)
    dagster_home = box["root"] / "dagster_home"
    files = [p for p in dagster_home.rglob("*") if p.is_file()]
    assert files, "the instance wrote nothing to disk"
    for path in files:
        data = path.read_bytes()
        assert not any(key.encode() in data for key in keys), f"a key value leaked into {path}"


def test_containment_stops_the_gpu_service_latches_and_deploy_rearms(box, puts_the_stack_back):
    settings, run = box["settings"], box["run"]
    gpu_endpoint = settings.endpoint("openai-standin")
    result = run(
        "containment_job",
        {
            "ops": {
                "stop_gpu_services": {
                    "config": {"reason": "test: 91 C for 2 samples", "device": "gpu0", "temperature_c": 91.0}
                }
            }
        },
    )
    assert result.success
    output = result.output_for_node("stop_gpu_services")
    assert output["stopped"] == ["openai-standin"] and output["still_running"] == []
    states = {s.service: s for s in compose_project(settings).ps()}
    assert not states["openai-standin"].running and states["llamacpp-cpu"].running
    with pytest.raises(httpx.ConnectError, match="Connection refused"):  # nothing listens there any more
        httpx.get(gpu_endpoint.url + "/health", timeout=5)
    latch = read_latch(settings)
    assert latch["reason"] == "test: 91 C for 2 samples" and latch["reading"]["temperature_c"] == 91.0

    again = run("deploy_job")
    assert again.success
    assert materialization(again, "stack_deployment")["containment_rearmed"].value is True
    assert read_latch(settings) is None
    assert httpx.get(gpu_endpoint.url + "/health", timeout=10).status_code == 200


def test_rotating_keys_through_the_job_takes_effect_on_the_running_stack(box, puts_the_stack_back):
    settings, run = box["settings"], box["run"]
    before = keys_of(settings)
    result = run("deploy_job", {"ops": {"api_keys": {"config": {"rotate": True}}}})
    assert result.success
    assert sorted(materialization(result, "api_keys")["rotated"].value) == ["llamacpp_api_key", "openai_api_key"]
    after = keys_of(settings)
    for endpoint in settings.endpoints:
        assert after[endpoint.name] != before[endpoint.name]
        assert completion(endpoint, before[endpoint.name]).status_code == 401
        assert completion(endpoint, after[endpoint.name]).status_code == 200
