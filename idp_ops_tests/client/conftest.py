"""One CPU stack (llama-server + Gemma 270M on both protocols) for the client's and `idp-ops ask`'s tests."""

from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="package")
def box_stack(tmp_path_factory, llama_image, demo_models_dir):
    """Settings of a deployed CPU stack on free ports, torn down after the package's tests."""
    from idp_ops.settings import load_settings
    from idp_ops.stack.deploy import compose_project, deploy
    from idp_ops.stack.secrets import ensure_keys
    from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

    root = tmp_path_factory.mktemp("ask-stack")
    config = write_settings(
        root / "idp-ops.yaml",
        **cpu_stack_settings(root / "home", demo_models_dir, llama_image, f"idp-ops-test-ask-{time.time_ns() % 10**8}"),
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


@pytest.fixture
def config_file(box_stack):
    return box_stack.home.parent / "idp-ops.yaml"
