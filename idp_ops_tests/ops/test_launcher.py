"""The platform's run launcher (idp_ops/platform/launcher.py): per-job models mount, per-location engine.

The fast tests hand real DagsterRun objects, whose code origin carries the container context
compose/ops/platform_env.py writes for a real settings file, to the launcher as the instance loads it from
dagster.yaml-shaped config. The slow test launches runs through that launcher onto a real second dockerd
(its own network namespace, reached over tcp + TLS like a remote box) while the process's own engine is
the host's: the containers, their monitoring and their termination all happen there, and only there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.launcher.base import LaunchRunContext, WorkerStatus
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.test_utils import instance_for_test
from dagster._core.utils import make_new_run_id

from idp_ops.definitions import defs
from idp_ops.platform.launcher import BoxDockerRunLauncher
from idp_ops.platform.run_context import (
    ENGINE_VARS,
    MODEL_WRITING_JOBS,
    RunContextError,
    job_volumes,
    run_engine,
    run_env_vars,
)
from idp_ops.settings import load_settings
from idp_ops.stack.audit import audit_compose_file_result
from idp_ops.stack.engine import DockerEngine
from idp_ops_harness.ops_locations import (
    LOCATION_COMPOSE,
    box_engine,
    make_engine_tls,
    platform_env_module,
    tcp_engine_url,
)
from idp_ops_harness.ops_platform import PROJECT_LABEL
from idp_ops_harness.projects import unique_project
from idp_ops_harness.settings_files import write_settings

platform_env = platform_env_module()
LAUNCHER_CONFIG = {"module": "idp_ops.platform.launcher", "class": "BoxDockerRunLauncher"}


def _settings(tmp_path):
    config = write_settings(tmp_path / "idp-ops.yaml", home=tmp_path / "home", models_dir=tmp_path / "models")
    return config, load_settings(config)


def _context(tmp_path, project="idp-ops-test", **kwargs) -> dict:
    config, settings = _settings(tmp_path)
    return platform_env.run_context(settings, project, config, "127.0.0.1", 15432, **kwargs)


def _run(job_name: str, context: dict | None, image: str = "idp-ops/ops:test") -> DagsterRun:
    origin = JobPythonOrigin(
        job_name,
        RepositoryPythonOrigin(
            sys.executable,
            ModuleCodePointer("idp_ops.definitions", "defs", None),
            container_image=image,
            container_context=context,
        ),
    )
    return DagsterRun(job_name=job_name, run_id=make_new_run_id(), job_code_origin=origin)


def _modes(volumes: list[str], models_dir: str) -> list[str]:
    return [v.rsplit(":", 1)[1] for v in volumes if v.split(":")[1] == models_dir]


def test_models_are_read_only_except_for_the_jobs_that_write_them(tmp_path):
    context = _context(tmp_path)
    models_dir = str(load_settings(tmp_path / "idp-ops.yaml").models_dir)
    launcher = BoxDockerRunLauncher()
    jobs = set(defs.get_repository_def().job_names)
    assert jobs >= MODEL_WRITING_JOBS, "a model-writing job was renamed: the launcher would mount its models ro"
    given = context["docker"]["container_kwargs"]["volumes"]
    for job in sorted(jobs):
        kwargs = launcher.get_container_context(_run(job, context)).container_kwargs
        expected = "rw" if job in {"models_job", "restore_job"} else "ro"
        assert _modes(kwargs["volumes"], models_dir) == [expected], (job, kwargs["volumes"])
        # Every other mount and setting exactly as the location's context gave it.
        others = [v for v in kwargs["volumes"] if v.split(":")[1] != models_dir]
        assert others == [v for v in given if v.split(":")[1] != models_dir], job
        assert {k: v for k, v in kwargs.items() if k != "volumes"} == {
            k: v for k, v in context["docker"]["container_kwargs"].items() if k != "volumes"
        }


def test_a_context_cannot_give_other_jobs_a_writable_model_store(tmp_path):
    context = _context(tmp_path)
    models_dir = str(load_settings(tmp_path / "idp-ops.yaml").models_dir)
    kwargs = context["docker"]["container_kwargs"]
    # A context that says rw (here in docker-py's dict form) is overridden, its source kept.
    kwargs["volumes"] = {"/srv/models-disk": {"bind": models_dir, "mode": "rw"}, "/etc/idp": {"bind": "/etc/idp"}}
    launched = BoxDockerRunLauncher().get_container_context(_run("nightly_validation_job", context))
    assert launched.container_kwargs["volumes"] == ["/etc/idp:/etc/idp:rw", f"/srv/models-disk:{models_dir}:ro"]
    # No models mount at all: the launcher adds the read-only one the run's settings expect.
    assert job_volumes(["/a:/a"], models_dir, "deploy_job") == ["/a:/a", f"{models_dir}:{models_dir}:ro"]
    with pytest.raises(RunContextError, match="two different mounts at the models dir"):
        job_volumes([f"/x:{models_dir}", f"/y:{models_dir}/"], models_dir, "models_job")
    kwargs["mounts"] = [{"Target": models_dir, "Source": "/x", "Type": "bind", "ReadOnly": False}]
    with pytest.raises(RunContextError, match="through 'volumes', not 'mounts'"):
        BoxDockerRunLauncher().get_container_context(_run("deploy_job", context))


def test_the_location_names_its_engine_and_the_run_never_sees_it(tmp_path):
    certs = tmp_path / "certs"
    context = _context(
        tmp_path, run_engine="tcp://10.0.0.2:2376", run_engine_tls_verify=True, run_engine_cert_path=str(certs)
    )
    with instance_for_test(
        overrides={"run_launcher": {**LAUNCHER_CONFIG, "config": {"env_vars": ["IDP_OPS_RUN_ENGINE=unix:///x.sock"]}}}
    ) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, BoxDockerRunLauncher)
        # The instance's engine is the default; the location's context, merged after it, wins.
        env_vars = launcher.get_container_context(_run("deploy_job", context)).env_vars
        assert run_engine(env_vars) == DockerEngine("tcp://10.0.0.2:2376", True, certs)
        assert run_engine(launcher.get_container_context(_run("deploy_job", None)).env_vars) == DockerEngine(
            "unix:///x.sock"
        )
    assert not any(e.startswith(ENGINE_VARS) for e in run_env_vars(env_vars))
    assert "IDP_MODELS_DIR=" + str(tmp_path / "models") in run_env_vars(env_vars)
    assert run_engine([]) == DockerEngine()

    refused = {
        "tcp://10.0.0.2:2375": "plain tcp to another host",
        "ssh://ops:hunter2@box-b": "must not carry a password",
        "ftp://box-b": "must be unix:///PATH",
    }
    for host, message in refused.items():
        with pytest.raises(RunContextError, match=message) as raised:
            run_engine([f"IDP_OPS_RUN_ENGINE={host}"])
        assert "hunter2" not in str(raised.value)
    with pytest.raises(RunContextError, match="without IDP_OPS_RUN_ENGINE"):
        run_engine(["IDP_OPS_RUN_ENGINE_TLS_VERIFY=1"])


def test_a_boxs_location_env_carries_its_engine_and_its_compose_file_passes_the_audit(tmp_path, capsys):
    config, settings = _settings(tmp_path)
    argv = ["--location", "idp_ops_box_b", "--project", "idp-ops-box-b", "--image", "idp-ops/ops:test"]
    argv += ["--config", str(config), "--grpc-bind", "10.0.0.2", "--grpc-port", "4100", "--pg-port", "15433"]
    argv += ["--run-engine", "tcp://10.0.0.2:2376", "--run-engine-tls-verify", "--run-engine-cert-path", "/c"]
    with pytest.raises(SystemExit):
        platform_env.main(argv)  # no --pg-host: refused, the box could not reach the instance
    assert "--location needs --pg-host" in capsys.readouterr().err
    assert platform_env.main([*argv, "--pg-host", "10.0.0.1"]) == 0
    env = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    env = {k: v.strip("'") for k, v in env.items()}
    assert (env["IDP_OPS_LOCATION_NAME"], env["IDP_OPS_GRPC_BIND"], env["IDP_OPS_PG_HOST"]) == (
        "idp_ops_box_b",
        "10.0.0.2",
        "10.0.0.1",
    )
    docker = json.loads(env["IDP_OPS_RUN_CONTEXT"])["docker"]
    assert run_engine(docker["env_vars"]) == DockerEngine("tcp://10.0.0.2:2376", True, Path("/c"))
    assert "DAGSTER_PG_HOST=10.0.0.1" in docker["env_vars"] and "DAGSTER_PG_PORT=15433" in docker["env_vars"]
    # The file the box brings its location up with, rendered with that env: nothing open; the gRPC port on
    # the box's one LAN address is the only exception, accepted with its reason. All interfaces: refused.
    (settings.secrets_dir).mkdir(parents=True)
    result = audit_compose_file_result(LOCATION_COMPOSE, env)
    assert not [f for f in result.findings if f.severity != "note"], result.findings
    assert [(a.service, a.rule) for a in result.accepted] == [("code-location", "CIS-5.14")]
    with pytest.raises(SystemExit, match="all interfaces"):
        platform_env.main([*argv, "--pg-host", "10.0.0.1", "--grpc-bind", "0.0.0.0"])


# -- two real engines ------------------------------------------------------------------------

ENGINE_NAME = "idp-launch-b"
LINK = "10.213.41.0/30"
HOST_ENGINE = "unix:///var/run/docker.sock"


def _inspect(host: str, container_id: str) -> dict | None:
    out = subprocess.run(["docker", "-H", host, "inspect", container_id], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)[0] if out.returncode == 0 else None


@pytest.mark.docker
def test_runs_start_are_watched_and_stop_on_their_locations_engine(tmp_path, llama_image, monkeypatch):
    tls = make_engine_tls(tmp_path / "tls", LINK.replace("0/30", "2"))
    engine = box_engine(ENGINE_NAME, LINK, tls)
    project = unique_project("idp-launch")
    # The launching process's own engine is the host's: only the context may send runs to box B.
    monkeypatch.setenv("DOCKER_HOST", HOST_ENGINE)
    started = time.monotonic()
    try:
        engine.start()
        engine.load_image(llama_image)
        print(f"\nengine B up with {llama_image} in {time.monotonic() - started:.1f} s")
        context = _context(
            tmp_path,
            project=project,
            docker_socket=str(engine.socket),
            run_engine=tcp_engine_url(engine),
            run_engine_tls_verify=True,
            run_engine_cert_path=str(tls.client_dir),
        )
        # A stand-in for the run worker that lives until stopped (the image has busybox, not dagster).
        context["docker"]["container_kwargs"]["entrypoint"] = ["/bin/sh", "-c", "sleep 300"]
        context["docker"]["container_kwargs"]["stop_timeout"] = 1  # sh as PID 1 ignores SIGTERM: SIGKILL after 1 s
        models_dir = str(tmp_path / "models")
        with instance_for_test(overrides={"run_launcher": LAUNCHER_CONFIG}) as instance:
            launcher = instance.run_launcher
            runs = {}
            for job in ("deploy_job", "models_job"):
                run = instance.add_run(_run(job, context, image=llama_image))
                t0 = time.monotonic()
                launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
                runs[job] = instance.get_run_by_id(run.run_id)
                print(f"{job}: launched on engine B in {time.monotonic() - t0:.2f} s")

            for job, run in runs.items():
                container_id = run.tags["docker/container_id"]
                on_b = _inspect(engine.host, container_id)
                assert on_b is not None, f"{job}'s container is not on engine B"
                assert _inspect(HOST_ENGINE, container_id) is None, f"{job}'s container is on the host engine"
                assert on_b["Config"]["Labels"][PROJECT_LABEL] == project
                assert on_b["Config"]["Labels"]["dagster/run_id"] == run.run_id
                env = dict(e.split("=", 1) for e in on_b["Config"]["Env"])
                assert not set(env) & set(ENGINE_VARS), "the central view of the engine leaked into the run"
                assert env["IDP_MODELS_DIR"] == models_dir and env["DAGSTER_RUN_JOB_NAME"] == job
                models = [m for m in on_b["Mounts"] if m["Destination"] == models_dir]
                assert [m["RW"] for m in models] == [job == "models_job"], (job, models)
                # Box B's socket is the run's docker.sock (its deploy drives box B's dockerd).
                sockets = [m["Source"] for m in on_b["Mounts"] if m["Destination"] == "/var/run/docker.sock"]
                assert sockets == [str(engine.socket)], sockets
                events = [e for e in instance.all_logs(run.run_id) if e.is_dagster_event]
                launched = [e.dagster_event for e in events if "Launching run in a new container" in e.message]
                assert len(launched) == 1
                metadata = launched[0].engine_event_data.metadata
                assert metadata["docker_engine"].value == f"{tcp_engine_url(engine)} (settings)"
                assert metadata["models_mount"].value == ("rw" if job == "models_job" else "ro")

            # Monitoring and termination reach the run's engine, not the process's.
            deploy = runs["deploy_job"]
            assert launcher.check_run_worker_health(deploy).status == WorkerStatus.RUNNING
            assert launcher.terminate(deploy.run_id) is True
            state = _inspect(engine.host, deploy.tags["docker/container_id"])["State"]
            assert state["Status"] == "exited", state
            health = launcher.check_run_worker_health(deploy)
            assert health.status == WorkerStatus.FAILED and "exited" in health.msg, health
    finally:
        try:
            if engine.answering():
                ids = engine.docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}").stdout.split()
                if ids:
                    engine.docker("rm", "-f", *ids, timeout=120)
                engine.docker("volume", "rm", f"{project}-data", f"{project}-logs")
                assert not engine.docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}").stdout.split()
        finally:
            engine.destroy()
            print(f"torn down; {time.monotonic() - started:.1f} s in all")
