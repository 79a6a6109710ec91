"""ConfigurableResources wrapping core/: one per concern, chosen per environment in definitions.py."""

from typing import Optional

from dagster import ConfigurableResource, ResourceDependency

from idp_ops.last_good_settings import load_or_last_good
from idp_ops.settings import Settings, load_settings
from idp_ops.stack import deploy as stack_core
from idp_ops.stack.compose import ComposeProject
from idp_ops.thermal.watch import alert_failed_attempt, webhooks


class SettingsResource(ConfigurableResource):
    """The box's settings: defaults < YAML (`config_file`, else $IDP_CONFIG / ./idp-ops.yaml) < IDP_* env."""

    config_file: Optional[str] = None

    def load(self) -> Settings:
        return load_settings(self.config_file)

    def load_or_last_good(self, snapshot: Optional[str] = None) -> tuple[Settings, Optional[str]]:
        """For the safety paths: the last good settings (and why) when the file stops loading."""
        return load_or_last_good(self.config_file, snapshot=snapshot)


class StackResource(ConfigurableResource):
    """The Docker Compose stack the settings describe."""

    settings: ResourceDependency[SettingsResource]

    def project(self) -> ComposeProject:
        return stack_core.compose_project(self.settings.load())

    def deploy(self, log) -> stack_core.DeployReport:
        return stack_core.deploy(self.settings.load(), log=log)

    def contain(
        self, reason: str, reading: dict, log, settings_snapshot: Optional[str] = None, origin: str = "containment_job"
    ) -> stack_core.ContainmentReport:
        settings, problem = self.settings.load_or_last_good(settings_snapshot)
        if problem:
            log(problem)
        try:
            return stack_core.contain(
                settings,
                reason,
                reading,
                log=log,
                on_failed_attempt=alert_failed_attempt(settings, reading, origin),
            )
        finally:
            webhooks.flush(timeout_s=settings.thermal.webhook_timeout_s + 1)
