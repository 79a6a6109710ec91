"""Fixtures of the alerts tests: settings in a tmp home, and a webhook that records what it is sent."""

from __future__ import annotations

import pytest

from idp_ops.settings import load_settings
from idp_ops_harness.settings_files import write_settings
from idp_ops_harness.webhook_recorder import RecordingWebhook


@pytest.fixture
def webhook():
    server = RecordingWebhook()
    yield server
    server.close()


@pytest.fixture
def alert_settings(tmp_path):
    """make(**values) writes settings under tmp_path and returns (config path, Settings)."""

    def make(**values):
        config = write_settings(tmp_path / "idp-ops.yaml", home=str(tmp_path / "home"), **values)
        return config, load_settings(config)

    return make
