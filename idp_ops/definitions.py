"""The one place the code location's Definitions are assembled: each domain's, merged.

The domains are imported as modules (not their `defs` objects): Dagster loads the one
Definitions it finds at this module's top level.
"""

from dagster import Definitions

from idp_ops.alerts import defs as alerts
from idp_ops.backup import defs as backup
from idp_ops.models import defs as models
from idp_ops.physics import defs as physics
from idp_ops.platform import defs as platform
from idp_ops.reports import defs as reports
from idp_ops.resources import SettingsResource, StackResource
from idp_ops.stack import defs as stack
from idp_ops.thermal import defs as thermal
from idp_ops.validation import defs as validation

settings_resource = SettingsResource()

defs = Definitions.merge(
    *(domain.defs for domain in (stack, validation, models, backup, thermal, physics, reports, alerts, platform)),
    Definitions(resources={"settings": settings_resource, "stack": StackResource(settings=settings_resource)}),
)
