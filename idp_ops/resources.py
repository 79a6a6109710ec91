"""ConfigurableResources wrapping core/: one per concern, chosen per environment in definitions.py."""


from typing import Optional

from dagster import ConfigurableResource, ResourceDependency

from idp_ops.config import Settings, load_settings
from idp_ops.core import stack as stack_core
from idp_ops.core.compose import ComposeProject


class SettingsResource(ConfigurableResource):
    """The box's settings: defaults < YAML (`config_file`, else $IDP_CONFIG / ./idp-ops.yaml) < IDP_* env."""

    config_file: Optional[str] = None

    def load(self) -> Settings:
        return load_settings(self.config_file)


class StackResource(ConfigurableResource):
    """The Docker Compose stack the settings describe."""

    settings: ResourceDependency[SettingsResource]

    def project(self) -> ComposeProject:
        return stack_core.compose_project(self.settings.load())

    def deploy(self, log) -> stack_core.DeployReport:
        return stack_core.deploy(self.settings.load(), log=log)

    def contain(self, reason: str, reading: dict, log) -> stack_core.ContainmentReport:
        return stack_core.contain(self.settings.load(), reason, reading, log=log)
