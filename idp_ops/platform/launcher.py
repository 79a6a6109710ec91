"""The platform's run launcher: each box's runs start on that box's Docker engine, models mounted per job.

``BoxDockerRunLauncher`` is dagster-docker's DockerRunLauncher (compose/ops/dagster.yaml names it) with two
changes, decided in idp_ops/platform/run_context.py:

- every Docker client (launch, terminate, run monitoring) comes from :meth:`_get_client` for the run's own
  container context, which may name the engine of the box the location serves (``IDP_OPS_RUN_ENGINE``);
  the stock launcher always uses ``docker.from_env()``, the central engine;
- the models dir is mounted read-only, read-write only for the jobs that write models.

Runs of a location without ``IDP_OPS_RUN_ENGINE`` behave exactly as with the stock launcher.
"""

from __future__ import annotations

from typing import Any

import docker
import docker.errors
from dagster._core.events import EngineEventData
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import DOCKER_IMAGE_TAG
from dagster._core.utils import parse_env_var
from dagster_docker import DockerRunLauncher
from dagster_docker.container_context import DockerContainerContext
from dagster_docker.docker_run_launcher import DOCKER_CONTAINER_ID_TAG

from idp_ops.platform.run_context import (
    MODELS_DIR_VAR,
    client_environment,
    job_container_kwargs,
    models_mode,
    parse_env_vars,
    run_engine,
    run_env_vars,
)


class _EngineAPIClient(docker.APIClient):
    """An API client that trusts only its engine's settings: never the process's REQUESTS_CA_BUNDLE /
    CURL_CA_BUNDLE, which requests lets replace the engine's own CA (psf/requests#3829: TLS to the box then
    fails to verify), nor HTTP(S)_PROXY or .netrc. Session.__init__ sets trust_env; the property keeps it off."""

    @property
    def trust_env(self) -> bool:
        return False

    @trust_env.setter
    def trust_env(self, value: bool) -> None:
        pass


class _EngineClient(docker.DockerClient):
    def __init__(self, *args, **kwargs):
        self.api = _EngineAPIClient(*args, **kwargs)


class BoxDockerRunLauncher(DockerRunLauncher):
    """DockerRunLauncher whose runs start on their location's engine, with the models mount decided per job."""

    def get_container_context(self, dagster_run: DagsterRun) -> DockerContainerContext:
        context = super().get_container_context(dagster_run)
        kwargs = job_container_kwargs(context.container_kwargs, context.env_vars, dagster_run.job_name)
        return context._replace(container_kwargs=kwargs)

    def _get_client(self, container_context: DockerContainerContext):
        engine = run_engine(container_context.env_vars)
        environment = client_environment(engine)
        if environment is None:
            client = docker.from_env()
        else:
            # ssh:// through the ssh binary, as the docker CLI does (the locked deps carry no paramiko).
            use_ssh = (engine.host or "").startswith("ssh://")
            client = _EngineClient.from_env(environment=environment, use_ssh_client=use_ssh)
        if container_context.registry:
            client.login(
                registry=container_context.registry["url"],
                username=container_context.registry["username"],
                password=container_context.registry["password"],
            )
        return client

    def _launch_container_with_command(self, run, docker_image, command):
        # The stock method, except: the run-engine variables stay out of the container's environment, and
        # the engine event's metadata says which engine and which models mode (its message is unchanged).
        container_context = self.get_container_context(run)
        docker_env = dict(parse_env_var(e) for e in run_env_vars(container_context.env_vars))
        docker_env["DAGSTER_RUN_JOB_NAME"] = run.job_name
        engine = run_engine(container_context.env_vars)
        client = self._get_client(container_context)

        container_kwargs: dict[str, Any] = {**container_context.container_kwargs}
        labels = container_kwargs.pop("labels", {})
        container_kwargs.pop("stop_timeout", None)
        if isinstance(labels, list):
            labels = {key: "" for key in labels}
        labels = {**labels, "dagster/run_id": run.run_id, "dagster/job_name": run.job_name}
        networks = container_context.networks

        def create():
            return client.containers.create(
                image=docker_image,
                command=command,
                detach=True,
                environment=docker_env,
                network=networks[0] if networks else None,
                labels=labels,
                **container_kwargs,
            )

        try:
            container = create()
        except docker.errors.ImageNotFound:
            client.images.pull(docker_image)
            container = create()
        for network_name in networks[1:]:
            client.networks.get(network_name).connect(container)

        metadata = {"docker_engine": engine.label()}
        if parse_env_vars(container_context.env_vars).get(MODELS_DIR_VAR):
            metadata["models_mount"] = models_mode(run.job_name)
        self._instance.report_engine_event(
            message=f"Launching run in a new container {container.id} with image {docker_image}",
            dagster_run=run,
            # Tagged as dagster-docker tags it ("[DockerRunLauncher] Launching run ..."): readers keep working.
            cls=DockerRunLauncher,
            engine_event_data=EngineEventData(metadata),
        )
        self._instance.add_run_tags(run.run_id, {DOCKER_CONTAINER_ID_TAG: container.id, DOCKER_IMAGE_TAG: docker_image})
        container.start()
