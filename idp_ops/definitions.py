"""The one place the code location's Definitions are assembled: each domain's, merged."""

from dagster import Definitions

from idp_ops.backup.defs import defs as backup
from idp_ops.models.defs import defs as models
from idp_ops.physics.defs import defs as physics
from idp_ops.reports.defs import defs as reports
from idp_ops.resources import SettingsResource, StackResource
from idp_ops.stack.defs import defs as stack
from idp_ops.thermal.defs import defs as thermal
from idp_ops.validation.defs import defs as validation

settings_resource = SettingsResource()

defs = Definitions.merge(
    stack,
    validation,
    models,
    backup,
    thermal,
    physics,
    reports,
    Definitions(resources={"settings": settings_resource, "stack": StackResource(settings=settings_resource)}),
)
